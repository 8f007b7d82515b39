"""The feature page in a real browser (Debian's chromium via Playwright, on the session's
server on the synthetic store): `shade=ablation` survives what a reader does to move on, the
previous / next links, the ← / → keys and a neighbour's link.

A screenshot is left in the test's tmp folder for a human to look at.
"""

from __future__ import annotations

import re

from tests.helpers.browser import SETTLED, query, requires_chromium, shows

pytestmark = requires_chromium


def shows_feature(page, dictionary: str, index: int) -> None:
    """Wait for the feature's page, finished, then check it is shaded by ablation effect
    (legend, switch and URL) and not by activation."""
    shows(page, f"text={dictionary} · feature {index}", f"{dictionary} · feature {index}")
    page.wait_for_function(f"location.search.includes('feature={index}')", timeout=10_000)
    page.wait_for_selector(SETTLED, timeout=30_000)
    shows(page, "text=Shade by ablation effect: on", "Shade by ablation effect: on")
    shown = query(page)
    assert (shown["dictionary"], shown["feature"], shown["shade"]) == (dictionary, str(index),
                                                                       "ablation")
    body = page.inner_text("body")
    assert "lowered it" in body and "full colour at |Δ| ≥" in body  # the ablation legend
    assert "full orange" not in body  # the activation legend


def test_ablation_shading_survives_next_previous_keys_and_neighbour_links(
        synthetic_server, page, tmp_path):
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=5&shade=ablation")
    shows(page, ".js-plotly-plot", timeout=60_000)
    shows_feature(page, "sae_64", 5)

    page.locator("a", has_text="next →").first.click()
    shows_feature(page, "sae_64", 6)
    page.locator("a", has_text="← previous").first.click()
    shows_feature(page, "sae_64", 5)

    page.wait_for_function("window.__featureShortcuts === true", timeout=30_000)
    shows(page, page.locator("a", has_text="next →"), "next →")  # what the key presses
    page.keyboard.press("ArrowRight")
    shows_feature(page, "sae_64", 6)
    shows(page, page.locator("a", has_text="← previous"), "← previous")
    page.keyboard.press("ArrowLeft")
    shows_feature(page, "sae_64", 5)

    neighbour = page.locator(".related a").nth(1)  # the second unit nearest in sae_64
    target = re.search(r"dictionary=(\w+)&feature=(\d+)", neighbour.get_attribute("href"))
    neighbour.click()
    shows_feature(page, target.group(1), int(target.group(2)))
    shows(page, ".js-plotly-plot")
    page.screenshot(path=str(tmp_path / "feature_ablation.png"), full_page=True)
