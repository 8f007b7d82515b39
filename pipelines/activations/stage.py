"""activations stage: cache `blocks.0.mlp.hook_post` for every non-BOS token.

Files: `activations/{train,val}-NNNNN.parquet`, each at most `shard_tokens` activations
(rows × activation columns, so every shard holds about the same bytes), columns
`seq_id` (int32, row of tokens/<split>.parquet), `position` (int16, 1..n_ctx-1), `token_id`
(int32) and `acts` (fixed-size list of d_mlp float16: half the bytes of float32, and the SAE
loss is insensitive to the ~1e-3 relative rounding). BOS (position 0) is skipped: its
activation is the same constant in every sequence and would dominate any dictionary.

The training split is a seeded random subset of training sequences of at most `max_tokens`
tokens; validation is cached whole, for honest held-out SAE metrics and feature statistics.
For a model whose MLP normalises before W_out (SoLU's `solu_ln`), validation shards have one
more column, `acts_pre_ln` (same layout, `blocks.0.mlp.ln.hook_in`: the SoLU output before
that LayerNorm), from the same forward pass: the statistics pass summarises it as the
`neurons_pre_ln` dictionary, and those shards hold half the rows. Training shards never hold
it (nothing trains on it).
`pipelines/activations/shards.py` reads the shards back.

With `source = "planted"` the shards hold a planted dictionary's samples instead of the
model's activations (`pipelines/activations/planted.py`), with its truth beside them.

Under torchrun, rank r caches shards r, r+N, ... of each split into the one staging folder
(same names, same contents as one process would write).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feature_store.transformer_files import (HOOK_POST, HOOK_PRE_LN, capture_many,
                                              has_mid_ln, load_transformer)
from pipelines import distributed, progress
from pipelines.activations.planted import TRUTH_FILE, PlantedSource
from pipelines.activations.shards import sequence_cap
from pipelines.config import ActivationsConfig
from pipelines.errors import InputError
from pipelines.devices import pick_device, writer_threads
from pipelines.data.tokens import read_sequences

_WRITE = dict(use_dictionary=False, write_statistics=False, compression="none")


def _require_finite(path: Path, name: str, values: np.ndarray, seq_id: np.ndarray,
                    position: np.ndarray) -> None:
    """A NaN or Inf (a float16 overflow included) stops the stage, naming where it is."""
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).any(axis=1).argmax())
        raise InputError(f"{path.name}: {name} is NaN or Inf at sequence "
                         f"{int(seq_id[bad])}, position {int(position[bad])}; the model is "
                         f"broken, retrain it (--force model)")


def _write_shard(path: Path, seq_id: np.ndarray, position: np.ndarray, token_id: np.ndarray,
                 acts: dict[str, np.ndarray], checked: bool = False) -> None:
    """`acts`: column name -> [rows, d_mlp] values (`acts`, and `acts_pre_ln` when cached);
    `checked`: the caller has proven them finite."""
    columns = {"seq_id": pa.array(seq_id.astype(np.int32)),
               "position": pa.array(position.astype(np.int16)),
               "token_id": pa.array(token_id.astype(np.int32))}
    for name, values in acts.items():
        if not checked:
            _require_finite(path, name, values, seq_id, position)
        columns[name] = pa.FixedSizeListArray.from_arrays(
            pa.array(values.astype(np.float16, copy=False).reshape(-1)), values.shape[1])
    pq.write_table(pa.table(columns), path, row_group_size=16384, **_WRITE)


class ShardWriters:
    """The pool that writes shards on threads while the next shard's forward passes run,
    shared by both splits: the validation split's passes start while the training split's
    last shards are still being written (on a GPU, where the writing is the bound, waiting
    for them at the split's end would idle the card and every other writer). At most
    `threads` shards are in flight (host memory: ~134 MB each); `submit` waits for the
    oldest beyond that and raises its error there, in the stage."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-writer")
        self._writing: list = []

    def submit(self, fn, *args, **kwargs) -> None:
        self._wait_until(self.threads - 1)
        self._writing.append(self._pool.submit(fn, *args, **kwargs))

    def wait(self) -> None:
        """Every submitted shard written (the first error raised)."""
        self._wait_until(0)

    def _wait_until(self, in_flight: int) -> None:
        while len(self._writing) > in_flight:
            self._writing.pop(0).result()

    def __enter__(self) -> "ShardWriters":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc[0] is not None)


@torch.no_grad()
def cache_split(model, seqs: np.ndarray, seq_ids: np.ndarray, out: Path, split: str,
                cfg: ActivationsConfig, device: str, pre_ln: bool = False,
                planted: PlantedSource | None = None, writers: ShardWriters | None = None) -> int:
    """Writes the split's shards (under torchrun, this rank's share of them); with `pre_ln`,
    each also holds `acts_pre_ln`; with `planted`, planted samples replace the model's.
    `writers`: a pool shared with the other split, whose caller waits for it; None: this
    call's own, waited for before it returns. Returns the split's token count (all shards)."""
    if writers is None:
        with ShardWriters(writer_threads(device)) as own:
            count = cache_split(model, seqs, seq_ids, out, split, cfg, device, pre_ln, planted, own)
            own.wait()
        return count
    world = distributed.world()
    n_ctx = seqs.shape[1]
    hooks = {"acts": HOOK_POST, **({"acts_pre_ln": HOOK_PRE_LN} if pre_ln else {})}
    # A shard holds at most `shard_tokens` activations over all its columns: bounded memory
    # for its readers, and on a GPU, where each shard is one writer's work, no shard twice
    # another's writing time (a two-column shard of full rows was the stage's critical path).
    per_shard = max(1, cfg.shard_tokens // ((n_ctx - 1) * len(hooks)))
    starts = list(range(0, len(seqs), per_shard))
    mine = [s for s in range(len(starts)) if s % world.size == world.rank]
    bar = progress.bar(total=sum(min(per_shard, len(seqs) - starts[s]) for s in mine)
                       * (n_ctx - 1), desc=f"activations ({split})", unit="tok",
                       unit_scale=True, disable=not world.is_main)
    # Shards are written on threads (`writers`) while the next one's forward passes run:
    # Parquet's list encoding, not the model, bounds this stage on a GPU (one writer: ~0.12-0.2M
    # rows/s on these CPUs; pyarrow releases the GIL, so writers scale with cores:
    # `writer_threads`, 14 on a 16-core GPU box). The activations stay on the device (as the
    # stored float16) until the shard is complete: one copy to the host per shard, and their
    # finiteness is one float32 sum per batch, read once per shard (a NaN or Inf makes the sum
    # non-finite).
    for shard in mine:
        lo = starts[shard]
        chunk, chunk_ids = seqs[lo: lo + per_shard], seq_ids[lo: lo + per_shard]
        positions = np.tile(np.arange(1, n_ctx), len(chunk))
        path = out / f"{split}-{shard:05d}.parquet"
        if planted is not None:
            rows = len(chunk) * (n_ctx - 1)
            acts = {"acts": planted.rows(split, shard, rows, per_shard * (n_ctx - 1))}
            _write_shard(path, np.repeat(chunk_ids, n_ctx - 1), positions, chunk[:, 1:].reshape(-1), acts)
            bar.update(rows)
            continue
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in hooks}
        sums: list[torch.Tensor] = []
        for i in range(0, len(chunk), cfg.batch_size):
            batch = torch.from_numpy(chunk[i: i + cfg.batch_size].astype(np.int64)).to(device)
            got = capture_many(model, batch, hooks.values())
            for name, hook in hooks.items():
                part = got[hook][:, 1:].to(torch.float16)
                parts[name].append(part)
                sums.append(part.sum(dtype=torch.float32))
            bar.update(batch.shape[0] * (n_ctx - 1))
        acts = {name: torch.cat(p).reshape(-1, p[0].shape[-1]).cpu().numpy() for name, p in parts.items()}
        seq_id = np.repeat(chunk_ids, n_ctx - 1)
        if not bool(torch.isfinite(torch.stack(sums).sum())):
            for name, values in acts.items():
                _require_finite(path, name, values, seq_id, positions)
        writers.submit(_write_shard, path, seq_id, positions, chunk[:, 1:].reshape(-1), acts,
                       checked=True)
    bar.close()
    return len(seqs) * (n_ctx - 1)


def run(cfg: ActivationsConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    device = pick_device(cfg.device, "activations")
    model = load_transformer(run_dir / "model", device=device)
    counts = {}
    planted = (PlantedSource.from_config(cfg, int(model.cfg.d_mlp))
               if cfg.source == "planted" else None)
    pre_ln = has_mid_ln(model) and planted is None  # a planted cache has no "before the LN"
    # Validation first, its shards written beside the training split's forward passes rather
    # than after them: on a GPU every shard is one writer's work, and a SoLU model's
    # validation shards (two columns, half the rows) take a forward pass of two hooks. The
    # shards are the same in either order.
    splits = {}
    for split in ("val", "train"):
        seqs = read_sequences(run_dir / "tokens" / f"{split}.parquet")
        ids = np.arange(len(seqs))
        if split == "train" and cfg.max_tokens > 0:
            keep = min(len(seqs), sequence_cap(cfg.max_tokens, seqs.shape[1]))
            ids = np.sort(np.random.default_rng(cfg.seed).permutation(len(seqs))[:keep])
        splits[split] = (seqs[ids], ids)
    # the rate is the forward passes' and the writing's, not the model's or the tokens' loading
    t = time.perf_counter()
    with ShardWriters(writer_threads(device)) as writers:
        for split, (seqs, ids) in splits.items():
            counts[split] = cache_split(model, seqs, ids, out, split, cfg, device,
                                        pre_ln=pre_ln and split == "val", planted=planted,
                                        writers=writers)
        with progress.heartbeat("activations (the last shards being written)"):
            writers.wait()
    caching = time.perf_counter() - t
    seconds = time.perf_counter() - start
    if not distributed.world().is_main:
        return "", {}
    total = counts["train"] + counts["val"]
    caching = max(caching, 1e-9)  # an empty split caches in no time
    what = HOOK_POST if planted is None else (
        f"PLANTED activations ({cfg.planted_features} features, {cfg.planted_families} "
        f"families, basis seed {cfg.planted_basis_seed}; not the model's)")
    if planted is not None:
        planted.write_truth(out / TRUTH_FILE)
    summary = (f"activations: {counts['train']:,} train + {counts['val']:,} validation tokens of "
               f"{what} (float16{', validation also before the LayerNorm' if pre_ln else ''}), "
               f"{total / caching:,.0f} tok/s, {seconds:.0f} s ({caching:.0f} s caching)")
    return summary, {"train_tokens": counts["train"], "val_tokens": counts["val"],
                     "val_pre_ln": pre_ln, "source": cfg.source, "d_mlp": int(model.cfg.d_mlp),
                     "tokens_per_second": round(total / caching, 1), "caching_seconds": round(caching, 2)}
