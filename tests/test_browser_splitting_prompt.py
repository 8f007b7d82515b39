"""The splitting graph and the prompt explorer in a real browser (Debian's chromium driven by
Playwright; the session's `page` and servers, tests/conftest.py): what only a browser can
check, a click on a plotly node or a token, and a prompt edit that moves the explorer's
position to where the feature fires.

Each test leaves a screenshot in its tmp folder for a human to look at.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlparse

import numpy as np
import pytest

from tests.helpers.browser import click_point, query, requires_chromium, settled, shows

pytestmark = [requires_chromium, pytest.mark.viewport(1500, 1100)]


def test_a_click_on_a_family_node_opens_its_feature_page(synthetic_server, page, tmp_path):
    page.goto(f"{synthetic_server}/splitting")
    shows(page, "text=/Family/", "Family", 60_000)  # the graph's title (case-sensitive)
    graph = page.locator(".js-plotly-plot").first
    shows(page, graph, timeout=60_000)
    settled(page)
    page.screenshot(path=str(tmp_path / "splitting.png"), full_page=True)
    # the node trace is the graph's last; its points are drawn in data order
    nodes = page.evaluate("() => { const d = document.querySelector('.js-plotly-plot').data;"
                          " return d[d.length - 1].customdata; }")
    chosen = query(page)
    target = next(k for k, (d, i, _) in enumerate(nodes)
                  if (d, str(i)) != (chosen["dictionary"], chosen["feature"]))
    dictionary, index, _ = nodes[target]
    click_point(page, graph.locator(".scatterlayer .trace").last.locator("path.point").nth(target))
    shows(page, f"text={dictionary} · feature {index}", f"{dictionary} · feature {index}")
    page.wait_for_function("location.pathname.endsWith('/feature')", timeout=10_000)
    assert query(page) == {"dictionary": dictionary, "feature": str(index)}
    # back returns to the splitting page (Streamlit's history entry carries the clicked
    # node, a member of the same family) and the old selection does not bounce the reader
    # straight to a feature page again
    page.go_back()
    shows(page, "text=Splitting ·", "Splitting ·")
    settled(page)
    page.wait_for_timeout(1_500)
    assert urlparse(page.url).path.endswith("/splitting")
    assert page.locator("text=Family").count() > 0


TEXT_A = "import os\nprint(os.getcwd())\nfor name in os.listdir(path):\n    print(name)"
TEXT_B = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        return None"


def test_a_prompt_edit_moves_the_position_and_a_token_click_picks_it(mini_run, mini_server,
                                                                      page, tmp_path):
    from feature_store.live import LiveRun

    live = LiveRun.open(mini_run / "store")
    a = live.activations(TEXT_A, "sae_64").acts
    b = live.activations(TEXT_B, "sae_64").acts
    feature = next(f for f in range(a.shape[1]) if a[1:, f].max() > 0 and b[1:, f].max() > 0)
    peak_b = 1 + int(np.argmax(b[1:, feature]))
    params = {"dictionary": "sae_64", "text": TEXT_A, "feature": str(feature), "pos": "1"}
    page.goto(f"{mini_server}/prompt?{urlencode(params)}")
    shows(page, ".prompt-strip .tok", timeout=90_000)
    settled(page, timeout=90_000)
    assert query(page)["pos"] == "1"

    box = page.locator("textarea").first
    box.fill(TEXT_B)
    box.press("Control+Enter")  # Streamlit's text area commits on Ctrl+Enter (or blur)
    page.wait_for_function(f"new URLSearchParams(location.search).get('pos') === '{peak_b}'",
                           timeout=60_000)
    settled(page)
    assert query(page)["text"] == TEXT_B  # the URL names the new prompt...
    assert query(page)["pos"] == str(peak_b) and query(page)["feature"] == str(feature)
    strip = page.locator(".prompt-strip").first
    assert strip.locator(".tok").count() == len(b)
    assert strip.locator(".tok.c").count() == 1  # the position outlined
    page.screenshot(path=str(tmp_path / "prompt.png"), full_page=True)

    target = 2 if peak_b != 2 else 3
    strip.locator(".tok").nth(target).click()
    page.wait_for_function(f"new URLSearchParams(location.search).get('pos') === '{target}'",
                           timeout=60_000)
    settled(page)
    assert query(page)["pos"] == str(target)
    assert page.locator("text=Next token after position " + str(target)).count() == 1


def test_compare_columns_keep_every_firing_token_in_view(synthetic_server, page, tmp_path):
    """Narrow columns wrap example lines instead of clipping them: no line scrolls sideways,
    and every outlined (firing) token and activation lies inside its column."""
    page.set_viewport_size({"width": 900, "height": 1400})
    page.goto(f"{synthetic_server}/compare?dictionary=sae_64&feature=5")
    shows(page, "text=decoder cosine", "decoder cosine", 60_000)
    settled(page)
    page.wait_for_function("document.querySelectorAll('.tokens .ex').length >= 8",
                           timeout=60_000)  # every column's example lines drawn
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    report = page.evaluate("""() => [...document.querySelectorAll('.tokens .ex')].map(ex => {
        const box = ex.getBoundingClientRect();
        const inside = el => { const r = el.getBoundingClientRect();
                               return r.left >= box.left - 1 && r.right <= box.right + 1; };
        return {overflow: ex.scrollWidth - ex.clientWidth,
                centre: [...ex.querySelectorAll('.tok.c')].every(inside),
                act: [...ex.querySelectorAll('.ex-act')].every(inside)};
    })""")
    assert len(report) >= 8  # the feature's and its counterparts' top examples
    assert all(r["overflow"] <= 1 and r["centre"] and r["act"] for r in report), \
        [r for r in report if r["overflow"] > 1 or not (r["centre"] and r["act"])][:5]
