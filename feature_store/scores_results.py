"""What the scores say: per-source distributions of the rubric totals (0 to MAX_TOTAL) and inter-rater agreement.

The unit of observation is one rater's latest score of one unit (an edit replaces, never adds
to, that rater's vote). Sources are dictionaries: `neurons` and each SAE size, as in
Towards Monosemanticity's figure (features median 12, neurons median 0). In a study's book a
source is a run x dictionary, labelled "solu · neurons", "gelu · neurons", "solu · sae_2048"
(`source_label`), so SoLU's neurons and GeLU's neurons are told apart (Elhage et al. 2022's
question); a unit is (run, dictionary, index) everywhere here, agreement included.

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

RUN_SEPARATOR = " · "
UNIT = ["run", "dictionary", "unit_index"]  # what one rated unit is, in a study or not


def source_label(run: str, dictionary: str) -> str:
    """`neurons` in a single run's book (run ""); `solu · neurons` in a study's."""
    return f"{run}{RUN_SEPARATOR}{dictionary}" if run else dictionary


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

    ratings: pd.DataFrame  # the latest rows counted: one per (rater, unit), with `source`
    # source, ratings, units, raters, median, mean, share_above_8, alpha and alpha_units
    # (this source's own agreement), run, dictionary
    by_source: pd.DataFrame
    distribution: pd.DataFrame  # index: total 0..MAX_TOTAL, one column per source: rating counts
    items: pd.DataFrame  # index: source; columns: mean of each rubric item
    intervals: pd.DataFrame  # index: source; columns: interval 1..11 mean score (where given)
    alpha: float  # Krippendorff's alpha (interval) over the totals; NaN if not computable
    alpha_units: int  # units scored by >= 2 raters
    excluded_not_blind: int  # rows left out because the rater knew the unit


def results(book: ScoreBook, order: Sequence[str] = (), blind_only: bool = True) -> Results:
    """Summarise the book. `order` lists sources (`source_label`s) in display order; others
    follow, sorted."""
    every = book.latest_table()
    ratings = book.latest_table(blind_only=blind_only)
    excluded = len(every) - len(every[every["blind"] == 1]) if blind_only else 0
    ratings = ratings.assign(source=[source_label(r, d) for r, d in
                                     zip(ratings["run"], ratings["dictionary"])])
    present = set(ratings["source"])
    sources = [s for s in order if s in present] + sorted(present - set(order))

    rows, counts, items, intervals = [], {}, {}, {}
    for source in sources:
        part = ratings[ratings["source"] == source]
        totals = part["total"].to_numpy()
        matrix, n_shared = agreement_matrix(part)
        rows.append({"source": source, "ratings": len(part),
                     "units": len(part.drop_duplicates(UNIT)), "raters": part["rater"].nunique(),
                     "median": float(np.median(totals)), "mean": float(totals.mean()),
                     "share_above_8": float((totals > QUITE_INTERPRETABLE).mean()),
                     "alpha": krippendorff_alpha_interval(matrix) if n_shared else float("nan"),
                     "alpha_units": n_shared,
                     "run": part["run"].iloc[0], "dictionary": part["dictionary"].iloc[0]})
        counts[source] = np.bincount(totals, minlength=MAX_TOTAL + 1)
        items[source] = {item: float(part[item].mean()) for item in RUBRIC}
        intervals[source] = _interval_means(part["interval_scores"])
    by_source = pd.DataFrame(rows, columns=["source", "ratings", "units", "raters", "median",
                                            "mean", "share_above_8", "alpha", "alpha_units",
                                            "run", "dictionary"])
    distribution = pd.DataFrame(counts, index=pd.RangeIndex(MAX_TOTAL + 1, name="total"))
    items_frame = pd.DataFrame.from_dict(items, orient="index", columns=list(RUBRIC))
    interval_frame = pd.DataFrame.from_dict(intervals, orient="index")

    matrix, n_units = agreement_matrix(ratings)
    alpha = krippendorff_alpha_interval(matrix) if n_units else float("nan")
    return Results(ratings=ratings, by_source=by_source, distribution=distribution,
                   items=items_frame, intervals=interval_frame, alpha=alpha,
                   alpha_units=n_units, excluded_not_blind=excluded)


def agreement_matrix(ratings: pd.DataFrame) -> tuple[np.ndarray, int]:
    """(raters, units) totals over units scored by >= 2 raters, NaN where missing. A unit
    is (run, dictionary, index): SoLU's neuron 3 and GeLU's are two units."""
    per_unit = ratings.groupby(UNIT)["rater"].nunique()
    shared = per_unit[per_unit >= 2].index
    if len(shared) == 0:
        return np.empty((0, 0)), 0
    keyed = ratings.set_index(UNIT)
    keyed = keyed[keyed.index.isin(shared)].reset_index()
    wide = keyed.pivot_table(index="rater", columns=UNIT, values="total", aggfunc="last")
    return wide.to_numpy(dtype=float), len(shared)


def _interval_means(column: pd.Series) -> dict[str, float]:
    """Mean score of each interval over the ratings that scored intervals (JSON lists)."""
    scored = [json.loads(text) for text in column if isinstance(text, str) and text]
    out: dict[str, float] = {}
    for k in range(len(scored[0]) if scored else 0):
        vals = [s[k] for s in scored if s[k] is not None]
        out[f"interval {k + 1}"] = float(np.mean(vals)) if vals else float("nan")
    return out
