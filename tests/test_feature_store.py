"""StoreWriter → FeatureStore round trips, staging, and every way a store can be bad.

Tiny shapes throughout: a store here is a few dozen features and writes in milliseconds.
Expected values are recomputed from the arrays handed to the writer, not from the reader.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store import (
    N_INTERVALS, FeatureNotFound, FeatureStore, StoreError, StoreWriter,
)
from feature_store import schema
from feature_store.synthetic import HOSTILE_TOKENS, build_synthetic_store

N_TOKENS = 5_000
SIZES = {"neurons": 6, "sae_8": 8, "sae_16": 16}
VOCAB = [f"tok{i}" for i in range(40)] + ["<b>&amp;</b>"]


def _inputs(seed: int = 0) -> dict:
    """Everything handed to the writer, so tests can compare the reader against it."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in SIZES.items():
        n_active = rng.integers(0, 400, n)
        n_active[1] = 0  # a dead feature
        max_act = np.where(n_active > 0, rng.uniform(1, 5, n), 0).astype(np.float32)
        intervals = rng.integers(0, 30, (n, N_INTERVALS))
        intervals[n_active == 0] = 0
        m, w = 4 * n, 7
        feature = rng.integers(0, n, m)
        kind = rng.integers(-1, N_INTERVALS, m)
        rank = np.arange(m)  # unique within any (feature, kind)
        token_ids = rng.integers(0, len(VOCAB), (m, w))
        token_ids[::3, :2] = -1  # windows cut off by the start of a sequence
        center = np.full(m, 3)
        acts = rng.random((m, w)).astype(np.float32)
        ablation = rng.normal(size=(m, w)).astype(np.float32)
        ablation[:, -1] = np.nan
        data[name] = {
            "n": n, "n_active": n_active, "max_act": max_act,
            "sum_act": n_active * rng.uniform(0.2, 1.0, n),
            "act_hist_counts": rng.integers(0, 50, (n, 5)),
            "intervals": intervals,
            "examples": {"feature": feature, "kind": kind, "rank": rank,
                         "seq_id": rng.integers(0, 1000, m), "position": rng.integers(3, 64, m),
                         "center": center, "act": rng.random(m).astype(np.float32),
                         "token_ids": token_ids, "acts": acts, "ablation": ablation},
            "logits": {"top_ids": rng.integers(0, len(VOCAB), (n, 4)),
                       "top_values": -np.sort(-rng.random((n, 4)), axis=1).astype(np.float32),
                       "bottom_ids": rng.integers(0, len(VOCAB), (n, 3)),
                       "bottom_values": np.sort(-rng.random((n, 3)), axis=1).astype(np.float32),
                       "hist_edges": np.linspace(-1, 1, 6), "hist_counts": rng.integers(0, 9, (n, 5))},
            "neighbours": (rng.integers(0, n, (n, 3)), rng.random((n, 3)).astype(np.float32)),
            "umap": rng.normal(size=(2, n)).astype(np.float32),
        }
        data[name]["neighbours"][0][0, 2] = -1  # fewer neighbours than k
    data["counterparts"] = {(a, b): (rng.integers(0, SIZES[b], (SIZES[a], 2)),
                                     rng.random((SIZES[a], 2)).astype(np.float32))
                            for a in SIZES for b in SIZES if a != b}
    data["aligned"] = {name: (rng.integers(0, SIZES["neurons"], (SIZES[name], 2)),
                              rng.random((SIZES[name], 2)).astype(np.float32))
                       for name in ("sae_8", "sae_16")}
    # Two families: {8:0, 16:0, 16:1} and {8:3, 16:6}; plus a chain through neurons? no:
    data["splits"] = (np.array([0, 0, 3]), np.array([0, 1, 6]),
                      np.array([0.9, 0.5, 0.7], np.float32), np.array([0.8, 0.6, 0.4], np.float32),
                      np.array([1.0, 0.75, 0.9], np.float32))
    return data


def _write(path: Path, data: dict, *, fail_after_examples: bool = False) -> Path:
    with StoreWriter(path, n_tokens=N_TOKENS, run_info={"act_fn": "solu_ln"}) as w:
        for name, n in reversed(list(SIZES.items())):  # declaration order must not matter
            w.add_dictionary(name, n, recipe="l1" if name != "neurons" else None)
        w.set_vocab(VOCAB)
        for name in SIZES:
            d = data[name]
            w.add_feature_summary(name, n_active=d["n_active"], max_act=d["max_act"],
                                  sum_act=d["sum_act"], act_hist_edges=np.logspace(-2, 1, 6),
                                  act_hist_counts=d["act_hist_counts"])
            w.add_interval_counts(name, d["intervals"])
            w.add_examples(name, **d["examples"])
            if fail_after_examples:
                raise RuntimeError("boom")
            w.add_logits(name, **d["logits"])
            w.add_neighbours(name, *d["neighbours"])
            w.add_umap(name, *d["umap"])
            w.add_metrics(name, l0=1.5, fvu=0.2, ce_loss_recovered=0.8, my_extra=7)
        for (a, b), (idx, cos) in data["counterparts"].items():
            w.add_counterparts(a, b, idx, cos)
        for name, (idx, cos) in data["aligned"].items():
            w.add_aligned_neurons(name, idx, cos)
        ia, ib, mc, dc, ct = data["splits"]
        w.add_split_edges("sae_16", ib, "sae_8", ia, mc, dc, ct)  # reversed: writer puts 8 first
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    data = _inputs()
    path = _write(tmp_path_factory.mktemp("fs") / "store", data)
    return path, data


@pytest.fixture(scope="module")
def store(written):
    return FeatureStore.open(written[0])


# -- round trip ----------------------------------------------------------------------------------

def test_dictionaries_neurons_first_then_by_size(store):
    assert store.dictionaries() == ["neurons", "sae_8", "sae_16"]
    assert store.dictionary_info("sae_16")["n_features"] == 16
    assert store.dictionary_info("sae_16")["recipe"] == "l1"
    assert store.run_info()["act_fn"] == "solu_ln"


def test_examples_round_trip(store, written):
    _, data = written
    for name in SIZES:
        ex = data[name]["examples"]
        for i in range(SIZES[name]):
            record = store.feature(name, i)
            got = {(-1, r): e for r, e in enumerate(record.top_examples)}
            for k, interval in enumerate(record.intervals):
                got.update({(k, r): e for r, e in enumerate(interval.examples)})
            rows = np.flatnonzero(ex["feature"] == i)
            assert len(got) == rows.size
            by_kind: dict[int, list[int]] = {}
            for row in rows[np.argsort(ex["rank"][rows], kind="stable")]:
                by_kind.setdefault(int(ex["kind"][row]), []).append(row)
            for kind, kind_rows in by_kind.items():
                for r, row in enumerate(kind_rows):
                    e = got[(kind, r)]
                    keep = ex["token_ids"][row] >= 0
                    ids = ex["token_ids"][row][keep]
                    assert e.token_ids == tuple(ids.tolist())
                    assert e.tokens == tuple(VOCAB[t] for t in ids)
                    assert e.center == 3 - int((~keep[:3]).sum())
                    assert e.token_ids[e.center] == ex["token_ids"][row][3]
                    assert e.seq_id == ex["seq_id"][row] and e.position == ex["position"][row]
                    assert e.act == pytest.approx(float(ex["act"][row]))
                    np.testing.assert_array_equal(np.float32(e.acts), ex["acts"][row][keep])
                    np.testing.assert_array_equal(np.float32(e.ablation),
                                                  ex["ablation"][row][keep])


def test_intervals_are_eleven_equal_bins_with_shares(store, written):
    _, data = written
    for name in SIZES:
        d = data[name]
        for i in range(SIZES[name]):
            record = store.feature(name, i)
            assert len(record.intervals) == N_INTERVALS == 11
            counts = d["intervals"][i]
            total = counts.sum()
            for k, interval in enumerate(record.intervals):
                assert interval.count == counts[k]
                assert interval.share == pytest.approx(counts[k] / total if total else 0.0)
                assert interval.lo == pytest.approx(k * float(d["max_act"][i]) / 11)
                assert interval.hi == pytest.approx((k + 1) * float(d["max_act"][i]) / 11)
            assert record.max_act == pytest.approx(float(d["max_act"][i]))


def test_summary_logits_and_neighbours_round_trip(store, written):
    _, data = written
    for name in SIZES:
        d = data[name]
        lg = d["logits"]
        for i in range(SIZES[name]):
            r = store.feature(name, i)
            assert (r.n_active, r.n_tokens, r.n_features) == (d["n_active"][i], N_TOKENS,
                                                             SIZES[name])
            assert r.density == pytest.approx(d["n_active"][i] / N_TOKENS)
            assert r.density_class == ("dead" if d["n_active"][i] == 0 else
                                       "normal" if d["n_active"][i] / N_TOKENS <= 0.1 else
                                       "dense")
            mean = d["sum_act"][i] / d["n_active"][i] if d["n_active"][i] else 0.0
            assert r.mean_act == pytest.approx(mean, rel=1e-6)
            assert r.act_histogram.counts == tuple(d["act_hist_counts"][i].tolist())
            assert r.act_histogram.edges == pytest.approx(np.logspace(-2, 1, 6).tolist())
            assert [(e.token_id, e.token) for e in r.top_logits] == \
                [(int(t), VOCAB[t]) for t in lg["top_ids"][i]]
            np.testing.assert_array_equal(np.float32([e.value for e in r.bottom_logits]),
                                          lg["bottom_values"][i])
            assert r.logit_histogram.counts == tuple(lg["hist_counts"][i].tolist())
            assert len(r.logit_histogram.edges) == len(r.logit_histogram.counts) + 1
            idx, cos = d["neighbours"]
            keep = idx[i] >= 0
            assert [(n.dictionary, n.index) for n in r.neighbours] == \
                [(name, int(j)) for j in idx[i][keep]]
            np.testing.assert_array_equal(np.float32([n.cosine for n in r.neighbours]),
                                          cos[i][keep])
            others = [o for o in store.dictionaries() if o != name]
            assert [o for o, _ in r.counterparts] == others
            for other, near in r.counterparts:
                c_idx, _ = data["counterparts"][(name, other)]
                assert [(n.dictionary, n.index) for n in near] == \
                    [(other, int(j)) for j in c_idx[i]]
            if name in data["aligned"]:
                assert [n.index for n in r.aligned_neurons] == \
                    data["aligned"][name][0][i].tolist()
            else:
                assert r.aligned_neurons == ()


def test_families_are_connected_components_of_split_edges(store):
    fam = store.family("sae_16", 1)
    assert fam is not None
    assert fam.members == (("sae_8", 0), ("sae_16", 0), ("sae_16", 1))
    assert {(e.index_a, e.index_b) for e in fam.edges} == {(0, 0), (0, 1)}
    assert all(e.dictionary_a == "sae_8" and e.dictionary_b == "sae_16" for e in fam.edges)
    other = store.family("sae_8", 3)
    assert other.members == (("sae_8", 3), ("sae_16", 6)) and other.family_id != fam.family_id
    assert store.family("sae_16", 2) is None
    edges = store.splits("sae_16", "sae_8")
    assert len(edges) == 3 and set(edges["dictionary_a"]) == {"sae_8"}
    assert len(store.splits()) == 3 and len(store.splits("neurons")) == 0


def test_no_split_edges_between_dictionaries_means_no_families(tmp_path):
    """Small dictionaries can share no split edge at all; the stats stage still hands the
    writer its (empty) edge list, and the store must close with no families, not crash."""
    data = _inputs()
    data["splits"] = tuple(np.zeros(0, a.dtype) for a in data["splits"])
    store = FeatureStore.open(_write(tmp_path / "store", data))
    assert len(store.splits()) == 0 and store.family("sae_16", 1) is None


def test_tables_for_browsing(store, written):
    _, data = written
    frame = store.features("sae_16")
    assert list(frame["index"]) == list(range(16))
    for col in ("density", "n_active", "mean_act", "max_act", "density_class", "top_tokens",
                "top_logits"):
        assert col in frame.columns
    np.testing.assert_array_equal(frame["n_active"], data["sae_16"]["n_active"])
    top_ids = data["sae_16"]["logits"]["top_ids"]
    assert frame["top_logits"][2] == " ".join(VOCAB[t] for t in top_ids[2])
    frame.loc[0, "top_tokens"] = "changed"  # a copy: the store must not see it
    assert store.features("sae_16")["top_tokens"][0] != "changed"

    metrics = store.metrics()
    assert list(metrics["dictionary"]) == store.dictionaries()
    assert {"n_features", "l0", "fvu", "ce_loss_recovered", "dead_fraction",
            "my_extra"} <= set(metrics.columns)
    assert metrics.set_index("dictionary").loc["sae_8", "dead_fraction"] == pytest.approx(
        np.mean(data["sae_8"]["n_active"] == 0))

    umap = store.umap()
    assert len(umap) == sum(SIZES.values())
    row = umap[(umap["dictionary"] == "sae_8") & (umap["index"] == 2)].iloc[0]
    assert row["x"] == pytest.approx(float(data["sae_8"]["umap"][0][2]))
    assert row["density"] == pytest.approx(data["sae_8"]["n_active"][2] / N_TOKENS)

    hist = store.density_histograms()
    assert list(hist.columns[:4]) == ["dictionary", "bin_lo", "bin_hi", "count"]
    alive = (data["sae_16"]["n_active"] > 0).sum()
    assert hist[hist["dictionary"] == "sae_16"]["count"].sum() == alive
    assert store.vocab()["display"].tolist() == VOCAB


def test_pandas_reads_every_table_as_is(written):
    path, _ = written
    files = sorted(path.rglob("*.parquet"))
    assert len(files) == 6 + 4 * len(SIZES)
    rows = json.loads((path / schema.MANIFEST).read_text())["tables"]
    for file in files:
        rel = str(file.relative_to(path))
        frame = pd.read_parquet(file)
        table = rel.split("/")[0]
        columns = (schema.TABLE_SCHEMAS[table].names if table in schema.TABLE_SCHEMAS
                   else list(schema.METRIC_COLUMNS) + ["my_extra"])
        assert (list(frame.columns), len(frame)) == (columns, rows[rel]), rel
    features = pd.read_parquet(path / schema.FEATURES)  # hive partitions → a dictionary column
    assert len(features) == sum(SIZES.values())
    assert set(features["dictionary"].astype(str)) == set(SIZES)
    manifest = json.loads((path / schema.MANIFEST).read_text())
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert set(manifest["tables"]) == {str(f.relative_to(path)) for f in files}


def test_every_table_is_written_with_its_schema(written):
    """The writer and the reader share one description of each table: schema.TABLE_SCHEMAS."""
    path, _ = written
    tables = [schema.partition_path(t, n) for t in schema.PER_DICTIONARY_TABLES for n in SIZES]
    tables += [schema.VOCAB, schema.DENSITY_HISTOGRAMS, schema.SPLITS, schema.FAMILIES,
               schema.UMAP]
    for rel in tables:
        want = schema.TABLE_SCHEMAS[rel.split("/")[0]]
        assert pq.read_schema(path / rel).remove_metadata().equals(want), rel
    assert pq.read_schema(path / schema.METRICS).names[:len(schema.METRIC_COLUMNS)] == \
        list(schema.METRIC_COLUMNS)


def test_dictionary_sort_key_orders_neurons_then_sizes_then_names():
    entries = [("sae_b", "sae", 64), ("sae_32", "sae", 32), ("neurons", "neurons", 512),
               ("sae_a", "sae", 64), ("sae_2048", "sae", 2048)]
    ordered = sorted(entries, key=lambda e: schema.dictionary_sort_key(*e))
    assert [e[0] for e in ordered] == ["neurons", "sae_32", "sae_a", "sae_b", "sae_2048"]


def test_neuron_dictionaries_sort_first_by_name_alone():
    """`neurons_pre_ln` is a neuron dictionary: with the neurons, before every SAE, even one
    of the same size whose name sorts before it."""
    assert [schema.is_neurons(n) for n in ("neurons", "neurons_pre_ln", "sae_64")] == \
        [True, True, False]
    sizes = {"sae_128": 128, "sae_64": 64, "neurons_pre_ln": 64, "neurons": 64, "sae_32": 32}
    ordered = sorted(sizes, key=lambda n: schema.dictionary_order_key(n, sizes[n]))
    assert ordered == ["neurons", "neurons_pre_ln", "sae_32", "sae_64", "sae_128"]


def test_study_store_rows_in_dictionary_order(tmp_path):
    from feature_store.study_store import StudyStore, write_study_store

    def record(dictionary: str, n: int) -> dict:
        units = np.zeros(n)
        return {"variant": "a", "other": "b", "dictionary": dictionary, "n_active": units,
                "best_match": units, "best_corr": units, "second_match": units,
                "second_corr": units, "logit_corr": units, "decoder_cosine": units,
                "directions_comparable": False, "same_model": False, "n_tokens": 10}

    records = [record("sae_128", 128), record("sae_32", 32), record("neurons_pre_ln", 64),
               record("neurons", 64)]
    write_study_store(tmp_path, [{"name": "a", "store": "a"}, {"name": "b", "store": "b"}],
                      records, n_tokens=10)
    summary = StudyStore.open(tmp_path).summary()
    assert list(summary["dictionary"]) == ["neurons", "neurons_pre_ln", "sae_32", "sae_128"]


def test_density_classes_at_the_thresholds():
    lo, hi = schema.ULTRALOW_DENSITY, schema.DENSE_DENSITY
    density = [0.0, lo / 2, lo, hi, np.nextafter(hi, 1), 1.0]
    assert schema.density_classes(density).tolist() == [
        "dead", "ultralow", "normal", "normal", "dense", "dense"]
    assert set(schema.DENSITY_CLASSES) == {"dead", "ultralow", "normal", "dense"}


def test_concurrent_reads_agree(store):
    expected = {i: store.feature("sae_16", i) for i in range(16)}
    fresh = FeatureStore.open(store.path)  # nothing loaded yet: threads race to load
    results: dict[int, object] = {}
    expected = dict(sorted(expected.items()))

    def read(i: int) -> None:
        results[i] = fresh.feature("sae_16", i)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = dict(sorted(results.items()))
    assert repr(results) == repr(expected)  # repr: NaN ablations compare unequal with ==


# -- bad requests --------------------------------------------------------------------------------

@pytest.mark.parametrize("dictionary, index", [("sae_32", 0), ("neurons", -1), ("neurons", 6),
                                               ("sae_16", 16), ("sae_16", "3"), ("sae_16", 2.0),
                                               ("sae_16", True)])
def test_feature_not_found(store, dictionary, index):
    with pytest.raises(FeatureNotFound) as err:
        store.feature(dictionary, index)
    assert isinstance(err.value, LookupError) and isinstance(err.value, StoreError)
    assert str(index) in str(err.value) or repr(index) in str(err.value)


def test_unknown_dictionary_everywhere(store):
    for call in (lambda: store.features("x"), lambda: store.family("x", 0),
                 lambda: store.splits("x"), lambda: store.dictionary_info("x")):
        with pytest.raises(FeatureNotFound, match="'x'"):
            call()
    with pytest.raises(FeatureNotFound, match="16 features"):
        store.family("sae_16", 99)


# -- staging -------------------------------------------------------------------------------------

def test_exception_leaves_nothing(tmp_path):
    path = tmp_path / "store"
    with pytest.raises(RuntimeError, match="boom"):
        _write(path, _inputs(), fail_after_examples=True)
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_old_store(tmp_path, written):
    path = _write(tmp_path / "store", _inputs(1))
    before = FeatureStore.open(path).feature("sae_8", 0)
    with pytest.raises(RuntimeError):
        _write(path, _inputs(2), fail_after_examples=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert repr(FeatureStore.open(path).feature("sae_8", 0)) == repr(before)  # NaN-safe


def test_missing_required_part_fails_at_close_and_leaves_nothing(tmp_path):
    path = tmp_path / "store"
    w = StoreWriter(path, n_tokens=100)
    w.add_dictionary("sae_8", 8)
    w.set_vocab(VOCAB)
    w.add_interval_counts("sae_8", np.zeros((8, 11), dtype=int))
    with pytest.raises(ValueError, match="add_feature_summary"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_shapes_and_ranges(tmp_path):
    w = StoreWriter(tmp_path / "store", n_tokens=100)
    w.add_dictionary("sae_8", 8)
    with pytest.raises(ValueError, match="shape"):
        w.add_interval_counts("sae_8", np.zeros((8, 10), dtype=int))
    one = {"feature": [8], "kind": [0], "rank": [0], "seq_id": [0], "position": [0],
           "center": [0], "act": [1.0], "token_ids": [[1, 2]], "acts": [[1, 0]],
           "ablation": [[0, np.nan]]}
    with pytest.raises(ValueError, match="outside"):
        w.add_examples("sae_8", **one)
    with pytest.raises(ValueError, match="not declared"):
        w.add_neighbours("sae_9", np.zeros((8, 1), int), np.zeros((8, 1)))
    with pytest.raises(ValueError, match="NaN"):
        w.add_umap("sae_8", np.full(8, np.nan), np.zeros(8))
    w.add_examples("sae_8", **{**one, "feature": [5]})
    with pytest.raises(ValueError, match="higher features"):
        w.add_examples("sae_8", **{**one, "feature": [2]})
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_only_the_ablation_column_may_hold_nan(tmp_path):
    """NaN is allowed by the column, not by a word in the message: a dictionary whose name
    says "ablation" gets no pass for NaN activations."""
    w = StoreWriter(tmp_path / "store", n_tokens=100)
    w.add_dictionary("sae_ablation", 8)
    one = {"feature": [0], "kind": [0], "rank": [0], "seq_id": [0], "position": [0],
           "center": [0], "act": [1.0], "token_ids": [[1, 2]], "acts": [[1, 0]],
           "ablation": [[0, np.nan]]}
    with pytest.raises(ValueError, match="sae_ablation: examples acts: contains NaN"):
        w.add_examples("sae_ablation", **{**one, "acts": [[1, np.nan]]})
    w.add_examples("sae_ablation", **one)  # NaN at the window's end of the ablation column
    w.abort()


# -- bad stores ----------------------------------------------------------------------------------

@pytest.fixture
def copy(written, tmp_path):
    import shutil
    dst = tmp_path / "run" / "store"
    shutil.copytree(written[0], dst)
    return dst


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore.open(tmp_path / "nope")


def test_only_incomplete_store(tmp_path):
    (tmp_path / "store.incomplete").mkdir()
    with pytest.raises(StoreError, match="interrupted"):
        FeatureStore.open(tmp_path / "store")


def test_missing_manifest(copy):
    (copy / schema.MANIFEST).unlink()
    with pytest.raises(StoreError, match=r"manifest\.json: missing"):
        FeatureStore.open(copy)


@pytest.mark.parametrize("version", [schema.SCHEMA_VERSION + 1, schema.SCHEMA_VERSION - 1, None])
def test_wrong_schema_version(copy, version):
    manifest = json.loads((copy / schema.MANIFEST).read_text())
    manifest["schema_version"] = version
    (copy / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as err:
        FeatureStore.open(copy)
    message = str(err.value)
    assert f"schema {version}, this reader knows {schema.SCHEMA_VERSION}" in message
    assert "manifest.json" in message and "rebuild" in message


@pytest.mark.parametrize("table", [schema.EXAMPLES, schema.FEATURES, schema.LOGITS])
def test_truncated_parquet(copy, table):
    file = copy / schema.partition_path(table, "sae_16")
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError) as err:
        FeatureStore.open(copy)
    assert str(file) in str(err.value) and "truncated" in str(err.value)


@pytest.mark.parametrize("table, column", [(schema.FEATURES, "interval_counts"),
                                           (schema.LOGITS, "side"), (schema.UMAP, "x")])
def test_wrong_column_type(copy, table, column):
    """A column of another type is a wrong-schema store, named, not a traceback later."""
    rel = schema.UMAP if table == schema.UMAP else schema.partition_path(table, "sae_16")
    file = copy / rel
    data = pq.read_table(file)
    index = data.schema.get_field_index(column)
    data = data.set_column(index, column, pa.array([0] * data.num_rows, pa.int64()))
    pq.write_table(data, file)
    with pytest.raises(StoreError) as err:
        FeatureStore.open(copy)
    assert str(file) in str(err.value) and f"column {column} is int64" in str(err.value)


def test_missing_table(copy):
    file = copy / schema.UMAP
    file.unlink()
    with pytest.raises(StoreError, match="umap.parquet: missing"):
        FeatureStore.open(copy)


def test_garbled_manifest(copy):
    (copy / schema.MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json: unreadable"):
        FeatureStore.open(copy)


# -- synthetic store -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "store"
    return FeatureStore.open(build_synthetic_store(path, (32, 64), d_mlp=16, n_tokens=200_000,
                                                   d_vocab=300))


def test_synthetic_has_every_part(synthetic):
    assert synthetic.dictionaries() == ["neurons", "sae_32", "sae_64"]
    classes = set(synthetic.features("sae_64")["density_class"])
    assert {"normal", "dead"} <= classes
    assert len(synthetic.splits()) > 0 and len(synthetic.umap()) == 16 + 32 + 64
    record = synthetic.feature("sae_64", 0)
    assert len(record.intervals) == 11 and record.top_examples and record.counterparts
    assert sum(i.count for i in record.intervals) == record.n_active
    assert all(math.isnan(e.ablation[-1]) for e in record.top_examples)
    edge = synthetic.splits().iloc[0]
    assert synthetic.family(edge["dictionary_a"], int(edge["index_a"])) is not None


def test_synthetic_feature_zero_shows_hostile_tokens(synthetic):
    for name in synthetic.dictionaries():
        record = synthetic.feature(name, 0)
        shown = {t for e in record.top_examples for t in e.tokens}
        shown |= {t for i in record.intervals for e in i.examples for t in e.tokens}
        assert set(HOSTILE_TOKENS) <= shown, name
        assert set(HOSTILE_TOKENS) <= {e.token for e in record.top_logits}, name


def test_synthetic_cli(tmp_path, capsys):
    from feature_store.synthetic import main

    assert main([str(tmp_path / "s"), "--sizes", "8,16", "--d-mlp", "4"]) == 0
    assert "-> " in capsys.readouterr().out
    assert FeatureStore.open(tmp_path / "s").dictionaries() == ["neurons", "sae_8", "sae_16"]
    assert main([str(tmp_path / "t"), "--sizes", "8,x"]) == 2
    assert not (tmp_path / "t").exists()


def test_duckdb_reads_the_store(written):
    import duckdb  # in requirements.txt: the schema promises DuckDB reads the store as is
    path, _ = written
    rows = duckdb.sql(
        f"select dictionary, count(*) from read_parquet('{path}/features/*/*.parquet', "
        "hive_partitioning=true) group by 1 order by 1").fetchall()
    assert rows == sorted(SIZES.items())
    n = duckdb.sql(f"select count(*) from read_parquet('{path}/examples/*/*.parquet') "
                   "where feature = 2").fetchall()[0][0]
    assert n == sum(int((d["examples"]["feature"] == 2).sum()) for d in
                    (written[1][name] for name in SIZES))


def test_importing_does_not_import_torch():
    code = ("import sys, feature_store, feature_store.synthetic, feature_store.schema;"
            "assert 'torch' not in sys.modules and 'pipelines' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_build_stamp_names_the_build_in_place(tmp_path):
    path = tmp_path / "store"
    assert FeatureStore.build_stamp(path) is None
    build_synthetic_store(path, n_features=(8,), d_mlp=4, n_tokens=2_000)
    first = FeatureStore.build_stamp(path)
    assert first is not None and FeatureStore.build_stamp(path) == first
    build_synthetic_store(path, n_features=(8,), d_mlp=4, n_tokens=2_000)  # the same, rebuilt
    assert FeatureStore.build_stamp(path) not in (None, first)
