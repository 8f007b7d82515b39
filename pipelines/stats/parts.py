"""The statistics pass's parts: one per activation shard, so a part is the same wherever it
is read (this process, or a Ray worker: `pipelines/stats/ray_engine.py`).

`sequence_batches` (`pipelines/activations/shards.py`) reads the whole split and never makes a
batch across two shards; `part_batches` reads one shard with the same rule, so the parts of
`split_parts`, read in order, yield exactly `sequence_batches`' batches (same boundaries, the
same `stats.max_tokens` cut). Same batches mean the same encoder matmuls and the same
per-part sums, which is what lets every engine give the same bits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.activations.shards import (_REBUILD, SequenceBatch, sequence_cap, shard_batches,
                                          shard_paths)
from pipelines.errors import InputError


@dataclass(frozen=True)
class ShardPart:
    """One activation shard and how many of its sequences the pass reads (the cut of
    `stats.max_tokens`; None = all)."""

    index: int  # in shard order
    path: Path
    max_seqs: int | None


def split_parts(act_dir: Path, split: str, n_ctx: int, max_tokens: int) -> list[ShardPart]:
    """The shards of a split in order, each with its share of `max_tokens` (from the
    footers; shards past the cut are left out)."""
    per_seq = n_ctx - 1
    budget = sequence_cap(max_tokens, n_ctx)
    parts, done = [], 0
    for i, path in enumerate(shard_paths(act_dir, split)):
        if budget is not None and done >= budget:
            break
        try:
            rows = pq.read_metadata(path).num_rows
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
        parts.append(ShardPart(i, path, None if budget is None else budget - done))
        done += rows // per_seq
    return parts


def part_batches(part: ShardPart, n_ctx: int, batch_tokens: int, device: str,
                 pre_ln: bool = False) -> Iterator[SequenceBatch]:
    """`sequence_batches` restricted to one shard (its per-shard loop, for one path)."""
    return shard_batches(part.path, n_ctx, batch_tokens, device, part.max_seqs, 0, pre_ln)
