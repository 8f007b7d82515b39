"""activations stage: cache `blocks.0.mlp.hook_post` for every non-BOS token.

Files: `activations/{train,val}-NNNNN.parquet`, each at most `shard_tokens` rows, columns
`seq_id` (int32, row of tokens/<split>.parquet), `position` (int16, 1..n_ctx-1), `token_id`
(int32) and `acts` (fixed-size list of d_mlp float16: half the bytes of float32, and the SAE
loss is insensitive to the ~1e-3 relative rounding). BOS (position 0) is skipped: its
activation is the same constant in every sequence and would dominate any dictionary.

The training split is a seeded random subset of training sequences of at most `max_tokens`
tokens; validation is cached whole, for honest held-out SAE metrics and feature statistics.
`pipelines/activation_shards.py` reads the shards back.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feature_store.transformer_files import HOOK_POST, load_transformer, mlp_activations
from pipelines import progress
from pipelines.config import ActivationsConfig
from pipelines.errors import InputError
from pipelines.devices import pick_device
from pipelines.tokens import read_sequences

_WRITE = dict(use_dictionary=False, write_statistics=False, compression="none")


def _write_shard(path: Path, seq_id: np.ndarray, position: np.ndarray, token_id: np.ndarray,
                 acts: np.ndarray) -> None:
    if not np.isfinite(acts).all():
        bad = int((~np.isfinite(acts)).any(axis=1).argmax())
        raise InputError(f"{path.name}: activation is NaN or Inf at sequence {int(seq_id[bad])}, "
                         f"position {int(position[bad])}; the model is broken, retrain it "
                         f"(--force model)")
    d = acts.shape[1]
    table = pa.table({
        "seq_id": pa.array(seq_id.astype(np.int32)),
        "position": pa.array(position.astype(np.int16)),
        "token_id": pa.array(token_id.astype(np.int32)),
        "acts": pa.FixedSizeListArray.from_arrays(pa.array(acts.astype(np.float16).reshape(-1)), d),
    })
    pq.write_table(table, path, row_group_size=16384, **_WRITE)


@torch.no_grad()
def cache_split(model, seqs: np.ndarray, seq_ids: np.ndarray, out: Path, split: str,
                cfg: ActivationsConfig, device: str) -> int:
    n_ctx = seqs.shape[1]
    per_shard = max(1, cfg.shard_tokens // (n_ctx - 1))
    n_tokens = 0
    bar = progress.bar(total=len(seqs) * (n_ctx - 1), desc=f"activations ({split})",
                       unit="tok", unit_scale=True)
    for shard, lo in enumerate(range(0, len(seqs), per_shard)):
        chunk, chunk_ids, parts = seqs[lo: lo + per_shard], seq_ids[lo: lo + per_shard], []
        for i in range(0, len(chunk), cfg.batch_size):
            batch = torch.from_numpy(chunk[i: i + cfg.batch_size].astype(np.int64)).to(device)
            parts.append(mlp_activations(model, batch)[:, 1:].float().cpu().numpy())
            bar.update(batch.shape[0] * (n_ctx - 1))
        acts = np.concatenate(parts).reshape(-1, parts[0].shape[-1])
        positions = np.tile(np.arange(1, n_ctx), len(chunk))
        _write_shard(out / f"{split}-{shard:05d}.parquet", np.repeat(chunk_ids, n_ctx - 1),
                     positions, chunk[:, 1:].reshape(-1), acts)
        n_tokens += len(acts)
    bar.close()
    return n_tokens


def run(cfg: ActivationsConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    device = pick_device(cfg.device, "activations")
    model = load_transformer(run_dir / "model", device=device)
    counts = {}
    for split in ("train", "val"):
        seqs = read_sequences(run_dir / "tokens" / f"{split}.parquet")
        ids = np.arange(len(seqs))
        if split == "train" and cfg.max_tokens > 0:
            keep = min(len(seqs), max(1, cfg.max_tokens // (seqs.shape[1] - 1)))
            ids = np.sort(np.random.default_rng(cfg.seed).permutation(len(seqs))[:keep])
        counts[split] = cache_split(model, seqs[ids], ids, out, split, cfg, device)
    seconds = time.perf_counter() - start
    total = counts["train"] + counts["val"]
    summary = (f"activations: {counts['train']:,} train + {counts['val']:,} validation tokens of "
               f"{HOOK_POST} (float16), {total / seconds:,.0f} tok/s, {seconds:.0f} s")
    return summary, {"train_tokens": counts["train"], "val_tokens": counts["val"],
                     "d_mlp": int(model.cfg.d_mlp), "tokens_per_second": round(total / seconds, 1)}
