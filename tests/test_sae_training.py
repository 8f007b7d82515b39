"""The hand-written sparse backward pass against autograd, planted-truth recovery, resampling."""

from __future__ import annotations

import pytest
import torch

from pipelines.sae.autoencoder import SparseAutoencoder


def planted(n: int, d: int, m: int, active: int, noise: float, seed: int):
    """x = sparse non-negative codes over m known unit directions + Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n, m).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    x = codes @ D + noise * torch.randn(n, d, generator=g)
    return x * (d ** 0.5 / x.norm(dim=1).mean()), D


def autograd_grads(sae: SparseAutoencoder, x: torch.Tensor, l1: float):
    params = [p.detach().clone().requires_grad_(True) for p in sae.params]
    W_enc, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc.T + b_enc
    if sae.recipe == "topk":
        vals, idx = pre.topk(sae.k, dim=1)
        f = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    else:
        f = pre.relu()
    x_hat = f @ W_dec + b_dec
    loss = ((x_hat - x) ** 2).sum(1).mean()
    if sae.recipe == "l1-unit":
        loss = loss + l1 * f.sum(1).mean()
    elif sae.recipe == "l1":
        loss = loss + l1 * (f * W_dec.norm(dim=1)).sum(1).mean()
    loss.backward()
    grads = [p.grad for p in params]
    if sae.unit_norm:
        W = W_dec.detach()
        grads[2] = grads[2] - (grads[2] * W).sum(1, keepdim=True) * W
    return grads


# sparse always (bag; csr in topk's order as on CPU; csr sorted within rows as on CUDA) /
# dense codes always
@pytest.mark.parametrize("layout,dense_above,sort_rows", [("bag", 2.0, None), ("csr", 2.0, None),
                                                          ("csr", 2.0, True), ("bag", 0.0, None)])
@pytest.mark.parametrize("recipe", ["topk", "l1", "l1-unit"])
def test_sparse_gradients_equal_autograd(recipe, layout, dense_above, sort_rows, monkeypatch):
    monkeypatch.setattr("pipelines.sae.codes.DENSE_ABOVE", dense_above)
    monkeypatch.setattr("pipelines.sae.codes.CsrCodes.sort_rows", sort_rows)
    x, _ = planted(512, 32, 48, 3, 0.05, 0)
    sae = SparseAutoencoder(32, 96, recipe, k=6, l1_coefficient=0.3, dead_window=10**9,
                            grad_clip=1e9, b_dec_init=x.mean(0), seed=1, codes=layout)
    sae.b_enc.data += 0.05  # some ReLU codes active at the tied init
    expected = autograd_grads(sae, x, 0.3)
    sae.step(x, lr=0.0)
    for name, param, want in zip(("W_enc", "b_enc", "W_dec", "b_dec"), sae.params, expected):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-5, msg=f"{recipe} {name}")


def test_csr_rows_sorted_for_cusparse_hold_the_same_codes(monkeypatch):
    """cuSPARSE reads a CSR row's columns as ascending; the sorted codes must be topk's codes
    (each value still beside its own feature), only reordered."""
    from pipelines.sae.codes import BagCodes, CsrCodes
    monkeypatch.setattr(CsrCodes, "sort_rows", True)
    pre = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    sorted_codes, plain = CsrCodes.topk(pre, 12), BagCodes.topk(pre, 12)
    cols = sorted_codes.cols.view(64, 12)
    assert (cols.diff(dim=1) > 0).all()
    assert not (plain.cols.view(64, 12).diff(dim=1) > 0).all()  # topk's own order is not sorted
    torch.testing.assert_close(sorted_codes.to_dense(), plain.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(sorted_codes.csr.to_dense(), plain.to_dense(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def planted_400k() -> tuple[torch.Tensor, torch.Tensor]:
    """The planted data every recipe below trains on, drawn once (seconds each time)."""
    return planted(400_000, 64, 128, 5, 0.01, 0)


@pytest.mark.parametrize("recipe, floor", [("topk", 0.98), ("l1", 0.98), ("l1-unit", 0.95)])
def test_planted_directions_are_recovered(recipe, floor, planted_400k):
    d, m = 64, 128
    x, D = planted_400k
    sae = SparseAutoencoder(d, m, recipe, k=5, l1_coefficient=3.0, lr=2e-3, dead_window=20_000,
                            b_dec_init=x[:4096].mean(0))
    gen = torch.Generator().manual_seed(0)
    batch = 1024
    steps = len(x) // batch
    for i in range(steps):
        lr = 2e-3 * min(1.0, (steps - i) / (0.2 * steps))
        chunk = x[i * batch: (i + 1) * batch]
        sae.step(chunk, lr=lr, l1_scale=min(1.0, i / (0.05 * steps)))
        if recipe == "l1-unit" and i in (steps // 10, steps // 5, 3 * steps // 10):
            sae.resample_dead(chunk, gen)
    W = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    mean_max_cos = float((D @ W.detach().T).max(1).values.mean())
    assert mean_max_cos >= floor, mean_max_cos


@pytest.mark.parametrize("recipe", ["topk", "l1-unit"])
def test_decoder_rows_stay_unit_norm(recipe):
    x, _ = planted(8192, 32, 48, 3, 0.05, 1)
    sae = SparseAutoencoder(32, 64, recipe, k=4, l1_coefficient=1.0, lr=1e-2, dead_window=1024)
    for i in range(0, len(x), 512):
        sae.step(x[i: i + 512], lr=1e-2)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), rtol=0, atol=1e-5)


def test_resampling_revives_dead_features_and_resets_adam():
    x, _ = planted(20_000, 32, 48, 3, 0.05, 2)
    sae = SparseAutoencoder(32, 64, "l1-unit", l1_coefficient=0.5, lr=1e-3, dead_window=2048,
                            b_dec_init=x.mean(0))
    killed = torch.arange(0, 64, 4)
    sae.b_enc.data[killed] = -1e3  # these can never fire
    for i in range(0, 8192, 512):
        sae.step(x[i: i + 512], lr=1e-3)
    assert sae.dead_mask()[killed].all()
    n = sae.resample_dead(x[8192: 8192 + 4096], torch.Generator().manual_seed(0))
    assert n >= len(killed)
    assert not sae.dead_mask().any()
    assert (sae.b_enc[killed] == 0).all()
    state = sae.optimizer.state[sae.W_enc]
    assert (state["exp_avg"][killed] == 0).all() and (state["exp_avg_sq"][killed] == 0).all()
    torch.testing.assert_close(sae.W_dec[killed].norm(dim=1), torch.ones(len(killed)))
    pre = (x[12_288:] - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    assert ((pre[:, killed] > 0).float().mean(0) > 0).all()  # every revived feature fires again


def test_auxk_gives_dead_topk_features_gradient():
    x, _ = planted(4096, 32, 48, 3, 0.05, 3)
    sae = SparseAutoencoder(32, 64, "topk", k=4, dead_window=0, aux_k=16, b_dec_init=x.mean(0))
    stats = sae.step(x[:2048], lr=0.0)
    assert stats.n_dead == 64 and stats.aux > 0
    never = SparseAutoencoder(32, 64, "topk", k=4, dead_window=10**9, aux_k=16, b_dec_init=x.mean(0))
    never.step(x[:2048], lr=0.0)
    changed = (sae.W_enc.grad != never.W_enc.grad).any(1)
    assert changed.sum() > 4  # rows beyond the main top-k got the auxiliary gradient
