"""A study's store: the variants' feature stores by relative path, and the universality tables.

Layout and columns are documented in `feature_store/schema.py` ("A study's store"). The writer
is called by the study-level pipeline stage with plain arrays, the reader by the dashboard;
each variant's own store stays an ordinary `FeatureStore`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import schema
from feature_store.errors import StoreError
from feature_store.store import FeatureStore

_KIND = "study"


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    best = np.asarray(rec["best_corr"], dtype=np.float64)
    ok = np.isfinite(best)
    logit = np.asarray(rec["logit_corr"], dtype=np.float64)
    logit_ok = np.isfinite(logit)
    cosine = np.asarray(rec["decoder_cosine"], dtype=np.float64)
    cosine_ok = np.isfinite(cosine)

    def stat(fn, x):
        return float(fn(x)) if x.size else None

    return {
        "variant": rec["variant"], "other": rec["other"], "dictionary": rec["dictionary"],
        "n_units": int(best.size), "n_compared": int(ok.sum()),
        "median_best_corr": stat(np.median, best[ok]), "mean_best_corr": stat(np.mean, best[ok]),
        "share_above_0_5": stat(np.mean, best[ok] > 0.5) if ok.any() else None,
        "share_above_0_9": stat(np.mean, best[ok] > 0.9) if ok.any() else None,
        "median_logit_corr": stat(np.median, logit[logit_ok]),
        "directions_comparable": bool(rec["directions_comparable"]),
        "same_model": bool(rec["same_model"]),
        "median_decoder_cosine": stat(np.median, cosine[cosine_ok]),
        "n_tokens": int(rec["n_tokens"]),
    }


def write_study_store(out: Path, variants: list[dict[str, str]], records: list[dict[str, Any]],
                      n_tokens: int) -> list[dict[str, Any]]:
    """Write the study store into `out` (a staging folder); return the summary rows.

    `records`: one per (variant, other, dictionary) with per-unit arrays `n_active`,
    `best_match`, `best_corr`, `second_match`, `second_corr`, `logit_corr`, `decoder_cosine`,
    and scalars `directions_comparable`, `same_model`, `n_tokens`."""
    order = {v["name"]: i for i, v in enumerate(variants)}

    def sort_key(rec):
        return (order[rec["variant"]], order[rec["other"]],
                schema.dictionary_order_key(rec["dictionary"], len(rec["best_match"])))

    records = sorted(records, key=sort_key)
    columns: dict[str, list] = {f.name: [] for f in schema.UNIVERSALITY_SCHEMA}
    for rec in records:
        n = len(rec["best_match"])
        columns["variant"].append(np.full(n, rec["variant"], dtype=object))
        columns["other"].append(np.full(n, rec["other"], dtype=object))
        columns["dictionary"].append(np.full(n, rec["dictionary"], dtype=object))
        columns["index"].append(np.arange(n))
        for key in ("n_active", "best_match", "best_corr", "second_match", "second_corr",
                    "logit_corr", "decoder_cosine"):
            columns[key].append(np.asarray(rec[key]))
    arrays = []
    for f in schema.UNIVERSALITY_SCHEMA:
        values = np.concatenate(columns[f.name]) if columns[f.name] else np.array([])
        mask = None
        if pa.types.is_floating(f.type):
            values = values.astype(np.float64)
            mask = ~np.isfinite(values)
        arrays.append(pa.array(values, type=f.type, mask=mask) if values.size
                      else pa.array([], type=f.type))
    table = pa.Table.from_arrays(arrays, schema=schema.UNIVERSALITY_SCHEMA)
    pq.write_table(table, out / schema.UNIVERSALITY)
    summary = [_summary(r) for r in records]
    pq.write_table(pa.Table.from_pylist(summary, schema=schema.UNIVERSALITY_SUMMARY_SCHEMA),
                   out / schema.UNIVERSALITY_SUMMARY)
    manifest = {
        "schema_version": schema.STUDY_SCHEMA_VERSION, "kind": _KIND,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_tokens": int(n_tokens), "variants": variants,
        "tables": {schema.UNIVERSALITY: table.num_rows, schema.UNIVERSALITY_SUMMARY: len(summary)},
    }
    (out / schema.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return summary


def is_study_store(path: str | Path) -> bool:
    """True when `path` (a study folder or its store) holds a study store's manifest."""
    for folder in (Path(path), Path(path) / "store"):
        try:
            data = json.loads((folder / schema.MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == _KIND:
            return True
    return False


def is_current(store_dir: Path) -> bool:
    """True when `store_dir` holds a study store this reader can open (same schema version):
    the study runner rebuilds one written by an older version."""
    try:
        data = json.loads((Path(store_dir) / schema.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema_version") == schema.STUDY_SCHEMA_VERSION


class StudyStore:
    """Read-only access to a study's store; `StudyStore.open(path)` takes the study folder or
    its `store/`. Variant stores open lazily, each as an ordinary `FeatureStore`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self._manifest = manifest
        self._stores: dict[str, FeatureStore] = {}
        self._tables: dict[str, pd.DataFrame] = {}

    @classmethod
    def open(cls, path: str | Path) -> "StudyStore":
        path = Path(path)
        if (path / "store" / schema.MANIFEST).is_file():  # the study folder, not its store
            path = path / "store"
        manifest_path = path / schema.MANIFEST
        hint = "rebuild it with python -m pipelines study --study-dir <the study folder>"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{manifest_path}: unreadable ({err}); {hint}") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != _KIND:
            raise StoreError(f"{manifest_path}: not a study store")
        if manifest.get("schema_version") != schema.STUDY_SCHEMA_VERSION:
            raise StoreError(f"{manifest_path}: study schema {manifest.get('schema_version')}, "
                             f"this reader knows {schema.STUDY_SCHEMA_VERSION}; {hint}")
        for name, rows in manifest.get("tables", {}).items():
            file = path / name
            try:
                meta = pq.read_metadata(file)
            except (OSError, pa.ArrowException) as err:
                raise StoreError(f"{file}: unreadable ({err}); {hint}") from None
            if meta.num_rows != rows:
                raise StoreError(f"{file}: {meta.num_rows} rows, the manifest says {rows}; {hint}")
        return cls(path, manifest)

    def variants(self) -> list[str]:
        return [v["name"] for v in self._manifest["variants"]]

    @property
    def n_tokens(self) -> int:
        return int(self._manifest["n_tokens"])

    def store_path(self, variant: str) -> Path:
        self._check_variant(variant)
        rel = next(v["store"] for v in self._manifest["variants"] if v["name"] == variant)
        return (self.path / rel).resolve()

    def store(self, variant: str) -> FeatureStore:
        """The variant's own feature store (StoreError if it is missing or broken)."""
        if variant not in self._stores:
            self._stores[variant] = FeatureStore.open(self.store_path(variant))
        return self._stores[variant]

    def summary(self) -> pd.DataFrame:
        """universality_summary.parquet as is (see schema.py)."""
        return self._table(schema.UNIVERSALITY_SUMMARY).copy()

    def matches(self, variant: str, other: str, dictionary: str) -> pd.DataFrame:
        """Every unit of `variant`'s `dictionary` with its best match in `other`, by index."""
        self._check_variant(variant)
        self._check_variant(other)
        t = self._table(schema.UNIVERSALITY)
        rows = t[(t["variant"] == variant) & (t["other"] == other) & (t["dictionary"] == dictionary)]
        return rows.drop(columns=["variant", "other", "dictionary"]).reset_index(drop=True)

    def match(self, variant: str, other: str, dictionary: str, index: int) -> dict[str, Any] | None:
        """One unit's row of `matches` as a dict, or None when the pair has no such unit."""
        rows = self.matches(variant, other, dictionary)
        hit = rows[rows["index"] == index]
        return None if hit.empty else hit.iloc[0].to_dict()

    def _table(self, name: str) -> pd.DataFrame:
        if name not in self._tables:
            try:
                self._tables[name] = pq.read_table(self.path / name).to_pandas()
            except (OSError, pa.ArrowException) as err:
                raise StoreError(f"{self.path / name}: unreadable ({err})") from None
        return self._tables[name]

    def _check_variant(self, name: str) -> None:
        if name not in self.variants():
            raise StoreError(f"{self.path}: no variant {name!r}; variants are {self.variants()}")
