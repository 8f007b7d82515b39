"""A study in a real browser: open a unit's match on the Universality page, follow its link
into the other run's feature page, and from there the link back into the first run."""

from __future__ import annotations

import pytest

from tests.helpers.browser import query, requires_chromium, settled, shows

pytestmark = [requires_chromium, pytest.mark.viewport(1500, 1100)]


def test_match_link_crosses_runs_and_back(study_server, mini_study, page, tmp_path):
    from feature_store.study_store import StudyStore

    study = StudyStore.open(mini_study[0])
    rows = study.matches("solu", "gelu", "neurons").dropna(subset=["best_corr"])
    unit = int(rows.sort_values("best_corr").iloc[-1]["index"])
    match = int(rows.set_index("index").loc[unit, "best_match"])
    back = int(study.match("gelu", "solu", "neurons", match)["best_match"])

    page.goto(f"{study_server}/universality?run=solu&other=gelu&dictionary=neurons&feature={unit}")
    settled(page)
    shows(page, ".js-plotly-plot", timeout=60_000)
    page.screenshot(path=str(tmp_path / "universality.png"), full_page=True)
    page.get_by_role("link", name=f"open gelu neurons #{match}").click()
    page.wait_for_url(lambda url: "/feature?" in url, timeout=60_000)
    settled(page)
    assert query(page) == {"dictionary": "neurons", "feature": str(match), "run": "gelu"}
    shows(page, ".study-match", "Run gelu", 60_000)
    page.screenshot(path=str(tmp_path / "feature_in_gelu.png"), full_page=True)

    page.locator(".study-match a").first.click()
    page.wait_for_url(lambda url: "run=solu" in url, timeout=60_000)
    settled(page)
    assert query(page) == {"dictionary": "neurons", "feature": str(back), "run": "solu"}
    assert page.locator(".study-match").inner_text().startswith("Run solu")
