"""The offline explainer: a few token patterns with weights, and their deterministic simulator.

Why this baseline: in a one-layer model most of what a unit responds to is visible in the
token it sits on and the token before it (attention moves one or a few earlier tokens'
information in), and an explanation of that form is short, readable and can be *run*: the
simulator below predicts an activation for any token of any text. So it is scored by exactly
the scorers an LLM explanation gets (`pipelines/interp/scoring.py`), and a reader sees what a
number means: "fires on `·def` (1.00), after `class` (0.40)".

Fitting (training-split windows only; `pipelines/interp/sets.py` builds them): every cell of
a unit's explain windows (its top windows, its interval windows, and shared random windows)
is a (token, activation) pair. A pattern is "the token here is t" (`cur`), "the token before
is t" (`prev`), or, for the logit scorer only, "the token after is t" (`next`). Its weight μ_p
is the mean activation over the cells it matches, and its gain n_p·(μ_p − μ̄)² is the squared
error it removes when it alone predicts μ_p where it matches and μ̄ elsewhere (the usual
regression-tree split gain); only patterns that *raise* activation (μ_p > μ̄) and match at
least `min_support` cells are candidates. The `max_patterns` best cur/prev patterns by gain
are kept in order, and the number actually used is the prefix length whose simulation
correlates best with the explain cells (training data again: the held-out set is never seen).

Simulator: a token's predicted activation is the largest weight among the patterns it
matches, 0 when none does. "Predicts firing" (detection) means some pattern matches.

What it cannot capture: anything that needs more than one token of context (a feature for
"inside a docstring", "the third argument", indentation depth), a token it never saw in the
explain set, a unit that responds to many different tokens in small amounts (the five
patterns run out), and how strongly the unit fires beyond one mean per pattern. Those show
up as low simulation scores, which is the point of scoring it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUR, PREV, NEXT = 0, 1, 2  # pattern kinds
KIND_WORDS = {CUR: "", PREV: "after ", NEXT: "then "}


@dataclass(frozen=True, kw_only=True)
class Windows:
    """Context windows for many units at once, one row per (unit, window).

    `tokens` is −1 outside the sequence; `acts` is the row's unit's activation at each token
    (0 where unknown). `kind`: −1 top, 0..10 interval, `RANDOM`, `NEIGHBOUR`. Provenance
    (`split`, `seq_id`, `position` of the centre token) is what the disjointness test checks.
    """

    unit: np.ndarray  # [m] int64
    tokens: np.ndarray  # [m, w] int32
    acts: np.ndarray  # [m, w] float32
    kind: np.ndarray  # [m] int8
    seq_id: np.ndarray  # [m] int64, row of tokens/<split>.parquet
    position: np.ndarray  # [m] int64
    split: str
    before: np.ndarray | None = None  # [m] the token before column 0 (−1: none / unknown)

    def __post_init__(self) -> None:
        m = self.unit.shape[0]
        if self.tokens.shape[0] != m or self.acts.shape != self.tokens.shape:
            raise ValueError(f"windows: unit {self.unit.shape}, tokens {self.tokens.shape}, "
                             f"acts {self.acts.shape} disagree")

    def select(self, keep: np.ndarray) -> "Windows":
        return Windows(unit=self.unit[keep], tokens=self.tokens[keep], acts=self.acts[keep],
                       kind=self.kind[keep], seq_id=self.seq_id[keep],
                       position=self.position[keep], split=self.split,
                       before=self.before_tokens()[keep])

    def before_tokens(self) -> np.ndarray:
        return (self.before if self.before is not None
                else np.full(self.unit.shape[0], -1, np.int32))

    def previous(self) -> np.ndarray:
        """The token before each cell, [m, w]."""
        return previous_tokens(self.tokens, self.before_tokens())

    @staticmethod
    def concat(parts: list["Windows"]) -> "Windows":
        splits = {p.split for p in parts}
        if len(splits) != 1:
            raise ValueError(f"windows from different splits {sorted(splits)} in one set")
        w = max(p.tokens.shape[1] for p in parts)
        pad = lambda a, fill: np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=fill)  # noqa: E731
        return Windows(unit=np.concatenate([p.unit for p in parts]),
                       tokens=np.concatenate([pad(p.tokens, -1) for p in parts]),
                       acts=np.concatenate([pad(p.acts, 0.0) for p in parts]),
                       kind=np.concatenate([p.kind for p in parts]),
                       seq_id=np.concatenate([p.seq_id for p in parts]),
                       position=np.concatenate([p.position for p in parts]), split=splits.pop(),
                       before=np.concatenate([p.before_tokens() for p in parts]))


RANDOM = -2  # Windows.kind of a random window (most do not fire)
NEIGHBOUR = -3  # a window where one of the unit's nearest neighbours fires most


@dataclass(frozen=True)
class Patterns:
    """One explanation per unit as arrays: up to K patterns each, weight 0 = unused slot.

    Weights are in the unit's activation scale (mean activation where the pattern matches);
    `kind` is CUR or PREV for the simulated patterns, NEXT for `next_*`."""

    token: np.ndarray  # [n, K] int32
    kind: np.ndarray  # [n, K] int8
    weight: np.ndarray  # [n, K] float32
    next_token: np.ndarray  # [n, K'] int32: tokens that follow where the unit fires
    next_weight: np.ndarray  # [n, K'] float32

    @property
    def n_units(self) -> int:
        return self.token.shape[0]

    def rows(self, lo: int, hi: int) -> "Patterns":
        """Units lo..hi-1 (a block, `pipelines/interp/blocks.py`)."""
        return Patterns(self.token[lo:hi], self.kind[lo:hi], self.weight[lo:hi],
                        self.next_token[lo:hi], self.next_weight[lo:hi])

    @staticmethod
    def concat(parts: list["Patterns"]) -> "Patterns":
        return Patterns(*(np.concatenate([getattr(p, f) for p in parts])
                          for f in ("token", "kind", "weight", "next_token", "next_weight")))

    def permuted(self, order: np.ndarray) -> "Patterns":
        """Unit i gets unit order[i]'s explanation (the shuffled-explanation control)."""
        return Patterns(self.token[order], self.kind[order], self.weight[order],
                        self.next_token[order], self.next_weight[order])


def previous_tokens(tokens: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
    """The token before each cell; for the first column `before` (−1 when not given)."""
    out = np.full_like(tokens, -1)
    out[:, 1:] = tokens[:, :-1]
    if before is not None:
        out[:, 0] = before
    return out


def next_tokens(tokens: np.ndarray) -> np.ndarray:
    out = np.full_like(tokens, -1)
    out[:, :-1] = tokens[:, 1:]
    return out


def _candidates(unit: np.ndarray, key_tok: np.ndarray, acts: np.ndarray, valid: np.ndarray,
                n_units: int, d_vocab: int, base: np.ndarray, min_support: int):
    """Every (unit, token) pair of one kind with its count, mean and gain (flat arrays)."""
    ok = valid & (key_tok >= 0)
    key = (np.broadcast_to(unit[:, None], key_tok.shape)[ok].astype(np.int64) * d_vocab
           + key_tok[ok].astype(np.int64))
    keys, inv = np.unique(key, return_inverse=True)
    count = np.bincount(inv).astype(np.float64)
    total = np.bincount(inv, weights=acts[ok].astype(np.float64))
    u, tok = keys // d_vocab, keys % d_vocab
    mean = total / count
    gain = count * (mean - base[u]) ** 2
    good = (mean > base[u]) & (count >= min_support)
    return u[good], tok[good], mean[good], gain[good]


def _top_per_unit(u, tok, mean, gain, kind, n_units: int, k: int):
    """The k highest-gain candidates of each unit as [n, k] arrays (padding: token −1, 0)."""
    order = np.lexsort((-gain, u))
    u, tok, mean, kind = u[order], tok[order], mean[order], kind[order]
    start = np.searchsorted(u, np.arange(n_units))
    rank = np.arange(u.size) - start[u]
    keep = rank < k
    T = np.full((n_units, k), -1, np.int32)
    W = np.zeros((n_units, k), np.float32)
    K = np.zeros((n_units, k), np.int8)
    T[u[keep], rank[keep]] = tok[keep]
    W[u[keep], rank[keep]] = mean[keep]
    K[u[keep], rank[keep]] = kind[keep]
    return T, K, W


def fit_patterns(windows: Windows, n_units: int, d_vocab: int, max_patterns: int = 5,
                 max_next: int = 5, min_support: int = 2) -> Patterns:
    """Fit every unit's explanation from its explain windows (see the module docstring)."""
    if windows.split != "train":
        raise ValueError(f"explanations are fitted on training windows, got {windows.split!r}")
    tokens, acts, unit = windows.tokens, windows.acts.astype(np.float64), windows.unit
    valid = tokens >= 0
    cells = np.broadcast_to(unit[:, None], tokens.shape)[valid]
    n_cells = np.bincount(cells, minlength=n_units).astype(np.float64)
    base = np.bincount(cells, weights=acts[valid], minlength=n_units) / np.maximum(n_cells, 1)
    found = [(_candidates(unit, key, acts, valid, n_units, d_vocab, base, min_support), kind)
             for kind, key in ((CUR, tokens), (PREV, windows.previous()),
                               (NEXT, next_tokens(tokens)))]
    (cu, ct, cm, cg), _ = found[0]
    (pu, pt, pm, pg), _ = found[1]
    (nu, nt, nm, ng), _ = found[2]
    T, K, W = _top_per_unit(np.concatenate([cu, pu]), np.concatenate([ct, pt]),
                            np.concatenate([cm, pm]), np.concatenate([cg, pg]),
                            np.concatenate([np.full(cu.size, CUR, np.int8),
                                            np.full(pu.size, PREV, np.int8)]),
                            n_units, max_patterns)
    NT, _, NW = _top_per_unit(nu, nt, nm, ng, np.full(nu.size, NEXT, np.int8), n_units,
                              max_next)
    full = Patterns(T, K, W, NT, NW)
    # How many patterns to use: the prefix whose simulation best matches the explain cells.
    best_r = np.full(n_units, -np.inf)
    best_k = np.zeros(n_units, np.int64)
    correlation = UnitCorrelation(unit, windows.acts, n_units)
    for k, pred in enumerate(simulate_prefixes(full, windows, max_patterns), start=1):
        r = correlation(pred, constant_prediction=0.0)
        better = np.nan_to_num(r, nan=-np.inf) > best_r + 1e-9
        best_r[better], best_k[better] = r[better], k
    slot = np.arange(max_patterns)[None, :]
    used = (slot < best_k[:, None]) & (W > 0)
    return Patterns(np.where(used, T, -1).astype(np.int32), K,
                    np.where(used, W, 0).astype(np.float32), NT, NW)


def single_token(windows: Windows, n_units: int, d_vocab: int) -> Patterns:
    """The best single-token explanation (control): each unit's one best `cur` pattern by
    gain, nothing else (no next tokens, so no logit score)."""
    tokens, acts = windows.tokens, windows.acts.astype(np.float64)
    valid = tokens >= 0
    cells = np.broadcast_to(windows.unit[:, None], tokens.shape)[valid]
    n_cells = np.bincount(cells, minlength=n_units).astype(np.float64)
    base = np.bincount(cells, weights=acts[valid], minlength=n_units) / np.maximum(n_cells, 1)
    u, t, m, g = _candidates(windows.unit, tokens, acts, valid, n_units, d_vocab, base, 2)
    T, K, W = _top_per_unit(u, t, m, g, np.full(u.size, CUR, np.int8), n_units, 1)
    return Patterns(T, K, W, np.full((n_units, 1), -1, np.int32),
                    np.zeros((n_units, 1), np.float32))


def simulate(patterns: Patterns, windows: Windows) -> np.ndarray:
    """Predicted activation [m, w] for each window's unit: the largest weight among the
    unit's patterns each token matches, 0 where none does (and outside the sequence)."""
    tokens, prev = _match_sources(windows)
    pred = np.zeros(tokens.shape, np.float32)
    for k in range(patterns.token.shape[1]):
        _add_pattern(pred, tokens, prev, windows.unit, patterns.token[:, k],
                     patterns.kind[:, k], patterns.weight[:, k])
    return pred


def simulate_prefixes(patterns: Patterns, windows: Windows, max_patterns: int):
    """The simulation of each unit's first k usable patterns (`cur`/`prev`, weight > 0, best
    gain first) for k = 1..max_patterns, each built on the last (a prediction is a maximum,
    so adding each unit's k-th pattern to the (k-1)-prefix's prediction is exact): one pass
    per pattern instead of k(k+1)/2. Yields a buffer that the next step updates in place."""
    tokens, prev = _match_sources(windows)
    allowed = np.isin(patterns.kind, (CUR, PREV)) & (patterns.weight > 0)
    rank = np.cumsum(allowed, axis=1) - 1
    pred = np.zeros(tokens.shape, np.float32)
    rows = np.arange(patterns.n_units)
    for k in range(max_patterns):
        at = allowed & (rank == k)
        slot, has = at.argmax(axis=1), at.any(axis=1)
        _add_pattern(pred, tokens, prev, windows.unit, np.where(has, patterns.token[rows, slot], -1),
                     patterns.kind[rows, slot], np.where(has, patterns.weight[rows, slot], 0))
        yield pred


def _match_sources(windows: Windows) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's token and previous token, the previous one −1 outside the sequence (where
    the token is −1), so a pattern's match needs one comparison."""
    tokens = windows.tokens
    return tokens, np.where(tokens >= 0, windows.previous(), -1)


def _add_pattern(pred: np.ndarray, tokens: np.ndarray, prev: np.ndarray, unit: np.ndarray,
                 token: np.ndarray, kind: np.ndarray, weight: np.ndarray) -> None:
    """pred = max(pred, weight where the cell matches its unit's pattern), one pattern a unit
    (token −1: none)."""
    t = token[unit]
    w = np.where(t >= 0, weight[unit], 0).astype(np.float32)
    source = np.where((kind[unit] == PREV)[:, None], prev, tokens)
    np.maximum(pred, np.where(source == t[:, None], w[:, None], np.float32(0)), out=pred)


class UnitCorrelation:
    """Pearson correlation of predictions with fixed true activations over each unit's cells
    (rows of `unit`). The truth's sums are taken once, so each prediction tried (fit_patterns'
    prefixes) costs only its own.

    NaN where the true activations are constant (nothing to predict); where only the
    prediction is constant the explanation predicted nothing: `constant_prediction`."""

    def __init__(self, unit: np.ndarray, true: np.ndarray, n_units: int,
                 valid: np.ndarray | None = None) -> None:
        cells = np.broadcast_to(unit[:, None], true.shape)
        if valid is not None:
            cells, true = cells[valid], true[valid]
        self.cells, self.valid, self.n_units = cells.reshape(-1), valid, n_units
        self.y = true.reshape(-1).astype(np.float64)
        self.n = np.bincount(self.cells, minlength=n_units).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.my = self._sum(self.y) / self.n
            self.vy = np.maximum(self._sum(self.y * self.y) / self.n - self.my * self.my, 0)

    def _sum(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.cells, weights=v, minlength=self.n_units)

    def __call__(self, pred: np.ndarray, constant_prediction: float = 0.0) -> np.ndarray:
        if self.valid is not None:
            pred = pred[self.valid]
        x = pred.reshape(-1).astype(np.float64)
        n, my, vy = self.n, self.my, self.vy
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = self._sum(x) / n
            cov = self._sum(x * self.y) / n - mx * my
            vx = np.maximum(self._sum(x * x) / n - mx * mx, 0)
            r = cov / np.sqrt(vx * vy)
        tiny_y = vy <= 1e-12 * np.maximum(my * my, 1e-12)
        tiny_x = vx <= 1e-12 * np.maximum(mx * mx, 1e-12)
        r = np.where(tiny_x, constant_prediction, r)
        r = np.where(tiny_y | (n < 2), np.nan, r)
        return np.clip(r, -1.0, 1.0)


def pearson_by_unit(unit: np.ndarray, pred: np.ndarray, true: np.ndarray, n_units: int,
                    constant_prediction: float = 0.0, valid: np.ndarray | None = None
                    ) -> np.ndarray:
    """Pearson correlation of pred and true over each unit's cells (see UnitCorrelation)."""
    return UnitCorrelation(unit, true, n_units, valid)(pred, constant_prediction)


def describe(patterns: Patterns, display: list[str] | np.ndarray) -> list[str]:
    """One readable line per unit, weights relative to the unit's largest: `"·def" 1.00 ·
    after "class" 0.40 | then "(" `. Display forms are unescaped corpus text: escape at HTML."""
    out = []
    for i in range(patterns.n_units):
        w = patterns.weight[i]
        used = np.flatnonzero(w > 0)
        if used.size == 0:
            out.append("(no pattern: the unit did not fire in the explain set)")
            continue
        top = float(w[used].max())
        parts = [f'{KIND_WORDS[int(patterns.kind[i, k])]}"{display[patterns.token[i, k]]}" '
                 f"{w[k] / top:.2f}" for k in used]
        text = " · ".join(parts)
        nxt = [f'"{display[t]}"' for t, v in zip(patterns.next_token[i], patterns.next_weight[i])
               if v > 0 and t >= 0][:3]
        out.append(text + (f" | then {', '.join(nxt)}" if nxt else ""))
    return out
