"""Re-cutting a run's activation shards: the same sequences in the same order, cut into
shards of other sizes (what another `activations.shard_tokens` would have written), for the
readers that must not depend on where a shard ends."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.activations.shards import shard_paths


def recut(run_dir: Path, cuts: tuple[float, ...], n_ctx: int, split: str = "val") -> int:
    """Rewrite the split's shards as len(cuts) + 1 shards of whole sequences, cut at those
    fractions of the sequences; returns their count."""
    paths = shard_paths(run_dir / "activations", split)
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    for p in paths:
        p.unlink()
    n_seq = table.num_rows // (n_ctx - 1)
    bounds = [0, *(int(n_seq * c) for c in cuts), n_seq]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        part = table.slice(lo * (n_ctx - 1), (hi - lo) * (n_ctx - 1))
        pq.write_table(part, run_dir / "activations" / f"{split}-{i:05d}.parquet")
    return len(bounds) - 1
