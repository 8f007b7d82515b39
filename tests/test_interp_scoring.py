"""The offline explainer and the scorers on planted units: they must find what was planted,
and a wrong (shuffled) explanation must score at chance."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.interp.explainer import (NEIGHBOUR, RANDOM, Windows, describe, fit_patterns,
                                        pearson_by_unit, simulate, single_token)
from pipelines.interp.scoring import derangement, logit_auc, score

V, W = 50, 9  # vocab, window width
CENTRE = 6


def _stream(rng, n_seq=400, length=64):
    return rng.integers(0, V, size=(n_seq, length)).astype(np.int32)


def _acts(tokens):
    """Unit 0 fires on token 7 (3.0); unit 1 on any token right after token 9 (2.0);
    unit 2 is noise, firing on a random 5% of tokens whatever they are."""
    rng = np.random.default_rng(tokens.shape[0])
    a = np.zeros(tokens.shape + (3,), np.float32)
    a[..., 0] = np.where(tokens == 7, 3.0, 0.0)
    prev = np.full_like(tokens, -1)
    prev[:, 1:] = tokens[:, :-1]
    a[..., 1] = np.where(prev == 9, 2.0, 0.0)
    a[..., 2] = np.where(rng.random(tokens.shape) < 0.05, rng.exponential(size=tokens.shape), 0)
    return a


def _windows(tokens, acts, split, rng, n_top=20, n_random=40, n_units=3):
    """Top windows per unit, plus the same random windows for every unit."""
    S, L = tokens.shape
    starts = lambda seq, pos: (seq, np.clip(pos - CENTRE, 0, L - W))  # noqa: E731
    parts = []
    for u in range(n_units):
        flat = np.argsort(-acts[..., u].ravel(), kind="stable")[:n_top]
        seq, pos = np.unravel_index(flat, (S, L))
        parts.append((np.full(n_top, u), seq, pos, -1))
        rs, rp = rng.integers(0, S, n_random), rng.integers(0, L, n_random)
        parts.append((np.full(n_random, u), rs, rp, RANDOM))
    unit = np.concatenate([p[0] for p in parts])
    seq = np.concatenate([p[1] for p in parts])
    pos = np.concatenate([p[2] for p in parts])
    kind = np.concatenate([np.full(p[0].size, p[3], np.int8) for p in parts])
    _, lo = starts(seq, pos)
    cols = lo[:, None] + np.arange(W)[None, :]
    before = np.where(lo > 0, tokens[seq, np.maximum(lo - 1, 0)], -1).astype(np.int32)
    return Windows(unit=unit, tokens=tokens[seq[:, None], cols],
                   acts=acts[seq[:, None], cols, unit[:, None]], kind=kind, seq_id=seq,
                   position=pos, split=split, before=before)


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    train, val = _stream(rng), _stream(rng)
    explain = _windows(train, _acts(train), "train", rng)
    held_out = _windows(val, _acts(val), "val", rng)
    return explain, held_out


def _scores(patterns, held_out, n=3):
    top = np.array([[7, 8], [10, 11], [1, 2]], np.int32)
    rand = np.array([[20, 21, 22], [23, 24, 25], [26, 27, 28]], np.int32)
    sim = simulate(patterns, held_out)
    return score(patterns, sim, held_out, np.full(n, 0.3), top, rand)


def test_planted_units_are_found_and_score_near_one(planted):
    explain, held_out = planted
    p = fit_patterns(explain, 3, V)
    text = describe(p, [f"t{i}" for i in range(V)])
    assert text[0].startswith('"t7" 1.00'), text[0]
    assert text[1].startswith('after "t9" 1.00'), text[1]
    s = _scores(p, held_out)
    for u in (0, 1):
        assert s["sim_top_random"][u] == pytest.approx(1.0, abs=1e-6)
        assert s["sim_random"][u] == pytest.approx(1.0, abs=1e-6)
        assert s["detection"][u] == pytest.approx(1.0)
    assert s["sim_top_random"][2] < 0.3  # noise has no token pattern that generalises


def test_shuffled_explanations_score_at_chance():
    """Many planted single-token units, each scored with another unit's explanation."""
    rng = np.random.default_rng(1)
    n = 40
    train, val = _stream(rng, 800), _stream(rng, 800)

    def acts(tokens):
        return np.stack([np.where(tokens == u, 1.0 + u / n, 0.0) for u in range(n)],
                        axis=-1).astype(np.float32)

    explain = _windows(train, acts(train), "train", rng, n_units=n)
    held_out = _windows(val, acts(val), "val", rng, n_units=n)
    p = fit_patterns(explain, n, V)
    shuffled = p.permuted(derangement(n, rng))
    top = np.arange(n, dtype=np.int32)[:, None]
    rand = np.full((n, 1), V + 1, np.int32)
    own = score(p, simulate(p, held_out), held_out, np.full(n, 0.5),
                top, rand)
    wrong = score(shuffled, simulate(shuffled, held_out), held_out,
                  np.full(n, 0.5), top, rand)
    assert np.median(own["sim_top_random"]) > 0.99
    assert np.median(own["detection"]) > 0.99
    assert abs(np.nanmedian(wrong["sim_top_random"])) < 0.1
    assert abs(np.nanmedian(wrong["detection"]) - 0.5) < 0.05


def test_single_token_control_keeps_one_current_token(planted):
    explain, held_out = planted
    p = single_token(explain, 3, V)
    assert int(p.token[0, 0]) == 7
    assert (p.weight[:, 1:] == 0).all() if p.weight.shape[1] > 1 else True
    s = _scores(p, held_out)
    assert s["sim_top_random"][0] == pytest.approx(1.0, abs=1e-6)
    assert s["sim_top_random"][1] < 0.5  # "after 9" is not a single current token


def test_neighbour_negatives_are_counted_apart_from_random_ones(planted):
    explain, held_out = planted
    p = fit_patterns(explain, 3, V)
    # Neighbour windows for unit 0: unit 1's top windows, on which unit 0 is mostly silent.
    nb = held_out.select(held_out.unit == 1)
    nb = Windows(unit=np.zeros_like(nb.unit), tokens=nb.tokens,
                 acts=np.where(nb.tokens == 7, 3.0, 0.0).astype(np.float32),
                 kind=np.full(nb.unit.size, NEIGHBOUR, np.int8), seq_id=nb.seq_id,
                 position=nb.position, split="val")
    both = Windows.concat([held_out, nb])
    sim = simulate(p, both)
    s = score(p, sim, both, np.full(3, 0.3), np.zeros((3, 1), np.int32),
              np.ones((3, 1), np.int32))
    assert s["n_detection_neighbour"][0] > 0 and s["n_detection_neighbour"][1] == 0
    assert s["detection_neighbours"][0] == pytest.approx(1.0)
    assert np.isnan(s["detection_neighbours"][1])


def test_pearson_matches_numpy_and_flags_constants():
    rng = np.random.default_rng(2)
    unit = np.repeat(np.arange(4), 5)
    pred = rng.random((20, 7)).astype(np.float32)
    true = rng.random((20, 7)).astype(np.float32)
    true[unit == 2] = 0.5  # nothing to predict: NaN
    pred[unit == 3] = 0.0  # predicts nothing: 0
    r = pearson_by_unit(unit, pred, true, 4)
    for u in (0, 1):
        want = np.corrcoef(pred[unit == u].ravel(), true[unit == u].ravel())[0, 1]
        assert r[u] == pytest.approx(want, abs=1e-6)
    assert np.isnan(r[2]) and r[3] == 0.0


def test_logit_auc_is_half_without_next_tokens_and_one_when_named(planted):
    explain, _ = planted
    p = fit_patterns(explain, 3, V)
    none = p.permuted(np.arange(3))
    none.next_weight[:] = 0
    top = np.array([[5], [5], [5]], np.int32)
    rand = np.array([[6, 7], [6, 7], [6, 7]], np.int32)
    assert np.allclose(logit_auc(none, top, rand), 0.5)
    named = p.permuted(np.arange(3))
    named.next_token[:, 0], named.next_weight[:, 0] = 5, 1.0
    assert np.allclose(logit_auc(named, top, rand), 1.0)


def test_fitting_refuses_held_out_windows_and_scoring_refuses_training_ones(planted):
    explain, held_out = planted
    with pytest.raises(ValueError, match="training"):
        fit_patterns(held_out, 3, V)
    p = fit_patterns(explain, 3, V)
    with pytest.raises(ValueError, match="held-out"):
        score(p, simulate(p, explain), explain, np.ones(3),
              np.zeros((3, 1), np.int32), np.zeros((3, 1), np.int32))
