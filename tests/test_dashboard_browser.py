"""The feature page in a real browser: Playwright drives Debian's chromium (never a
downloaded browser) against `python -m dashboard.serve` (what `make demo` and the Procfile
run) on a free localhost port.

Checks what only a browser can: the page paints its plotly charts, the hostile tokens of
feature 0 are visible *as text*, and no dialog (`alert`) ever fires. A screenshot is left in
the test's tmp folder for a human to look at.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(store: Path, log_dir: Path) -> Iterator[str]:
    """`python -m dashboard.serve` on `store` at a free localhost port; stopped by its pid."""
    port = free_port()
    log = open(log_dir / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard.serve", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "FEATURE_STORE": str(store)}, stdout=log,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The warmed server on the synthetic store; stopped (by its pid) after the module."""
    from feature_store.synthetic import build_synthetic_store

    store = tmp_path_factory.mktemp("browser") / "store"
    build_synthetic_store(store, n_features=(64, 128), d_mlp=64, n_tokens=200_000)
    log_dir = tmp_path_factory.mktemp("log")
    with serving(store, log_dir) as base:
        assert "dashboard warmed in" in (log_dir / "streamlit.log").read_text()  # before it listened
        yield base


@pytest.fixture
def page():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1200})
        finally:
            browser.close()


def test_feature_page_in_chromium(server, page, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    start = time.monotonic()
    page.goto(f"{server}/feature?dictionary=sae_64&feature=0")
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    page.wait_for_selector("text=Interval 1", timeout=30_000)
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


def test_bad_feature_in_chromium(server, page):
    page.goto(f"{server}/feature?dictionary=sae_64&feature=99999")
    page.wait_for_selector("text=No feature 99999 in sae_64", timeout=60_000)
    assert "Traceback" not in page.inner_text("body")


def test_in_app_links_move_the_address_bar_and_back_returns(server, page):
    """previous/next and neighbour links stay on the feature page; the URL must follow them
    (shareable), and the back button and a reload must show the feature the URL names."""
    page.goto(f"{server}/feature?dictionary=sae_64&feature=0")
    page.wait_for_selector("text=sae_64 · feature 0", timeout=60_000)
    page.locator("a", has_text="next →").first.click()
    page.wait_for_selector("text=sae_64 · feature 1", timeout=30_000)
    page.wait_for_function("location.search.includes('feature=1')", timeout=10_000)
    page.go_back()
    page.wait_for_selector("text=sae_64 · feature 0", timeout=30_000)
    assert "feature=0" in page.evaluate("location.search")
    page.reload()
    page.wait_for_selector("text=sae_64 · feature 0", timeout=60_000)
    page.wait_for_selector(".light-plotly.js-plotly-plot", timeout=30_000)


def test_shading_toggle_follows_the_url(server, page):
    """The ablation-shading switch is a link: clicking it shades by ablation and puts
    `shade=ablation` in the address bar; back returns to activation shading."""
    page.goto(f"{server}/feature?dictionary=sae_64&feature=2")
    page.wait_for_selector("text=Shade by ablation effect: off", timeout=60_000)
    page.wait_for_selector("text=full orange", timeout=30_000)  # the activation legend
    page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=30_000)
    page.locator("a", has_text="Shade by ablation effect").first.click()
    page.wait_for_selector("text=Shade by ablation effect: on", timeout=30_000)
    page.wait_for_function("location.search.includes('shade=ablation')", timeout=10_000)
    page.wait_for_selector("text=lowered it", timeout=30_000)  # the ablation legend
    assert "full orange" not in page.inner_text("body")
    page.go_back()
    page.wait_for_selector("text=Shade by ablation effect: off", timeout=30_000)
    page.wait_for_selector("text=full orange", timeout=30_000)
    assert "shade" not in page.evaluate("location.search")


def test_arrow_keys_page_through_features(server, page):
    page.goto(f"{server}/feature?dictionary=sae_64&feature=5")
    page.wait_for_selector("text=sae_64 · feature 5", timeout=60_000)
    # the heading can paint before the page's scripts have run: wait for the key handler
    page.wait_for_function("window.__featureShortcuts === true", timeout=30_000)
    page.locator("a", has_text="next →").first.wait_for(timeout=30_000)  # what the key presses
    page.keyboard.press("ArrowRight")
    page.wait_for_selector("text=sae_64 · feature 6", timeout=30_000)
    page.wait_for_function("location.search.includes('feature=6')", timeout=10_000)
    page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=30_000)
    page.locator("a", has_text="← previous").first.wait_for(timeout=30_000)
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector("text=sae_64 · feature 5", timeout=30_000)
    page.go_back()  # the keys made history entries like clicks do
    page.wait_for_selector("text=sae_64 · feature 6", timeout=30_000)


def test_overview_url_redirects_to_the_root(server, page):
    """The default page lives at `/`; `/overview` goes there, with no "Page not found"."""
    page.goto(f"{server}/overview")
    page.wait_for_selector("text=Run overview", timeout=60_000)
    page.wait_for_function("location.pathname === '/'", timeout=10_000)
    assert "Page not found" not in page.inner_text("body")
