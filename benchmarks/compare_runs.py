"""Are two run folders the same, table by table? For refactors that must change nothing.

    python benchmarks/compare_runs.py RUN_A RUN_B

Every Parquet file under either folder (tokens, activations, SAE metrics, the whole store,
the explanations) is compared column by column, NaN equal to NaN (Arrow's own `equals`
calls two tables with a NaN different), list columns element by element; safetensors files
byte by byte. Manifests and logs are left out (they hold times). Prints one line per
difference and a summary; exits 1 when anything differs.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def same_column(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    if a.type != b.type or len(a) != len(b):
        return False
    if len(a) == 0:
        return True
    if a.null_count != b.null_count or not pc.all(pc.equal(a.is_null(), b.is_null())).as_py():
        return False
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) \
            or pa.types.is_fixed_size_list(a.type):
        offsets_a = [len(x) if x is not None else -1 for x in a.to_pylist()] \
            if not pa.types.is_fixed_size_list(a.type) else None
        offsets_b = [len(x) if x is not None else -1 for x in b.to_pylist()] \
            if offsets_a is not None else None
        if offsets_a != offsets_b:
            return False
        return same_column(pa.chunked_array([pc.list_flatten(c) for c in a.chunks], a.type.value_type),
                           pa.chunked_array([pc.list_flatten(c) for c in b.chunks], b.type.value_type))
    if pa.types.is_floating(a.type):
        x, y = a.to_numpy(), b.to_numpy()
        return bool(np.array_equal(x, y, equal_nan=True))
    return a.equals(b)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str]) -> int:
    a, b = Path(argv[1]), Path(argv[2])
    names = {p.relative_to(a) for p in a.rglob("*") if p.suffix in (".parquet", ".safetensors")}
    others = {p.relative_to(b) for p in b.rglob("*") if p.suffix in (".parquet", ".safetensors")}
    differ = [f"only in {a}: {n}" for n in sorted(names - others)]
    differ += [f"only in {b}: {n}" for n in sorted(others - names)]
    same = 0
    for rel in sorted(names & others):
        if rel.suffix == ".safetensors":
            ok = digest(a / rel) == digest(b / rel)
            (differ.append(f"{rel}: bytes differ") if not ok else None)
            same += ok
            continue
        ta, tb = pq.read_table(a / rel), pq.read_table(b / rel)
        if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
            differ.append(f"{rel}: schema or rows differ ({ta.num_rows} vs {tb.num_rows})")
            continue
        cols = [c for c in ta.column_names if not same_column(ta.column(c), tb.column(c))]
        if cols:
            differ.append(f"{rel}: columns differ: {cols}")
        else:
            same += 1
    for line in differ:
        print(line)
    print(f"compare_runs: {same} files identical, {len(differ)} differ ({a} vs {b})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
