"""Running dashboard pages under AppTest and reading their charts back, shared by the page tests."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard import light_plotly

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def open_page(page: str, **params: str) -> AppTest:
    """The entry script once (navigation), then `page` with these query parameters; fails on
    any exception the page raised. FEATURE_STORE etc. come from the caller's environment."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def chart_figures(at: AppTest) -> list[dict]:
    """`st.plotly_chart` figures, then `light_plotly` ones (a page uses one kind or the other:
    light charts unless static serving is off)."""
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    for element in at.get("html"):
        figures.extend(light_plotly.figures_in(element.proto.body))
    return figures


def fresh_scores(store: Path, tmp_path: Path, monkeypatch) -> Path:
    """Point the app at `store` (a run's store or a study) and at a new scores database in
    `tmp_path`; the database's path."""
    monkeypatch.setenv("FEATURE_STORE", str(store))
    path = tmp_path / "scores.sqlite"
    monkeypatch.setenv("FEATURE_SCORES", str(path))
    return path
