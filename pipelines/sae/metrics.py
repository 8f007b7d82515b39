"""Held-out quality of each dictionary: the figures a researcher judges an SAE by.

All on the validation split (documents never seen by the model or the SAEs):
- L0, MSE and FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖², in the original activation units, over
  every cached validation token;
- dead fraction (never fired on those tokens; the count is reported with it), the log10
  feature-density histogram, and the ultralow and dense counts (`schema.density_classes`);
- CE loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), with the reconstruction
  spliced into `blocks.0.mlp.hook_post` through a TransformerLens hook, and the same against
  mean ablation (the mean validation activation) as a stricter reference; KL(clean ‖ spliced)
  per token. Splices replace positions 1.. only: BOS was never in the SAE's training data, so
  every variant (zero, mean, SAE) keeps the clean BOS activation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from feature_store import schema
from feature_store.sae_files import SaeSpec, decode, decode_topk, encode, reconstruct, topk_codes
from feature_store.transformer_files import HOOK_POST
from pipelines.activations.shards import count_rows, read_shard, shard_paths
from pipelines.data.tokens import read_sequences
from pipelines.model.loss import CHUNK_ROWS as LOGIT_CHUNK_ROWS, unembedding_input

DENSITY_BINS = np.arange(-8.0, 0.25, 0.25)  # log10 density; dead features go below the first edge


EVAL_ROWS = 8192  # validation rows encoded at a time
VAL_CODE_IDX = "val_code_idx.npy"  # [val tokens, k] int32: a topk SAE's feature ids
VAL_CODE_VALS = "val_code_vals.npy"  # [val tokens, k] float32: their (ReLU'd) values


def reconstruction_metrics(specs: dict[int, tuple[SaeSpec, dict]], act_dir: Path, device: str,
                           codes_dir: Path | None = None) -> tuple[dict[int, dict], np.ndarray]:
    """Per size: l0, mse, fvu, fire counts; plus the mean validation activation.

    With `codes_dir`, a topk SAE's codes of every validation token are kept too, in the
    shards' row order (`codes_dir/<size>/val_code_{idx,vals}.npy`): the study's universality
    stage reads them instead of encoding the same tokens again (k·8 bytes per token)."""
    sums = {size: {"sq_err": 0.0, "l0": 0.0, "fires": torch.zeros(size, dtype=torch.long)} for size in specs}
    paths = shard_paths(act_dir, "val")
    n = count_rows(act_dir, "val")
    kept = {}
    if codes_dir is not None:
        for size, (spec, _) in specs.items():
            if spec.recipe_spec.top_k:
                folder = codes_dir / str(size)
                kept[size] = (
                    np.lib.format.open_memmap(folder / VAL_CODE_IDX, "w+", np.int32, (n, spec.k)),
                    np.lib.format.open_memmap(folder / VAL_CODE_VALS, "w+", np.float32, (n, spec.k)))
    # One pass: the mean and the sum of squares (FVU's denominator, Σ‖x‖² − n·‖mean‖², and
    # mean ablation's vector) are float64 sums taken beside the encoding, not a pass of
    # their own (which read and converted every shard a second time).
    total, total_sq, row = None, 0.0, 0
    pre = {size: torch.empty(EVAL_ROWS, spec.d_sae, device=device)  # reused by every batch
           for size, (spec, _) in specs.items() if spec.recipe_spec.top_k}
    for path in paths:  # float16 as stored, converted by torch (on the device, on a GPU)
        x_all = torch.from_numpy(read_shard(path, acts_dtype=np.float16)["acts"]).to(device).float()
        shard_sum = x_all.sum(0, dtype=torch.float64)
        total = shard_sum if total is None else total + shard_sum
        total_sq += float(torch.linalg.vector_norm(x_all, dtype=torch.float64) ** 2)
        for i in range(0, len(x_all), EVAL_ROWS):
            x = x_all[i: i + EVAL_ROWS]
            for size, (spec, tensors) in specs.items():
                if spec.recipe_spec.top_k:  # encode once, decode the k active rows only
                    vals, idx = topk_codes(spec, tensors, x, out=pre[size][:len(x)])
                    if size in kept:
                        kept[size][0][row: row + len(x)] = idx.cpu().numpy()
                        kept[size][1][row: row + len(x)] = vals.cpu().numpy()
                    x_hat = decode_topk(spec, tensors, vals, idx)
                    active = vals > 0
                    fires = torch.bincount(idx[active], minlength=size)
                else:
                    f = encode(spec, tensors, x)
                    x_hat = decode(spec, tensors, f)
                    active = f > 0
                    fires = active.sum(0)
                sums[size]["sq_err"] += float(torch.linalg.vector_norm(x_hat - x) ** 2)
                sums[size]["l0"] += float(active.sum())
                sums[size]["fires"] += fires.cpu()
            row += len(x)
    mean = total.cpu().numpy() / n
    variance_sum = float(total_sq - n * (mean * mean).sum())
    for idx_map, vals_map in kept.values():
        idx_map.flush()
        vals_map.flush()
    out = {}
    for size, acc in sums.items():
        density = acc["fires"].double().numpy() / n
        with np.errstate(divide="ignore"):
            log_density = np.where(density > 0, np.log10(np.maximum(density, 1e-300)), -np.inf)
        hist, _ = np.histogram(np.clip(log_density, DENSITY_BINS[0], DENSITY_BINS[-1]), bins=DENSITY_BINS)
        classes = schema.density_classes(density)
        out[size] = {
            "l0": acc["l0"] / n,
            "mse": acc["sq_err"] / n,
            "fvu": acc["sq_err"] / variance_sum,
            "dead_fraction": float((density == 0).mean()),
            "dead_eval_tokens": n,
            "n_dead": int((density == 0).sum()),
            "n_ultralow": int((classes == "ultralow").sum()),
            "n_dense": int((classes == "dense").sum()),
            "density_hist_counts": hist.tolist(),
            "density_hist_edges": DENSITY_BINS.tolist(),
            "density": density,
        }
    return out, mean.astype(np.float32)


LOSS_KEYS = ("ce_clean", "ce_zero_ablation", "ce_mean_ablation", "ce_with_sae", "ce_loss_recovered",
             "ce_loss_recovered_mean_ablation", "kl_div", "kl_div_zero_ablation", "ce_eval_tokens")


@torch.no_grad()
def loss_metrics(model, specs: dict[int, tuple[SaeSpec, dict]], tokens_dir: Path, mean_act: np.ndarray,
                 n_sequences: int, device: str, batch_size: int = 32) -> dict[str, dict]:
    """CE with each splice and KL to the clean model, averaged over next-token targets.

    Each variant runs the model up to the unembedding only (`unembedding_input`, with the
    splice hooked in); the logits are then made and read a chunk of positions at a time, the
    clean chunk beside every variant's, so no [batch, pos, d_vocab] tensor exists (on 2 CPU
    cores moving those, not the matmuls, was most of this evaluation's time)."""
    seqs = read_sequences(tokens_dir / "val.parquet")[:n_sequences]
    mean = torch.from_numpy(mean_act).to(device)

    def splice(make):
        def hook(acts, hook):
            acts = acts.clone()
            acts[:, 1:] = make(acts[:, 1:])
            return acts
        return hook

    def hidden(batch: torch.Tensor) -> torch.Tensor:
        """[rows, d_model]: the unembedding's input at positions 0..n-2, which predict 1.."""
        h = unembedding_input(model, batch)[:, :-1]
        return h.reshape(-1, h.shape[-1])

    variants = {"zero": lambda a: torch.zeros_like(a), "mean": lambda a: mean.expand_as(a)}
    for size, (spec, tensors) in specs.items():
        variants[f"sae{size}"] = (lambda s, t: lambda a: reconstruct(s, t, a))(spec, tensors)
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    zero = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    ce = {name: zero() for name in ["clean", *variants]}
    kl = {name: zero() for name in variants}
    count = 0
    for i in range(0, len(seqs), batch_size):
        batch = torch.from_numpy(seqs[i: i + batch_size].astype(np.int64)).to(device)
        targets = batch[:, 1:].reshape(-1, 1)
        h = {"clean": hidden(batch)}
        for name, make in variants.items():
            with model.hooks(fwd_hooks=[(HOOK_POST, splice(make))]):
                h[name] = hidden(batch)
        for lo in range(0, targets.shape[0], LOGIT_CHUNK_ROWS):
            t = targets[lo: lo + LOGIT_CHUNK_ROWS]
            clean_logp = torch.addmm(b_U, h["clean"][lo: lo + LOGIT_CHUNK_ROWS], W_U).log_softmax(-1)
            ce["clean"] -= clean_logp.gather(1, t).sum(dtype=torch.float64)
            # KL(clean || spliced) = Σ p (log p − log q), summed per chunk. (Not Σ p log p −
            # Σ p log q: two sums of ~1e4 whose difference is ~1e2 would lose the KL to
            # float32 rounding.)
            clean_p = clean_logp.exp()
            for name in variants:
                logp = torch.addmm(b_U, h[name][lo: lo + LOGIT_CHUNK_ROWS], W_U).log_softmax(-1)
                ce[name] -= logp.gather(1, t).sum(dtype=torch.float64)
                kl[name] += (clean_p * (clean_logp - logp)).sum(dtype=torch.float64)
        count += targets.shape[0]
    ce = {k: float(v) / count for k, v in ce.items()}
    kl = {k: float(v) / count for k, v in kl.items()}
    out = {}
    for size in specs:
        name = f"sae{size}"
        out[size] = {
            "ce_clean": ce["clean"], "ce_zero_ablation": ce["zero"], "ce_mean_ablation": ce["mean"],
            "ce_with_sae": ce[name],
            "ce_loss_recovered": (ce["zero"] - ce[name]) / (ce["zero"] - ce["clean"]),
            "ce_loss_recovered_mean_ablation": (ce["mean"] - ce[name]) / (ce["mean"] - ce["clean"]),
            "kl_div": kl[name], "kl_div_zero_ablation": kl["zero"], "ce_eval_tokens": count,
        }
    return out
