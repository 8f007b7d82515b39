"""The sae stage's held-out metrics against a brute-force recomputation on the mini run:
dense encode/decode for FVU, L0 and firing counts; explicit splices and the textbook KL."""

from __future__ import annotations

import numpy as np
import torch

from feature_store.sae_files import decode, encode, load_sae
from feature_store.transformer_files import HOOK_POST, load_transformer
from pipelines.activations.shards import read_shard, shard_paths
from pipelines.sae.metrics import loss_metrics, reconstruction_metrics
from pipelines.data.tokens import read_sequences


def saes(run):
    return {size: load_sae(run / "sae" / str(size)) for size in (64, 128)}


def test_reconstruction_metrics_match_dense_recomputation(mini_run):
    specs = saes(mini_run)
    got, mean = reconstruction_metrics(specs, mini_run / "activations", "cpu")
    x = np.concatenate([read_shard(p)["acts"] for p in shard_paths(mini_run / "activations", "val")])
    x = torch.from_numpy(x.astype(np.float32))
    x64 = x.double()
    np.testing.assert_allclose(mean, x64.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    for size, (spec, tensors) in specs.items():
        f = encode(spec, tensors, x)
        err = (decode(spec, tensors, f) - x).double()
        fvu = float((err ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())
        fires = (f > 0).sum(0).numpy()
        assert abs(got[size]["fvu"] - fvu) < 1e-4 * max(fvu, 1e-3)
        assert got[size]["l0"] == float((f > 0).sum()) / len(x)
        np.testing.assert_array_equal(np.rint(got[size]["density"] * len(x)), fires)
        assert got[size]["n_dead"] == int((fires == 0).sum())
        assert got[size]["dead_eval_tokens"] == len(x)


@torch.no_grad()
def test_loss_metrics_match_explicit_splices(mini_run, monkeypatch):
    """The chunked evaluation against the bridge's own forward with each splice hooked in;
    chunks of 16 positions, so a batch's 155 rows end in a partial chunk."""
    monkeypatch.setattr("pipelines.sae.metrics.LOGIT_CHUNK_ROWS", 16)
    specs = saes(mini_run)
    model = load_transformer(mini_run / "model")
    mean = np.random.default_rng(0).normal(size=specs[64][0].d_in).astype(np.float32)
    n = 12
    got = loss_metrics(model, specs, mini_run / "tokens", mean, n, "cpu", batch_size=5)
    seqs = torch.from_numpy(read_sequences(mini_run / "tokens" / "val.parquet")[:n].astype(np.int64))
    targets = seqs[:, 1:].unsqueeze(-1)

    def run(replace=None):
        if replace is None:
            return model(seqs).log_softmax(-1)[:, :-1].double()

        def hook(acts, hook):
            out = acts.clone()
            out[:, 1:] = replace(acts[:, 1:])
            return out
        return model.run_with_hooks(seqs, fwd_hooks=[(HOOK_POST, hook)]).log_softmax(-1)[:, :-1].double()

    clean = run()
    count = targets.numel()
    ce = {"clean": float(-clean.gather(-1, targets).sum()) / count}
    kl = {}
    m = torch.from_numpy(mean)
    for name, replace in {"zero": torch.zeros_like, "mean": lambda a: m.expand_as(a),
                          **{f"sae{s}": (lambda spec, t: lambda a: decode(spec, t, encode(spec, t, a)))(*specs[s])
                             for s in specs}}.items():
        logp = run(replace)
        ce[name] = float(-logp.gather(-1, targets).sum()) / count
        kl[name] = float((clean.exp() * (clean - logp)).sum()) / count
    for size in specs:
        row = got[size]
        assert row["ce_eval_tokens"] == count
        for key, want in (("ce_clean", ce["clean"]), ("ce_zero_ablation", ce["zero"]),
                          ("ce_mean_ablation", ce["mean"]), ("ce_with_sae", ce[f"sae{size}"]),
                          ("kl_div", kl[f"sae{size}"]), ("kl_div_zero_ablation", kl["zero"])):
            assert abs(row[key] - want) < 1e-4 * max(abs(want), 1.0), (size, key, row[key], want)
        recovered = (ce["zero"] - ce[f"sae{size}"]) / (ce["zero"] - ce["clean"])
        assert abs(row["ce_loss_recovered"] - recovered) < 1e-4
