"""Reading the activation cache: `activations/{train,val}-NNNNN.parquet` (written by the
activations stage; layout in `pipelines/activations/stage.py`).

Two readers over one decoder (`_acts_matrix`), because their callers want opposite orders:
- `ActivationStream`: shuffled batches of single tokens across shards, for SAE training;
- `sequence_batches`: whole sequences in stored order, for the statistics pass, which needs
  each token's sequence id and position (example windows, ablation) and must see the same
  batches on every pass.
Any unreadable shard is an `InputError` naming the file and the stage that rebuilds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipelines.errors import InputError

_REBUILD = "rerun with --force activations"


def shard_paths(folder: Path, split: str) -> list[Path]:
    paths = sorted(folder.glob(f"{split}-*.parquet"))
    if not paths:
        raise InputError(f"{folder}: no {split} activation shards; {_REBUILD}")
    return paths


def count_rows(folder: Path, split: str) -> int:
    """Cached tokens of a split, from the shards' footers (no data read)."""
    total = 0
    for path in shard_paths(folder, split):
        try:
            total += pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
    return total


def acts_width(folder: Path, split: str) -> int:
    """d_mlp of the cached `acts`, from the first shard's schema (no data read)."""
    path = shard_paths(folder, split)[0]
    try:
        return int(pq.read_schema(path).field("acts").type.list_size)
    except (pa.ArrowException, OSError, KeyError, AttributeError) as err:
        raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None


def head_rows(folder: Path, split: str, n: int) -> np.ndarray:
    """The split's first `n` cached rows of `acts` (float32), read from its first shard alone."""
    paths = shard_paths(folder, split)
    if not paths:
        return np.zeros((0, 0), np.float32)
    try:
        first = next(pq.ParquetFile(paths[0]).iter_batches(batch_size=n, columns=["acts"]), None)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{paths[0]}: unreadable activation shard ({err}); {_REBUILD}") from None
    return _acts_matrix(first.column("acts")) if first is not None else np.zeros((0, 0), np.float32)


def sequence_rows(folder: Path, split: str, n_ctx: int) -> np.ndarray:
    """seq_id -> the row of its first cached token in the split's shard order (-1 where a
    sequence is not cached): shards hold whole sequences, `n_ctx - 1` rows each."""
    per_seq = n_ctx - 1
    firsts = []
    for path in shard_paths(folder, split):
        try:
            seq_id = pq.read_table(path, columns=["seq_id"]).column("seq_id").to_numpy()
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
        firsts.append(seq_id[::per_seq].astype(np.int64))
    seq_ids = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    rows = np.full(int(seq_ids.max()) + 1 if seq_ids.size else 0, -1, dtype=np.int64)
    rows[seq_ids] = np.arange(seq_ids.size, dtype=np.int64) * per_seq
    return rows


PRE_LN = "acts_pre_ln"  # the optional second activation column (see pipelines/activations/stage.py)


def has_pre_ln(folder: Path, split: str) -> bool:
    """Every shard of the split holds `acts_pre_ln` (from its footer; no data read)."""
    for path in shard_paths(folder, split):
        try:
            if PRE_LN not in pq.read_schema(path).names:
                return False
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
    return True


def as_float32(a: np.ndarray) -> np.ndarray:
    """float16 rows as float32 through torch's vectorised conversion: numpy converts element
    by element, 5-18x slower (1.07 vs 0.06-0.2 ms for a 1,024 x 512 batch on 2 cores), which
    was ~7% of the tiny preset's SAE stage."""
    if a.dtype != np.float16:
        return a.astype(np.float32, copy=False)
    return torch.from_numpy(np.require(a, requirements="W")).float().numpy()


def _acts_matrix(column: pa.ChunkedArray | pa.Array, dtype=np.float32) -> np.ndarray:
    """The fixed-size-list `acts` column as [rows, d_mlp] (stored float16, cast to `dtype`)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    d = column.type.list_size
    parts = [c.flatten().to_numpy().reshape(-1, d) for c in chunks]
    out = np.concatenate(parts) if parts else np.zeros((0, d), np.float16)
    return out if dtype == np.float16 else as_float32(out).astype(dtype, copy=False)


def read_shard(path: Path, columns=("acts",), acts_dtype=np.float32) -> dict[str, np.ndarray]:
    """Columns of one shard as numpy; `acts` (and `acts_pre_ln`) as [rows, d_mlp] in
    `acts_dtype` (float32 unless a caller wants the stored float16)."""
    try:
        table = pq.read_table(path, columns=list(columns))
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
    return {name: (_acts_matrix(table.column(name), acts_dtype) if name in ("acts", PRE_LN)
                   else table.column(name).to_numpy()) for name in columns}


class ActivationStream:
    """Shuffled float32 batches across shards; memory bounded by `buffer_tokens`, not the cache.

    Shards are visited in a seeded random order; rows enter a buffer, which is shuffled, and
    the first half is emitted while the second half stays to mix with the next shards. The
    buffer stays in the stored float16 (its concatenations and shuffles move half the bytes;
    they were 17% of the tiny preset's SAE training time in float32); each batch is converted
    to float32 as it leaves."""

    def __init__(self, folder: Path, split: str, batch_size: int, buffer_tokens: int, seed: int):
        self.paths = shard_paths(folder, split)
        self.batch_size, self.buffer_tokens, self.seed = batch_size, buffer_tokens, seed

    def epoch(self, epoch: int = 0) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        buffer = np.zeros((0, 0), np.float16)
        for path in (self.paths[i] for i in rng.permutation(len(self.paths))):
            acts = read_shard(path, acts_dtype=np.float16)["acts"]
            buffer = acts if buffer.size == 0 else np.concatenate([buffer, acts])
            if len(buffer) < self.buffer_tokens:
                continue
            # the buffer shuffled, without moving it: each batch gathers its rows, and only
            # the half that stays is copied (once)
            order = rng.permutation(len(buffer))
            emit = (len(buffer) // 2 // self.batch_size) * self.batch_size
            for i in range(0, emit, self.batch_size):
                yield as_float32(buffer[order[i: i + self.batch_size]])
            buffer = buffer[order[emit:]]
        order = rng.permutation(len(buffer))
        for i in range(0, len(buffer) - self.batch_size + 1, self.batch_size):
            yield as_float32(buffer[order[i: i + self.batch_size]])


@dataclass(frozen=True)
class SequenceBatch:
    """Whole sequences of cached activations, in stored order."""

    seq_ids: torch.Tensor  # [S] int64, rows of tokens/<split>.parquet
    x: torch.Tensor  # [S * (n_ctx - 1), d_mlp] float32, positions 1..n_ctx-1 of each sequence
    pre_ln: torch.Tensor | None = None  # the same tokens' `acts_pre_ln`, when asked for

    def acts(self, column: str) -> torch.Tensor:
        """The batch's values of one shard column: `acts` or `acts_pre_ln`."""
        if column == "acts":
            return self.x
        if column == PRE_LN and self.pre_ln is not None:
            return self.pre_ln
        raise ValueError(f"this batch was read without {column!r}")


def sequence_cap(max_tokens: int, n_ctx: int) -> int | None:
    """The whole sequences a token cap allows (at least one), None for 0 (no cap). Every
    stage caps whole sequences of n_ctx - 1 activations (BOS has none) the same way, so two
    stages given the same cap read the same tokens."""
    return max(1, max_tokens // (n_ctx - 1)) if max_tokens > 0 else None


def capped_tokens(available: int, n_ctx: int, max_tokens: int) -> int:
    """How many of `available` tokens a read capped at `max_tokens` covers (0 = no cap)."""
    cap = sequence_cap(max_tokens, n_ctx)
    return available if cap is None else min(available, cap * (n_ctx - 1))


def sequence_batches(act_dir: Path, split: str, n_ctx: int, batch_tokens: int,
                     max_tokens: int, device: str,
                     pre_ln: bool = False) -> Iterator[SequenceBatch]:
    """Whole sequences in shard order, `batch_tokens // (n_ctx-1)` sequences at a time,
    stopping after `max_tokens` tokens (whole sequences; 0 = all); with `pre_ln`, each batch
    also carries `acts_pre_ln`."""
    max_seqs = sequence_cap(max_tokens, n_ctx)
    done = 0
    for path in shard_paths(act_dir, split):
        for batch in shard_batches(path, n_ctx, batch_tokens, device, max_seqs, done, pre_ln):
            done += len(batch.seq_ids)
            yield batch
        if max_seqs is not None and done >= max_seqs:
            return


def rebatched(batches: Iterable[SequenceBatch], n_ctx: int,
              batch_tokens: int) -> Iterator[SequenceBatch]:
    """`batches` cut again to `batch_tokens // (n_ctx-1)` sequences each, across shard
    boundaries: every batch but the last is full, so the batches depend on the sequences
    alone, not on how the activations stage cut them into shards. `sequence_batches` ends a
    batch at each shard's end; a reader that walks two runs' caches in step (universality)
    needs this, since two runs' shards may be cut differently (`activations.shard_tokens`)."""
    size = max(1, batch_tokens // (n_ctx - 1))
    pending: list[SequenceBatch] = []
    held = 0
    for batch in batches:
        if not held and len(batch.seq_ids) == size:
            yield batch  # the common case, a full batch inside one shard: passed through
            continue
        pending.append(batch)
        held += len(batch.seq_ids)
        while held >= size:
            joined = _joined(pending)
            yield _sequences(joined, 0, size, n_ctx)
            rest = held - size
            pending = [_sequences(joined, size, held, n_ctx)] if rest else []
            held = rest
    if held:
        yield _joined(pending)


def _joined(batches: list[SequenceBatch]) -> SequenceBatch:
    if len(batches) == 1:
        return batches[0]
    pre = [b.pre_ln for b in batches]
    return SequenceBatch(torch.cat([b.seq_ids for b in batches]),
                         torch.cat([b.x for b in batches]),
                         None if any(p is None for p in pre) else torch.cat(pre))


def _sequences(batch: SequenceBatch, lo: int, hi: int, n_ctx: int) -> SequenceBatch:
    """Sequences lo..hi of a batch (their rows are (n_ctx - 1) apiece)."""
    per_seq = n_ctx - 1
    rows = slice(lo * per_seq, hi * per_seq)
    return SequenceBatch(batch.seq_ids[lo:hi], batch.x[rows],
                         None if batch.pre_ln is None else batch.pre_ln[rows])


def shard_batches(path: Path, n_ctx: int, batch_tokens: int, device: str,
                  max_seqs: int | None = None, done: int = 0,
                  pre_ln: bool = False) -> Iterator[SequenceBatch]:
    """One shard's part of `sequence_batches`: its whole sequences in stored order, stopping
    once `done` sequences before it plus those read reach `max_seqs` (None = no limit)."""
    per_seq = n_ctx - 1
    seqs_per_batch = max(1, batch_tokens // per_seq)
    try:
        pf = pq.ParquetFile(path)
        pending: list[pa.RecordBatch] = []
        for rb in pf.iter_batches(batch_size=seqs_per_batch * per_seq,
                                  columns=["seq_id", "position", "acts"]
                                  + ([PRE_LN] if pre_ln else [])):
            pending.append(rb)
            rows = sum(b.num_rows for b in pending)
            if rows < seqs_per_batch * per_seq:
                continue
            yield from _whole_sequences(pending, path, per_seq, device, max_seqs, done)
            done += rows // per_seq
            pending = []
            if max_seqs is not None and done >= max_seqs:
                return
        if pending:
            yield from _whole_sequences(pending, path, per_seq, device, max_seqs, done)
    except (OSError, ValueError) as err:  # pyarrow's errors are ValueErrors too
        raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None


def _whole_sequences(pending: list[pa.RecordBatch], path: Path, per_seq: int, device: str,
                     max_seqs: int | None, done: int) -> Iterator[SequenceBatch]:
    seq_id = np.concatenate([b.column("seq_id").to_numpy() for b in pending]).astype(np.int64)
    position = np.concatenate([b.column("position").to_numpy() for b in pending])
    acts = np.concatenate([_acts_matrix(b.column("acts"), np.float16) for b in pending])
    pre = (np.concatenate([_acts_matrix(b.column(PRE_LN), np.float16) for b in pending])
           if PRE_LN in pending[0].schema.names else None)
    if seq_id.size % per_seq or not (
            np.all(seq_id.reshape(-1, per_seq) == seq_id[::per_seq, None])
            and np.all(position.reshape(-1, per_seq) == np.arange(1, per_seq + 1))):
        raise InputError(f"{path}: rows are not whole sequences of positions 1..{per_seq}; "
                         f"{_REBUILD}")
    seq_ids = seq_id[::per_seq]
    if max_seqs is not None:
        keep = max(0, min(len(seq_ids), max_seqs - done))
        seq_ids, acts = seq_ids[:keep], acts[: keep * per_seq]
        pre = pre[: keep * per_seq] if pre is not None else None
    if len(seq_ids):
        # uploaded as stored (half the bytes) and converted where they will be used
        x = torch.from_numpy(acts).to(device).float()
        x_pre = torch.from_numpy(pre).to(device).float() if pre is not None else None
        if not torch.isfinite(x).all() or (x_pre is not None and not torch.isfinite(x_pre).all()):
            raise InputError(f"{path}: activation is NaN or Inf; {_REBUILD}")
        yield SequenceBatch(torch.from_numpy(seq_ids).to(device), x, x_pre)
