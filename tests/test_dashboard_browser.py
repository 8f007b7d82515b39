"""The feature page in a real browser: Playwright drives Debian's chromium (never a
downloaded browser) against `python -m dashboard.serve` (what `make demo` and the Procfile
run) on a free localhost port, the session's server on the synthetic store (`page` and
`synthetic_server` come from tests/conftest.py).

Checks what only a browser can: the page paints its plotly charts, the hostile tokens of
feature 0 are visible *as text*, and no dialog (`alert`) ever fires. A screenshot is left in
the test's tmp folder for a human to look at.
"""

from __future__ import annotations

import time

from tests.helpers.browser import SETTLED, query, requires_chromium, shows

pytestmark = requires_chromium


def heading(page, index: int, timeout: int = 30_000) -> None:
    """The feature page of sae_64 #`index` is drawn and the address bar names it."""
    shows(page, f"text=sae_64 · feature {index}", f"sae_64 · feature {index}", timeout)
    page.wait_for_function(f"location.search.includes('feature={index}')", timeout=10_000)
    assert query(page)["feature"] == str(index) and query(page)["dictionary"] == "sae_64"


def test_feature_page_in_chromium(synthetic_server, page, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    start = time.monotonic()
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=0")
    shows(page, ".js-plotly-plot", timeout=60_000)
    shows(page, "text=Interval 1", "Interval 1")
    painted = time.monotonic() - start
    body = page.inner_text("body")
    assert "sae_64 · feature 0" in body
    # both charts drawn by the vendored basic bundle (dashboard/light_plotly.py), so static
    # serving of dashboard/static/ works
    assert page.locator(".light-plotly.js-plotly-plot").count() == 2
    assert "Top activations" in body and "Interval 11" in body
    assert "<script>alert(1)</script>" in body  # shown as text...
    assert "<img src=x onerror=alert(1)>" in body
    # ...and never turned into elements
    assert page.locator("img[src='x']").count() == 0
    scripts = page.evaluate("[...document.scripts].map(s => s.textContent).join('\\n')")
    assert "alert(1)" not in scripts
    page.wait_for_timeout(500)
    assert dialogs == []
    assert "feature=0" in page.url and "dictionary=sae_64" in page.url
    shot = tmp_path / "feature.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"feature page painted in {painted:.2f} s; screenshot {shot}")


def test_bad_feature_in_chromium(synthetic_server, page):
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=99999")
    shows(page, "text=No feature 99999 in sae_64", "No feature 99999 in sae_64", 60_000)
    assert "Traceback" not in page.inner_text("body")


def test_in_app_links_move_the_address_bar_and_back_returns(synthetic_server, page):
    """previous/next and neighbour links stay on the feature page; the URL must follow them
    (shareable), and the back button and a reload must show the feature the URL names."""
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=0")
    heading(page, 0, 60_000)
    page.locator("a", has_text="next →").first.click()
    heading(page, 1)
    page.go_back()
    heading(page, 0)
    page.reload()
    heading(page, 0, 60_000)
    shows(page, ".light-plotly.js-plotly-plot")
    assert page.locator(".light-plotly.js-plotly-plot").count() == 2


def test_shading_toggle_follows_the_url(synthetic_server, page):
    """The ablation-shading switch is a link: clicking it shades by ablation and puts
    `shade=ablation` in the address bar; back returns to activation shading."""
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=2")
    shows(page, "text=Shade by ablation effect: off", "Shade by ablation effect: off", 60_000)
    shows(page, "text=full orange", "full orange")  # the activation legend
    page.wait_for_selector(SETTLED, timeout=30_000)
    page.locator("a", has_text="Shade by ablation effect").first.click()
    shows(page, "text=Shade by ablation effect: on", "Shade by ablation effect: on")
    page.wait_for_function("location.search.includes('shade=ablation')", timeout=10_000)
    assert query(page)["shade"] == "ablation"
    shows(page, "text=lowered it", "lowered it")  # the ablation legend
    assert "full orange" not in page.inner_text("body")
    page.go_back()
    shows(page, "text=Shade by ablation effect: off", "Shade by ablation effect: off")
    shows(page, "text=full orange", "full orange")
    assert "shade" not in page.evaluate("location.search")


def test_arrow_keys_page_through_features(synthetic_server, page):
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=5")
    heading(page, 5, 60_000)
    # the heading can paint before the page's scripts have run: wait for the key handler
    page.wait_for_function("window.__featureShortcuts === true", timeout=30_000)
    shows(page, page.locator("a", has_text="next →"), "next →")  # what the key presses
    page.keyboard.press("ArrowRight")
    heading(page, 6)
    page.wait_for_selector(SETTLED, timeout=30_000)
    shows(page, page.locator("a", has_text="← previous"), "← previous")
    page.keyboard.press("ArrowLeft")
    heading(page, 5)
    page.go_back()  # the keys made history entries like clicks do
    heading(page, 6)


def test_overview_url_redirects_to_the_root(synthetic_server, page):
    """The default page lives at `/`; `/overview` goes there, with no "Page not found"."""
    page.goto(f"{synthetic_server}/overview")
    shows(page, "text=Run overview", "Run overview", 60_000)
    page.wait_for_function("location.pathname === '/'", timeout=10_000)
    assert page.evaluate("location.pathname") == "/"
    assert "Page not found" not in page.inner_text("body")
