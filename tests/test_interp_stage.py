"""The interp stage on the miniature run: every unit explained and scored, the explain
(training) and score (held-out) windows disjoint by construction, the table read back
through the store's API."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store import schema
from feature_store.store import FeatureStore
from pipelines.config import InterpConfig
from pipelines.interp.sets import check_disjoint, explain_windows, score_windows
from pipelines.data.tokens import read_sequences
from tests.conftest import MINI


@pytest.fixture(scope="module")
def sets(mini_run):
    """Both window sets of the miniature run, built the way the stage builds them."""
    from pipelines.activations.windows import WindowSpan
    from pipelines.stats.dictionaries import load_run_units

    units = load_run_units(mini_run, "cpu")
    n_ctx, dictionaries = units.n_ctx, units.dictionaries
    store = FeatureStore.open(mini_run / "store")
    cfg = InterpConfig(explain_tokens=8192, random_windows=16)
    train = read_sequences(mini_run / "tokens" / "train.parquet")
    val = read_sequences(mini_run / "tokens" / "val.parquet")
    examples = {d.name: store.example_windows(d.name) for d in dictionaries}
    span = WindowSpan.of_examples(examples["neurons"].center,
                                  examples["neurons"].token_ids.shape[1], "store")
    explain = explain_windows(mini_run / "activations", train, dictionaries, cfg, span, n_ctx,
                              "cpu")
    held_out = score_windows(examples, mini_run / "activations", val, dictionaries, cfg, span,
                             n_ctx, "cpu")
    return train, val, explain, held_out, n_ctx


def test_explain_and_score_windows_are_disjoint(sets, mini_run):
    train, val, explain, held_out, n_ctx = sets
    for name in explain:
        e, s = explain[name], held_out[name]
        assert e.split == "train" and s.split == "val"
        assert check_disjoint(train, val, e, s) > 0
        # By content, window by window: no held-out window's tokens occur in the train split
        # at the same place (a window copied across splits would match here).
        train_rows = {train[q].tobytes() for q in np.unique(e.seq_id)}
        assert not any(val[q].tobytes() in train_rows for q in np.unique(s.seq_id))
        # Explain windows come from cached training sequences and read their tokens there.
        for row in range(0, e.unit.size, max(1, e.unit.size // 50)):
            got = e.tokens[row][e.tokens[row] >= 0]
            assert bytes(got.astype(np.int32)) in train[e.seq_id[row]].tobytes()
        for row in range(0, s.unit.size, max(1, s.unit.size // 50)):
            got = s.tokens[row][s.tokens[row] >= 0]
            assert bytes(got.astype(np.int32)) in val[s.seq_id[row]].tobytes()


def test_disjointness_check_catches_a_shared_sequence(sets):
    from pipelines.errors import InputError
    from pipelines.interp.explainer import Windows

    train, val, explain, held_out, _ = sets
    name = next(iter(explain))
    leaked = val.copy()
    e = explain[name]
    leaked[held_out[name].seq_id[0]] = train[e.seq_id[0]]  # a training sequence in val
    with pytest.raises(InputError, match="both the explain"):
        check_disjoint(train, leaked, e, held_out[name])
    with pytest.raises(InputError, match="need train and val"):
        check_disjoint(train, val, e, Windows.concat([e]))


def test_held_out_windows_do_not_depend_on_where_shards_end(sets, mini_run, tmp_path):
    """The score set's random windows come from the whole validation split (cached whole, in
    document order: its first shard would be its first documents alone), so a cache cut into
    other shards (`activations.shard_tokens`) gives the same held-out windows."""
    import shutil

    from pipelines.activations.windows import WindowSpan
    from pipelines.stats.dictionaries import load_run_units
    from tests.helpers.shards import recut

    _, val, _, held_out, n_ctx = sets
    copy = tmp_path / "run"
    shutil.copytree(mini_run / "activations", copy / "activations")
    assert recut(copy, (0.17, 0.5, 0.61), n_ctx) == 4
    units = load_run_units(mini_run, "cpu")
    store = FeatureStore.open(mini_run / "store")
    examples = {d.name: store.example_windows(d.name) for d in units.dictionaries}
    span = WindowSpan.of_examples(examples["neurons"].center,
                                  examples["neurons"].token_ids.shape[1], "store")
    cfg = InterpConfig(explain_tokens=8192, random_windows=16)
    again = score_windows(examples, copy / "activations", val, units.dictionaries, cfg, span,
                          n_ctx, "cpu")
    for name, s in held_out.items():
        for field in ("unit", "tokens", "acts", "kind", "seq_id", "position"):
            assert np.array_equal(getattr(again[name], field), getattr(s, field)), (name, field)
    random = held_out["neurons"].kind == -2
    first_shard = MINI["activations"]["shard_tokens"] // (n_ctx - 1)  # its sequences
    assert (held_out["neurons"].seq_id[random] >= first_shard).any()  # past the first shard


def test_random_and_neighbour_windows_hold_the_units_own_activations(sets):
    """Re-encoded activations agree with the store's windows where both exist."""
    _, _, _, held_out, _ = sets
    for name, s in held_out.items():
        assert (s.kind == -2).sum() == 16 * (s.unit.max() + 1)
        assert np.isfinite(s.acts).all() and (s.acts >= 0).all() or name == "neurons"


def test_stage_writes_every_unit_and_the_store_reads_it(mini_run):
    store = FeatureStore.open(mini_run / "store")
    summary = store.interp_summary()
    assert summary is not None and summary["explain_split"] == "train"
    assert summary["score_split"] == "val"
    for name in store.dictionaries():
        frame = store.explanations(name)
        if "explanations" in store.dictionary_info(name).get("not_applicable", {}):
            assert frame is None  # neurons_pre_ln: says why instead (test_pre_ln_pages)
            continue
        assert len(frame) == store.n_features(name)
        assert list(frame.columns) == schema.EXPLANATIONS_SCHEMA.names
        scored = frame["sim_top_random"].notna()
        assert scored.mean() > 0.5
        med = summary["dictionaries"][name]
        # Explanations beat the shuffled floor by a margin on every dictionary.
        assert med["medians"]["sim_top_random"] > med["controls"]["shuffled"]["sim_top_random"] + 0.2
        assert abs(med["controls"]["shuffled"]["detection"] - 0.5) < 0.1
        rec = store.explanation(name, int(np.flatnonzero(scored)[0]))
        assert rec.explanation and rec.explainer == "token-patterns"
        assert dict(rec.counts)["n_explain_windows"] > 0
    assert store.explanation("neurons", 0) is not None


def test_store_without_explanations_says_none(tmp_path):
    from feature_store.synthetic import build_synthetic_store

    path = build_synthetic_store(tmp_path / "s", n_features=(16,), d_mlp=8, n_tokens=5000,
                                 d_vocab=64)
    store = FeatureStore.open(path)
    assert store.interp_summary() is None
    assert store.explanations("neurons") is None and store.explanation("neurons", 0) is None


def test_neighbour_windows_hold_what_encoding_each_window_gives(mini_run):
    """Neighbour windows encode each distinct token once (`neighbour_windows`); every window's
    activations must be what encoding that window on its own gives, for the unit it is
    scored for, across chunk boundaries (a chunk of 7 tokens here)."""
    import torch

    from pipelines.interp.explainer import NEIGHBOUR
    from pipelines.interp.sets import ShardIndex, neighbour_windows
    from pipelines.stats.dictionaries import load_run_units

    units = load_run_units(mini_run, "cpu")
    store = FeatureStore.open(mini_run / "store")
    val = read_sequences(mini_run / "tokens" / "val.parquet")
    index = ShardIndex(mini_run / "activations", "val", units.n_ctx)
    cfg = InterpConfig()
    for d in units.dictionaries:
        ex = store.example_windows(d.name)
        got = neighbour_windows(ex, d, index, val, cfg, units.n_ctx, "cpu", chunk=7)
        assert (got.kind == NEIGHBOUR).all() and got.unit.size > 0
        w = got.acts.shape[1]
        rng = np.random.default_rng(0)
        for r in rng.choice(got.unit.size, size=min(40, got.unit.size), replace=False).tolist():
            at = np.flatnonzero((ex.seq_id == got.seq_id[r]) & (ex.position == got.position[r]))[0]
            pos = got.position[r] - ex.center[at] + np.arange(w)  # the window the store shows
            valid = (pos >= 1) & (pos <= units.n_ctx - 1) & (got.tokens[r] >= 0)
            x = index.gather(np.array([got.seq_id[r]]), pos[None, :], valid[None, :])
            with torch.no_grad():
                want = d.encode(torch.from_numpy(x))[:, got.unit[r]].numpy()
            np.testing.assert_allclose(got.acts[r], np.where(valid, want, 0.0), rtol=1e-5, atol=1e-6)
            assert got.acts[r][valid].any() or not want[valid].any()
