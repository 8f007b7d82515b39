"""The hand-scoring rubric (Towards Monosemanticity) and the records a score is made of.

Plain data and its validation, no storage: `scores.py` keeps these in SQLite, `score_files.py`
reads and writes them as CSV or Parquet, the dashboard builds its forms from `RUBRIC` and
`QUESTIONS`. Every check lives here, so a submission, an import and the database refuse the
same things. The rubric's items are written once, as `Rubric`'s fields (name, range,
question); everything else that names them derives from those.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from feature_store.records import N_INTERVALS

class ScoreError(ValueError):
    """A score, queue or import file that cannot be stored; the message says which item and
    why. Nothing was written."""


def _item(question: str, lo: int | None = None, hi: int | None = None) -> Any:
    """A rubric field: the question a rater answers and, for a scored item, its range."""
    return field(metadata={"question": question} | ({} if lo is None else {"range": (lo, hi)}))


@dataclass(frozen=True, slots=True)
class Rubric:
    """One rater's judgement of one unit (validated on construction). Its fields are the
    rubric (DESIGN.md, from Towards Monosemanticity) in its order and words: the
    interpretation (free text), then the scored items, each a whole number in its range."""

    interpretation: str = _item("Your interpretation")
    confidence: int = _item("Confidence in the interpretation", 0, 3)
    activation_consistency: int = _item("Consistency of the high-activation tokens with it", 0, 5)
    logit_consistency: int = _item("Consistency of the positive logits with it", 0, 3)
    separation: int = _item("If some logits were inconsistent: clear separation in effect size "
                            "between consistent and inconsistent ones? (0 if not applicable)", 0, 1)
    specificity: int = _item("Specificity of the interpretation", 0, 3)

    def __post_init__(self) -> None:
        if not isinstance(self.interpretation, str) or not self.interpretation.strip():
            raise ScoreError("interpretation: write one (it is the first rubric item)")
        for item, (lo, hi) in RUBRIC.items():
            value = getattr(self, item)
            if value is None:
                raise ScoreError(f"{item}: missing; pick {lo}-{hi}")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ScoreError(f"{item}: {value!r} is not a whole number {lo}-{hi}")
            if not lo <= value <= hi:
                raise ScoreError(f"{item}: {value} is out of range {lo}-{hi}")

    @property
    def total(self) -> int:
        return sum(int(getattr(self, item)) for item in RUBRIC)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Rubric":
        """From a dict (a form, a row); a missing item is a ScoreError, not a KeyError."""
        missing = [f.name for f in fields(cls) if values.get(f.name) is None]
        if missing:
            raise ScoreError(f"missing rubric item(s): {', '.join(missing)}")
        return cls(**{f.name: values[f.name] for f in fields(cls)})


# Derived from `Rubric`'s fields, the one place the items are written:
RUBRIC_FIELDS = tuple(f.name for f in fields(Rubric))  # the interpretation, then the items
INTERPRETATION = RUBRIC_FIELDS[0]  # the free-text item (a column of the book and its files)
RUBRIC: dict[str, tuple[int, int]] = {  # scored item -> (lowest, highest), in rubric order
    f.name: f.metadata["range"] for f in fields(Rubric) if "range" in f.metadata}
QUESTIONS: dict[str, str] = {f.name: f.metadata["question"] for f in fields(Rubric)}
# DESIGN.md calls the total "0-14", but the item ranges it lists (the ones above) add up to
# 15. The items are what a rater sees and what is stored, so they win, and the total's top
# follows them; if the ranges are ever corrected (e.g. logits 0-2), only `Rubric` changes
# (`scores._schema_sql` builds the database's CHECKs from RUBRIC; a database made before keeps
# its own, so widening a range needs SCHEMA_VERSION bumped).
MAX_TOTAL = sum(hi for _, hi in RUBRIC.values())
INTERVAL_SCALE = (0, 5)  # per-interval consistency, the same scale as activation_consistency
QUITE_INTERPRETABLE = 8  # totals above this read as "quite interpretable"


@dataclass(frozen=True, slots=True)
class Score:
    """One stored row of the append-only history."""

    score_id: str
    rater: str
    dictionary: str
    unit_index: int
    rubric: Rubric
    interval_scores: tuple[int | None, ...] | None  # N_INTERVALS entries, lowest first
    blind: bool
    created_at: str

    @property
    def total(self) -> int:
        return self.rubric.total


@dataclass(frozen=True, slots=True)
class Queue:
    """A rater's units to score, in order, and where they are."""

    rater: str
    sources: tuple[str, ...]
    sample_size: int
    seed: int
    # (dictionary, index) in a single run's book, (run, dictionary, index) in a study's: plain
    # tuples, as stored; `scores.unit_key` reads either
    units: tuple[tuple[str, int] | tuple[str, str, int], ...]
    position: int  # 0-based; len(units) means finished
    created_at: str

    def __len__(self) -> int:
        return len(self.units)

    @property
    def finished(self) -> bool:
        return self.position >= len(self.units)


def whole_number(value: Any, item: str) -> int:
    if isinstance(value, str):
        value = value.strip()
        if not value.lstrip("-").isdigit():
            raise ScoreError(f"{item}: {value!r} is not a whole number")
        return int(value)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ScoreError(f"{item}: {value!r} is not a whole number")
    if value is None:
        raise ScoreError(f"{item}: missing")
    return int(value)


def check_rater(rater: Any) -> str:
    if not isinstance(rater, str) or not rater.strip():
        raise ScoreError("rater: give a name")
    return rater.strip()


def check_dictionary(dictionary: Any) -> str:
    if not isinstance(dictionary, str) or not dictionary:
        raise ScoreError(f"dictionary: {dictionary!r} is not a dictionary name")
    return dictionary


def check_index(index: Any) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ScoreError(f"unit index: {index!r} is not a non-negative whole number")
    return int(index)


def check_intervals(values: Iterable[Any] | None) -> tuple[int | None, ...] | None:
    """None, or exactly N_INTERVALS entries, each 0-5 or None (that interval not scored)."""
    if values is None:
        return None
    values = list(values)
    lo, hi = INTERVAL_SCALE
    if len(values) != N_INTERVALS:
        raise ScoreError(f"interval scores: {len(values)} given, expected {N_INTERVALS}")
    out: list[int | None] = []
    for k, v in enumerate(values, start=1):
        if v is None:
            out.append(None)
        elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ScoreError(f"interval {k}: {v!r} is out of range {lo}-{hi}")
        else:
            out.append(int(v))
    return tuple(out) if any(v is not None for v in out) else None
