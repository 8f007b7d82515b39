"""StoreWriter: the only code that writes a feature store (layout in `schema.py`).

The stats stage computes every statistic as numpy arrays over all features of a dictionary at
once, so every `add_*` method takes whole arrays (one row per feature, or columnar arrays for
all examples) and never needs one Python call per feature. Everything goes into
`<store>.incomplete/` and is renamed into place by `close()` (or leaving the `with` block
normally): nothing half-written ever looks like a store, and on an exception the temporary
folder is removed. A store that already exists at the path is replaced only on success.

What the writer derives itself, so every caller gets it the same way: density and density
class (from n_active and n_tokens), mean activation (from the sum), the text columns for
search (`top_tokens`, `top_logits`), families (connected components of the split edges),
the per-dictionary log10 density histogram and the dead / ultralow / dense counts of the
metrics when the caller does not give them, and the density column of the UMAP table.

Shapes below: n = the dictionary's n_features, m = number of example rows, w = window width.
Padding: an index or token id of -1 means "no entry" (fewer neighbours than k, a window cut
off by the start of the sequence); the writer drops those entries.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import families, schema
from feature_store.records import N_INTERVALS, NEURONS

_TOP_TEXT_ITEMS = 5  # tokens shown in the `top_tokens` / `top_logits` browsing columns

@dataclass
class _PendingDictionary:
    """What the writer holds for one dictionary until close(): per-feature rows, not examples."""

    name: str
    kind: str
    n_features: int
    info: dict[str, Any]
    summary: dict[str, np.ndarray] | None = None
    act_hist_edges: np.ndarray | None = None
    interval_counts: np.ndarray | None = None
    examples: pq.ParquetWriter | None = None
    example_counts: np.ndarray | None = None
    example_rows: int = 0
    last_example_feature: int = -1
    top_centres: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    logits_written: bool = False
    logit_rows: int = 0
    top_logit_ids: np.ndarray | None = None
    logit_hist_edges: np.ndarray | None = None
    logit_hist_counts: np.ndarray | None = None
    neighbour_parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    neighbour_keys: set[tuple[str, str]] = field(default_factory=set)
    max_token_id: int = -1


class StoreWriter:
    """Stage a feature store in `<path>.incomplete/`; `close()` renames it to `path`.

    Order of calls: `add_dictionary` for every dictionary first (other dictionaries must be
    declared before counterparts or split edges name them), then the `add_*` methods in any
    order, `set_vocab` any time before `close()`. Required per dictionary:
    `add_feature_summary` and `add_interval_counts`; everything else is optional and reads
    back empty when absent. `add_examples` may be called several times per dictionary, each
    call covering features above those of the previous call (so a caller can stream chunks);
    every other method once per dictionary (or per dictionary pair).
    """

    def __init__(self, path: str | Path, *, n_tokens: int,
                 run_info: Mapping[str, Any] | None = None) -> None:
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be positive, got {n_tokens}")
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".incomplete")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        self._n_tokens = int(n_tokens)
        self._run_info: dict[str, Any] = dict(run_info or {})
        self._dicts: dict[str, _PendingDictionary] = {}
        self._vocab: list[str] | None = None
        self._splits: list[dict[str, np.ndarray]] = []
        self._umap: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._metrics: dict[str, dict[str, Any]] = {}
        self._density_hists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._done = False

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- declarations --------------------------------------------------------------------------

    def add_dictionary(self, name: str, n_features: int, *, kind: str | None = None,
                       **info: Any) -> None:
        """Declare a dictionary. `kind` defaults to the name's (`schema.dictionary_kind`:
        "neurons" for `neurons` and `neurons_pre_ln`, else "sae");
        `info` (e.g. recipe, d_in, l1_coefficient) goes into the manifest as is (JSON-able)."""
        self._check_open()
        if not schema.DICTIONARY_NAME.fullmatch(name):
            raise ValueError(f"dictionary name {name!r} must match {schema.DICTIONARY_NAME.pattern}")
        if name in self._dicts:
            raise ValueError(f"dictionary {name!r} declared twice")
        kind = kind or schema.dictionary_kind(name)
        if kind not in schema.DICTIONARY_KINDS:
            raise ValueError(f"{name}: kind must be one of {schema.DICTIONARY_KINDS}, got {kind!r}")
        if n_features < 1:
            raise ValueError(f"{name}: n_features must be positive, got {n_features}")
        reserved = {"name", "kind", "n_features", "act_hist_edges"} & info.keys()
        if reserved:
            raise ValueError(f"{name}: info may not set {sorted(reserved)}")
        json.dumps(info)  # fail now, not at close(), on something the manifest cannot hold
        self._dicts[name] = _PendingDictionary(name, kind, int(n_features), dict(info))

    def set_vocab(self, display: Sequence[str]) -> None:
        """The display form of every token id, in id order."""
        self._check_open()
        self._vocab = [str(s) for s in display]
        if not self._vocab:
            raise ValueError("vocab is empty")

    def update_run_info(self, **info: Any) -> None:
        """Free-form run facts for the manifest (act_fn, n_params, val_loss, ...)."""
        self._check_open()
        json.dumps(info)
        self._run_info.update(info)

    # -- per-feature data ----------------------------------------------------------------------

    def add_feature_summary(self, dictionary: str, *, n_active: np.ndarray, max_act: np.ndarray,
                            act_hist_edges: np.ndarray, act_hist_counts: np.ndarray,
                            sum_act: np.ndarray | None = None, mean_act: np.ndarray | None = None,
                            density_class: np.ndarray | None = None) -> None:
        """Per-feature activation summary over the n_tokens tokens: n_active (n,), max_act (n,),
        sum_act or mean_act (n,) over active tokens, and the activation histogram: shared
        log10-spaced edges (b+1,) with counts (n, b). density_class (n,) defaults to
        `schema.density_classes(n_active / n_tokens)`."""
        d = self._dictionary(dictionary)
        if d.summary is not None:
            raise ValueError(f"{dictionary}: feature summary added twice")
        n = d.n_features
        n_active = _vector(n_active, n, np.int64, f"{dictionary}: n_active")
        max_act = _vector(max_act, n, np.float32, f"{dictionary}: max_act")
        if (sum_act is None) == (mean_act is None):
            raise ValueError(f"{dictionary}: give exactly one of sum_act and mean_act")
        if mean_act is None:
            sums = _vector(sum_act, n, np.float64, f"{dictionary}: sum_act")
            mean_act = np.divide(sums, n_active, out=np.zeros(n), where=n_active > 0)
        mean_act = _vector(mean_act, n, np.float32, f"{dictionary}: mean_act")
        edges = np.asarray(act_hist_edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"{dictionary}: act_hist_edges must be increasing, shape (b+1,)")
        counts = _matrix(act_hist_counts, (n, edges.size - 1), np.int64,
                         f"{dictionary}: act_hist_counts")
        if np.any(n_active < 0) or np.any(n_active > self._n_tokens):
            raise ValueError(f"{dictionary}: n_active outside [0, n_tokens={self._n_tokens}]")
        density = n_active / self._n_tokens
        if density_class is None:
            density_class = schema.density_classes(density)
        density_class = np.asarray(density_class, dtype=object)
        classes = schema.DENSITY_CLASSES
        if density_class.shape != (n,) or not set(density_class) <= set(classes):
            raise ValueError(f"{dictionary}: density_class must be (n,) of {classes}")
        d.summary = {"n_active": n_active, "density": density, "mean_act": mean_act,
                     "max_act": max_act, "density_class": density_class,
                     "act_hist_counts": counts}
        d.act_hist_edges = edges

    def add_interval_counts(self, dictionary: str, counts: np.ndarray) -> None:
        """Active activations in each of the 11 equal-width intervals over (0, max_act]: (n, 11)."""
        d = self._dictionary(dictionary)
        if d.interval_counts is not None:
            raise ValueError(f"{dictionary}: interval counts added twice")
        d.interval_counts = _matrix(counts, (d.n_features, N_INTERVALS), np.int64,
                                    f"{dictionary}: interval counts")

    def add_examples(self, dictionary: str, *, feature: np.ndarray, kind: np.ndarray,
                     rank: np.ndarray, seq_id: np.ndarray, position: np.ndarray,
                     center: np.ndarray, act: np.ndarray, token_ids: np.ndarray,
                     acts: np.ndarray, ablation: np.ndarray) -> None:
        """Example windows as columns, m rows in any order: feature, kind (KIND_TOP = -1 or
        "top" for top-k, 0..10 for an interval sample), rank, seq_id, position, center, act,
        all (m,); token_ids, acts, ablation (m, w), token id -1 marking padding. `center`
        indexes the padded row; the writer drops padding and shifts it. Several calls per
        dictionary are fine when each covers features above those of the previous one."""
        d = self._dictionary(dictionary)
        what = f"{dictionary}: examples"
        feature = np.asarray(feature)
        m = feature.shape[0] if feature.ndim == 1 else -1
        if m < 0:
            raise ValueError(f"{what}: feature must be 1-D")
        feature = _vector(feature, m, np.int64, f"{what} feature")
        kind = _vector(_kind_codes(kind), m, np.int64, f"{what} kind")
        rank = _vector(rank, m, np.int64, f"{what} rank")
        seq_id = _vector(seq_id, m, np.int64, f"{what} seq_id")
        position = _vector(position, m, np.int64, f"{what} position")
        center = _vector(center, m, np.int64, f"{what} center")
        act = _vector(act, m, np.float32, f"{what} act")
        token_ids = np.asarray(token_ids)
        if token_ids.ndim != 2 or token_ids.shape[0] != m:
            raise ValueError(f"{what} token_ids must have shape (m={m}, w), got {token_ids.shape}")
        w = token_ids.shape[1]
        token_ids = _matrix(token_ids, (m, w), np.int64, f"{what} token_ids")
        acts = _matrix(acts, (m, w), np.float32, f"{what} acts")
        ablation = _matrix(ablation, (m, w), np.float32, f"{what} ablation", allow_nan=True)
        if m == 0:
            return
        _check_range(feature, 0, d.n_features, f"{what} feature")
        _check_range(kind, schema.KIND_TOP, N_INTERVALS, f"{what} kind")
        _check_range(rank, 0, 2**15, f"{what} rank")
        _check_range(center, 0, w, f"{what} center")
        if feature.min() <= d.last_example_feature:
            raise ValueError(f"{what}: feature {feature.min()} after feature "
                             f"{d.last_example_feature}; each call must cover higher features")
        rows = np.arange(m)
        keep = token_ids >= 0
        if not keep[rows, center].all():
            raise ValueError(f"{what}: the centre token of a window is padding")
        centre_ids = token_ids[rows, center]
        center = center - np.cumsum(~keep, axis=1)[rows, center]
        d.max_token_id = max(d.max_token_id, int(token_ids.max()))

        order = np.lexsort((rank, kind, feature))
        if not np.array_equal(order, rows):
            feature, kind, rank, seq_id, position, center, act, centre_ids = (
                a[order] for a in (feature, kind, rank, seq_id, position, center, act, centre_ids))
            token_ids, acts, ablation, keep = (a[order] for a in (token_ids, acts, ablation, keep))
        key = np.stack([feature, kind, rank])
        if np.any(np.all(key[:, 1:] == key[:, :-1], axis=0)):
            raise ValueError(f"{what}: duplicate (feature, kind, rank)")

        lengths = keep.sum(axis=1)
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError(f"{what}: over 2**31 window tokens in one call; split it by feature")
        offsets_arr = pa.array(offsets.astype(np.int32))
        dense = bool(keep.all())

        def ragged(values: np.ndarray, dtype) -> pa.Array:
            flat = values.ravel() if dense else values[keep]
            return pa.ListArray.from_arrays(offsets_arr, pa.array(flat.astype(dtype, copy=False)))

        table = pa.table({
            "feature": pa.array(feature.astype(np.int32)), "kind": pa.array(kind.astype(np.int8)),
            "rank": pa.array(rank.astype(np.int16)), "seq_id": pa.array(seq_id),
            "position": pa.array(position.astype(np.int32)),
            "center": pa.array(center.astype(np.int16)), "act": pa.array(act),
            "token_ids": ragged(token_ids, np.int32), "acts": ragged(acts, np.float32),
            "ablation": ragged(ablation, np.float32),
        }).cast(schema.EXAMPLES_SCHEMA)

        if d.examples is None:
            d.examples = pq.ParquetWriter(
                self._partition(schema.EXAMPLES, dictionary), schema.EXAMPLES_SCHEMA,
                write_statistics=["feature"],  # lets DuckDB skip row groups by feature
                # Dictionary-encoding float windows never pays off and costs a third of
                # the write time; the small-integer columns keep it.
                use_dictionary=["feature", "kind", "rank", "center"])
            d.example_counts = np.zeros(d.n_features, dtype=np.int64)
        group = feature // schema.EXAMPLE_FEATURES_PER_ROW_GROUP
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(group)) + 1, [m]])
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            d.examples.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
        d.example_counts += np.bincount(feature, minlength=d.n_features)
        d.example_rows += m
        d.last_example_feature = int(feature.max())
        top = (kind == schema.KIND_TOP) & (rank < 2 * _TOP_TEXT_ITEMS)
        d.top_centres.append((feature[top], centre_ids[top]))

    def add_logits(self, dictionary: str, *, top_ids: np.ndarray, top_values: np.ndarray,
                   bottom_ids: np.ndarray, bottom_values: np.ndarray,
                   hist_edges: np.ndarray, hist_counts: np.ndarray) -> None:
        """Logit weights d_i·W_out·W_U: top (n, k) ids and values largest first, bottom (n, k')
        most negative first (id -1 = none), and a histogram of all d_vocab weights per
        feature: edges (b+1,) shared or (n, b+1) per feature, counts (n, b)."""
        d = self._dictionary(dictionary)
        if d.logits_written:
            raise ValueError(f"{dictionary}: logits added twice")
        n = d.n_features
        what = f"{dictionary}: logits"
        top_ids = np.asarray(top_ids)
        bottom_ids = np.asarray(bottom_ids)
        if top_ids.ndim != 2 or bottom_ids.ndim != 2:
            raise ValueError(f"{what}: top_ids and bottom_ids must be (n, k)")
        top_ids = _matrix(top_ids, (n, top_ids.shape[1]), np.int64, f"{what} top_ids")
        bottom_ids = _matrix(bottom_ids, (n, bottom_ids.shape[1]), np.int64, f"{what} bottom_ids")
        top_values = _matrix(top_values, top_ids.shape, np.float32, f"{what} top_values")
        bottom_values = _matrix(bottom_values, bottom_ids.shape, np.float32,
                                f"{what} bottom_values")
        hist_counts = np.asarray(hist_counts)
        if hist_counts.ndim != 2:
            raise ValueError(f"{what}: hist_counts must be (n, b)")
        b = hist_counts.shape[1]
        hist_counts = _matrix(hist_counts, (n, b), np.int64, f"{what} hist_counts")
        edges = np.asarray(hist_edges, dtype=np.float32)
        if edges.ndim == 1:
            edges = np.broadcast_to(edges, (n, edges.size))
        edges = _matrix(edges, (n, b + 1), np.float32, f"{what} hist_edges")

        ids = np.concatenate([top_ids, bottom_ids], axis=1)
        values = np.concatenate([top_values, bottom_values], axis=1)
        top, bottom = schema.LOGIT_SIDES.index("top"), schema.LOGIT_SIDES.index("bottom")
        side = np.concatenate([np.full(top_ids.shape[1], top, np.int64),
                               np.full(bottom_ids.shape[1], bottom, np.int64)])
        rank = np.concatenate([np.arange(top_ids.shape[1]), np.arange(bottom_ids.shape[1])])
        keep = ids >= 0
        feature = np.broadcast_to(np.arange(n)[:, None], ids.shape)[keep]
        table = pa.table({
            "feature": pa.array(feature.astype(np.int32)),
            "side": pa.DictionaryArray.from_arrays(
                pa.array(np.broadcast_to(side, ids.shape)[keep].astype(np.int32)),
                pa.array(schema.LOGIT_SIDES)).cast(pa.string()),
            "rank": pa.array(np.broadcast_to(rank, ids.shape)[keep].astype(np.int16)),
            "token_id": pa.array(ids[keep].astype(np.int32)),
            "value": pa.array(values[keep]),
        }, schema=schema.LOGITS_SCHEMA)
        pq.write_table(table, self._partition(schema.LOGITS, dictionary))
        d.logits_written = True
        d.logit_rows = table.num_rows
        if ids.size:
            d.max_token_id = max(d.max_token_id, int(ids.max()))
        d.top_logit_ids = top_ids[:, :_TOP_TEXT_ITEMS]
        d.logit_hist_edges = edges
        d.logit_hist_counts = hist_counts

    def add_aligned_neurons(self, dictionary: str, index: np.ndarray, cosine: np.ndarray) -> None:
        """Neurons (W_out rows) with the largest |cosine| to each feature's decoder direction,
        largest first: index and cosine (n, k), -1 = none."""
        self._add_neighbours(dictionary, "aligned_neuron", NEURONS, index, cosine)

    def add_neighbours(self, dictionary: str, index: np.ndarray, cosine: np.ndarray) -> None:
        """Nearest features of the same dictionary by decoder cosine, self excluded, nearest
        first: index and cosine (n, k), -1 = none."""
        self._add_neighbours(dictionary, "neighbour", dictionary, index, cosine)

    def add_counterparts(self, dictionary: str, other: str, index: np.ndarray,
                         cosine: np.ndarray) -> None:
        """Nearest features of dictionary `other` by decoder cosine: (n, k), -1 = none."""
        if other == dictionary:
            raise ValueError(f"{dictionary}: counterparts must come from another dictionary")
        self._add_neighbours(dictionary, "counterpart", other, index, cosine)

    # -- cross-dictionary data -----------------------------------------------------------------

    def add_split_edges(self, dictionary_a: str, index_a: np.ndarray, dictionary_b: str,
                        index_b: np.ndarray, masked_cosine: np.ndarray,
                        decoder_cosine: np.ndarray, containment: np.ndarray) -> None:
        """Feature-splitting edges between two dictionaries, all arrays (e,); the measures as
        in the schema (the child is the larger dictionary's feature). Families are the
        connected components of all edges, computed at close()."""
        a, b = self._dictionary(dictionary_a), self._dictionary(dictionary_b)
        index_a = np.asarray(index_a)
        e = index_a.shape[0] if index_a.ndim == 1 else -1
        what = f"split edges {dictionary_a}-{dictionary_b}"
        if e < 0:
            raise ValueError(f"{what}: index_a must be 1-D")
        part = {"index_a": _vector(index_a, e, np.int64, f"{what} index_a"),
                "index_b": _vector(index_b, e, np.int64, f"{what} index_b"),
                "masked_cosine": _vector(masked_cosine, e, np.float32, f"{what} masked_cosine"),
                "decoder_cosine": _vector(decoder_cosine, e, np.float32, f"{what} decoder_cosine"),
                "containment": _vector(containment, e, np.float32, f"{what} containment")}
        _check_range(part["index_a"], 0, a.n_features, f"{what} index_a")
        _check_range(part["index_b"], 0, b.n_features, f"{what} index_b")
        if a.n_features > b.n_features:  # a is the smaller dictionary, by the schema
            a, b = b, a
            part["index_a"], part["index_b"] = part["index_b"], part["index_a"]
        part["dictionary_a"], part["dictionary_b"] = a.name, b.name
        self._splits.append(part)

    def add_umap(self, dictionary: str, x: np.ndarray, y: np.ndarray,
                 index: np.ndarray | None = None) -> None:
        """2-D coordinates of the joint UMAP: x, y (n,) or, for a subset, (e,) with index (e,)."""
        d = self._dictionary(dictionary)
        if dictionary in self._umap:
            raise ValueError(f"{dictionary}: umap added twice")
        index = np.arange(d.n_features) if index is None else np.asarray(index)
        e = index.shape[0]
        index = _vector(index, e, np.int64, f"{dictionary}: umap index")
        _check_range(index, 0, d.n_features, f"{dictionary}: umap index")
        self._umap[dictionary] = (index, _vector(x, e, np.float32, f"{dictionary}: umap x"),
                                  _vector(y, e, np.float32, f"{dictionary}: umap y"))

    def add_metrics(self, dictionary: str, values: Mapping[str, Any] | None = None,
                    **more: Any) -> None:
        """One metrics row (l0, mse, fvu, ce_loss_recovered, ..., any extra columns). Left
        out: n_features (declared), dead_fraction / dead_eval_tokens / n_ultralow / n_dense
        (derived from the summary over n_tokens); others read back as null."""
        self._dictionary(dictionary)
        row = {**(values or {}), **more}
        if {"dictionary", "n_features"} & row.keys():
            raise ValueError(f"{dictionary}: metrics may not set dictionary or n_features")
        self._metrics.setdefault(dictionary, {}).update(
            {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})

    def add_density_histogram(self, dictionary: str, edges: np.ndarray,
                              counts: np.ndarray) -> None:
        """log10 feature-density histogram: edges (b+1,) in log10 density, counts (b,). Left
        out, close() bins the summary's densities itself."""
        self._dictionary(dictionary)
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2:
            raise ValueError(f"{dictionary}: density histogram edges must be (b+1,)")
        self._density_hists[dictionary] = (
            edges, _vector(counts, edges.size - 1, np.int64, f"{dictionary}: density counts"))

    # -- finishing -----------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop everything written so far."""
        for d in self._dicts.values():
            if d.examples is not None:
                try:
                    d.examples.close()
                except Exception:  # noqa: BLE001 - cleaning up after another error
                    pass
                d.examples = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def close(self) -> Path:
        """Write the remaining tables and the manifest, then move the store into place."""
        self._check_open()
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._done = True
        old = self.path.with_name(self.path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def _finish(self) -> None:
        if not self._dicts:
            raise ValueError("no dictionary added")
        if self._vocab is None:
            raise ValueError("set_vocab was never called")
        vocab = np.asarray(self._vocab, dtype=object)
        order = self._ordered_names()
        tables: dict[str, int] = {}
        for name in order:
            d = self._dicts[name]
            if d.summary is None or d.interval_counts is None:
                raise ValueError(f"{name}: add_feature_summary and add_interval_counts are "
                                 "required for every dictionary")
            if d.max_token_id >= len(vocab):
                raise ValueError(f"{name}: token id {d.max_token_id} outside the vocab "
                                 f"({len(vocab)} tokens)")
            tables.update(self._finish_dictionary(d, vocab, order))
        tables[schema.VOCAB] = self._write(schema.VOCAB, pa.table(
            {"token_id": pa.array(np.arange(len(vocab), dtype=np.int32)),
             "display": pa.array(self._vocab, pa.string())}, schema=schema.VOCAB_SCHEMA))
        tables.update(self._finish_splits(order))
        tables[schema.UMAP] = self._write(schema.UMAP, self._umap_table(order))
        metrics = self._metrics_table(order)
        tables[schema.METRICS] = self._write(schema.METRICS, metrics)
        tables[schema.DENSITY_HISTOGRAMS] = self._write(schema.DENSITY_HISTOGRAMS,
                                                        self._density_table(order))
        run = dict(self._run_info)
        run["metrics"] = {row["dictionary"]: row for row in _json_rows(metrics)}
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_tokens": self._n_tokens,
            "dictionaries": [{"name": n, "kind": self._dicts[n].kind,
                              "n_features": self._dicts[n].n_features,
                              "act_hist_edges": self._dicts[n].act_hist_edges.tolist(),
                              **self._dicts[n].info} for n in order],
            "run": run,
            "tables": tables,
        }
        text = json.dumps(manifest, indent=1, allow_nan=False)
        with open(self._tmp / schema.MANIFEST, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _finish_dictionary(self, d: _PendingDictionary, vocab: np.ndarray,
                           order: list[str]) -> dict[str, int]:
        n = d.n_features
        tables: dict[str, int] = {}
        ex_path = schema.partition_path(schema.EXAMPLES, d.name)
        if d.examples is None:
            pq.write_table(schema.EXAMPLES_SCHEMA.empty_table(),
                           self._partition(schema.EXAMPLES, d.name))
            d.example_counts = np.zeros(n, dtype=np.int64)
        else:
            d.examples.close()
            d.examples = None
        tables[ex_path] = d.example_rows
        lg_path = schema.partition_path(schema.LOGITS, d.name)
        if not d.logits_written:
            pq.write_table(schema.LOGITS_SCHEMA.empty_table(),
                           self._partition(schema.LOGITS, d.name))
        tables[lg_path] = d.logit_rows
        tables[schema.partition_path(schema.NEIGHBOURS, d.name)] = self._write_neighbours(d, order)

        s = d.summary
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(d.example_counts[:-1], out=offsets[1:])
        if d.logit_hist_counts is None:
            logit_edges, logit_counts = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        else:
            logit_edges, logit_counts = d.logit_hist_edges, d.logit_hist_counts
        table = pa.table({
            "index": pa.array(np.arange(n, dtype=np.int32)),
            "n_active": pa.array(s["n_active"]), "density": pa.array(s["density"]),
            "mean_act": pa.array(s["mean_act"]), "max_act": pa.array(s["max_act"]),
            "density_class": pa.array(s["density_class"], pa.string()),
            "act_hist_counts": _fixed_lists(s["act_hist_counts"]),
            "interval_counts": _fixed_lists(d.interval_counts),
            "logit_hist_edges": _fixed_lists(logit_edges),
            "logit_hist_counts": _fixed_lists(logit_counts),
            "top_tokens": pa.array(self._top_tokens_text(d, vocab), pa.string()),
            "top_logits": pa.array(_join_rows(d.top_logit_ids, vocab, n), pa.string()),
            "examples_offset": pa.array(offsets),
            "n_examples": pa.array(d.example_counts.astype(np.int32)),
        }, schema=schema.FEATURES_SCHEMA)
        pq.write_table(table, self._partition(schema.FEATURES, d.name))
        tables[schema.partition_path(schema.FEATURES, d.name)] = n
        return tables

    def _top_tokens_text(self, d: _PendingDictionary, vocab: np.ndarray) -> list[str]:
        """The first distinct centre tokens of each feature's top examples, by rank."""
        out = [""] * d.n_features
        if not d.top_centres:
            return out
        feature = np.concatenate([f for f, _ in d.top_centres])
        ids = np.concatenate([c for _, c in d.top_centres])
        cuts = np.flatnonzero(np.diff(feature)) + 1
        for f, group in zip(feature[np.concatenate([[0], cuts])] if feature.size else [],
                            np.split(ids, cuts)):
            distinct = list(dict.fromkeys(group.tolist()))[:_TOP_TEXT_ITEMS]
            out[int(f)] = " ".join(vocab[distinct])
        return out

    def _add_neighbours(self, dictionary: str, relation: str, target: str,
                        index: np.ndarray, cosine: np.ndarray) -> None:
        d = self._dictionary(dictionary)
        if target not in self._dicts:
            raise ValueError(f"{dictionary}: {relation} dictionary {target!r} not declared")
        if (relation, target) in d.neighbour_keys:
            raise ValueError(f"{dictionary}: {relation}s in {target} added twice")
        what = f"{dictionary}: {relation} ({target})"
        index = np.asarray(index)
        if index.ndim != 2:
            raise ValueError(f"{what}: index must be (n, k)")
        index = _matrix(index, (d.n_features, index.shape[1]), np.int64, f"{what} index")
        cosine = _matrix(cosine, index.shape, np.float32, f"{what} cosine")
        keep = index >= 0
        _check_range(index[keep], 0, self._dicts[target].n_features, f"{what} index")
        d.neighbour_parts.append({
            "feature": np.broadcast_to(np.arange(d.n_features)[:, None], index.shape)[keep],
            "relation": np.full(int(keep.sum()), schema.RELATIONS.index(relation)),
            "target": target,
            "rank": np.broadcast_to(np.arange(index.shape[1]), index.shape)[keep],
            "index": index[keep], "cosine": cosine[keep]})
        d.neighbour_keys.add((relation, target))

    def _write_neighbours(self, d: _PendingDictionary, order: list[str]) -> int:
        path = self._partition(schema.NEIGHBOURS, d.name)
        if not d.neighbour_parts:
            pq.write_table(schema.NEIGHBOURS_SCHEMA.empty_table(), path)
            return 0
        parts = d.neighbour_parts
        target_code = np.concatenate([np.full(p["index"].size, order.index(p["target"]))
                                      for p in parts])
        cols = {k: np.concatenate([p[k] for p in parts])
                for k in ("feature", "relation", "rank", "index", "cosine")}
        sort = np.lexsort((cols["rank"], target_code, cols["relation"], cols["feature"]))
        names = np.asarray(order, dtype=object)
        table = pa.table({
            "feature": pa.array(cols["feature"][sort].astype(np.int32)),
            "relation": pa.array(np.asarray(schema.RELATIONS, dtype=object)[
                cols["relation"][sort]], pa.string()),
            "neighbour_dictionary": pa.array(names[target_code[sort]], pa.string()),
            "rank": pa.array(cols["rank"][sort].astype(np.int16)),
            "neighbour_index": pa.array(cols["index"][sort].astype(np.int32)),
            "cosine": pa.array(cols["cosine"][sort]),
        }, schema=schema.NEIGHBOURS_SCHEMA)
        pq.write_table(table, path)
        return table.num_rows

    def _finish_splits(self, order: list[str]) -> dict[str, int]:
        """Write the edges and their families (`families.group`, over (dictionary, index))."""
        if not self._splits:
            return {schema.SPLITS: self._write(schema.SPLITS,
                                               schema.SPLITS_SCHEMA.empty_table()),
                    schema.FAMILIES: self._write(schema.FAMILIES,
                                                 schema.FAMILIES_SCHEMA.empty_table())}
        base = dict(zip(order, np.cumsum([0] + [self._dicts[n].n_features for n in order])))
        cols = {k: np.concatenate([p[k] for p in self._splits])
                for k in ("index_a", "index_b", "masked_cosine", "decoder_cosine", "containment")}
        dict_a = np.concatenate([np.full(p["index_a"].size, order.index(p["dictionary_a"]))
                                 for p in self._splits])
        dict_b = np.concatenate([np.full(p["index_b"].size, order.index(p["dictionary_b"]))
                                 for p in self._splits])
        offsets = np.asarray([base[n] for n in order], dtype=np.int64)
        fam = families.group(offsets[dict_a] + cols["index_a"], offsets[dict_b] + cols["index_b"])
        nodes, node_family, edge_family = fam.nodes, fam.node_family, fam.edge_family
        node_dict = np.searchsorted(offsets, nodes, side="right") - 1
        names = np.asarray(order, dtype=object)
        sort = np.lexsort((nodes, node_family))
        family_table = pa.table({
            "family_id": pa.array(node_family[sort].astype(np.int32)),
            "dictionary": pa.array(names[node_dict[sort]], pa.string()),
            "index": pa.array((nodes - offsets[node_dict])[sort].astype(np.int32)),
        }, schema=schema.FAMILIES_SCHEMA)
        sort = np.lexsort((cols["index_b"], dict_b, cols["index_a"], dict_a, edge_family))
        splits = pa.table({
            "dictionary_a": pa.array(names[dict_a[sort]], pa.string()),
            "index_a": pa.array(cols["index_a"][sort].astype(np.int32)),
            "dictionary_b": pa.array(names[dict_b[sort]], pa.string()),
            "index_b": pa.array(cols["index_b"][sort].astype(np.int32)),
            "masked_cosine": pa.array(cols["masked_cosine"][sort]),
            "decoder_cosine": pa.array(cols["decoder_cosine"][sort]),
            "containment": pa.array(cols["containment"][sort]),
            "family_id": pa.array(edge_family[sort].astype(np.int32)),
        }, schema=schema.SPLITS_SCHEMA)
        return {schema.SPLITS: self._write(schema.SPLITS, splits),
                schema.FAMILIES: self._write(schema.FAMILIES, family_table)}

    def _umap_table(self, order: list[str]) -> pa.Table:
        parts = []
        for name in order:
            if name not in self._umap:
                continue
            index, x, y = self._umap[name]
            parts.append(pa.table({
                "dictionary": pa.array([name] * index.size, pa.string()),
                "index": pa.array(index.astype(np.int32)), "x": pa.array(x), "y": pa.array(y),
                "density": pa.array(self._dicts[name].summary["density"][index]),
            }, schema=schema.UMAP_SCHEMA))
        return pa.concat_tables(parts) if parts else schema.UMAP_SCHEMA.empty_table()

    def _metrics_table(self, order: list[str]) -> pa.Table:
        rows = []
        for name in order:
            d = self._dicts[name]
            classes = d.summary["density_class"]
            derived = {"dead_fraction": float(np.mean(classes == "dead")),
                       "dead_eval_tokens": self._n_tokens,
                       "n_ultralow": int(np.sum(classes == "ultralow")),
                       "n_dense": int(np.sum(classes == "dense"))}
            given = self._metrics.get(name, {})
            if "dead_fraction" in given and "dead_eval_tokens" not in given:
                derived.pop("dead_eval_tokens")  # a count stated elsewhere: don't guess it
            rows.append({"dictionary": name, "n_features": d.n_features, **derived, **given})
        columns = list(schema.METRIC_COLUMNS)
        for row in rows:
            columns += [k for k in row if k not in columns]
        data = {}
        for col in columns:
            values = [row.get(col) for row in rows]
            present = [v for v in values if v is not None]
            if col in ("dictionary", "recipe") or any(isinstance(v, str) for v in present):
                data[col] = pa.array([None if v is None else str(v) for v in values], pa.string())
            elif present and all(isinstance(v, (bool, np.bool_)) for v in present):
                data[col] = pa.array(values, pa.bool_())
            elif present and all(isinstance(v, (int, np.integer)) for v in present) and \
                    len(present) == len(values):
                data[col] = pa.array(values, pa.int64())
            else:
                data[col] = pa.array([None if v is None else float(v) for v in values],
                                     pa.float64())
        return pa.table(data)

    def _density_table(self, order: list[str]) -> pa.Table:
        names, lo, hi, counts = [], [], [], []
        for name in order:
            if name in self._density_hists:
                edges, count = self._density_hists[name]
            else:
                density = self._dicts[name].summary["density"]
                logd = np.log10(density[density > 0])
                floor = math.floor(math.log10(1 / self._n_tokens))
                edges = np.round(np.arange(floor, 0.0001, 0.25), 6)
                count, _ = np.histogram(np.clip(logd, edges[0], edges[-1]), bins=edges)
            names += [name] * count.size
            lo.append(edges[:-1])
            hi.append(edges[1:])
            counts.append(count)
        return pa.table({"dictionary": pa.array(names, pa.string()),
                         "bin_lo": pa.array(np.concatenate(lo)),
                         "bin_hi": pa.array(np.concatenate(hi)),
                         "count": pa.array(np.concatenate(counts).astype(np.int64))},
                        schema=schema.DENSITY_HISTOGRAMS_SCHEMA)

    # -- small helpers -------------------------------------------------------------------------

    def _ordered_names(self) -> list[str]:
        """Dictionary order (`schema.dictionary_sort_key`): the order pages list them."""
        return sorted(self._dicts, key=lambda n: schema.dictionary_sort_key(
            n, self._dicts[n].kind, self._dicts[n].n_features))

    def _dictionary(self, name: str) -> _PendingDictionary:
        self._check_open()
        if name not in self._dicts:
            raise ValueError(f"dictionary {name!r} not declared; call add_dictionary first")
        return self._dicts[name]

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"StoreWriter for {self.path} is already closed")

    def _partition(self, table: str, dictionary: str) -> Path:
        path = self._tmp / schema.partition_path(table, dictionary)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write(self, name: str, table: pa.Table) -> int:
        pq.write_table(table, self._tmp / name)
        return table.num_rows


def _kind_codes(kind: Any) -> np.ndarray:
    """Accept "top" / interval numbers as strings as well as the int codes."""
    kind = np.asarray(kind)
    if kind.dtype.kind in "UO":
        top = kind == "top"
        out = np.full(kind.shape, schema.KIND_TOP, dtype=np.int64)
        if not top.all():
            out[~top] = kind[~top].astype(np.int64)
        return out
    return kind


def _vector(values: Any, n: int, dtype, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},), got {arr.shape}")
    return _cast(arr, dtype, what)


def _matrix(values: Any, shape: tuple[int, int], dtype, what: str, *,
            allow_nan: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != tuple(shape):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, got {arr.shape}")
    return _cast(arr, dtype, what, allow_nan=allow_nan)


def _cast(arr: np.ndarray, dtype, what: str, *, allow_nan: bool = False) -> np.ndarray:
    """`arr` as `dtype`, refusing non-integers for an integer dtype and, unless `allow_nan`,
    NaN or Inf for a float one: in activations or cosines they are an upstream bug, while
    ablation windows use NaN on purpose (no next token at the window's end)."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"{what}: expected integers, got {arr.dtype}")
    elif arr.size and not allow_nan and not np.isfinite(arr).all():
        raise ValueError(f"{what}: contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_range(values: np.ndarray, lo: int, hi: int, what: str) -> None:
    if values.size and (values.min() < lo or values.max() >= hi):
        bad = values[(values < lo) | (values >= hi)][0]
        raise ValueError(f"{what}: {bad} outside [{lo}, {hi})")


def _fixed_lists(matrix: np.ndarray) -> pa.ListArray:
    n, w = matrix.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * w)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(matrix).ravel()))


def _join_rows(ids: np.ndarray | None, vocab: np.ndarray, n: int) -> list[str]:
    if ids is None:
        return [""] * n
    shown = np.where(ids >= 0, vocab[np.clip(ids, 0, len(vocab) - 1)], None)
    return [" ".join(t for t in row if t is not None) for row in shown.tolist()]


def _json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts: NaN becomes null."""
    rows = table.to_pylist()
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in row.items()} for row in rows]
