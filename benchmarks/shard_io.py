"""How fast one activation shard crosses Parquet, the bound of the activations stage on a GPU
(the forward passes there are nearly free) and of the SAE stream's reads.

    python benchmarks/shard_io.py [--rows 131064] [--d-mlp 512] [--writers 1,2,4]

Times the stored layout (`fixed_size_list<halffloat>`, as `pipelines/activations/stage.py`
writes it) one shard at a time, the same shards written by a pool of threads (what
`io_threads` gives a machine with cores to spare), and for comparison an opaque
`fixed_size_binary` column of the same bytes. Rates are rows per second of one process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.activations.shards import read_shard  # noqa: E402
from pipelines.activations.stage import _write_shard  # noqa: E402

_PLAIN = dict(use_dictionary=False, write_statistics=False, compression="none", row_group_size=16384)


def shard_columns(rows: int, d_mlp: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.random.default_rng(seed).standard_normal((rows, d_mlp), dtype=np.float32).astype(np.float16)
    positions = np.tile(np.arange(1, 128), rows // 127 + 1)[:rows]
    return values, np.arange(rows) // 127, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1032 * 127)
    parser.add_argument("--d-mlp", type=int, default=512)
    parser.add_argument("--writers", default="1,2,4")
    args = parser.parse_args()
    values, seq_id, position = shard_columns(args.rows, args.d_mlp)
    folder = Path(tempfile.mkdtemp())
    mb = values.nbytes / 1e6
    print(f"one shard: {args.rows:,} rows x {args.d_mlp} float16 ({mb:.0f} MB), {os.cpu_count()} cores")

    t = time.perf_counter()
    _write_shard(folder / "a.parquet", seq_id, position, position, {"acts": values}, checked=True)
    write = time.perf_counter() - t
    t = time.perf_counter()
    back = read_shard(folder / "a.parquet", acts_dtype=np.float16)["acts"]
    read = time.perf_counter() - t
    assert np.array_equal(back, values)
    print(f"fixed_size_list (stored): write {write:.2f} s ({args.rows / write:,.0f} rows/s), "
          f"read {read:.2f} s ({args.rows / read:,.0f} rows/s)")

    for writers in (int(w) for w in args.writers.split(",")):
        n = 2 * writers
        t = time.perf_counter()
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(lambda i: _write_shard(folder / f"w{i}.parquet", seq_id, position, position,
                                                 {"acts": values}, checked=True), range(n)))
        seconds = time.perf_counter() - t
        print(f"  {writers} writer(s): {n} shards in {seconds:.2f} s ({n * args.rows / seconds:,.0f} rows/s)")

    opaque = pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * args.d_mlp), args.rows,
                                                  [None, pa.py_buffer(values.tobytes())])
    t = time.perf_counter()
    pq.write_table(pa.table({"acts": opaque}), folder / "b.parquet", **_PLAIN)
    write = time.perf_counter() - t
    t = time.perf_counter()
    pq.read_table(folder / "b.parquet")
    read = time.perf_counter() - t
    print(f"fixed_size_binary (not used: opaque to DuckDB and pandas): write {write:.2f} s, read {read:.2f} s")


if __name__ == "__main__":
    main()
