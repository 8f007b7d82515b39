"""Explaining and scoring in blocks of units on threads (`pipelines/interp/blocks.py`) gives
bit for bit what one pass over the whole dictionary gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from feature_store.store import FeatureStore
from pipelines.config import InterpConfig
from pipelines.data.tokens import read_sequences
from pipelines.interp.blocks import unit_blocks
from pipelines.interp.explainer import Windows, fit_patterns, single_token
from pipelines.interp.stage import fit_dictionary, score_dictionary


@pytest.fixture(scope="module")
def sae_sets(mini_run):
    from pipelines.activations.windows import WindowSpan
    from pipelines.interp.sets import explain_windows, score_windows
    from pipelines.model.readout import logit_weights
    from pipelines.stats.dictionaries import load_run_units

    units = load_run_units(mini_run, "cpu")
    d = next(d for d in units.dictionaries if d.kind == "sae")
    store = FeatureStore.open(mini_run / "store")
    cfg = InterpConfig(explain_tokens=8192, random_windows=16)
    examples = {x.name: store.example_windows(x.name) for x in units.dictionaries}
    span = WindowSpan.of_examples(examples["neurons"].center,
                                  examples["neurons"].token_ids.shape[1], "store")
    explain = explain_windows(mini_run / "activations",
                              read_sequences(mini_run / "tokens" / "train.parquet"), [d], cfg,
                              span, units.n_ctx, "cpu")[d.name]
    held_out = score_windows({d.name: examples[d.name]}, mini_run / "activations",
                             read_sequences(mini_run / "tokens" / "val.parquet"), [d], cfg, span,
                             units.n_ctx, "cpu")[d.name]
    return d, cfg, explain, held_out, logit_weights(d.out_dir, units.readout), \
        int(units.model.cfg.d_vocab), store.vocab()["display"].tolist()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_unit_blocks_renumber_units_and_keep_row_order():
    unit = np.array([3, 0, 4, 3, 1, 0, 4])
    w = Windows(unit=unit, tokens=np.arange(14, dtype=np.int32).reshape(7, 2),
                acts=np.zeros((7, 2), np.float32), kind=np.full(7, -1, np.int8),
                seq_id=np.arange(7), position=np.arange(7), split="train")
    blocks = unit_blocks(w, 5, size=2)
    assert [b.unit.tolist() for b in blocks] == [[0, 0, 1], [1, 1], [0, 0]]
    assert [b.seq_id.tolist() for b in blocks] == [[1, 5, 4], [0, 3], [2, 6]]


@pytest.mark.parametrize("block", [7, 32])
def test_blocked_fit_and_score_equal_one_pass(sae_sets, block):
    d, cfg, explain, held_out, weights, d_vocab, display = sae_sets
    assert d.n > block  # several blocks, the last one short
    whole = fit_patterns(explain, d.n, d_vocab, cfg.max_patterns, cfg.max_patterns,
                         cfg.min_support)
    whole_single = single_token(explain, d.n, d_vocab)
    with ThreadPoolExecutor(2) as pool:
        patterns, single = fit_dictionary(explain, d.n, d_vocab, cfg, pool, block=block)
        cols = score_dictionary(patterns, single, [""] * d.n, explain, held_out, weights, cfg,
                                np.random.default_rng(0), display, d_vocab, pool, block=block)
    for f in ("token", "kind", "weight", "next_token", "next_weight"):
        assert _same(getattr(patterns, f), getattr(whole, f)), f
        assert _same(getattr(single, f), getattr(whole_single, f)), f
    one = score_dictionary(whole, whole_single, [""] * d.n, explain, held_out, weights, cfg,
                           np.random.default_rng(0), display, d_vocab, None, block=d.n)
    assert set(cols) == set(one)
    assert np.isfinite(np.asarray(one["sim_top_random"], float)).sum() > d.n // 2
    for name in cols:
        assert _same(cols[name], one[name]), name
