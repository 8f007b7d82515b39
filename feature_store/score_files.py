"""Scores as files: the export format (CSV or Parquet, one row per stored score, every
field) and the strict reading of such a file back into `StoredScore`s.

An imported row is checked as strictly as a submission and its total recomputed, so a file
edited by hand cannot smuggle in what the form would refuse. The `run` column (which run of
a study the unit belongs to) came later: a file without it, exported before studies, reads
as run "" (the single run whose book it came from), as an old database does.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.rubric import (INTERPRETATION, RUBRIC, RUBRIC_FIELDS, Rubric, Score, ScoreError,
                                  check_dictionary, check_index, check_intervals, check_rater,
                                  whole_number)

# Every field of a stored score, in order, with its type in a Parquet export; `COLUMNS` (the
# CSV header, the database's column list) follows it.
ARROW_SCHEMA = pa.schema([("score_id", pa.string()), ("rater", pa.string()),
                          ("run", pa.string()),
                          ("dictionary", pa.string()), ("unit_index", pa.int64()),
                          (INTERPRETATION, pa.string()),
                          *[(item, pa.int64()) for item in RUBRIC], ("total", pa.int64()),
                          ("interval_scores", pa.string()), ("blind", pa.int64()),
                          ("created_at", pa.string())])
COLUMNS = tuple(ARROW_SCHEMA.names)
INTEGER_COLUMNS = (*RUBRIC, "unit_index", "total", "blind")  # whole numbers, checked in this order
OPTIONAL = {"run": ""}  # columns an older export may lack, and what their absence means


@dataclass(frozen=True, slots=True)
class StoredScore(Score):
    """One stored row: a `rubric.Score` and the run (variant) of a study its unit belongs
    to. `run` is "" in a single run's book, where the run is the folder the book lives in;
    in a study's book (one for every run, so one rater's queue can mix them) it names the
    variant, because `neurons` #3 of SoLU and of GeLU are different units."""

    run: str = ""


def check_run(run: Any) -> str:
    if run is None:
        return ""
    if not isinstance(run, str) or run != run.strip():
        raise ScoreError(f"run: {run!r} is not a run name")
    return run


def score_row(score: Score) -> tuple:
    """A Score as the stored tuple, in `COLUMNS` order (a plain `Score` has run "")."""
    r = score.rubric
    intervals = (None if score.interval_scores is None
                 else json.dumps(list(score.interval_scores)))
    return (score.score_id, score.rater, getattr(score, "run", ""), score.dictionary,
            score.unit_index, r.interpretation,
            *[int(getattr(r, item)) for item in RUBRIC], r.total, intervals,
            int(score.blind), score.created_at)


def score_from_row(row: Sequence[Any]) -> StoredScore:
    values = dict(zip(COLUMNS, row))
    intervals = values["interval_scores"]
    return StoredScore(score_id=values["score_id"], rater=values["rater"],
                       dictionary=values["dictionary"], unit_index=int(values["unit_index"]),
                       rubric=Rubric(**{k: values[k] for k in RUBRIC_FIELDS}),
                       interval_scores=(None if intervals is None
                                        else tuple(json.loads(intervals))),
                       blind=bool(values["blind"]), created_at=values["created_at"],
                       run=values["run"] or "")


def record_score(record: Mapping[str, Any], name: str, line: int) -> StoredScore:
    """One imported row, checked as strictly as a submission (and its total recomputed)."""
    where = f"{name}: row {line}"
    try:
        missing = [c for c in COLUMNS if c not in record and c not in OPTIONAL]
        if missing:
            raise ScoreError(f"missing column(s) {', '.join(missing)}")
        ints = {c: whole_number(record[c], c) for c in INTEGER_COLUMNS}
        rubric = Rubric(**{INTERPRETATION: record[INTERPRETATION]},
                        **{item: ints[item] for item in RUBRIC})
        if ints["total"] != rubric.total:
            raise ScoreError(f"total {ints['total']} is not the sum of the items "
                             f"({rubric.total})")
        raw = record["interval_scores"]
        intervals = None if raw in (None, "") else json.loads(raw)
        score_id = str(record["score_id"])
        uuid.UUID(hex=score_id)
        created = str(record["created_at"])
        datetime.fromisoformat(created)
        if ints["blind"] not in (0, 1):
            raise ScoreError(f"blind must be 0 or 1, got {ints['blind']}")
        return StoredScore(score_id=score_id, rater=check_rater(record["rater"]),
                           dictionary=check_dictionary(record["dictionary"]),
                           unit_index=check_index(ints["unit_index"]), rubric=rubric,
                           interval_scores=check_intervals(intervals),
                           blind=bool(ints["blind"]), created_at=created,
                           run=check_run(record.get("run", OPTIONAL["run"]) or ""))
    except ScoreError as err:
        raise ScoreError(f"{where}: {err}") from None
    except (ValueError, TypeError) as err:  # bad uuid, timestamp or JSON
        raise ScoreError(f"{where}: {err}") from None


def csv_records(data: bytes, name: str) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScoreError(f"{name}: not UTF-8 text ({err})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "score_id" not in reader.fieldnames:
        raise ScoreError(f"{name}: not a scores export (no score_id column)")
    return list(reader)


def parquet_records(data: bytes, name: str) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (OSError, pa.ArrowException) as err:
        raise ScoreError(f"{name}: not a readable Parquet file ({err})") from None
    return table.to_pylist()


def to_csv(scores: Sequence[Score]) -> bytes:
    """UTF-8 CSV: a header, then every field as text (empty for null)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for score in scores:
        writer.writerow(["" if v is None else v for v in score_row(score)])
    return buffer.getvalue().encode("utf-8")


def to_parquet(scores: Sequence[Score]) -> bytes:
    """A Parquet file with typed columns (`ARROW_SCHEMA`)."""
    table = pa.Table.from_pylist([dict(zip(COLUMNS, score_row(s))) for s in scores],
                                 schema=ARROW_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_scores(data: bytes, kind: str, name: str) -> list[StoredScore]:
    """Every row of an exported file, validated; one bad row rejects the whole file."""
    if kind == "csv":
        records = csv_records(data, name)
    elif kind == "parquet":
        records = parquet_records(data, name)
    else:
        raise ScoreError(f"{name}: unknown kind {kind!r}; expected csv or parquet")
    return [record_score(r, name, n) for n, r in enumerate(records, start=2)]
