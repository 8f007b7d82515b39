"""The recipes on planted data (pipelines/sae/planted.py): the L1 recipes recover a known dictionary,
`target_l0` lands where it is asked to, AuxK's gradient is the loss it documents, and the
generator is what it says (frequencies, determinism, split disjointness)."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import ConfigError, SaeConfig, build_config
from pipelines.sae.planted import PlantedData, PlantedSpec, direction_match, score
from pipelines.sae.calibration import L0Search
from pipelines.sae.stage import train_saes
from pipelines.sae.autoencoder import SparseAutoencoder

SMALL = PlantedSpec(d=64, n_features=128, mean_active=5.0, noise=0.05, seed=3)


def train_planted(spec: PlantedSpec, steps: int, batch: int = 1024, **sae):
    data = PlantedData(spec, batch)
    cfg = SaeConfig(**{"dict_sizes": (2 * spec.n_features,), "batch_size": batch, "buffer_tokens": batch,
                       "lr": 3e-3, "dead_window": 20 * batch, **sae})
    scale = data.input_scale()
    b_dec_init = data.batch("train", 0).mean(0) * scale
    saes, info = train_saes(cfg, spec.d, lambda epoch: data.batches("train", steps), steps, scale, b_dec_init, "cpu")
    (sae,) = saes.values()

    def reconstruct(x):
        _, _, codes = sae.encode_codes(x * scale)
        return (codes.times(sae.W_dec) + sae.b_dec) / scale, codes.to_dense()

    return sae, info, score(data, sae.W_dec.detach(), reconstruct, eval_batches=8)


@pytest.fixture(scope="module")
def calibrated():
    """recipe -> `train_planted(SMALL, 300 steps, target_l0 = the planted L0)`, trained once
    per recipe: the two tests below check the same training (where λ lands, what it
    recovers), and each training is the bulk of their time."""
    runs: dict[str, tuple] = {}

    def run(recipe: str) -> tuple:
        if recipe not in runs:
            runs[recipe] = train_planted(SMALL, steps=300, recipe=recipe,
                                         target_l0=SMALL.mean_active)
        return runs[recipe]

    return run


@pytest.mark.parametrize("recipe", ["l1", "l1-unit"])
def test_target_l0_calibrates_lambda_to_the_asked_sparsity(recipe, calibrated):
    target = SMALL.mean_active  # (at twice the planted L0 the same run lands 11% under: see pipelines/sae/calibration.py)
    _, info, s = calibrated(recipe)
    assert abs(s.l0 - target) <= 0.1 * target, (recipe, target, s.l0, info["l1_coefficients"])
    assert info["l1_coefficients"][2 * SMALL.n_features] != pytest.approx(0.25 * (SMALL.d / target) ** 0.5)


@pytest.mark.parametrize("recipe", ["l1", "l1-unit"])
def test_l1_recipe_recovers_a_planted_dictionary(recipe, calibrated):
    _, _, s = calibrated(recipe)
    assert s.mmcs >= 0.95 and s.recovered >= 0.9, s
    assert s.dead <= 0.05, s


def test_untrained_decoder_does_not_pass_for_recovery():
    """The bar above can fail: random decoder rows score far below it."""
    data = PlantedData(SMALL, 256)
    W = torch.randn(2 * SMALL.n_features, SMALL.d, generator=torch.Generator().manual_seed(0))
    assert float(direction_match(W, data.D).mean()) < 0.7


def test_search_moves_lambda_toward_the_target_only_in_its_window():
    search = L0Search(target=10.0, start_step=5, stop_step=50, initial=1.0)
    assert search.update(0, 2.0, 100.0) == 2.0 and search.update(50, 2.0, 100.0) == 2.0
    assert search.update(10, 2.0, 100.0) > 2.0  # too dense: more λ
    assert search.update(10, 2.0, 1.0) < 2.0  # too sparse: less λ
    assert search.update(10, 2.0, 10.0) == pytest.approx(2.0)


def auxk_loss_autograd(sae: SparseAutoencoder, x: torch.Tensor, one_sided: bool) -> list[torch.Tensor]:
    """MSE + α·‖ê − e‖²·mean‖x − b_dec‖²/mean‖e‖² (the ratio held constant), on the aux sub-batch;
    one-sided: the aux codes' gradient is cut to the part that raises them."""
    params = [p.detach().clone().requires_grad_(True) for p in sae.params]
    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc.T + b_enc
    vals, idx = pre.topk(sae.k, dim=1)
    f = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    x_hat = f @ W_dec + b_dec
    loss = ((x_hat - x) ** 2).sum(1).mean()
    sub = int(len(x) * sae.aux_batch_fraction)
    e = (x - x_hat)[:sub].detach()
    aux_vals, aux_idx = pre[:sub].topk(sae.aux_k, dim=1)  # every feature is dead here
    if one_sided:
        aux_vals.register_hook(lambda g: g.clamp_max(0))
    f_aux = torch.zeros_like(pre[:sub]).scatter(1, aux_idx, aux_vals.relu())
    ratio = float(((x[:sub] - b_dec.detach()) ** 2).sum(1).mean()) / float((e ** 2).sum(1).mean())
    loss = loss + sae.aux_coefficient * ratio * ((f_aux @ W_dec - e) ** 2).sum(1).mean()
    loss.backward()
    grads = [p.grad for p in params]
    W = W_dec.detach()
    grads[2] = grads[2] - (grads[2] * W).sum(1, keepdim=True) * W
    return grads


@pytest.mark.parametrize("layout", ["bag", "csr"])
@pytest.mark.parametrize("one_sided", [False, True])
def test_auxk_gradient_equals_autograd_of_the_normalised_loss(one_sided, layout):
    data = PlantedData(SMALL, 512)
    x = data.batch("train", 0) * data.input_scale()
    sae = SparseAutoencoder(SMALL.d, 96, "topk", k=4, aux_k=12, dead_window=0, b_dec_init=x.mean(0), seed=1,
                            aux_one_sided=one_sided, codes=layout)
    sae.b_enc.data += 0.3  # dead features need positive pre-activations to get aux gradient
    expected = auxk_loss_autograd(sae, x, one_sided)
    stats = sae.step(x, lr=0.0)
    assert stats.n_dead == 96 and stats.aux > 0
    for name, param, want in zip(("W_enc", "b_enc", "W_dec", "b_dec"), sae.params, expected):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("layout", ["bag", "csr"])
def test_auxk_without_reading_the_dead_count_gives_the_same_step(layout):
    """On a GPU the step does not wait to learn how many features are dead: AuxK takes aux_k
    candidates with the live ones masked out. With fewer dead features than aux_k (5 of 96
    here, aux_k 12), and with none, that must be the very gradient the counted path gives."""
    data = PlantedData(SMALL, 512)
    x = data.batch("train", 0) * data.input_scale()

    def grads(syncs_are_free: bool, dead: list[int]) -> list[torch.Tensor]:
        sae = SparseAutoencoder(SMALL.d, 96, "topk", k=4, aux_k=12, dead_window=10_000,
                                b_dec_init=x.mean(0), seed=1, codes=layout)
        sae.b_enc.data += 0.3
        sae.syncs_are_free = syncs_are_free
        sae.tokens_seen = 10_000
        sae.since_fired[dead] = 10**6  # dead unless they fire on this batch
        sae.b_enc.data[dead] -= 50.0  # ... which they cannot
        stats = sae.step(x, lr=0.0)
        assert int(stats.n_dead) == len(dead)
        assert (float(stats.aux) > 0) == bool(dead)
        return [p.grad.clone() for p in sae.params]

    for dead in ([3, 17, 40, 41, 90], []):
        for counted, masked in zip(grads(True, dead), grads(False, dead)):
            torch.testing.assert_close(masked, counted, rtol=1e-5, atol=1e-6)


def test_one_sided_auxk_never_pushes_a_dead_feature_down():
    """A residual no dead row can explain: OpenAI's AuxK lowers every dead feature's bias
    (the aux loss is smallest with them silent); the one-sided form leaves them where they are."""
    data = PlantedData(SMALL, 512)
    x = data.batch("train", 0) * data.input_scale()

    def b_enc_grad(**aux) -> torch.Tensor:
        sae = SparseAutoencoder(SMALL.d, 96, "topk", k=4, aux_k=12, dead_window=0, b_dec_init=x.mean(0),
                                seed=1, **aux)
        sae.b_enc.data += 0.3
        sae.step(x, lr=0.0)
        return sae.b_enc.grad

    without = b_enc_grad(aux_coefficient=0.0)
    # the aux part of the gradient; descent moves b_enc by −grad
    shifts = {one_sided: b_enc_grad(aux_one_sided=one_sided) - without for one_sided in (False, True)}
    assert float(shifts[False].max()) > 0  # two-sided: some dead feature pushed down
    assert float(shifts[True].max()) <= 0 and float(shifts[True].min()) < 0  # one-sided: only raised


def test_planted_frequencies_and_determinism():
    spec = PlantedSpec(d=16, n_features=200, mean_active=5.0, zipf=1.0)
    p = spec.frequencies()
    assert float(p.sum()) == pytest.approx(5.0, rel=1e-5) and float(p.max()) <= 0.5
    assert bool((p[:-1] >= p[1:]).all())  # Zipf: decreasing with rank
    data = PlantedData(spec, 2048)
    torch.testing.assert_close(data.batch("train", 3), PlantedData(spec, 2048).batch("train", 3))
    assert not torch.equal(data.batch("train", 0), data.batch("val", 0))
    x = data.batch("train", 0)  # active count ≈ mean_active: noise-free projection check
    clean = PlantedData(PlantedSpec(d=16, n_features=200, mean_active=5.0, zipf=1.0, noise=0.0), 2048)
    residual = clean.batch("train", 0) - x
    assert float(residual.std()) == pytest.approx(spec.noise_std(), rel=0.1)


def test_target_l0_is_validated():
    with pytest.raises(ConfigError, match="sae.target_l0"):
        build_config({"sae": {"dict_sizes": [64], "target_l0": 64.0}}, "test.toml")
    with pytest.raises(ConfigError, match="sae.target_l0"):
        build_config({"sae": {"target_l0": -1.0}}, "test.toml")
    assert build_config({"sae": {"target_l0": 20}}, "test.toml").sae.target_l0 == 20.0
