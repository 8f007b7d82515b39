"""bf16 selection (`sae.precision = bf16`, the default on CUDA): the encoder's dense matmul runs
in bf16, fp32 recomputes the candidates' values and makes the choice, so a step must be the
fp32 step up to fp32 rounding, for every recipe, with and without AuxK's dead features.
Runs on CPU with tiny shapes (bf16 is slow here, correct everywhere)."""

from __future__ import annotations

import pytest
import torch

from pipelines.sae.autoencoder import SparseAutoencoder
from tests.test_sae_training import planted


def step_grads(sae: SparseAutoencoder, x: torch.Tensor, dtype: torch.dtype):
    sae.select_dtype = dtype
    since = sae.since_fired.clone()
    stats = sae.step(x, lr=0.0)  # lr 0: the weights stay, the gradient is left in .grad
    sae.since_fired.copy_(since)
    return [p.grad.clone() for p in sae.params], stats


@pytest.mark.parametrize("layout", ["bag", "csr"])
@pytest.mark.parametrize("recipe", ["topk", "l1", "l1-unit"])
def test_bf16_step_equals_the_fp32_step(recipe, layout, monkeypatch):
    monkeypatch.setattr("pipelines.sae.codes.DENSE_ABOVE", 2.0)  # keep L1 codes sparse
    x, _ = planted(2048, 64, 128, 4, 0.05, 0)
    sae = SparseAutoencoder(64, 256, recipe, k=8, l1_coefficient=0.3, b_dec_init=x.mean(0), seed=1,
                            precision="fp32", codes=layout)
    for i in range(60):  # trained: codes settle, so the gradient is small and near-ties matter
        sae.step(x[(i % 4) * 512:(i % 4 + 1) * 512], lr=3e-3)
    want, fp32 = step_grads(sae, x, torch.float32)
    got, bf16 = step_grads(sae, x, torch.bfloat16)
    # the same active entries, but for a value fp32 itself rounds to either side of 0
    assert abs(float(bf16.l0) - float(fp32.l0)) * len(x) <= 2
    # 1e-2: one L1 entry at ±1e-7 moves W_enc's gradient by ~0.4%; bf16's own picks moved
    # a gradient by 10-25% when they decided (measured on this data)
    for name, w, g in zip(("W_enc", "b_enc", "W_dec", "b_dec"), want, got):
        assert float((g - w).norm() / w.norm()) < 1e-2, (recipe, name)
    # bf16 alone picks differently: what the fp32 decision is there for
    sae.select_dtype = torch.bfloat16
    pre = sae._pre_activations(x - sae.b_dec).float()
    exact = torch.addmm(sae.b_enc, x - sae.b_dec, sae.W_enc.T)
    if recipe == "topk":
        assert not torch.equal(pre.topk(8, dim=1).indices.sort(1).values,
                               exact.topk(8, dim=1).indices.sort(1).values)
    else:
        assert not torch.equal(pre > 0, exact > 0)


def test_bf16_auxk_equals_fp32_with_some_features_dead():
    x, _ = planted(1024, 64, 128, 4, 0.05, 0)
    sae = SparseAutoencoder(64, 256, "topk", k=8, aux_k=32, dead_window=10_000, b_dec_init=x.mean(0),
                            seed=1, precision="fp32")
    sae.b_enc.data += 0.3
    dead = torch.arange(0, 256, 9)  # 29 dead features, fewer than aux_k candidates ×2
    sae.b_enc.data[dead] -= 4.0  # silent in the main top-k, still ranked among the dead
    sae.tokens_seen, sae.since_fired[dead] = 10_000, 10**6
    for syncs_are_free in (True, False):  # counted (CPU) and masked (GPU) AuxK
        sae.syncs_are_free = syncs_are_free
        want, fp32 = step_grads(sae, x, torch.float32)
        got, bf16 = step_grads(sae, x, torch.bfloat16)
        assert int(fp32.n_dead) == len(dead) and float(fp32.aux) > 0
        torch.testing.assert_close(bf16.aux, fp32.aux, rtol=1e-4, atol=0)
        for name, w, g in zip(("W_enc", "b_enc", "W_dec", "b_dec"), want, got):
            assert float((g - w).norm() / w.norm()) < 1e-4, name


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        SparseAutoencoder(8, 16, "topk", k=2, precision="fp16")
