"""FeatureStore: the read side of a feature store (layout in `schema.py`).

Speed comes from the layout, not from caching pages: every per-feature table except the
examples is small (one row, or a few dozen, per feature), so the first request for a
dictionary reads its features, logits and neighbours tables whole into read-only numpy
arrays (tens of milliseconds) and `.feature()` slices them by precomputed offsets. Examples
are the bulk of a store; they are sorted by feature and written in row groups of at most
`EXAMPLE_FEATURES_PER_ROW_GROUP` features, so one feature's windows cost one small row-group
read, with the file's footer parsed once at `open()`.

One `FeatureStore` is meant to be shared by every Streamlit session (`st.cache_resource`):
after `open()` nothing in it changes except a cache of immutable per-dictionary data, filled
under a lock; each examples read opens its own file handle. Returned DataFrames are copies
and records are frozen, so no caller can change what another sees.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import explanations, schema
from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import (
    N_INTERVALS, Example, ExplanationRecord, FeatureRecord, Family, Histogram, Interval, LogitEntry, Neighbour,
    SplitEdge, Unit,
)

T = TypeVar("T")

# Columns each table must have for this reader, which are what the writer always writes;
# extra columns are ignored. Tables with an Arrow schema must have its types too (`_footer`).
_REQUIRED_COLUMNS = {table: tuple(s.names) for table, s in schema.TABLE_SCHEMAS.items()}
_REQUIRED_COLUMNS[schema.METRICS] = schema.METRIC_COLUMNS
# Codes of the neighbours' `relation` and the logits' `side` as `_load_related` keeps them.
_NEIGHBOUR, _ALIGNED_NEURON, _COUNTERPART = (
    schema.RELATIONS.index(r) for r in ("neighbour", "aligned_neuron", "counterpart"))
_TOP, _BOTTOM = (schema.LOGIT_SIDES.index(side) for side in ("top", "bottom"))
_BROWSE_COLUMNS = ["index", "density", "n_active", "mean_act", "max_act", "density_class",
                   "top_tokens", "top_logits"]
_EXAMPLE_COLUMNS = ["kind", "rank", "seq_id", "position", "center", "act", "token_ids",
                    "acts", "ablation"]
_SPLIT_EDGE_FIELDS = tuple(f.name for f in fields(SplitEdge))  # splits columns, less family_id


@dataclass(frozen=True)
class _FeatureTable:
    """One dictionary's features table, read whole, as read-only arrays, and where its
    examples are."""

    name: str
    n_features: int
    act_hist_edges: tuple[float, ...]
    browse: pd.DataFrame  # handed out as copies only
    n_active: np.ndarray
    density: np.ndarray
    density_class: np.ndarray
    mean_act: np.ndarray
    max_act: np.ndarray
    act_hist_counts: np.ndarray  # (n, b)
    interval_counts: np.ndarray  # (n, 11)
    logit_hist_edges: np.ndarray  # (n, b' + 1)
    logit_hist_counts: np.ndarray  # (n, b')
    examples_offset: np.ndarray
    n_examples: np.ndarray
    examples_path: Path
    examples_meta: pq.FileMetaData
    row_group_starts: np.ndarray  # first global row of each examples row group, plus the end


@dataclass(frozen=True)
class _FamilyLookup:
    """Every family, indexed for `FeatureStore.family`: read once from families and splits."""

    family_of: dict[Unit, int]  # unit -> family_id
    members: dict[int, tuple[Unit, ...]]  # in dictionary order, then index
    edges: dict[int, tuple[SplitEdge, ...]]  # as in splits.parquet


@dataclass(frozen=True)
class _Related:
    """One dictionary's logits and neighbours tables: needed by feature pages, not by
    browsing, so `.features()` does not wait for them."""

    logit_offsets: np.ndarray  # (n + 1,) row range of each feature in the logits table
    logit_side: np.ndarray  # index into LOGIT_SIDES
    logit_token: np.ndarray
    logit_value: np.ndarray
    nb_offsets: np.ndarray
    nb_relation: np.ndarray  # index into RELATIONS
    nb_dictionary: np.ndarray
    nb_index: np.ndarray
    nb_cosine: np.ndarray


class FeatureStore:
    """Read-only access to `runs/<name>/store/`; make one with `FeatureStore.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any],
                 footers: dict[str, pq.FileMetaData], vocab: np.ndarray,
                 metrics: pd.DataFrame) -> None:
        self.path = path
        self._manifest = manifest
        self._footers = footers
        self._vocab = vocab
        self._metrics = metrics
        self._info = {d["name"]: d for d in manifest["dictionaries"]}
        self._order = _ordered(manifest["dictionaries"])
        self._lock = threading.Lock()
        self._cache: dict[Any, Any] = {}
        self._key_locks: dict[Any, threading.Lock] = {}

    # -- opening -------------------------------------------------------------------------------

    @staticmethod
    def build_stamp(path: str | Path) -> tuple[int, ...] | None:
        """Which build of the store is at `path` now (None when there is none). A build is
        staged elsewhere and renamed into place, so a rebuild changes its manifest's inode
        and mtime: one `stat`, cheap enough for a server to check on every page view. The
        explanations folder is built later by its own stage, so its manifest counts too."""
        try:
            info = os.stat(Path(path) / schema.MANIFEST)
        except OSError:
            return None
        try:
            more = os.stat(explanations.folder(Path(path)) / schema.EXPLANATIONS_MANIFEST)
            extra: tuple[int, ...] = (more.st_ino, more.st_mtime_ns)
        except OSError:
            extra = ()
        return (info.st_ino, info.st_mtime_ns, *extra)

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Check the manifest, the schema version and every table's footer and row count; read
        the vocab and metrics. Anything wrong raises StoreError naming the file."""
        path = Path(path)
        hint = _rebuild_hint(path)
        if not path.is_dir():
            left = path.with_name(path.name + ".incomplete")
            why = (f"only {left.name} exists, an interrupted build" if left.exists()
                   else "no feature store here")
            raise StoreError(f"{path}: {why}; {hint}")
        manifest_path = path / schema.MANIFEST
        if not manifest_path.is_file():
            raise StoreError(f"{manifest_path}: missing, so this is not a complete store; {hint}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{manifest_path}: unreadable ({err}); {hint}") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != schema.SCHEMA_VERSION:
            raise StoreError(f"{manifest_path}: schema {version}, this reader knows "
                             f"{schema.SCHEMA_VERSION}; {hint}")
        _check_manifest(manifest, manifest_path, hint)

        expected = dict(manifest["tables"])
        for d in manifest["dictionaries"]:
            for table in schema.PER_DICTIONARY_TABLES:
                expected.setdefault(schema.partition_path(table, d["name"]), None)
        for name in (schema.VOCAB, schema.METRICS, schema.DENSITY_HISTOGRAMS, schema.SPLITS,
                     schema.FAMILIES, schema.UMAP):
            expected.setdefault(name, None)
        footers = {rel: _footer(path, rel, rows, hint) for rel, rows in expected.items()}
        vocab_table = _read(path, schema.VOCAB, footers, ["token_id", "display"])
        if not np.array_equal(vocab_table.column("token_id").to_numpy(),
                              np.arange(vocab_table.num_rows)):
            raise StoreError(f"{path / schema.VOCAB}: token ids are not 0..n-1 in order; {hint}")
        vocab = np.asarray(vocab_table.column("display").to_pylist(), dtype=object)
        vocab.setflags(write=False)
        metrics = _read(path, schema.METRICS, footers).to_pandas()
        return cls(path, manifest, footers, vocab, metrics)

    # -- whole-store views ---------------------------------------------------------------------

    def dictionaries(self) -> list[str]:
        """neurons first, then SAEs by size ascending."""
        return list(self._order)

    def dictionary_info(self, name: str) -> dict[str, Any]:
        """The manifest's entry: name, kind, n_features, act_hist_edges and free-form info."""
        self._check_dictionary(name)
        return json.loads(json.dumps(self._info[name]))  # a deep copy

    def n_features(self, name: str) -> int:
        self._check_dictionary(name)
        return int(self._info[name]["n_features"])

    @property
    def n_tokens(self) -> int:
        return int(self._manifest["n_tokens"])

    @property
    def created_at(self) -> str:
        return str(self._manifest["created_at"])

    def run_info(self) -> dict[str, Any]:
        """Free-form run facts: act_fn, n_params, val_loss, unigram_val_loss, metrics, ..."""
        return json.loads(json.dumps(self._manifest.get("run", {})))

    def metrics(self) -> pd.DataFrame:
        """One row per dictionary: `schema.METRIC_COLUMNS` (dictionary, n_features, l0, ...),
        then any extra columns the stats stage wrote."""
        return self._metrics.copy()

    def density_histograms(self) -> pd.DataFrame:
        """dictionary, bin_lo, bin_hi (log10 density), count."""
        return self._cached(schema.DENSITY_HISTOGRAMS, lambda: _read(
            self.path, schema.DENSITY_HISTOGRAMS, self._footers).to_pandas()).copy()

    def umap(self) -> pd.DataFrame:
        """dictionary, index, x, y, density: the joint 2-D map of all decoder directions."""
        return self._cached(schema.UMAP, lambda: _read(
            self.path, schema.UMAP, self._footers).to_pandas()).copy()

    def vocab(self) -> pd.DataFrame:
        """token_id, display."""
        return pd.DataFrame({"token_id": np.arange(len(self._vocab)),
                             "display": self._vocab.tolist()})

    def token_display(self, token_ids: Any) -> list[str]:
        """Display forms of the given token ids."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._vocab)):
            raise FeatureNotFound(f"token id outside the vocab of {len(self._vocab)}")
        return self._vocab[ids].tolist()

    # -- one dictionary ------------------------------------------------------------------------

    def features(self, dictionary: str) -> pd.DataFrame:
        """One row per feature for browsing, sorting and search: index, density, n_active,
        mean_act, max_act, density_class, top_tokens, top_logits."""
        return self._dictionary(dictionary).browse.copy()

    def feature(self, dictionary: str, index: int) -> FeatureRecord:
        """Everything a feature page needs, with exactly N_INTERVALS intervals."""
        d = self._dictionary(dictionary)
        i = self._check_index(d, index)
        top, by_interval = self._examples(d, i)
        max_act = float(d.max_act[i])
        counts = d.interval_counts[i]
        total = int(counts.sum())
        width = max_act / N_INTERVALS
        intervals = tuple(
            Interval(lo=k * width, hi=(k + 1) * width if k < N_INTERVALS - 1 else max_act,
                     share=int(counts[k]) / total if total else 0.0, count=int(counts[k]),
                     examples=tuple(by_interval[k]))
            for k in range(N_INTERVALS))
        rel = self._cached(("related", d.name), lambda: self._load_related(d.name, d.n_features))
        lo, hi = rel.logit_offsets[i], rel.logit_offsets[i + 1]
        logits: dict[int, list[LogitEntry]] = {_TOP: [], _BOTTOM: []}
        shown = self._vocab[rel.logit_token[lo:hi]].tolist()
        for side, tok, tid, val in zip(rel.logit_side[lo:hi].tolist(), shown,
                                       rel.logit_token[lo:hi].tolist(),
                                       rel.logit_value[lo:hi].tolist()):
            logits[side].append(LogitEntry(token=tok, token_id=tid, value=val))
        aligned, neighbours, counterparts = self._neighbours(rel, i)
        return FeatureRecord(
            dictionary=d.name, index=i, n_features=d.n_features, n_tokens=self.n_tokens,
            n_active=int(d.n_active[i]), density=float(d.density[i]),
            density_class=str(d.density_class[i]), mean_act=float(d.mean_act[i]),
            max_act=max_act,
            act_histogram=Histogram(edges=d.act_hist_edges,
                                    counts=tuple(d.act_hist_counts[i].tolist())),
            top_examples=tuple(top), intervals=intervals,
            top_logits=tuple(logits[_TOP]), bottom_logits=tuple(logits[_BOTTOM]),
            logit_histogram=Histogram(edges=tuple(d.logit_hist_edges[i].tolist()),
                                      counts=tuple(d.logit_hist_counts[i].tolist())),
            aligned_neurons=aligned, neighbours=neighbours, counterparts=counterparts)

    # -- splitting graph -----------------------------------------------------------------------

    def splits(self, dictionary_a: str | None = None,
               dictionary_b: str | None = None) -> pd.DataFrame:
        """Split edges. With both names: the edges between them (either order); with one:
        every edge touching it; with none: all. Columns as in splits.parquet."""
        edges = self._cached(schema.SPLITS, lambda: _read(
            self.path, schema.SPLITS, self._footers).to_pandas())
        keep = np.ones(len(edges), dtype=bool)
        names = [n for n in (dictionary_a, dictionary_b) if n is not None]
        for n in names:
            self._check_dictionary(n)
            keep &= ((edges["dictionary_a"] == n) | (edges["dictionary_b"] == n)).to_numpy()
        if len(names) == 2 and names[0] == names[1]:
            keep &= False  # edges join adjacent sizes, never a dictionary to itself
        return edges[keep].reset_index(drop=True)

    def family(self, dictionary: str, index: int) -> Family | None:
        """The family (connected split edges across sizes) holding this feature, or None."""
        d = self._dictionary_info_checked(dictionary)
        i = self._check_index(d, index)
        lookup = self._cached("family_lookup", self._family_lookup)
        family_id = lookup.family_of.get(Unit(dictionary, i))
        if family_id is None:
            return None
        return Family(family_id=family_id, members=lookup.members[family_id],
                      edges=lookup.edges[family_id])

    # -- search by token (the feature browser) -------------------------------------------------

    def top_example_tokens(self, dictionary: str) -> pd.DataFrame:
        """feature, rank, token_id, act: the drawn (centre) token of every top example and the
        feature's activation there, by feature, then rank (0 = highest).

        Why: a token search should rank units by how strongly they fire on that token, and
        the top examples are what the store holds of it. One pass over the dictionary's
        examples file, row group by row group, keeping only the top-k rows; cached."""
        d = self._dictionary(dictionary)
        return self._cached(("top_example_tokens", d.name),
                            lambda: _top_example_tokens(d, self.path)).copy()

    def top_logit_tokens(self, dictionary: str) -> pd.DataFrame:
        """feature, rank, token_id, value: each feature's largest logit weights (the stored
        top side, largest first), so a logit search can rank by the weight itself."""
        d = self._dictionary(dictionary)
        rel = self._cached(("related", d.name), lambda: self._load_related(d.name, d.n_features))
        feature = np.repeat(np.arange(d.n_features), np.diff(rel.logit_offsets))
        rank = np.arange(feature.size) - rel.logit_offsets[feature]  # top rows come first
        top = rel.logit_side == _TOP
        return pd.DataFrame({"feature": feature[top], "rank": rank[top],
                             "token_id": rel.logit_token[top], "value": rel.logit_value[top]})

    # -- internals -----------------------------------------------------------------------------

    # -- explanations (issue 13; feature_store/explanations.py) --------------------------------

    def interp_summary(self) -> dict[str, Any] | None:
        """The explanations manifest (explainer, splits, per-dictionary medians of every score
        and control), or None when the interp stage has not run on this store."""
        manifest = self._cached("explanations_manifest",
                                lambda: explanations.read_manifest(self.path))
        return json.loads(json.dumps(manifest)) if manifest is not None else None

    def explanations(self, dictionary: str) -> pd.DataFrame | None:
        """One row per unit: index, explainer, explanation, every score, count and control
        (`schema.EXPLANATIONS_SCHEMA`); None when this store has no explanations."""
        frame = self._explanations(dictionary)
        return None if frame is None else frame.copy()

    def explanation(self, dictionary: str, index: int) -> ExplanationRecord | None:
        """One unit's explanation and scores, or None when this store has none."""
        frame = self._explanations(dictionary)
        if frame is None:
            return None
        return explanations.record(frame, dictionary, self._check_index(
            self._dictionary_info_checked(dictionary), index))

    def example_windows(self, dictionary: str) -> explanations.ExampleWindows:
        """Every example window of a dictionary as arrays (the interp stage's held-out set)."""
        self._check_dictionary(dictionary)
        return explanations.example_windows(self.path, dictionary)

    def _explanations(self, dictionary: str) -> pd.DataFrame | None:
        self._check_dictionary(dictionary)
        manifest = self._cached("explanations_manifest",
                                lambda: explanations.read_manifest(self.path))
        if manifest is None:
            return None
        return self._cached(("explanations", dictionary),
                            lambda: explanations.read_table(self.path, manifest, dictionary))

    def _family_lookup(self) -> _FamilyLookup:
        fam = _read(self.path, schema.FAMILIES, self._footers).to_pydict()
        members: dict[int, list[Unit]] = {}
        of: dict[Unit, int] = {}
        for fid, name, idx in zip(fam["family_id"], fam["dictionary"], fam["index"]):
            members.setdefault(fid, []).append(Unit(name, idx))
            of[Unit(name, idx)] = fid
        rank = {n: k for k, n in enumerate(self._order)}
        edges: dict[int, list[SplitEdge]] = {}
        for row in _read(self.path, schema.SPLITS, self._footers).to_pylist():
            edges.setdefault(row["family_id"], []).append(
                SplitEdge(**{name: row[name] for name in _SPLIT_EDGE_FIELDS}))
        return _FamilyLookup(
            family_of=of,
            members={f: tuple(sorted(m, key=lambda u: (rank.get(u.dictionary, 1 << 30), u.index)))
                     for f, m in members.items()},
            edges={f: tuple(edges.get(f, ())) for f in members})

    def _examples(self, d: _FeatureTable, i: int) -> tuple[list[Example], list[list[Example]]]:
        top: list[Example] = []
        by_interval: list[list[Example]] = [[] for _ in range(N_INTERVALS)]
        start, count = int(d.examples_offset[i]), int(d.n_examples[i])
        if count == 0:
            return top, by_interval
        stop = start + count
        first = int(np.searchsorted(d.row_group_starts, start, side="right")) - 1
        last = int(np.searchsorted(d.row_group_starts, stop - 1, side="right")) - 1
        try:
            reader = pq.ParquetFile(d.examples_path, metadata=d.examples_meta)
            table = reader.read_row_groups(range(first, last + 1), columns=_EXAMPLE_COLUMNS,
                                           use_threads=False)
        except (OSError, pa.ArrowException) as err:
            raise StoreError(f"{d.examples_path}: unreadable ({err}); "
                             f"{_rebuild_hint(self.path)}") from None
        table = table.slice(start - int(d.row_group_starts[first]), count)
        cols = {c: table.column(c).to_pylist() for c in
                ("kind", "rank", "seq_id", "position", "center", "act")}
        lists = {c: _list_parts(table.column(c)) for c in ("token_ids", "acts", "ablation")}
        ids_off, ids = lists["token_ids"]
        shown = self._vocab[np.asarray(ids, dtype=np.int64)].tolist()
        acts_off, acts = lists["acts"]
        abl_off, abl = lists["ablation"]
        for r in range(count):
            a, b = ids_off[r], ids_off[r + 1]
            ex = Example(seq_id=cols["seq_id"][r], position=cols["position"][r],
                         center=cols["center"][r], act=cols["act"][r],
                         tokens=tuple(shown[a:b]), token_ids=tuple(ids[a:b]),
                         acts=tuple(acts[acts_off[r]:acts_off[r + 1]]),
                         ablation=tuple(abl[abl_off[r]:abl_off[r + 1]]))
            kind = cols["kind"][r]
            (top if kind == schema.KIND_TOP else by_interval[kind]).append(ex)
        return top, by_interval

    def _neighbours(self, d: _Related, i: int):
        lo, hi = d.nb_offsets[i], d.nb_offsets[i + 1]
        aligned: list[Neighbour] = []
        same: list[Neighbour] = []
        other: dict[str, list[Neighbour]] = {}
        for rel, name, idx, cos in zip(d.nb_relation[lo:hi].tolist(),
                                       d.nb_dictionary[lo:hi].tolist(),
                                       d.nb_index[lo:hi].tolist(), d.nb_cosine[lo:hi].tolist()):
            nb = Neighbour(dictionary=name, index=idx, cosine=cos)
            if rel == _NEIGHBOUR:
                same.append(nb)
            elif rel == _ALIGNED_NEURON:
                aligned.append(nb)
            elif rel == _COUNTERPART:
                other.setdefault(name, []).append(nb)
        counterparts = tuple((n, tuple(other[n])) for n in self._order if n in other)
        return tuple(aligned), tuple(same), counterparts

    def _dictionary(self, name: str) -> _FeatureTable:
        self._check_dictionary(name)
        return self._cached(("dictionary", name), lambda: self._load_dictionary(name))

    def _dictionary_info_checked(self, name: str):
        """Name and size only, without loading the dictionary's tables."""
        self._check_dictionary(name)
        return _Sized(name, int(self._info[name]["n_features"]))

    def _load_dictionary(self, name: str) -> _FeatureTable:
        info = self._info[name]
        n = int(info["n_features"])
        hint = _rebuild_hint(self.path)
        feat_rel = schema.partition_path(schema.FEATURES, name)
        feat = _read(self.path, feat_rel, self._footers)
        if feat.num_rows != n or not np.array_equal(feat.column("index").to_numpy(),
                                                    np.arange(n)):
            raise StoreError(f"{self.path / feat_rel}: expected indices 0..{n - 1}; {hint}")
        col = {c: _frozen(feat.column(c).to_numpy()) for c in
               ("n_active", "density", "mean_act", "max_act", "examples_offset", "n_examples")}
        density_class = _frozen(_strings(feat.column("density_class")))
        browse = feat.select(_BROWSE_COLUMNS).to_pandas()

        ex_rel = schema.partition_path(schema.EXAMPLES, name)
        meta = self._footers[ex_rel]
        sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        starts = _frozen(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

        matrix = {c: _list_matrix(feat, c, n, self.path / feat_rel, hint) for c in
                  ("act_hist_counts", "interval_counts", "logit_hist_edges",
                   "logit_hist_counts")}
        if matrix["interval_counts"].shape[1] != N_INTERVALS:
            raise StoreError(f"{self.path / feat_rel}: interval_counts must hold {N_INTERVALS} "
                             f"values per feature; {hint}")
        return _FeatureTable(
            name=name, n_features=n,
            act_hist_edges=tuple(float(e) for e in info["act_hist_edges"]),
            browse=browse, density_class=density_class, **matrix,
            examples_path=self.path / ex_rel, examples_meta=meta, row_group_starts=starts,
            **col)

    def _load_related(self, name: str, n: int) -> _Related:
        hint = _rebuild_hint(self.path)
        lg_rel = schema.partition_path(schema.LOGITS, name)
        lg = _read(self.path, lg_rel, self._footers, dictionary=["side"])
        side = _codes(lg.column("side"), schema.LOGIT_SIDES)
        nb_rel = schema.partition_path(schema.NEIGHBOURS, name)
        nb = _read(self.path, nb_rel, self._footers,
                   dictionary=["relation", "neighbour_dictionary"])
        relation = _codes(nb.column("relation"), schema.RELATIONS)
        if np.any(side < 0) or np.any(relation < 0):
            raise StoreError(f"{self.path / lg_rel} or {self.path / nb_rel}: unknown side or "
                             f"relation values; {hint}")
        return _Related(
            logit_offsets=_offsets(lg.column("feature").to_numpy(), n),
            logit_side=_frozen(side),
            logit_token=_frozen(lg.column("token_id").to_numpy().astype(np.int64)),
            logit_value=_frozen(lg.column("value").to_numpy()),
            nb_offsets=_offsets(nb.column("feature").to_numpy(), n),
            nb_relation=_frozen(relation),
            nb_dictionary=_frozen(_strings(nb.column("neighbour_dictionary"))),
            nb_index=_frozen(nb.column("neighbour_index").to_numpy()),
            nb_cosine=_frozen(nb.column("cosine").to_numpy()))

    def _cached(self, key: Any, load: Callable[[], T]) -> T:
        """Load once values that are never mutated afterwards. One lock per key, so a
        session loading one dictionary does not hold up another reading a different one."""
        value = self._cache.get(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            value = self._cache.get(key)
            if value is None:
                value = load()
                self._cache[key] = value
        return value

    def _check_dictionary(self, name: str) -> None:
        if name not in self._info:
            raise FeatureNotFound(f"no dictionary {name!r} in {self.path}; it has "
                                  f"{', '.join(self._order)}")

    @staticmethod
    def _check_index(d: Any, index: Any) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise FeatureNotFound(f"feature index must be an integer, got {index!r}")
        if not 0 <= index < d.n_features:
            raise FeatureNotFound(f"no feature {index} in {d.name}: it has {d.n_features} "
                                  f"features, 0..{d.n_features - 1}")
        return int(index)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, dictionaries={self._order})"


@dataclass(frozen=True)
class _Sized:
    name: str
    n_features: int


def _ordered(dictionaries: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in sorted(dictionaries, key=lambda d: schema.dictionary_sort_key(
        d["name"], d["kind"], d["n_features"]))]


def _top_example_tokens(d: _FeatureTable, store: Path) -> pd.DataFrame:
    """`FeatureStore.top_example_tokens`, read in batches that keep only their top-k rows:
    memory holds one batch of windows, never the whole examples file."""
    columns = ["kind", "feature", "rank", "center", "act", "token_ids"]
    kept = []
    try:
        reader = pq.ParquetFile(d.examples_path, metadata=d.examples_meta)
        for batch in reader.iter_batches(batch_size=65_536, columns=columns, use_threads=False):
            top = np.flatnonzero(batch.column(0).to_numpy() == schema.KIND_TOP)
            if top.size:
                kept.append(pa.Table.from_batches([batch.take(pa.array(top))]))
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{d.examples_path}: unreadable ({err}); {_rebuild_hint(store)}") from None
    if not kept:
        return pd.DataFrame({"feature": np.zeros(0, np.int32), "rank": np.zeros(0, np.int16),
                             "token_id": np.zeros(0, np.int64), "act": np.zeros(0, np.float32)})
    return _centre_tokens(pa.concat_tables(kept))


def _centre_tokens(rows: pa.Table) -> pd.DataFrame:
    """feature, rank, token_id (the window's token at `center`; -1 if outside it), act."""
    ids = rows.column("token_ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)  # absolute positions in ids.values
    values = ids.values.to_numpy(zero_copy_only=False)
    center = rows.column("center").to_numpy().astype(np.int64)
    inside = (center >= 0) & (center < np.diff(offsets))
    token = np.full(center.size, -1, dtype=np.int64)
    token[inside] = values[offsets[:-1][inside] + center[inside]]
    return pd.DataFrame({"feature": rows.column("feature").to_numpy(),
                         "rank": rows.column("rank").to_numpy(), "token_id": token,
                         "act": rows.column("act").to_numpy()})


def _rebuild_hint(path: Path) -> str:
    """`--force stats` only for a run's own `store/`: anywhere else that command would build a
    new run in whatever folder happens to hold `path`."""
    if path.name == "store" and _is_run_folder(path.parent):
        return f"rebuild the store with: python -m pipelines run --run-dir {path.parent} --force stats"
    return ("not a run's store/ folder, so no run can rebuild it (a feature store is the store/ "
            "folder a pipeline run writes: manifest.json and Parquet tables); build a run with: "
            "python -m pipelines run --preset tiny --run-dir runs/tiny, then point FEATURE_STORE "
            "at runs/tiny/store")


def _is_run_folder(folder: Path) -> bool:
    """The pipeline's run manifest (`manifest.json` with its `stages`), not a store's."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("stages"), dict)


def _check_manifest(manifest: dict[str, Any], where: Path, hint: str) -> None:
    for key, kind in (("n_tokens", int), ("dictionaries", list), ("tables", dict),
                      ("created_at", str)):
        if not isinstance(manifest.get(key), kind):
            raise StoreError(f"{where}: missing or bad {key!r}; {hint}")
    if not manifest["dictionaries"]:
        raise StoreError(f"{where}: no dictionaries; {hint}")
    seen = set()
    for d in manifest["dictionaries"]:
        ok = (isinstance(d, dict) and isinstance(d.get("name"), str)
              and schema.DICTIONARY_NAME.fullmatch(d["name"]) and d.get("kind") in
              schema.DICTIONARY_KINDS and isinstance(d.get("n_features"), int)
              and d["n_features"] > 0 and isinstance(d.get("act_hist_edges"), list))
        if not ok or d["name"] in seen:
            raise StoreError(f"{where}: bad dictionary entry {str(d)[:80]}; {hint}")
        seen.add(d["name"])


def _footer(path: Path, rel: str, rows: int | None, hint: str) -> pq.FileMetaData:
    """Parse one table's footer: a truncated or foreign file fails here, at open()."""
    file = path / rel
    if not file.is_file():
        raise StoreError(f"{file}: missing; {hint}")
    try:
        meta = pq.read_metadata(file)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{file}: not a readable Parquet file, truncated or corrupt "
                         f"({err}); {hint}") from None
    if rows is not None and meta.num_rows != rows:
        raise StoreError(f"{file}: {meta.num_rows} rows, the manifest says {rows}; {hint}")
    table = rel.split("/")[0]
    try:
        found = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{file}: unreadable schema ({err}); {hint}") from None
    missing = set(_REQUIRED_COLUMNS.get(table, ())) - set(found.names)
    if missing:
        raise StoreError(f"{file}: missing column(s) {sorted(missing)}; {hint}")
    for want in schema.TABLE_SCHEMAS.get(table, ()):  # a wrong type would fail later, rawly
        got = [found.field(i).type for i in found.get_all_field_indices(want.name)]
        if len(got) != 1 or not got[0].equals(want.type):
            raise StoreError(f"{file}: column {want.name} is {' and '.join(map(str, got))}, "
                             f"expected {want.type}; {hint}")
    return meta


def _read(path: Path, rel: str, footers: dict[str, pq.FileMetaData],
          columns: list[str] | None = None, dictionary: list[str] | None = None) -> pa.Table:
    """Read a whole table; `dictionary` columns come back dictionary-encoded (a few distinct
    strings repeated per row: decoding each row into a string is most of the read time)."""
    file = path / rel
    try:
        return pq.ParquetFile(file, metadata=footers[rel], read_dictionary=dictionary).read(
            columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"{file}: unreadable ({err}); {_rebuild_hint(path)}") from None


def _list_parts(column: pa.ChunkedArray) -> tuple[list[int], list[Any]]:
    """(offsets, flat values) of a list column as Python lists: one conversion per column,
    then plain slicing per example, is far cheaper than converting each example."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = arr.offsets.to_numpy()
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return (offsets - offsets[0]).tolist(), values.to_pylist()


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as an object array, converting each distinct value once."""
    encoded = column.combine_chunks()
    if not pa.types.is_dictionary(encoded.type):
        encoded = encoded.dictionary_encode()
    names = np.asarray(encoded.dictionary.to_pylist() + [None], dtype=object)
    return names[encoded.indices.fill_null(len(names) - 1).to_numpy()]


def _codes(column: pa.ChunkedArray, values: tuple[str, ...]) -> np.ndarray:
    """Position of each row's string in `values` (-1 if absent), via the column's dictionary."""
    encoded = column.combine_chunks()
    if not pa.types.is_dictionary(encoded.type):
        encoded = encoded.dictionary_encode()
    lookup = np.asarray([values.index(v) if v in values else -1
                         for v in encoded.dictionary.to_pylist()] + [-1], dtype=np.int64)
    return lookup[encoded.indices.fill_null(len(lookup) - 1).to_numpy()]


def _list_matrix(table: pa.Table, name: str, n: int, file: Path, hint: str) -> np.ndarray:
    """A list column whose rows all have one length, as a read-only (n, width) array."""
    arr = table.column(name).combine_chunks()
    offsets = arr.offsets.to_numpy()
    widths = np.diff(offsets)
    if widths.size != n or (n and np.any(widths != widths[0])):
        raise StoreError(f"{file}: column {name} has rows of unequal length; {hint}")
    width = int(widths[0]) if n else 0
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(
        zero_copy_only=False)
    return _frozen(values.reshape(n, width))


def _offsets(feature: np.ndarray, n: int) -> np.ndarray:
    """Row range of each feature in a table sorted by feature: rows offsets[i]:offsets[i+1]."""
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(feature, minlength=n)[:n], out=out[1:])
    return _frozen(out)


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    arr.setflags(write=False)
    return arr
