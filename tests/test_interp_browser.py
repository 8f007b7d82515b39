"""Explanations in a real browser (Debian's chromium via Playwright, `python -m
dashboard.serve` on the session's synthetic store with synthetic explanations): the feature
page's block shows unit 0's hostile explanation as text with no dialog, and the browser's
grid has the score and explanation columns. Screenshots are left in the test's tmp folder."""

from __future__ import annotations

from tests.helpers.browser import SETTLED, requires_chromium, shows

pytestmark = requires_chromium

HEADERS = """() => [...document.querySelectorAll(
    '[data-testid="stDataFrame"] [role="columnheader"]')].map(e => e.textContent)"""


def test_explanation_block_shows_hostile_text_as_text(interp_server, page, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{interp_server}/feature?dictionary=sae_64&feature=0")
    shows(page, "text=Automated explanation", "Automated explanation", 60_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    text = shows(page, ".interp-text")
    assert "<script>alert(1)</script>" in text  # shown as text, not run
    table = page.locator(".interp-table").first.inner_text()
    assert "simulation (top + random)" in table and "another unit's explanation" in table
    page.screenshot(path=str(tmp_path / "feature_explanation.png"), full_page=True)
    assert dialogs == []


def test_browser_grid_has_score_columns(interp_server, page, tmp_path):
    page.goto(f"{interp_server}/browser?dictionary=sae_64&min_sim=0.4")
    shows(page, "text=Search explanations", "Search explanations", 60_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    shows(page, '[data-testid="stDataFrame"]')
    # The grid draws on a canvas; its column headers are also in an accessible table, which
    # it fills once it has laid out: wait for the score columns there.
    page.wait_for_function(
        f"""() => {{ const t = ({HEADERS})();
            return t.some(x => x.includes('simulation')) && t.some(x => x.includes('detection'));
        }}""", timeout=30_000)
    headers = " | ".join(page.evaluate(HEADERS))
    assert "simulation" in headers and "detection" in headers, headers
    page.screenshot(path=str(tmp_path / "browser_scores.png"), full_page=True)
