"""Scorers: how well an explanation predicts a unit on held-out examples it never saw.

The same three for every explainer; each takes the explanation only through its simulator's
per-token predictions (`pipelines/interp/explainer.py`, or an LLM's), so explainers are
compared on equal terms.

- simulation (Bills et al. 2023): Pearson correlation between simulated and true activations
  over every token of the score windows. "top_random": the unit's top windows, its interval
  windows and random windows together; "random": random windows alone (NaN when the unit
  never fires there: nothing to predict; a simulation that predicts a constant scores 0).
- detection (EleutherAI delphi): a window "fires" when the unit's largest activation in it
  reaches `fire_fraction` of the unit's largest activation in the set (Bills et al.'s 0-10
  scale rounds anything lower to 0); the explanation says a window fires when its simulation
  reaches a cut somewhere in it. The cut is chosen per unit on the *training* windows
  (`detection_cut`: the pattern weight that best separates firing top/interval windows from
  silent random ones there), so a weak fifth pattern does not flag every window. Balanced accuracy over the firing top and interval windows
  against non-firing random windows ("detection"), and against non-firing windows taken from
  the unit's nearest neighbours' top examples ("detection_neighbours": similar-looking text
  on which this unit stays silent, which delphi found far harder). 0.5 is chance.
- logits (Towards Monosemanticity's logit-weight test): does the explanation pick the unit's
  top positive-logit tokens out of random vocabulary tokens? Each candidate is scored by the
  explanation's next-token weight for it, and the score is the AUC (the chance that a top
  token outranks a random one, ties counted half): 0.5 is chance.
"""

from __future__ import annotations

import numpy as np

from pipelines.interp.explainer import NEIGHBOUR, RANDOM, Patterns, Windows, pearson_by_unit

SCORES = ("sim_top_random", "sim_random", "detection", "detection_neighbours", "logits")


def window_fires(windows: Windows, threshold: np.ndarray) -> np.ndarray:
    """Whether each window's unit reaches its threshold anywhere in the window."""
    return windows.acts.max(axis=1) >= threshold[windows.unit]


def balanced_accuracy(unit: np.ndarray, predicted: np.ndarray, positive: np.ndarray,
                      negative: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Per unit: (balanced accuracy, positives, negatives) over rows flagged positive or
    negative; NaN where either class is empty."""
    n_pos = np.bincount(unit[positive], minlength=n_units)
    n_neg = np.bincount(unit[negative], minlength=n_units)
    tp = np.bincount(unit[positive & predicted], minlength=n_units)
    tn = np.bincount(unit[negative & ~predicted], minlength=n_units)
    with np.errstate(invalid="ignore", divide="ignore"):
        ba = 0.5 * (tp / n_pos + tn / n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), ba, np.nan), n_pos, n_neg


def logit_auc(patterns: Patterns, top_tokens: np.ndarray, random_tokens: np.ndarray
              ) -> np.ndarray:
    """Per unit, P(score(top token) > score(random token)) + ½ P(equal), where a token's score
    is the explanation's next-token weight for it (0 when it names no such token)."""
    def score(cands: np.ndarray) -> np.ndarray:
        hit = cands[:, :, None] == patterns.next_token[:, None, :]
        hit &= (patterns.next_weight[:, None, :] > 0) & (cands[:, :, None] >= 0)
        return np.where(hit, patterns.next_weight[:, None, :], 0.0).max(axis=2)

    a, b = score(top_tokens)[:, :, None], score(random_tokens)[:, None, :]
    pair_ok = (top_tokens[:, :, None] >= 0) & (random_tokens[:, None, :] >= 0)
    wins = ((a > b) + 0.5 * (a == b)) * pair_ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins.sum(axis=(1, 2)) / pair_ok.sum(axis=(1, 2))


def fire_threshold(windows: Windows, n_units: int, fire_fraction: float) -> np.ndarray:
    """Per unit, `fire_fraction` of its largest activation in these windows (inf if none)."""
    top = np.zeros(n_units, np.float32)
    np.maximum.at(top, windows.unit, windows.acts.max(axis=1))
    return np.where(top > 0, fire_fraction * top, np.inf)


def detection_cut(patterns: Patterns, simulated: np.ndarray, windows: Windows,
                  fire_fraction: float) -> np.ndarray:
    """Per unit, the simulated value a window must reach to be called firing: among the
    unit's pattern weights, the one with the best balanced accuracy on these (training)
    windows; ties go to the lowest. Units with no pattern get inf (never predicts firing)."""
    n = patterns.n_units
    fires = window_fires(windows, fire_threshold(windows, n, fire_fraction))
    peak = np.where(windows.tokens >= 0, simulated, 0.0).max(axis=1)
    pos = (windows.kind >= -1) & fires
    neg = (windows.kind == RANDOM) & ~fires
    best = np.full(n, -np.inf)
    cut = np.full(n, np.inf, np.float32)
    for k in range(patterns.weight.shape[1]):
        c = patterns.weight[:, k]
        ba, _, _ = balanced_accuracy(windows.unit, peak >= c[windows.unit], pos, neg, n)
        ba = np.where(c > 0, np.nan_to_num(ba, nan=0.5), -np.inf)
        with np.errstate(invalid="ignore"):
            better = (ba > best + 1e-9) | ((np.abs(ba - best) <= 1e-9) & (c < cut))
        best, cut = np.where(better, ba, best), np.where(better, c, cut)
    return cut


def score(patterns: Patterns, simulated: np.ndarray, windows: Windows, threshold: np.ndarray,
          top_tokens: np.ndarray, random_tokens: np.ndarray,
          cut: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every score of every unit (arrays of n_units) and the number of examples behind each.

    `simulated` is the simulator's prediction for `windows` (held-out: split must be val);
    `threshold` says when a window fires (truth), `cut` when the simulation says it does
    (default: any positive prediction)."""
    if windows.split != "val":
        raise ValueError(f"explanations are scored on held-out windows, got {windows.split!r}")
    n = patterns.n_units
    unit = windows.unit
    is_random = windows.kind == RANDOM
    is_neighbour = windows.kind == NEIGHBOUR
    is_example = ~is_random & ~is_neighbour
    valid = windows.tokens >= 0
    main = valid & (is_example | is_random)[:, None]
    out = {
        "sim_top_random": pearson_by_unit(unit, simulated, windows.acts, n, valid=main),
        "sim_random": pearson_by_unit(unit, simulated, windows.acts, n,
                                      valid=valid & is_random[:, None]),
    }
    fires = window_fires(windows, threshold)
    peak = np.where(valid, simulated, 0.0).max(axis=1)
    predicted = (peak >= cut[unit]) & (peak > 0) if cut is not None else peak > 0
    pos = is_example & fires
    out["detection"], out["n_detection_positive"], out["n_detection_random"] = \
        balanced_accuracy(unit, predicted, pos, is_random & ~fires, n)
    out["detection_neighbours"], _, out["n_detection_neighbour"] = \
        balanced_accuracy(unit, predicted, pos, is_neighbour & ~fires, n)
    out["logits"] = logit_auc(patterns, top_tokens, random_tokens)
    out["n_score_windows"] = np.bincount(unit[is_example], minlength=n)
    out["n_random_windows"] = np.bincount(unit[is_random], minlength=n)
    out["n_logit_tokens"] = (top_tokens >= 0).sum(axis=1)
    return out


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): unit i never keeps its own."""
    if n < 2:
        return np.arange(n)
    order = rng.permutation(n)
    return np.roll(order, 1)[np.argsort(order)]
