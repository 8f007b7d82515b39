"""The feature page in a real browser (Debian's chromium via Playwright, with the server and
page fixtures of test_dashboard_browser.py): `shade=ablation` survives what a reader does to
move on, the previous / next links, the ← / → keys and a neighbour's link.

A screenshot is left in the test's tmp folder for a human to look at.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

from tests.test_dashboard_browser import page, server  # noqa: F401 - fixtures

SETTLED = '[data-test-script-state="notRunning"]'


def shows_feature(page, dictionary: str, index: int) -> None:  # noqa: F811 - page fixture
    """Wait for the feature's page, finished, then check it is shaded by ablation effect
    (legend, switch and URL) and not by activation."""
    page.wait_for_selector(f"text={dictionary} · feature {index}", timeout=30_000)
    page.wait_for_function(f"location.search.includes('feature={index}')", timeout=10_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    page.wait_for_selector("text=Shade by ablation effect: on", timeout=30_000)
    query = parse_qs(urlparse(page.url).query)
    assert query["shade"] == ["ablation"] and query["dictionary"] == [dictionary]
    body = page.inner_text("body")
    assert "lowered it" in body and "full colour at |Δ| ≥" in body  # the ablation legend
    assert "full orange" not in body  # the activation legend


def test_ablation_shading_survives_next_previous_keys_and_neighbour_links(
        server, page, tmp_path):  # noqa: F811 - fixtures
    page.goto(f"{server}/feature?dictionary=sae_64&feature=5&shade=ablation")
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    shows_feature(page, "sae_64", 5)

    page.locator("a", has_text="next →").first.click()
    shows_feature(page, "sae_64", 6)
    page.locator("a", has_text="← previous").first.click()
    shows_feature(page, "sae_64", 5)

    page.wait_for_function("window.__featureShortcuts === true", timeout=30_000)
    page.locator("a", has_text="next →").first.wait_for(timeout=30_000)  # what the key presses
    page.keyboard.press("ArrowRight")
    shows_feature(page, "sae_64", 6)
    page.locator("a", has_text="← previous").first.wait_for(timeout=30_000)
    page.keyboard.press("ArrowLeft")
    shows_feature(page, "sae_64", 5)

    neighbour = page.locator(".related a").nth(1)  # the second unit nearest in sae_64
    target = re.search(r"dictionary=(\w+)&feature=(\d+)", neighbour.get_attribute("href"))
    neighbour.click()
    shows_feature(page, target.group(1), int(target.group(2)))
    page.wait_for_selector(".js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(tmp_path / "feature_ablation.png"), full_page=True)
