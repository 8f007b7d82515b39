"""Running dashboard pages under AppTest and reading their charts back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from dashboard import light_plotly, links

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def open_page(page: str, timeout: float = 60, **params: str) -> AppTest:
    """`page` (e.g. `links.FEATURE`) opened with these query parameters as a browser opens
    its URL: the first script run of a new session goes straight to the page, through the
    entry script's `st.navigation`. Fails on any exception the page raised.
    FEATURE_STORE etc. come from the caller's environment.

    Why not `at.run()` then `at.switch_page(page)` (AppTest's documented way): that first
    renders the whole overview page, unasked and unchecked, which cost more than the page
    under test. `st.Page` names a page by the hash of its url path (`links.URL_PATHS`), so
    the session can ask for it before its first run (AppTest's private `_page_hash`, as
    `switch_page` sets it); the page the run finished on is checked below, so a Streamlit
    that changes this fails here, loudly, not in some assertion about the page."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in params.items():
        at.query_params[key] = value
    if page != links.OVERVIEW:  # the default page: what a session with no page asked opens
        at._page_hash = calc_hash(links.URL_PATHS[page])
    at.run()
    ran = at._registered_pages.get(at._finished_page_script_hash, {}).get("script_path")
    assert ran and Path(ran).resolve() == (Path(APP).parent / page).resolve(), (page, ran)
    assert not at.exception, [e.message for e in at.exception]
    return at


def chart_figures(at: AppTest) -> list[dict]:
    """`st.plotly_chart` figures, then `light_plotly` ones (a page uses one kind or the other:
    light charts unless static serving is off)."""
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    for element in at.get("html"):
        figures.extend(light_plotly.figures_in(element.proto.body))
    return figures


def fresh_scores(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the app at `store` (a run's store or a study) and at a new scores database in
    `tmp_path`; the database's path. Why: a test that scores writes to the book, and the
    store is shared by the session; its own book keeps other tests' pages unscored."""
    monkeypatch.setenv("FEATURE_STORE", str(store))
    path = tmp_path / "scores.sqlite"
    monkeypatch.setenv("FEATURE_SCORES", str(path))
    return path
