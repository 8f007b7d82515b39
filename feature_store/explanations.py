"""The explanations table: writing it (the interp stage) and reading it (the store's API).

Layout and columns: `schema.py`, section "Explanations". The table lives in
`store/explanations/`, a folder the interp stage stages and renames into place on its own,
after the stats stage built the rest of the store; so a store may have none (every reader
here returns None then), and its own `_manifest.json` carries a version and row counts that
the reader checks, as the store's manifest does for the other tables.

Also here: `example_windows`, the bulk read of one dictionary's examples table that the
interp stage scores against (the held-out windows the feature page shows), because
`FeatureStore.feature()` reads one feature at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import schema
from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import ExplanationRecord

FLOAT_COLUMNS = [f.name for f in schema.EXPLANATIONS_SCHEMA if pa.types.is_floating(f.type)]
_INT_COLUMNS = [f.name for f in schema.EXPLANATIONS_SCHEMA if pa.types.is_integer(f.type)]
_HINT = "rerun the interp stage (python -m pipelines run --run-dir <run> --force interp)"


def folder(store: Path) -> Path:
    return Path(store) / schema.EXPLANATIONS


# -- writing ----------------------------------------------------------------------------------

def write_explanations(out: Path, columns: dict[str, dict[str, Any]], info: dict[str, Any]
                       ) -> dict[str, Any]:
    """Write one partition per dictionary (`columns[dictionary][column] = values`) and the
    manifest into `out` (the stage's staging folder); return the manifest written.

    Per-dictionary medians of every score and control are computed here, once, so the
    overview reads a few numbers instead of every row."""
    out.mkdir(parents=True, exist_ok=True)
    tables, dictionaries = {}, {}
    for name, cols in columns.items():
        if not schema.DICTIONARY_NAME.fullmatch(name):
            raise ValueError(f"bad dictionary name {name!r}")
        table = pa.Table.from_pydict({f.name: cols[f.name] for f in schema.EXPLANATIONS_SCHEMA},
                                     schema=schema.EXPLANATIONS_SCHEMA)
        index = table.column("index").to_numpy()
        if not np.array_equal(index, np.arange(table.num_rows)):
            raise ValueError(f"{name}: explanation rows must be units 0..n-1 in order")
        rel = schema.partition_path(schema.EXPLANATIONS, name).split("/", 1)[1]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / rel)
        tables[rel] = table.num_rows
        dictionaries[name] = summarise(cols)
    manifest = {"version": schema.EXPLANATIONS_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **info, "dictionaries": dictionaries, "tables": tables}
    (out / schema.EXPLANATIONS_MANIFEST).write_text(
        json.dumps(manifest, indent=2, default=_plain) + "\n", encoding="utf-8")
    return manifest


def summarise(cols: dict[str, Any]) -> dict[str, Any]:
    """Medians (over units where a score is defined) of every score and every control."""
    def median(column: str) -> float | None:
        v = np.asarray(cols[column], dtype=np.float64)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else None

    def count(column: str) -> int:
        return int(np.isfinite(np.asarray(cols[column], dtype=np.float64)).sum())

    return {"n_units": int(len(cols["index"])),
            "n_scored": count("sim_top_random"),
            "medians": {s: median(s) for s in schema.EXPLANATION_SCORES},
            "counts": {s: count(s) for s in schema.EXPLANATION_SCORES},
            "controls": {c: {s: median(col) for s, col in m.items()}
                         for c, m in schema.EXPLANATION_CONTROLS.items()}}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


# -- reading ----------------------------------------------------------------------------------

def read_manifest(store: Path) -> dict[str, Any] | None:
    """The explanations manifest, or None when the interp stage has not run on this store."""
    path = folder(store) / schema.EXPLANATIONS_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path}: unreadable ({err}); {_HINT}") from None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if version != schema.EXPLANATIONS_VERSION:
        raise StoreError(f"{path}: explanations version {version}, this reader knows "
                         f"{schema.EXPLANATIONS_VERSION}; {_HINT}")
    if not isinstance(manifest.get("tables"), dict) or not isinstance(
            manifest.get("dictionaries"), dict):
        raise StoreError(f"{path}: no tables or dictionaries listed; {_HINT}")
    return manifest


def read_table(store: Path, manifest: dict[str, Any], dictionary: str) -> pd.DataFrame | None:
    """One dictionary's explanations, one row per unit (None when it has none), checked
    against the schema and the manifest's row count."""
    rel = schema.partition_path(schema.EXPLANATIONS, dictionary).split("/", 1)[1]
    if rel not in manifest["tables"]:
        return None
    path = folder(store) / rel
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: unreadable ({err}); {_HINT}") from None
    for want in schema.EXPLANATIONS_SCHEMA:
        if want.name not in table.column_names or not table.schema.field(
                want.name).type.equals(want.type):
            raise StoreError(f"{path}: column {want.name} missing or not {want.type}; {_HINT}")
    if table.num_rows != manifest["tables"][rel]:
        raise StoreError(f"{path}: {table.num_rows} rows, the manifest says "
                         f"{manifest['tables'][rel]}; {_HINT}")
    return table.select(schema.EXPLANATIONS_SCHEMA.names).to_pandas()


def record(frame: pd.DataFrame, dictionary: str, index: int) -> ExplanationRecord:
    if not 0 <= index < len(frame):
        raise FeatureNotFound(f"{dictionary} has no explanation for unit {index}")
    row = frame.iloc[index]
    return ExplanationRecord(
        dictionary=dictionary, index=int(row["index"]), explainer=str(row["explainer"]),
        explanation=str(row["explanation"]),
        scores=tuple((s, float(row[s])) for s in schema.EXPLANATION_SCORES),
        controls=tuple((c, s, float(row[col])) for c, m in schema.EXPLANATION_CONTROLS.items()
                       for s, col in m.items()),
        single_token=str(row["single_token"]),
        counts=tuple((c, int(row[c])) for c in schema.EXPLANATION_COUNTS))


# -- the held-out windows the interp stage scores against -------------------------------------

@dataclass(frozen=True)
class ExampleWindows:
    """One dictionary's examples table as arrays (rows sorted by feature, kind, rank); windows
    padded to one width with token −1 / activation 0."""

    feature: np.ndarray  # [m] int32
    kind: np.ndarray  # [m] int8: KIND_TOP or the interval
    rank: np.ndarray  # [m] int16
    seq_id: np.ndarray  # [m] int64
    position: np.ndarray  # [m] int32
    center: np.ndarray  # [m] int16
    token_ids: np.ndarray  # [m, w] int32
    acts: np.ndarray  # [m, w] float32


def example_windows(store: Path, dictionary: str) -> ExampleWindows:
    path = Path(store) / schema.partition_path(schema.EXAMPLES, dictionary)
    try:
        table = pq.read_table(path, columns=["feature", "kind", "rank", "seq_id", "position",
                                             "center", "token_ids", "acts"])
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{path}: unreadable ({err}); rebuild the store (--force stats)") from None
    return ExampleWindows(
        *(table.column(c).to_numpy() for c in ("feature", "kind", "rank", "seq_id", "position",
                                               "center")),
        token_ids=_padded(table.column("token_ids"), -1, np.int32),
        acts=_padded(table.column("acts"), 0.0, np.float32))


def _padded(column: pa.ChunkedArray, fill: Any, dtype) -> np.ndarray:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    widths = np.diff(offsets)
    n = widths.size
    w = int(widths.max()) if n else 0
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(
        zero_copy_only=False)
    out = np.full((n, w), fill, dtype)
    if n and np.all(widths == w):
        return values.reshape(n, w).astype(dtype, copy=False)
    rows = np.repeat(np.arange(n), widths)
    cols = np.arange(values.size) - np.repeat(offsets[:-1] - offsets[0], widths)
    out[rows, cols] = values
    return out
