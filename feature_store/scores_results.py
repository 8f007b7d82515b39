"""What the scores say: per-source distributions of the rubric totals (0 to MAX_TOTAL) and inter-rater agreement.

The unit of observation is one rater's latest score of one unit (an edit replaces, never adds
to, that rater's vote). Sources are dictionaries: `neurons` and each SAE size, as in
Towards Monosemanticity's figure (features median 12, neurons median 0).

Agreement is Krippendorff's alpha with the interval metric over the totals, computed here
in numpy (no extra dependency) from the coincidence form in Krippendorff, "Computing
Krippendorff's Alpha-Reliability" (2011): only units scored by at least two raters are
pairable, and the report says how many there were.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_store.scores import MAX_TOTAL, QUITE_INTERPRETABLE, RUBRIC, ScoreBook


def krippendorff_alpha_interval(data: np.ndarray) -> float:
    """Alpha for a (raters, units) matrix with NaN where a rater gave no value.

    alpha = 1 - D_o / D_e, where, over the n values in units with m_u >= 2 values,
    D_o = (1/n) sum_u sum_{i != j in u} (v_i - v_j)^2 / (m_u - 1) and
    D_e = sum_{i != j over all n} (v_i - v_j)^2 / (n (n - 1)).
    NaN when fewer than two values are pairable or every value is the same (no variation
    to agree on)."""
    values = np.asarray(data, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"expected a (raters, units) matrix, got shape {values.shape}")
    present = ~np.isnan(values)
    m = present.sum(axis=0)
    pairable = m >= 2
    v = np.where(present, values, 0.0)[:, pairable]
    m = m[pairable]
    n = m.sum()
    if n < 2:
        return float("nan")
    # sum_{i != j} (v_i - v_j)^2 = 2 (m sum v^2 - (sum v)^2), per unit and over everything
    s1, s2 = v.sum(axis=0), (v ** 2).sum(axis=0)
    observed = (2 * (m * s2 - s1 ** 2) / (m - 1)).sum() / n
    expected = 2 * (n * s2.sum() - s1.sum() ** 2) / (n * (n - 1))
    if expected <= 0:
        return float("nan")
    return float(1 - observed / expected)


@dataclass(frozen=True)
class Results:
    """Everything the results page shows; frames are in source order."""

    ratings: pd.DataFrame  # the latest rows counted: one per (rater, unit)
    by_source: pd.DataFrame  # source, ratings, units, raters, median, mean, share_above_8
    distribution: pd.DataFrame  # index: total 0..MAX_TOTAL, one column per source: rating counts
    items: pd.DataFrame  # index: source; columns: mean of each rubric item
    intervals: pd.DataFrame  # index: source; columns: interval 1..11 mean score (where given)
    alpha: float  # Krippendorff's alpha (interval) over the totals; NaN if not computable
    alpha_units: int  # units scored by >= 2 raters
    excluded_not_blind: int  # rows left out because the rater knew the unit


def results(book: ScoreBook, order: Sequence[str] = (), blind_only: bool = True) -> Results:
    """Summarise the book. `order` lists sources in display order (others follow, sorted)."""
    every = book.latest_table()
    ratings = book.latest_table(blind_only=blind_only)
    excluded = len(every) - len(every[every["blind"] == 1]) if blind_only else 0
    present = set(ratings["dictionary"])
    sources = [s for s in order if s in present] + sorted(present - set(order))

    rows, counts, items, intervals = [], {}, {}, {}
    for source in sources:
        part = ratings[ratings["dictionary"] == source]
        totals = part["total"].to_numpy()
        rows.append({"source": source, "ratings": len(part),
                     "units": part["unit_index"].nunique(), "raters": part["rater"].nunique(),
                     "median": float(np.median(totals)), "mean": float(totals.mean()),
                     "share_above_8": float((totals > QUITE_INTERPRETABLE).mean())})
        counts[source] = np.bincount(totals, minlength=MAX_TOTAL + 1)
        items[source] = {item: float(part[item].mean()) for item in RUBRIC}
        intervals[source] = _interval_means(part["interval_scores"])
    by_source = pd.DataFrame(rows, columns=["source", "ratings", "units", "raters", "median",
                                            "mean", "share_above_8"])
    distribution = pd.DataFrame(counts, index=pd.RangeIndex(MAX_TOTAL + 1, name="total"))
    items_frame = pd.DataFrame.from_dict(items, orient="index", columns=list(RUBRIC))
    interval_frame = pd.DataFrame.from_dict(intervals, orient="index")

    matrix, n_units = agreement_matrix(ratings)
    alpha = krippendorff_alpha_interval(matrix) if n_units else float("nan")
    return Results(ratings=ratings, by_source=by_source, distribution=distribution,
                   items=items_frame, intervals=interval_frame, alpha=alpha,
                   alpha_units=n_units, excluded_not_blind=excluded)


def agreement_matrix(ratings: pd.DataFrame) -> tuple[np.ndarray, int]:
    """(raters, units) totals over units scored by >= 2 raters, NaN where missing."""
    per_unit = ratings.groupby(["dictionary", "unit_index"])["rater"].nunique()
    shared = per_unit[per_unit >= 2].index
    if len(shared) == 0:
        return np.empty((0, 0)), 0
    keyed = ratings.set_index(["dictionary", "unit_index"])
    keyed = keyed[keyed.index.isin(shared)].reset_index()
    wide = keyed.pivot_table(index="rater", columns=["dictionary", "unit_index"],
                             values="total", aggfunc="last")
    return wide.to_numpy(dtype=float), len(shared)


def _interval_means(column: pd.Series) -> dict[str, float]:
    """Mean score of each interval over the ratings that scored intervals (JSON lists)."""
    scored = [json.loads(text) for text in column if isinstance(text, str) and text]
    out: dict[str, float] = {}
    for k in range(len(scored[0]) if scored else 0):
        vals = [s[k] for s in scored if s[k] is not None]
        out[f"interval {k + 1}"] = float(np.mean(vals)) if vals else float("nan")
    return out
