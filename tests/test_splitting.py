"""Feature-splitting edges (`pipelines/stats/splitting.py`): each measure against brute force, and
the criterion on a synthetic dictionary with planted splits.

Codes go through the real statistics pass (identity "encoders" over the concatenated codes of
both dictionaries, as in test_stats.py), so the accumulators, the orientation from either
anchor and the edge choice are all what the stats stage runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.config import StatsConfig
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.directions import normalized_rows
from pipelines.stats.splitting import SplitCriterion, split_edges
from tests.test_stats import _codes, _run

ANY = SplitCriterion(min_activation_cosine=0.0, min_decoder_cosine=-1.0, min_containment=0.0)


def _pair(codes_a: np.ndarray, codes_b: np.ndarray, dir_a: torch.Tensor, dir_b: torch.Tensor,
          criterion: SplitCriterion, c: int = 3):
    na, nb = codes_a.shape[1], codes_b.shape[1]
    ua = Dictionary("a", na, lambda x: x[:, :na], dir_a, torch.zeros(na, 8))
    ub = Dictionary("b", nb, lambda x: x[:, na:], dir_b, torch.zeros(nb, 8))
    passes = _run(np.concatenate([codes_a, codes_b], 1),
                  StatsConfig(split_candidates=c, umap=False), [ua, ub], [("a", "b")])
    out = split_edges(passes.split_candidates, {k: s.sumsq for k, s in passes.stats.items()},
                      {k: s.n_active for k, s in passes.stats.items()}, [ua, ub],
                      passes.n_tokens, criterion)
    return out[0] if out else None


def test_measures_match_brute_force_and_each_child_keeps_its_closest_parent():
    codes_a = _codes(30, 5, 0.4, seed=3)
    codes_b = _codes(30, 10, 0.4, seed=4)
    codes_b[:, :5] += codes_a * 2.0  # overlapping supports
    torch.manual_seed(2)
    dir_a, dir_b = torch.randn(5, 16), torch.randn(10, 16)
    edges = _pair(codes_a, codes_b, dir_a, dir_b, ANY)
    assert (edges.small, edges.large) == ("a", "b") and len(edges) > 0
    a64, b64 = codes_a.astype(np.float64), codes_b.astype(np.float64)
    for p, c, act, dec, cont in zip(edges.index_small, edges.index_large, edges.masked_cosine,
                                    edges.decoder_cosine, edges.containment):
        x, y = a64[:, p], b64[:, c]
        on_child = y > 0
        assert act == pytest.approx(x @ y / np.sqrt((x[on_child] @ x[on_child]) * (y @ y)),
                                    rel=1e-5)
        assert cont == pytest.approx((y[x > 0] @ y[x > 0]) / (y @ y), rel=1e-5)
    cos = normalized_rows(dir_a) @ normalized_rows(dir_b).T
    np.testing.assert_allclose(edges.decoder_cosine, cos[edges.index_small, edges.index_large],
                               rtol=1e-5, atol=1e-6)
    # candidates: for every feature of either side its 3 nearest by decoder cosine; each child
    # keeps the candidate parent with the closest direction (a forest)
    assert len(set(edges.index_large.tolist())) == len(edges)
    parent = dict(zip(edges.index_large.tolist(), edges.index_small.tolist()))
    for b in range(10):
        cands = set(cos[:, b].topk(3).indices.tolist())
        cands |= {a for a in range(5) if b in cos[a].topk(3).indices.tolist()}
        assert parent[b] == max(cands, key=lambda a: cos[a, b].item())


def _planted(seed: int = 0):
    """A small dictionary of 8 parents (+4 dense unrelated features) and a large one where
    each parent splits into 3 children that partition its support (with a little stray
    activity outside it, and directions at cosine 0.55-0.9 from the parent's), plus two kinds of
    impostors a splitting rule must reject:
    - nested: fires only inside a parent's support (so inside-its-mask measures look perfect)
      but points elsewhere (decoder cosine 0.3 with that parent, as on the tiny run);
    - elsewhere: points near a parent (cosine 0.7) but fires on unrelated tokens.
    Returns codes, directions and the true parent -> child edges."""
    rng = np.random.default_rng(seed)
    n_tok, d, n_par, n_child = 12_000, 64, 8, 3  # n_tok: whole sequences of test_stats' 8

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def at_cos(base, cosine):
        ortho = rng.normal(size=base.shape)
        ortho = unit(ortho - (ortho * base).sum(-1, keepdims=True) * base)
        return cosine * base + np.sqrt(1 - cosine ** 2) * ortho

    par_dir = unit(rng.normal(size=(n_par + 4, d)))
    small = np.zeros((n_tok, n_par + 4))
    for p in range(n_par):
        on = rng.random(n_tok) < 0.06
        small[on, p] = rng.exponential(size=on.sum()) + 0.5
    for p in range(n_par, n_par + 4):  # dense unrelated small features
        on = rng.random(n_tok) < 0.25
        small[on, p] = rng.exponential(size=on.sum()) + 0.5
    large_cols, large_dirs, truth = [], [], set()
    for p in range(n_par):
        support = np.flatnonzero(small[:, p] > 0)
        part = rng.integers(0, n_child, support.size)
        for c in range(n_child):
            col = np.zeros(n_tok)
            rows = support[part == c]
            col[rows] = small[rows, p] * rng.uniform(0.7, 1.3, rows.size)
            stray = rng.choice(np.flatnonzero(small[:, p] == 0), rows.size // 10)
            col[stray] = rng.exponential(0.3, stray.size)  # a little activity off the parent
            truth.add((p, len(large_cols)))
            large_cols.append(col)
            large_dirs.append(at_cos(par_dir[p], rng.uniform(0.55, 0.9)))
    for p in range(n_par):  # nested impostors
        support = np.flatnonzero(small[:, p] > 0)
        rows = rng.choice(support, support.size // 4, replace=False)
        col = np.zeros(n_tok)
        col[rows] = rng.exponential(size=rows.size) + 0.5
        large_cols.append(col)
        large_dirs.append(at_cos(par_dir[p], 0.3))
    for p in range(4):  # near a parent's direction, firing elsewhere
        col = np.zeros(n_tok)
        on = rng.random(n_tok) < 0.05
        col[on] = rng.exponential(size=on.sum()) + 0.5
        large_cols.append(col)
        large_dirs.append(at_cos(par_dir[p], 0.7))
    large = np.stack(large_cols, 1)
    return (small.astype(np.float32), large.astype(np.float32),
            torch.tensor(par_dir, dtype=torch.float32),
            torch.tensor(np.stack(large_dirs), dtype=torch.float32), truth)


def _precision_recall(edges, truth) -> tuple[float, float]:
    found = set(zip(edges.index_small.tolist(), edges.index_large.tolist())) if edges else set()
    hit = len(found & truth)
    return hit / max(1, len(found)), hit / len(truth)


def test_planted_splits_are_recovered_and_impostors_rejected():
    small, large, dir_s, dir_l, truth = _planted()
    edges = _pair(small, large, dir_s, dir_l, SplitCriterion.from_config(StatsConfig()))
    precision, recall = _precision_recall(edges, truth)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_a_rule_without_the_direction_and_containment_gates_takes_the_impostors():
    """The same data under activation cosine alone (the old rule's spirit): impostors come in,
    so the planted test above can fail."""
    small, large, dir_s, dir_l, truth = _planted()
    loose = SplitCriterion(min_activation_cosine=0.4, min_decoder_cosine=-1.0,
                           min_containment=0.0)
    precision, _ = _precision_recall(_pair(small, large, dir_s, dir_l, loose), truth)
    assert precision < 0.9
