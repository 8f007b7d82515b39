"""ScoreBook: hand scores on the Towards Monosemanticity rubric, kept in SQLite beside the store.

Why SQLite, and why here: scores are the one thing in a run a person made by hand, so they
must outlive the store (rebuilt whenever the stats stage changes) and survive several raters
at once. The database lives in the run folder, `runs/<name>/scores.sqlite` (see
`default_path`), never inside `store/`; any other path can be given explicitly.

Durability, concretely:
- WAL journal with `synchronous=FULL`: a commit has reached the disk when `submit` returns,
  so a page may say "saved" right after it;
- every write is one short `BEGIN IMMEDIATE` transaction (takes the write lock up front, so
  two writers never deadlock upgrading a read lock) with a busy timeout, so concurrent
  raters queue for a few milliseconds instead of failing or overwriting each other;
- the `scores` table is append-only: an edit is a new row, nothing is ever updated or
  deleted; for each (rater, unit) the latest row counts (by `created_at`, then `score_id`);
- each row carries a uuid (`score_id`), so importing a file from another machine merges
  without duplicates (`INSERT OR IGNORE`), and importing it twice adds nothing.

A unit is (dictionary, index): a feature of an SAE, or a raw MLP neuron (`neurons`), of
one run. Queues (`make_queue`) are per rater, stored here with the rater's position, so a
reload or a server restart resumes where the rater was.

Studies (several runs, e.g. SoLU and GeLU, on the same tokens): one book for the whole
study, `<study>/scores.sqlite`, so one rater's blind queue can mix units of every run. Every
row records its `run` (the variant's name); a single run's book stores run "" (the run is
the folder the book lives in). A queue's units are (dictionary, index) in a single run's
book and (run, dictionary, index) in a study's (`unit_key` reads either). Schema 1 had no
run column: opening such a database adds it (every old row gets "", the single run) and
records schema 2, in one transaction; nothing else changes.

The rubric and the records (`Rubric`, `Score`, `Queue`) and every check on them are in
`rubric.py`; the export/import file formats in `score_files.py`; results (distributions,
Krippendorff's alpha) in `scores_results.py`. Their public names are importable from here.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from feature_store.records import N_INTERVALS
from feature_store.rubric import (INTERPRETATION, INTERVAL_SCALE, MAX_TOTAL, QUITE_INTERPRETABLE,
                                  RUBRIC, Queue, Rubric, Score, ScoreError, check_dictionary,
                                  check_index, check_intervals, check_rater)
from feature_store.score_files import (COLUMNS, INTEGER_COLUMNS, StoredScore, check_run,
                                       read_scores, score_from_row, score_row, to_csv, to_parquet)

SCORES_FILE = "scores.sqlite"
Source = str | tuple[str, str]  # a dictionary, or a study's (run, dictionary)
SCHEMA_VERSION = 2  # 2: scores.run (studies); a schema-1 database is migrated on open
BUSY_TIMEOUT_MS = 30_000  # raters wait, never fail, while another write commits


def _schema_sql() -> str:
    """The tables, with each rubric item's CHECK and the total's built from RUBRIC when the
    database is opened (not at import), so the database refuses exactly what `Rubric` does.
    `IF NOT EXISTS`: an existing database keeps the tables (and checks) it was made with
    (a schema-1 one gets its run column from `_migrate` before the indexes are made)."""
    items = "\n".join(f"    {item} INTEGER NOT NULL CHECK ({item} BETWEEN {lo} AND {hi}),"
                      for item, (lo, hi) in RUBRIC.items())
    total_lo, total_hi = (sum(bounds) for bounds in zip(*RUBRIC.values()))
    return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    score_id TEXT PRIMARY KEY,              -- uuid4 hex: imports dedupe on it
    rater TEXT NOT NULL CHECK (length(rater) > 0),
    run TEXT NOT NULL DEFAULT '',           -- a study's variant; '' in a single run's book
    dictionary TEXT NOT NULL,               -- 'neurons' or 'sae_<n>'
    unit_index INTEGER NOT NULL CHECK (unit_index >= 0),
    {INTERPRETATION} TEXT NOT NULL CHECK (length(trim({INTERPRETATION})) > 0),
{items}
    total INTEGER NOT NULL CHECK (total BETWEEN {total_lo} AND {total_hi}),
    interval_scores TEXT,                   -- JSON list of {N_INTERVALS} ints 0-5 or null; or NULL
    blind INTEGER NOT NULL CHECK (blind IN (0, 1)),  -- 0: rater knew what the unit was
    created_at TEXT NOT NULL                -- ISO 8601 UTC, microseconds
);
CREATE TABLE IF NOT EXISTS queues (
    rater TEXT PRIMARY KEY,
    sources TEXT NOT NULL,                  -- JSON list of dictionary names, or [run, dictionary]
    sample_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    units TEXT NOT NULL,                    -- JSON list of [dictionary, index] or [run, dictionary, index]
    position INTEGER NOT NULL,              -- 0-based; == len(units) when finished
    created_at TEXT NOT NULL
);
"""


# After `_migrate`, so the column exists. Schema 1 had `scores_unit` without the run.
_INDEX_SQL = ("CREATE INDEX IF NOT EXISTS scores_run_unit "
              "ON scores (run, dictionary, unit_index, rater, created_at)")


def unit_key(unit: Sequence[Any]) -> tuple[str, str, int]:
    """A queue unit as (run, dictionary, index): a single run's (dictionary, index) has run
    "", a study's (run, dictionary, index) names it."""
    if len(unit) == 2:
        return "", str(unit[0]), int(unit[1])
    run, dictionary, index = unit
    return str(run), str(dictionary), int(index)


def default_path(store_path: str | Path) -> Path:
    """`runs/<name>/store` -> `runs/<name>/scores.sqlite`: beside the store, so rebuilding
    the store never touches the scores."""
    return Path(store_path).resolve().parent / SCORES_FILE


class ScoreBook:
    """The scores database at `path`. Cheap to make; opens a connection per operation, so one
    instance may be shared by threads (Streamlit sessions) and each process makes its own."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

    @classmethod
    def for_store(cls, store_path: str | Path) -> "ScoreBook":
        return cls(default_path(store_path))

    @property
    def exists(self) -> bool:
        """Whether anything was ever stored: read-only views check this so that merely
        looking at a page never creates a database."""
        return self.path.is_file()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None)
        except sqlite3.Error as err:
            raise ScoreError(f"{self.path}: cannot open the scores database ({err})") from None
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        if not self._ready:
            _switch_to_wal(conn, self.path)
            self._init_schema(conn)
            self._ready = True
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        with _transaction(conn):
            for statement in _schema_sql().split(";\n"):  # not executescript: it commits first
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            elif row[0] == "1":
                _migrate_from_1(conn)
            elif row[0] != str(SCHEMA_VERSION):
                raise ScoreError(f"{self.path}: scores schema {row[0]}, this code knows "
                                 f"{SCHEMA_VERSION}; export with the matching version first")
            conn.execute(_INDEX_SQL)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, committed (and on disk) when the block ends."""
        with closing(self._connect()) as conn, _transaction(conn):
            yield conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if not self.exists:
            return []
        with closing(self._connect()) as conn:
            return conn.execute(sql, params).fetchall()

    # -- scores --------------------------------------------------------------------------------

    def submit(self, rater: str, dictionary: str, index: int, rubric: Rubric | Mapping[str, Any],
               interval_scores: Sequence[int | None] | None = None, blind: bool = True,
               run: str = "") -> StoredScore:
        """Validate, then append one row in its own transaction. When this returns the score
        is committed; on any ScoreError nothing was written. `run`: the study's variant the
        unit belongs to ("" in a single run's book)."""
        rubric = rubric if isinstance(rubric, Rubric) else Rubric.from_mapping(rubric)
        score = StoredScore(score_id=uuid.uuid4().hex, rater=check_rater(rater),
                            dictionary=check_dictionary(dictionary),
                            unit_index=check_index(index), rubric=rubric,
                            interval_scores=check_intervals(interval_scores),
                            blind=bool(blind), created_at=_now(), run=check_run(run))
        with self._write() as conn:
            _insert(conn, score)
        return score

    def history(self, rater: str | None = None, dictionary: str | None = None,
                index: int | None = None, run: str | None = None) -> list[StoredScore]:
        """Every stored row matching the filters (None: any), oldest first."""
        where, params = [], []
        for column, value in (("rater", rater), ("run", run), ("dictionary", dictionary),
                              ("unit_index", index)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = (f"SELECT {', '.join(COLUMNS)} FROM scores"
               f"{' WHERE ' + ' AND '.join(where) if where else ''} "
               "ORDER BY created_at, score_id")
        return [score_from_row(row) for row in self._read(sql, params)]

    def latest(self, rater: str, dictionary: str, index: int,
               run: str = "") -> StoredScore | None:
        """The row that counts for this rater and unit (of `run`): their last submission or
        edit."""
        rows = self.history(rater, dictionary, index, run=run)
        return rows[-1] if rows else None

    def table(self) -> pd.DataFrame:
        """Every stored row, oldest first, one column per field (`interval_scores` as its JSON
        text): exactly what export writes."""
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM scores "
                          "ORDER BY created_at, score_id")
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        return frame.astype({c: "int64" for c in INTEGER_COLUMNS})

    def latest_table(self, blind_only: bool = False) -> pd.DataFrame:
        """One row per (rater, unit): the latest. `blind_only` first drops scores given while
        the rater knew the unit (so a later non-blind edit cannot stand in for a blind one)."""
        rows = self.table()
        if blind_only:
            rows = rows[rows["blind"] == 1]
        return (rows.drop_duplicates(["rater", "run", "dictionary", "unit_index"], keep="last")
                .reset_index(drop=True))

    def unit_means(self, dictionary: str, run: str = "") -> pd.Series:
        """Mean over raters of each scored unit's latest total (units of `dictionary` in
        `run`), indexed by unit index."""
        latest = self.latest_table()
        latest = latest[(latest["dictionary"] == dictionary) & (latest["run"] == run)]
        return latest.groupby("unit_index")["total"].mean()

    # -- export / import -----------------------------------------------------------------------

    def export_csv(self, path: str | Path | None = None) -> bytes:
        """Every row as UTF-8 CSV (header, all fields as text); written to `path` if given."""
        data = to_csv(self.history())
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def export_parquet(self, path: str | Path | None = None) -> bytes:
        """Every row as a Parquet file (typed columns); written to `path` if given."""
        data = to_parquet(self.history())
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def import_file(self, source: str | Path | bytes, kind: str | None = None,
                    name: str | None = None) -> int:
        """Merge an exported CSV or Parquet file (a path, or its bytes with `kind`) and return
        how many rows were new. Rows already here (same score_id) are left alone; every row
        is validated first, and one bad row rejects the whole file."""
        if isinstance(source, (str, Path)):
            name = name or str(source)
            kind = kind or Path(source).suffix.lstrip(".").lower()
            try:
                data = Path(source).read_bytes()
            except OSError as err:
                raise ScoreError(f"{source}: cannot read ({err})") from None
        else:
            data, name = source, name or "uploaded file"
        scores = read_scores(data, kind or "", name)
        with self._write() as conn:
            before = conn.total_changes
            for score in scores:
                _insert(conn, score, ignore=True)
            return conn.total_changes - before

    # -- queues --------------------------------------------------------------------------------

    def make_queue(self, rater: str, population: Mapping[Source, Sequence[int]],
                   sample_size: int, seed: int) -> Queue:
        """A balanced random mix: `sample_size` split as evenly as possible across the sources
        (a source with too few units gives all it has), drawn without replacement, then
        shuffled together so sources interleave. The same population and seed give the same
        queue. It replaces the rater's previous queue and starts at position 0.

        A source is a dictionary name (a single run: units (dictionary, index)) or, in a
        study, a (run, dictionary) pair (units (run, dictionary, index)); every run x
        dictionary is its own source, so SoLU neurons and GeLU neurons get equal shares."""
        rater = check_rater(rater)
        sources = tuple(s if isinstance(s, str) else tuple(s) for s in population)
        if len({isinstance(s, str) for s in sources}) > 1:
            raise ScoreError("queue: sources are all dictionaries or all (run, dictionary)")
        if not sources:
            raise ScoreError("queue: pick at least one source")
        if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) \
                or sample_size < 1:
            raise ScoreError(f"queue: sample size must be a positive whole number, "
                             f"got {sample_size!r}")
        units = balanced_sample(population, int(sample_size), int(seed))
        if not units:
            raise ScoreError("queue: the chosen sources have no units to score")
        queue = Queue(rater=rater, sources=sources, sample_size=int(sample_size),
                      seed=int(seed), units=tuple(units), position=0, created_at=_now())
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO queues VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (queue.rater, json.dumps(list(sources)), queue.sample_size,
                          queue.seed, json.dumps([list(u) for u in units]), 0,
                          queue.created_at))
        return queue

    def queue(self, rater: str) -> Queue | None:
        rows = self._read("SELECT rater, sources, sample_size, seed, units, position, "
                          "created_at FROM queues WHERE rater = ?", (rater,))
        if not rows:
            return None
        r, sources, size, seed, units, position, created = rows[0]
        return Queue(rater=r, sources=tuple(s if isinstance(s, str) else tuple(s)
                                            for s in json.loads(sources)),
                     sample_size=size, seed=seed,
                     units=tuple((*map(str, u[:-1]), int(u[-1])) for u in json.loads(units)),
                     position=position, created_at=created)

    def set_position(self, rater: str, position: int) -> Queue:
        """Move the rater to `position` (clamped to 0..len); returns the updated queue."""
        queue = self.queue(rater)
        if queue is None:
            raise ScoreError(f"rater {rater!r} has no queue; make one first")
        position = max(0, min(int(position), len(queue)))
        with self._write() as conn:
            conn.execute("UPDATE queues SET position = ? WHERE rater = ?", (position, rater))
        return Queue(**{**_shallow(queue), "position": position})


def balanced_sample(population: Mapping[Source, Sequence[int]], sample_size: int,
                    seed: int) -> list[tuple]:
    """`sample_size` units split evenly across sources (the remainder goes to sources picked
    at random), each drawn without replacement, then interleaved by one shuffle."""
    rng = np.random.default_rng(seed)
    sources = list(population)
    share = np.full(len(sources), sample_size // len(sources))
    share[rng.permutation(len(sources))[:sample_size % len(sources)]] += 1
    units: list[tuple] = []  # (dictionary, index) or (run, dictionary, index), as `Queue.units`
    for source, n in zip(sources, share.tolist()):
        candidates = np.unique(np.asarray(population[source], dtype=np.int64))
        picked = rng.choice(candidates, size=min(n, candidates.size), replace=False)
        units.extend(((source,) if isinstance(source, str) else tuple(source)) + (int(i),)
                     for i in picked)
    order = rng.permutation(len(units))
    return [units[k] for k in order]


# -- the database ----------------------------------------------------------------------------

def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2, inside `_init_schema`'s transaction (so two processes opening an old
    database together migrate it once): the run column, "" for every old row (the single run
    the book belongs to), and the index that leads with it."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(scores)")}
    if "run" not in columns:
        conn.execute("ALTER TABLE scores ADD COLUMN run TEXT NOT NULL DEFAULT ''")
    conn.execute("DROP INDEX IF EXISTS scores_unit")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION),))


def _switch_to_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Turn on WAL journaling, which lets raters read while another writes.

    The switch needs an exclusive lock, and SQLite answers "database is locked" at once,
    without its busy handler, when several processes open a fresh database together (CI
    caught it), so this retries until the busy timeout rather than failing a rater's save.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as err:
            code = getattr(err, "sqlite_errorcode", 0) & 0xFF  # primary code of an extended one
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise ScoreError(f"{path}: cannot switch to WAL journaling ({err})") from None
            if time.monotonic() > deadline:
                raise ScoreError(f"{path}: the scores database stayed locked for "
                                 f"{BUSY_TIMEOUT_MS // 1000} s; another process holds it") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    if mode.lower() != "wal":
        raise ScoreError(f"{path}: could not switch to WAL journaling (got {mode})")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, score: Score, ignore: bool = False) -> None:
    verb = "INSERT OR IGNORE" if ignore else "INSERT"
    conn.execute(f"{verb} INTO scores ({', '.join(COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(COLUMNS))})", score_row(score))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _shallow(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


__all__ = ["ScoreBook", "ScoreError", "Rubric", "Score", "StoredScore", "Queue", "RUBRIC",
           "MAX_TOTAL", "INTERVAL_SCALE", "QUITE_INTERPRETABLE", "default_path",
           "balanced_sample", "unit_key", "Source"]
