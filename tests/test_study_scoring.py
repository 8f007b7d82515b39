"""Blind scoring across a study (issue 12, item 5), headless (AppTest), on a synthetic study.

The study's two runs have names that occur nowhere else (no syllable of the synthetic vocab,
no word of the page's HTML or CSS), so "the run never reaches the browser" can be checked as
"the name is in nothing the script sent": every element's whole message, widget keys and ids
included, and the URL. The runs hold different dictionaries (`sae_160` only in the first),
and their stores different numbers (other seeds), so a unit loaded from the wrong run would
show. A score book from before studies (schema 1, no run column) still opens.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from dashboard import light_plotly, links, score_views
from feature_store.scores import ScoreBook
from feature_store.scores_results import results
from tests.helpers.app import chart_figures, fresh_scores, open_page
from tests.helpers.scoring import (ITEMS, RESULTS, SCORE, assert_blind, button, fill_rubric, ok,
                                   rendered, sent, widget)
from tests.helpers.stores import STUDY_RUNS as RUNS

FIRST, SECOND = RUNS
NAMES = ("neurons", "sae_96", "sae_160", *RUNS)
SOURCES = [f"{FIRST} · neurons", f"{FIRST} · sae_96", f"{FIRST} · sae_160",
           f"{SECOND} · neurons", f"{SECOND} · sae_96"]


@pytest.fixture
def scores(synthetic_study, tmp_path, monkeypatch) -> Path:
    """A fresh study book per test (`FEATURE_SCORES`); FEATURE_STORE names the session's
    synthetic study (two runs: `stores.STUDY_RUNS`)."""
    path = fresh_scores(synthetic_study, tmp_path, monkeypatch)
    return path


def test_queue_mixes_runs_and_the_page_leaks_neither_run_nor_dictionary(scores):
    at = open_page(SCORE, rater="ann", run=SECOND)  # a run in the URL is dropped while blind
    assert "run" not in at.query_params
    assert not at.sidebar.radio, "no run picker on the Score page of a study"
    assert at.multiselect[0].options == SOURCES  # every run x dictionary is a source
    at.number_input[0].set_value(10)
    at.number_input[1].set_value(2)
    ok(at.button[0].click().run())  # "Start queue" with every source
    queue = ScoreBook(scores).queue("ann")
    assert len(queue) == 10 and all(len(u) == 3 for u in queue.units)  # (run, dictionary, index)
    assert {r for r, _, _ in queue.units} == set(RUNS)
    assert sorted({(r, d) for r, d, _ in queue.units}) == sorted(
        (s.split(" · ")[0], s.split(" · ")[1]) for s in SOURCES)  # 2 from each of 5 sources
    assert set(at.query_params) == {"rater", "pos"}
    assert_blind(at, queue.units[0], NAMES)

    for pos, unit in enumerate(queue.units, start=1):
        page = open_page(SCORE, rater="ann", pos=str(pos), run=FIRST)
        assert not page.sidebar.radio
        assert_blind(page, unit, NAMES)
        widget(page.toggle, "_per_interval").set_value(True)
        ok(page.run())
        assert_blind(page, unit, NAMES)
        assert "Submit score" in sent(page)  # the dump really holds the page

    # score the first unit: saved with its run, and only now revealed
    run, dictionary, index = queue.units[0]
    fill_rubric(at, "quotes", ITEMS)
    ok(at.run())
    assert_blind(at, queue.units[0], NAMES)
    ok(button(at, "Submit score").click().run())
    saved = ScoreBook(scores).latest("ann", dictionary, index, run=run)
    assert saved is not None and saved.run == run and saved.blind and saved.total == 12
    other = SECOND if run == FIRST else FIRST
    assert ScoreBook(scores).latest("ann", dictionary, index, run=other) is None
    shown = rendered(at)
    assert f"This was **{dictionary} · feature {index}**" in shown and f"of run **{run}**" in shown
    link = next(e.proto for e in at.get("page_link") if e.proto.label == "Open its feature page")
    assert f"run={run}" in link.query_string and f"feature={index}" in link.query_string
    assert "run" not in at.query_params  # the reveal names the run; the URL still does not


# Indices chosen to be detectable, the same index in both runs' neurons, a dictionary that
# only one run has.
DISTINCT = ((FIRST, "sae_160", 137), (SECOND, "neurons", 43), (FIRST, "neurons", 43),
            (SECOND, "sae_96", 71))


def test_blind_study_page_never_spells_the_index(scores):
    book = ScoreBook(scores)
    queue = book.make_queue("eve", {(r, d): [i] for r, d, i in DISTINCT}, 4, 0)
    assert sorted(queue.units) == sorted(DISTINCT)
    for pos, unit in enumerate(queue.units, start=1):
        at = open_page(SCORE, rater="eve", pos=str(pos))
        widget(at.toggle, "_per_interval").set_value(True)
        ok(at.run())
        assert_blind(at, unit, NAMES)
        text = light_plotly.without_figures(rendered(at))
        for chart in at.get("plotly_chart"):
            text = text.replace(chart.proto.spec, "")
        text = re.sub(r'title="token id \d+"', "", text)
        # widget keys and chart ids start with the queue's key, a crc32 in hex of its
        # creation time: "q5a71f0c2_1" says nothing about unit 71 (and made this flaky)
        text = text.replace(score_views.queue_key(queue, pos), "")
        found = re.search(rf"(?<![\d.]){unit[2]}(?![\d.%])", text)
        assert not found, (unit, text[max(0, found.start() - 200): found.end() + 200])


def test_each_slot_shows_its_own_runs_unit(scores, synthetic_study):
    """Neuron 43 of the two runs are two units: each slot shows its run's record (the runs'
    stores differ), and a score of one is not a score of the other."""
    from dashboard import token_html
    from feature_store.store import FeatureStore

    book = ScoreBook(scores)
    units = ((FIRST, "neurons", 43), (SECOND, "neurons", 43))
    queue = book.make_queue("fay", {(r, d): [i] for r, d, i in units}, 2, 0)

    def logit_table(run: str) -> str:  # as the blind page prints it: weights / the largest
        run_store = FeatureStore.open(synthetic_study / "runs" / run / "store")
        record = run_store.feature("neurons", 43)
        scale = max(abs(e.value) for e in record.top_logits + record.bottom_logits)
        return token_html.logit_columns_html(record.top_logits, record.bottom_logits, scale,
                                             relative=True)

    assert logit_table(FIRST) != logit_table(SECOND)
    for pos, (run, _, _) in enumerate(queue.units, start=1):
        at = open_page(SCORE, rater="fay", pos=str(pos))
        bodies = [h.proto.body for h in at.get("html")]
        other = SECOND if run == FIRST else FIRST
        assert logit_table(run) in bodies and logit_table(other) not in bodies
        fill_rubric(at, "x", {**ITEMS, "confidence": pos - 1})
        ok(at.run())
        ok(button(at, "Submit score").click().run())
    for pos, (run, dictionary, index) in enumerate(queue.units, start=1):
        assert book.latest("fay", dictionary, index, run=run).total == 8 + pos
    assert len(book.latest_table()) == 2


def test_results_split_by_run_and_source(scores):
    """Known totals per run x source: the page's table has one row per run x source in the
    study's order, with the medians, shares above 8 and alphas computed here by hand."""
    book = ScoreBook(scores)
    plan = {  # (run, dictionary) -> ann's totals on units 0..n-1 (bob: +1 on each)
        (FIRST, "neurons"): [2, 4, 9, 11], (SECOND, "neurons"): [1, 1, 3],
        (FIRST, "sae_160"): [10, 12, 13], (SECOND, "sae_96"): [9],
    }
    for (run, dictionary), totals in plan.items():
        for index, total in enumerate(totals):
            for rater, shift in (("ann", 0), ("bob", 1)):
                book.submit(rater, dictionary, index, _rubric(total + shift), run=run)
    book.submit("cy", "neurons", 0, _rubric(15), run=SECOND, blind=False)  # left out

    at = open_page(RESULTS)
    summary = at.dataframe[0].value.set_index("source")
    want = [f"{FIRST} · neurons", f"{FIRST} · sae_160", f"{SECOND} · neurons",
            f"{SECOND} · sae_96"]
    assert list(summary.index) == want
    for (run, dictionary), totals in plan.items():
        both = np.array(totals + [t + 1 for t in totals])
        row = summary.loc[f"{run} · {dictionary}"]
        assert row["ratings"] == 2 * len(totals) and row["units"] == len(totals)
        assert row["median"] == np.median(both)
        assert row["share > 8"] == pytest.approx(100 * np.mean(both > 8))
    # neurons 0..2 exist in both runs: four sources' units, never merged across runs
    res = results(book, order=want)
    assert res.alpha_units == sum(len(t) for t in plan.values())
    assert "over 11 units scored by ≥ 2 raters" in rendered(at)
    assert "1 not-blind score(s) left out" in rendered(at)
    figure = [f for f in _figures(at) if "Rubric totals" in str(f["layout"].get("title"))][0]
    traces = {t["name"]: t["marker"] for t in figure["data"]}
    assert list(traces) == want
    # one colour per dictionary, the second run hatched
    assert traces[f"{FIRST} · neurons"]["color"] == traces[f"{SECOND} · neurons"]["color"]
    assert "pattern" not in traces[f"{FIRST} · neurons"]
    assert traces[f"{SECOND} · neurons"]["pattern"]["shape"]


def test_named_scoring_in_a_study_records_the_run(scores):
    at = open_page(SCORE, run=SECOND, dictionary="sae_96", feature="5", rater="dee")
    assert at.query_params["run"] == SECOND
    assert "Not blind" in rendered(at) and f"sae_96 · feature 5 · run {SECOND}" in rendered(at)
    fill_rubric(at, "x", ITEMS)
    ok(at.run())
    ok(button(at, "Submit score").click().run())
    saved = ScoreBook(scores).latest("dee", "sae_96", 5, run=SECOND)
    assert saved is not None and not saved.blind and saved.run == SECOND
    assert ScoreBook(scores).latest("dee", "sae_96", 5, run=FIRST) is None
    # the browser's score column is per run
    first = open_page(links.BROWSER, run=FIRST, dictionary="sae_96").dataframe[0].value
    second = open_page(links.BROWSER, run=SECOND, dictionary="sae_96").dataframe[0].value
    assert "score" not in first  # nothing of this run scored: no column
    assert second.loc[second["feature"] == 5, "score"].item() == 12


def test_the_study_book_lives_in_the_study_folder(synthetic_study, tmp_path, monkeypatch):
    # Its own copy of the study: with no FEATURE_SCORES the score is saved in the study's
    # folder, which the session's study must not keep for the tests after this one.
    study = tmp_path / "study"
    shutil.copytree(synthetic_study, study, symlinks=True)
    monkeypatch.setenv("FEATURE_STORE", str(study))
    monkeypatch.delenv("FEATURE_SCORES", raising=False)
    book = study / "scores.sqlite"
    at = open_page(SCORE, run=FIRST, dictionary="neurons", feature="1", rater="gus")
    fill_rubric(at, "x", ITEMS)
    ok(at.run())
    ok(button(at, "Submit score").click().run())
    assert ScoreBook(book).latest("gus", "neurons", 1, run=FIRST) is not None
    assert not (study / "runs" / FIRST / "scores.sqlite").exists()
    assert f"scores: `{book}`" in rendered(open_page(RESULTS))


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE scores (score_id TEXT PRIMARY KEY, rater TEXT NOT NULL, dictionary TEXT NOT NULL,
    unit_index INTEGER NOT NULL, interpretation TEXT NOT NULL, confidence INTEGER NOT NULL,
    activation_consistency INTEGER NOT NULL, logit_consistency INTEGER NOT NULL,
    separation INTEGER NOT NULL, specificity INTEGER NOT NULL, total INTEGER NOT NULL,
    interval_scores TEXT, blind INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX scores_unit ON scores (dictionary, unit_index, rater, created_at);
CREATE TABLE queues (rater TEXT PRIMARY KEY, sources TEXT NOT NULL, sample_size INTEGER NOT NULL,
    seed INTEGER NOT NULL, units TEXT NOT NULL, position INTEGER NOT NULL,
    created_at TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO scores VALUES ('00000000000000000000000000000001', 'ann', 'sae_96', 4, 'old', 3, 4,
    2, 1, 2, 12, NULL, 1, '2026-01-01T00:00:00.000000+00:00');
INSERT INTO queues VALUES ('ann', '["neurons", "sae_96"]', 2, 0, '[["sae_96", 4], ["neurons", 7]]',
    1, '2026-01-01T00:00:00.000000+00:00');
"""


def test_a_single_run_book_from_before_studies_still_opens(synthetic_study, tmp_path,
                                                             monkeypatch):
    """A schema-1 book (no run column) on a single run's store: the Results page counts its
    row, the Score page resumes its queue, and a new score joins the old one."""
    path = tmp_path / "scores.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_1)
    monkeypatch.setenv("FEATURE_STORE", str(synthetic_study / "runs" / FIRST / "store"))
    monkeypatch.setenv("FEATURE_SCORES", str(path))
    res = open_page(RESULTS)
    assert "1 rating by 1 rater" in rendered(res)
    assert list(res.dataframe[0].value["source"]) == ["sae_96"]
    at = open_page(SCORE, rater="ann")
    assert at.query_params["pos"] == "2"
    assert_blind(at, ("neurons", 7), NAMES)
    fill_rubric(at, "new", ITEMS)
    ok(at.run())
    ok(button(at, "Submit score").click().run())
    book = ScoreBook(path)
    assert [(s.run, s.dictionary, s.unit_index) for s in book.history()] == [
        ("", "sae_96", 4), ("", "neurons", 7)]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == ("2",)


def _rubric(total: int) -> dict:
    """Rubric items that add up to `total` (0..15), filled in item order."""
    values, left = {"interpretation": "x"}, total
    for item, hi in (("activation_consistency", 5), ("confidence", 3), ("logit_consistency", 3),
                     ("specificity", 3), ("separation", 1)):
        values[item] = min(hi, left)
        left -= values[item]
    assert left == 0
    return values


def _figures(at) -> list[dict]:
    return chart_figures(at)


def test_on_a_real_study_pre_layernorm_neurons_are_offered_not_picked(mini_study, tmp_path,
                                                                        monkeypatch):
    """The mini study (SoLU + GeLU, pipeline-built): every run x dictionary is offered, SoLU's
    `neurons_pre_ln` (no logit weights: its empty tables would give it away) is not picked by
    default, a queue of the defaults spans both runs, and a pre-LN slot says it has no
    logit weights instead of drawing empty tables. Run names are checked where the page
    itself writes (keys, labels, URL), not in corpus text, where "solu" is a substring of
    ordinary words (absolute, resolution)."""
    monkeypatch.setenv("FEATURE_STORE", str(mini_study[0]))
    monkeypatch.setenv("FEATURE_SCORES", str(tmp_path / "scores.sqlite"))
    at = open_page(SCORE, rater="hal")
    options = at.multiselect[0].options
    assert "solu · neurons_pre_ln" in options and "gelu · neurons" in options
    assert "solu · neurons_pre_ln" not in at.multiselect[0].value
    assert set(at.multiselect[0].value) == set(options) - {"solu · neurons_pre_ln"}
    at.number_input[0].set_value(12)
    ok(at.button[0].click().run())
    queue = ScoreBook(tmp_path / "scores.sqlite").queue("hal")
    assert {r for r, _, _ in queue.units} == {"solu", "gelu"}
    assert "neurons_pre_ln" not in {d for _, d, _ in queue.units}
    for pos in range(1, len(queue) + 1):
        page = open_page(SCORE, rater="hal", pos=str(pos))
        assert set(page.query_params) == {"rater", "pos"} and not page.sidebar.radio
        written = [str(n.proto) for n in page._tree if getattr(n, "proto", None) is not None
                   and n.type != "html"]  # st.html holds the corpus tokens
        for name in ("solu", "gelu", "neurons", "sae_"):
            assert not any(name in w for w in written), name

    ScoreBook(tmp_path / "scores.sqlite").make_queue("hal", {("solu", "neurons_pre_ln"): [5]},
                                                     1, 0)
    page = open_page(SCORE, rater="hal", pos="1")
    assert any("has no logit weights" in i.value for i in page.info)
    assert not any('class="logits"' in h.proto.body for h in page.get("html"))
