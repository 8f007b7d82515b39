"""Explanations in a real browser (Debian's chromium via Playwright, `python -m
dashboard.serve` on a synthetic store with synthetic explanations): the feature page's block
shows unit 0's hostile explanation as text with no dialog, and the browser's grid has the
score and explanation columns. Screenshots are left in the test's tmp folder."""

from __future__ import annotations

import pytest

from tests.test_dashboard_browser import page, serving  # noqa: F401 - fixture and helper

SETTLED = '[data-test-script-state="notRunning"]'


@pytest.fixture(scope="module")
def interp_server(tmp_path_factory):
    from feature_store.synthetic import build_synthetic_store, write_synthetic_explanations

    store = tmp_path_factory.mktemp("interp_browser") / "store"
    build_synthetic_store(store, n_features=(64,), d_mlp=32, n_tokens=100_000, d_vocab=128)
    write_synthetic_explanations(store)
    with serving(store, tmp_path_factory.mktemp("log")) as base:
        yield base


def test_explanation_block_shows_hostile_text_as_text(interp_server, page, tmp_path):  # noqa: F811
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{interp_server}/feature?dictionary=sae_64&feature=0")
    page.wait_for_selector("text=Automated explanation", timeout=60_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    text = page.locator(".interp-text").first.inner_text()
    assert "<script>alert(1)</script>" in text  # shown as text, not run
    table = page.locator(".interp-table").first.inner_text()
    assert "simulation (top + random)" in table and "another unit's explanation" in table
    page.screenshot(path=str(tmp_path / "feature_explanation.png"), full_page=True)
    assert dialogs == []


def test_browser_grid_has_score_columns(interp_server, page, tmp_path):  # noqa: F811
    page.goto(f"{interp_server}/browser?dictionary=sae_64&min_sim=0.4")
    page.wait_for_selector("text=Search explanations", timeout=60_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    # The grid draws on a canvas; its column headers are also in an accessible table, which
    # it fills once it has laid out: wait for the score columns there.
    header = '[data-testid="stDataFrame"] [role="columnheader"]'
    page.wait_for_function(
        f"""() => {{
            const t = [...document.querySelectorAll('{header}')].map(e => e.textContent);
            return t.some(x => x.includes('simulation')) && t.some(x => x.includes('detection'));
        }}""", timeout=30_000)
    page.screenshot(path=str(tmp_path / "browser_scores.png"), full_page=True)
