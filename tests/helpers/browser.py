"""Browser tests' plumbing: Debian's chromium (never a downloaded browser) driven by
Playwright, against `python -m dashboard.serve` (what `make demo` and the Procfile run) on a
free localhost port. The fixtures that use these live in tests/conftest.py."""

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
from urllib.parse import parse_qs, urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
# Streamlit marks the app `notRunning` once a script run has finished drawing.
SETTLED = '[data-test-script-state="notRunning"]'

requires_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(store: Path, log_dir: Path) -> Iterator[str]:
    """`python -m dashboard.serve` on `store` at a free localhost port, its base URL; stopped
    by its pid. The server's environment names the store and a scores database of its own
    (in `log_dir`) explicitly: it is started inside whichever test first needs it, and must
    not inherit that test's monkeypatched FEATURE_* variables or score beside a shared store."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_")}
    env |= {"FEATURE_STORE": str(store), "FEATURE_SCORES": str(log_dir / "scores.sqlite")}
    log_path = log_dir / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard.serve", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
                    pytest.fail(f"streamlit did not start (exit {proc.poll()}); see {log_path}")
                time.sleep(0.3)
            # serve.py warms before it listens: the first page view pays no import
            assert "dashboard warmed in" in log_path.read_text(), log_path.read_text()
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def settled(page, timeout: int = 60_000) -> None:
    """Wait until Streamlit has finished the current run (nothing half-drawn is read)."""
    page.wait_for_selector(SETTLED, timeout=timeout)


def query(page) -> dict[str, str]:
    """The page URL's query parameters, one value each."""
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def shows(page, selector, text: str | None = None, timeout: int = 30_000) -> str:
    """Wait for `selector` (a selector string or a Locator; its first match) to be visible,
    then check it holds `text` (when given); its text (as shown; an SVG element's text
    content). Why not `wait_for_selector` alone: a
    test that only waits fails by a timeout that names no expectation, and passes on an
    element that is attached but hidden."""
    locator = (page.locator(selector) if isinstance(selector, str) else selector).first
    locator.wait_for(state="visible", timeout=timeout)
    assert locator.is_visible(), selector
    shown = locator.evaluate("e => e instanceof HTMLElement ? e.innerText : e.textContent")
    if text is not None:
        assert text in shown, (selector, text, shown[:500])
    return shown


def click_point(page, point) -> None:
    """Click a plotly point where it is drawn: plotly hit-tests the mouse position on its
    drag layer, so the point's own SVG element never receives the click."""
    page.evaluate("window.scrollTo(0, 0)")
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(200)  # the hover that plotly's click handler expects first
    page.mouse.click(x, y)
