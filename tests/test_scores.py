"""ScoreBook: no score is ever lost or altered, imports merge without duplicates, bad
scores are refused whole, queues are balanced and reproducible, and Krippendorff's alpha
matches the published worked example.

The databases live on /dev/shm where there is one: what these tests check is concurrency
and exactness, not the disk's fsync latency (about 20 ms a commit on the CI disk, which
would make 8,000 separate commits take minutes).
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store.scores import (MAX_TOTAL, RUBRIC, Rubric, ScoreBook, ScoreError, _switch_to_wal,
                                  default_path)
from feature_store.scores_results import krippendorff_alpha_interval, results

N_PROCESSES = 8
PER_PROCESS = 1_000


@pytest.fixture
def fast_dir():
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as d:
        yield Path(d)


def planned(process: int, k: int) -> dict:
    """The exact score process `process` writes as its k-th: every item varies, and the text
    has commas, quotes, newlines and non-ASCII so CSV round trips are really tested."""
    return dict(rater=f"rater {process}", dictionary=("neurons", "sae_64", "sae_128")[k % 3],
                index=k, rubric=Rubric(
                    interpretation=f'p{process} k{k}: "quote", comma,\nnewline · ü ↵ {k * 7}',
                    confidence=k % 4, activation_consistency=(k + process) % 6,
                    logit_consistency=(k // 3) % 4, separation=k % 2,
                    specificity=(k + 1) % 4),
                interval_scores=None if k % 5 else [k % 6] * 5 + [None] * 6)


def write_many(path: str, process: int, barrier) -> None:
    book = ScoreBook(path)
    barrier.wait()  # all start together: maximum contention
    for k in range(PER_PROCESS):
        book.submit(**planned(process, k))


def test_concurrent_writers_lose_and_alter_nothing(fast_dir):
    path = fast_dir / "scores.sqlite"
    ScoreBook(path).history()  # nothing yet: reading creates no file
    assert not path.exists()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    procs = [ctx.Process(target=write_many, args=(str(path), p, barrier))
             for p in range(N_PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    book = ScoreBook(path)
    stored = book.history()
    assert len(stored) == N_PROCESSES * PER_PROCESS
    assert len({s.score_id for s in stored}) == len(stored)
    by_key = {(s.rater, s.unit_index): s for s in stored}
    for process in range(N_PROCESSES):
        for k in range(PER_PROCESS):
            want = planned(process, k)
            got = by_key[(want["rater"], k)]
            assert (got.dictionary, got.rubric) == (want["dictionary"], want["rubric"])
            intervals = want["interval_scores"]
            assert got.interval_scores == (None if intervals is None else tuple(intervals))

    # export -> fresh database gives back exactly the same rows; twice adds nothing
    original = book.table()
    for kind, export in (("csv", book.export_csv), ("parquet", book.export_parquet)):
        file = fast_dir / f"export.{kind}"
        export(file)
        fresh = ScoreBook(fast_dir / f"fresh_{kind}.sqlite")
        assert fresh.import_file(file) == len(original)
        pd.testing.assert_frame_equal(fresh.table(), original)
        assert fresh.import_file(file) == 0
        assert book.import_file(file.read_bytes(), kind=kind) == 0
        pd.testing.assert_frame_equal(fresh.table(), original)


class _LockedAtFirst:
    """A connection whose WAL switch meets the immediate "database is locked" that SQLite
    gives (without its busy handler) when processes open a fresh database together."""

    def __init__(self, conn, failures: int, message: str = "database is locked",
                 code: int = sqlite3.SQLITE_BUSY) -> None:
        self.conn, self.failures, self.message, self.tries = conn, failures, message, 0
        self.code = code

    def execute(self, sql, *args):
        if sql.startswith("PRAGMA journal_mode"):
            self.tries += 1
            if self.tries <= self.failures:
                err = sqlite3.OperationalError(self.message)
                err.sqlite_errorcode = self.code  # as SQLite sets it (SQLITE_BUSY, ...)
                raise err
        return self.conn.execute(sql, *args)


def test_wal_switch_waits_out_a_lock_and_names_other_errors(fast_dir):
    path = fast_dir / "scores.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        locked = _LockedAtFirst(conn, failures=3)
        _switch_to_wal(locked, path)
        assert locked.tries == 4
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(ScoreError, match="scores.sqlite: cannot switch to WAL"):
            _switch_to_wal(_LockedAtFirst(conn, failures=1, message="disk I/O error",
                                         code=sqlite3.SQLITE_IOERR), path)


def test_import_merges_other_machine(fast_dir):
    here, there = ScoreBook(fast_dir / "a.sqlite"), ScoreBook(fast_dir / "b.sqlite")
    for k in range(3):
        here.submit(**planned(0, k))
        there.submit(**planned(1, k))
    assert here.import_file(there.export_parquet(), kind="parquet") == 3
    assert len(here.history()) == 6
    assert here.import_file(there.export_csv(), kind="csv") == 0


def test_import_rejects_a_bad_file_whole(fast_dir):
    book = ScoreBook(fast_dir / "a.sqlite")
    book.submit(**planned(0, 1))
    book.submit(**planned(0, 2))
    rows = list(csv.DictReader(io.StringIO(book.export_csv().decode(), newline="")))
    book2 = ScoreBook(fast_dir / "b.sqlite")
    for change, message in (({"confidence": "9"}, "row 3: confidence: 9 is out of range"),
                            ({"total": "1"}, "row 3: total 1 is not the sum"),
                            ({"score_id": "x"}, "row 3"), ({"specificity": ""}, "row 3")):
        bad = io.StringIO(newline="")
        writer = csv.DictWriter(bad, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([rows[0], {**rows[1], **change}])
        with pytest.raises(ScoreError, match=f"bad.csv: {message}"):
            book2.import_file(bad.getvalue().encode(), kind="csv", name="bad.csv")
        assert book2.history() == []  # the good first row was not kept either
    with pytest.raises(ScoreError, match="not a scores export"):
        book2.import_file(b"a,b\n1,2\n", kind="csv")


GOOD = dict(interpretation="Python keyword `def`", confidence=3, activation_consistency=5,
            logit_consistency=3, separation=1, specificity=2)


@pytest.mark.parametrize("change, item", [
    ({"confidence": 4}, "confidence"), ({"activation_consistency": -1}, "activation_consistency"),
    ({"activation_consistency": 6}, "activation_consistency"),
    ({"logit_consistency": 4}, "logit_consistency"), ({"separation": 2}, "separation"),
    ({"specificity": 2.5}, "specificity"), ({"confidence": True}, "confidence"),
    ({"specificity": None}, "specificity"), ({"interpretation": "   "}, "interpretation"),
    ({"interpretation": None}, "interpretation"),
])
def test_bad_rubric_rejected_with_message_nothing_written(fast_dir, change, item):
    book = ScoreBook(fast_dir / "scores.sqlite")
    book.submit("ann", "sae_64", 1, GOOD)  # the database exists and holds one good row
    with pytest.raises(ScoreError, match=item):
        book.submit("ann", "sae_64", 2, {**GOOD, **change})
    missing = {k: v for k, v in GOOD.items() if k != item}
    with pytest.raises(ScoreError, match=item):
        book.submit("ann", "sae_64", 3, missing)
    with pytest.raises(ScoreError, match="interval 3"):
        book.submit("ann", "sae_64", 4, GOOD, interval_scores=[1, 2, 6] + [None] * 8)
    with pytest.raises(ScoreError, match="rater"):
        book.submit(" ", "sae_64", 5, GOOD)
    assert [s.unit_index for s in book.history()] == [1]
    assert issubclass(ScoreError, ValueError)


def test_edit_keeps_history_latest_counts(fast_dir):
    book = ScoreBook(fast_dir / "scores.sqlite")
    first = book.submit("ann", "sae_64", 7, GOOD)
    second = book.submit("ann", "sae_64", 7, {**GOOD, "confidence": 0})
    assert [s.score_id for s in book.history("ann", "sae_64", 7)] == [first.score_id,
                                                                      second.score_id]
    assert book.latest("ann", "sae_64", 7) == second
    assert list(book.latest_table()["total"]) == [second.total] == [GOOD_TOTAL - 3]
    assert book.unit_means("sae_64").to_dict() == {7: second.total}


GOOD_TOTAL = sum(GOOD[item] for item in RUBRIC)


def _raw_insert(path: Path, score_id: str, confidence: int, total: int) -> None:
    """One row straight into the table, past every check in Python: only the database's own
    CHECKs stand between it and the file."""
    items = {**{k: v for k, v in GOOD.items() if k in RUBRIC}, "confidence": confidence}
    row = {"score_id": score_id, "rater": "ann", "dictionary": "sae_64", "unit_index": 1,
           "interpretation": "x", **items, "total": total, "interval_scores": None,
           "blind": 1, "created_at": "2026-01-01T00:00:00.000000+00:00"}
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"INSERT INTO scores ({', '.join(row)}) VALUES "
                     f"({', '.join('?' * len(row))})", tuple(row.values()))


def test_database_checks_are_built_from_the_rubric(fast_dir, monkeypatch):
    ok = fast_dir / "original.sqlite"
    ScoreBook(ok).submit("ann", "sae_64", 0, GOOD)  # creates the tables
    _raw_insert(ok, "a" * 32, confidence=3, total=MAX_TOTAL)  # in range: accepted
    assert len(ScoreBook(ok).history()) == 2

    monkeypatch.setitem(RUBRIC, "confidence", (0, 2))  # the one dict: so the total tops out one lower
    with pytest.raises(ScoreError, match="confidence: 3 is out of range 0-2"):
        Rubric(**{**GOOD, "confidence": 3})
    path = fast_dir / "narrow.sqlite"
    ScoreBook(path).submit("ann", "sae_64", 0, {**GOOD, "confidence": 2})
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed: confidence"):
        _raw_insert(path, "b" * 32, confidence=3, total=MAX_TOTAL - 1)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed: total"):
        _raw_insert(path, "c" * 32, confidence=2, total=MAX_TOTAL)
    _raw_insert(path, "d" * 32, confidence=2, total=MAX_TOTAL - 1)
    assert len(ScoreBook(path).history()) == 2
    # a database made under the old rubric still opens: its tables are kept as they are
    assert len(ScoreBook(ok).table()) == 2


def test_queue_balanced_stable_and_durable(fast_dir):
    population = {"neurons": range(64), "sae_64": range(64), "sae_128": range(128)}
    book = ScoreBook(fast_dir / "scores.sqlite")
    queue = book.make_queue("ann", population, sample_size=31, seed=3)
    counts = pd.Series([d for d, _ in queue.units]).value_counts()
    assert sorted(counts.tolist()) == [10, 10, 11] and len(set(queue.units)) == 31
    assert len(set(d for d, _ in queue.units[:10])) > 1  # interleaved, not source by source
    again = ScoreBook(fast_dir / "other.sqlite").make_queue("bob", population, 31, 3)
    assert again.units == queue.units
    assert ScoreBook(fast_dir / "x.sqlite").make_queue("c", population, 31, 4).units != queue.units
    book.set_position("ann", 5)
    reopened = ScoreBook(fast_dir / "scores.sqlite").queue("ann")  # a server restart
    assert reopened.units == queue.units and reopened.position == 5
    small = book.make_queue("ann", {"neurons": [1, 2], "sae_64": range(64)}, 10, 0)
    assert sum(d == "neurons" for d, _ in small.units) == 2  # all a small source has
    with pytest.raises(ScoreError, match="sample size"):
        book.make_queue("ann", population, 0, 0)


def test_krippendorff_alpha_worked_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
    observers, twelve units, missing values; alpha (interval) = 0.849 (nominal 0.743)."""
    nan = np.nan
    data = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
                     [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]])
    assert krippendorff_alpha_interval(data) == pytest.approx(0.849, abs=5e-4)
    # by hand: two raters, units (0, 2) and (2, 2): n = 4 values, D_o = (8/1)/4 = 2,
    # D_e = 2 * (4 * 12 - 6**2) / (4 * 3) = 2, so alpha = 0
    assert krippendorff_alpha_interval(np.array([[0, 2], [2, 2.0]])) == pytest.approx(0.0)
    assert krippendorff_alpha_interval(np.array([[1, 5, 9], [1, 5, 9.0]])) == 1.0
    assert np.isnan(krippendorff_alpha_interval(np.array([[3.0, nan]])))


def test_results_summary(fast_dir):
    book = ScoreBook(fast_dir / "scores.sqlite")
    for rater, shift in (("ann", 0), ("bob", 1)):
        for k in range(4):
            book.submit(rater, "sae_64", k, {**GOOD, "activation_consistency": k + shift})
            book.submit(rater, "neurons", k, {**GOOD, "confidence": 0, "specificity": 0,
                                               "logit_consistency": 0, "separation": 0,
                                               "activation_consistency": shift})
    book.submit("cy", "sae_64", 0, GOOD, blind=False)
    out = results(book, order=["neurons", "sae_64"])
    assert list(out.by_source["source"]) == ["neurons", "sae_64"]
    sae = out.by_source.set_index("source").loc["sae_64"]
    totals = [GOOD_TOTAL - 5 + k + s for s in (0, 1) for k in range(4)]
    assert sae["ratings"] == 8 and sae["units"] == 4
    assert sae["median"] == np.median(totals) and sae["mean"] == np.mean(totals)
    assert sae["share_above_8"] == np.mean(np.array(totals) > 8)
    assert out.distribution["neurons"].sum() == 8 and out.distribution.index[-1] == MAX_TOTAL
    assert out.items.loc["neurons", "confidence"] == 0
    assert out.alpha_units == 8 and out.excluded_not_blind == 1
    sae_ann = [GOOD_TOTAL - 5 + k for k in range(4)]  # bob: one more on every unit
    ann = np.array(sae_ann + [0] * 4, dtype=float)
    assert out.alpha == pytest.approx(krippendorff_alpha_interval(np.stack([ann, ann + 1])))
    assert results(book, blind_only=False).by_source.set_index("source").loc[
        "sae_64", "raters"] == 3


def test_default_path_is_beside_the_store(tmp_path):
    assert default_path(tmp_path / "runs" / "tiny" / "store") == (
        tmp_path / "runs" / "tiny" / "scores.sqlite").resolve()


# -- studies: the run column, and books from before it ----------------------------------------

def test_a_study_book_keeps_runs_apart(fast_dir):
    """Neuron 3 of SoLU and of GeLU are two units: scored, latest, means, agreement and the
    split by run x source all keep them apart; queues draw from every run x dictionary."""
    book = ScoreBook(fast_dir / "scores.sqlite")
    for rater, shift in (("ann", 0), ("bob", 1)):
        for k in range(3):
            book.submit(rater, "neurons", k, {**GOOD, "activation_consistency": k + shift},
                        run="solu")
            book.submit(rater, "neurons", k, {**GOOD, "activation_consistency": shift,
                                              "confidence": 0}, run="gelu")
    assert book.latest("ann", "neurons", 1, run="solu").total == GOOD_TOTAL - 4
    assert book.latest("ann", "neurons", 1, run="gelu").total == GOOD_TOTAL - 8
    assert book.latest("ann", "neurons", 1) is None  # no single-run row in a study's book
    assert book.unit_means("neurons", "gelu").to_dict() == {k: GOOD_TOTAL - 7.5 for k in range(3)}
    out = results(book, order=["solu · neurons", "gelu · neurons"])
    rows = out.by_source.set_index("source")
    assert list(rows.index) == ["solu · neurons", "gelu · neurons"]
    assert list(rows["run"]) == ["solu", "gelu"] and set(rows["dictionary"]) == {"neurons"}
    solu = [GOOD_TOTAL - 5 + k + s for s in (0, 1) for k in range(3)]
    assert rows.loc["solu · neurons", "median"] == np.median(solu)
    assert rows.loc["gelu · neurons", "median"] == GOOD_TOTAL - 7.5
    assert rows.loc["solu · neurons", "units"] == 3
    assert out.alpha_units == 6  # 3 units per run, not 3 merged ones
    # each source's own alpha: bob is one above ann everywhere
    ann = np.array([GOOD_TOTAL - 5 + k for k in range(3)], dtype=float)
    assert rows.loc["solu · neurons", "alpha"] == pytest.approx(
        krippendorff_alpha_interval(np.stack([ann, ann + 1])))

    population = {("solu", "neurons"): range(64), ("gelu", "neurons"): range(64),
                  ("solu", "sae_128"): range(128)}
    queue = book.make_queue("ann", population, 30, 1)
    assert pd.Series([(r, d) for r, d, _ in queue.units]).value_counts().tolist() == [10] * 3
    again = ScoreBook(fast_dir / "scores.sqlite").queue("ann")
    assert again.units == queue.units and again.sources == tuple(population)
    with pytest.raises(ScoreError, match="all dictionaries or all"):
        book.make_queue("ann", {"neurons": [1], ("solu", "neurons"): [1]}, 2, 0)

    # export -> import keeps the run
    fresh = ScoreBook(fast_dir / "fresh.sqlite")
    assert fresh.import_file(book.export_parquet(), kind="parquet") == 12
    pd.testing.assert_frame_equal(fresh.table(), book.table())


def _schema_1(path: Path) -> None:
    """A scores database as schema 1 made it (before studies): no run column."""
    items = ", ".join(f"{item} INTEGER NOT NULL" for item in RUBRIC)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executescript(f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE scores (score_id TEXT PRIMARY KEY, rater TEXT NOT NULL, dictionary TEXT NOT NULL,
    unit_index INTEGER NOT NULL, interpretation TEXT NOT NULL, {items},
    total INTEGER NOT NULL, interval_scores TEXT, blind INTEGER NOT NULL,
    created_at TEXT NOT NULL);
CREATE INDEX scores_unit ON scores (dictionary, unit_index, rater, created_at);
CREATE TABLE queues (rater TEXT PRIMARY KEY, sources TEXT NOT NULL, sample_size INTEGER NOT NULL,
    seed INTEGER NOT NULL, units TEXT NOT NULL, position INTEGER NOT NULL,
    created_at TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO queues VALUES ('ann', '["sae_64"]', 1, 0, '[["sae_64", 7]]', 0,
    '2026-01-01T00:00:00.000000+00:00');
""")
        for k, rater in enumerate(("ann", "bob")):
            conn.execute("INSERT INTO scores VALUES (?, ?, 'sae_64', 7, 'old', 3, 5, 3, 1, 2, "
                         "14, NULL, 1, ?)", (f"{k:032x}", rater,
                                             f"2026-01-01T00:00:0{k}.000000+00:00"))


def test_a_schema_1_book_is_migrated_and_reads_as_the_single_run(fast_dir):
    path = fast_dir / "scores.sqlite"
    _schema_1(path)
    book = ScoreBook(path)
    old = book.history()
    assert [(s.rater, s.run, s.dictionary, s.unit_index, s.total) for s in old] == [
        ("ann", "", "sae_64", 7, 14), ("bob", "", "sae_64", 7, 14)]
    assert book.latest("ann", "sae_64", 7) == old[0]
    assert book.queue("ann").units == (("sae_64", 7),)
    assert results(book).by_source["source"].tolist() == ["sae_64"]
    assert book.unit_means("sae_64").to_dict() == {7: 14}
    book.submit("ann", "sae_64", 7, GOOD)  # the old CHECK-less table takes new rows
    assert [s.run for s in book.history()] == ["", "", ""]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone() == ("2",)
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(scores)")}
        assert "scores_run_unit" in indexes and "scores_unit" not in indexes
    assert len(ScoreBook(path).history()) == 3  # opening it again migrates nothing twice


def test_an_export_from_before_studies_imports_as_the_single_run(fast_dir):
    book = ScoreBook(fast_dir / "a.sqlite")
    book.submit("ann", "sae_64", 1, GOOD)
    rows = list(csv.DictReader(io.StringIO(book.export_csv().decode(), newline="")))
    assert rows[0]["run"] == ""
    old = io.StringIO(newline="")
    writer = csv.DictWriter(old, fieldnames=[c for c in rows[0] if c != "run"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: v for k, v in r.items() if k != "run"} for r in rows])
    fresh = ScoreBook(fast_dir / "b.sqlite")
    assert fresh.import_file(old.getvalue().encode(), kind="csv", name="old.csv") == 1
    assert fresh.history()[0].run == "" and fresh.history() == book.history()
