"""The explanation block, browser columns, overview distributions and Results comparison
under AppTest, on a synthetic store with synthetic explanations (hostile tokens in unit 0's
explanation); and the Score page shows nothing of them before a score is saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.app import chart_figures, fresh_scores, open_page


@pytest.fixture
def scores(interp_store, tmp_path, monkeypatch) -> Path:
    """FEATURE_STORE: the session's store with explanations (`stores.INTERP`); FEATURE_SCORES:
    a book of this test's own, as the Score page test saves a score, which would otherwise
    show on the pages of the tests after it (a score column in the browser)."""
    return fresh_scores(interp_store, tmp_path, monkeypatch)


@pytest.fixture
def app(scores):
    return open_page


def bodies(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def test_feature_page_shows_the_explanation_escaped(app):
    at = app("app_pages/feature.py", dictionary="sae_32", feature="0")
    body = bodies(at)
    assert "Automated explanation" in body and "interp-table" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    block = [h.proto.body for h in at.get("html") if "interp-block" in h.proto.body][0]
    assert "<script" not in block and "<img" not in block and "\u202e" not in block
    assert "another unit" in block and "best single token" in block


def test_browser_has_score_columns_and_searches_explanations(app):
    at = app("app_pages/browser.py", dictionary="sae_64")
    table = at.dataframe[0].value
    assert {"simulation", "detection", "explanation"} <= set(table.columns)
    n_all = len(table)
    at = app("app_pages/browser.py", dictionary="sae_64", min_sim="0.5")
    kept = at.dataframe[0].value
    assert 0 < len(kept) < n_all and (kept["simulation"] >= 0.5).all()
    at = app("app_pages/browser.py", dictionary="sae_64", expl="<script>")
    found = at.dataframe[0].value
    assert list(found["feature"]) == [0]
    assert "<script>" in found["explanation"].iloc[0]  # text in a canvas grid, not HTML


def test_overview_shows_score_distributions_with_controls(app):
    at = app("app_pages/overview.py")
    body = bodies(at)
    assert "Automated explanations" in [s.value for s in at.subheader]
    assert "shuffled" in body and "1 token" in body
    figures = [f for f in chart_figures(at)
               if "vs shuffled" in f["layout"].get("title", {}).get("text", "")]
    assert len(figures) == 2
    for f in figures:  # plotly.js's basic bundle draws only scatter and bar traces
        assert {t["type"] for t in f["data"]} == {"scatter"}
        names = {t["name"] for t in f["data"]}
        assert {"sae_32", "sae_32, shuffled", "neurons"} <= names


def test_score_page_hides_the_explanation_until_the_score_is_saved(app, scores):
    from feature_store.rubric import Rubric
    from feature_store.scores import ScoreBook

    at = app("app_pages/score.py", dictionary="sae_32", feature="0", rater="ann")
    assert "Automated explanation" not in bodies(at)
    assert "interp-block" not in bodies(at)
    book = ScoreBook(scores)
    book.submit("ann", "sae_32", 0, Rubric("tokens", 2, 3, 2, 0, 2), blind=False)
    at = app("app_pages/score.py", dictionary="sae_32", feature="0", rater="ann")
    assert "interp-block" in bodies(at)
    at = app("app_pages/results.py", all="1")
    assert "Human vs automated scores" in [s.value for s in at.subheader]
