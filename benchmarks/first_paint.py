"""Time to first paint of the feature page in a real browser (Debian's chromium via Playwright).

Serves the dashboard with `python -m dashboard.serve` (as `make demo` does) on a free localhost port against a store (default
runs/tiny/store; `--synthetic N` builds a 4 x N-feature synthetic store instead), opens
`/feature?dictionary=..&feature=..` in a fresh browser context (empty HTTP cache: a first
visit) for several features. In-page timestamps (ms since navigation start, recorded by a
MutationObserver) mark three moments: Streamlit's first contentful paint (the app shell),
the feature's content (its heading and all 11 intervals in the DOM), and the first plotly
chart drawn (its SVG in the DOM). "First paint" here is the last of these: the page with
its chart. The first load of a fresh server (Python imports, store open) is reported apart
from the rest; then the same pages again in one context whose cache is kept. Target: <= 2 s.

    python benchmarks/first_paint.py [--store runs/tiny/store] [--synthetic 16384] [-n 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: Path, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard.serve", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env={**os.environ, "FEATURE_STORE": str(store)}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("streamlit did not start")


# Runs before any page script: records when each milestone first appears in the DOM.
MARKS_JS = """
window.__marks = {};
new MutationObserver(() => {
  const m = window.__marks, t = performance.now(), text = document.body ? document.body.innerText : "";
  if (!m.content && text.includes(" · feature ") && text.includes("Interval 1 ")) m.content = t;
  if (!m.chart && document.querySelector(".js-plotly-plot .main-svg")) m.chart = t;
}).observe(document, {subtree: true, childList: true, characterData: true});
"""
READ_MARKS_JS = """() => ({...window.__marks,
  fcp: (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime})"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="runs/tiny/store")
    parser.add_argument("--synthetic", type=int, default=0, help="build a 4 x N synthetic store")
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from feature_store import FeatureStore

    tmp = tempfile.TemporaryDirectory()
    store = Path(args.store)
    if args.synthetic:
        from feature_store.synthetic import build_synthetic_store

        store = Path(tmp.name) / "store"
        build_synthetic_store(store, n_features=(args.synthetic,) * 4)
    fs = FeatureStore.open(store)
    rng = random.Random(0)
    names = [d for d in fs.dictionaries()]
    targets = [(d, rng.randrange(fs.n_features(d))) for d in (rng.choice(names) for _ in range(args.n + 1))]
    port = free_port()
    with open(Path(tmp.name) / "streamlit.log", "w") as log:
        proc = serve(store, port, log)
        try:
            marks, warm = [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for dictionary, index in targets:  # cold: a new browser context (empty cache) each
                    page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
                    page.add_init_script(MARKS_JS)
                    page.goto(f"http://127.0.0.1:{port}/feature?dictionary={dictionary}&feature={index}")
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
                    page.get_by_text("Interval 1 ").first.wait_for(timeout=60_000)
                    page.wait_for_function("window.__marks.content && window.__marks.chart", timeout=10_000)
                    marks.append({k: v / 1000 for k, v in page.evaluate(READ_MARKS_JS).items()})
                    page.context.close()
                page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
                page.add_init_script(MARKS_JS)
                for dictionary, index in targets:  # warm: one context, its HTTP cache kept
                    page.goto(f"http://127.0.0.1:{port}/feature?dictionary={dictionary}&feature={index}")
                    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
                    page.wait_for_function("window.__marks.chart", timeout=10_000)
                    warm.append(page.evaluate(READ_MARKS_JS)["chart"] / 1000)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    first, rest = marks[0], marks[1:]
    summary = {key: {"p50": pct([m[key] for m in rest], 0.5), "p95": pct([m[key] for m in rest], 0.95)}
               for key in ("fcp", "content", "chart")}
    result = {"store": str(args.store if not args.synthetic else f"synthetic 4 x {args.synthetic}"),
              "pages": len(rest), "cold_server": first, **summary,
              "first_paint_p50_s": summary["chart"]["p50"], "first_paint_p95_s": summary["chart"]["p95"],
              "cached_browser_first_paint_p50_s": pct(warm[1:], 0.5),
              "cached_browser_first_paint_p95_s": pct(warm[1:], 0.95)}
    print(f"feature page in chromium ({result['store']}), {len(rest)} pages, empty browser cache, "
          f"seconds from navigation (p50 / p95):")
    for key, label in (("fcp", "app shell painted (first contentful paint)"),
                       ("content", "feature heading + all 11 intervals shown"),
                       ("chart", "first chart drawn = first paint")):
        print(f"  {label:44s} {summary[key]['p50']:.2f} / {summary[key]['p95']:.2f}")
    print(f"  first page after the server started: content {first['content']:.2f}, chart {first['chart']:.2f}")
    print(f"  same pages with the browser cache kept: chart {result['cached_browser_first_paint_p50_s']:.2f}"
          f" / {result['cached_browser_first_paint_p95_s']:.2f}")
    print(f"first paint p95 {summary['chart']['p95']:.2f} s; target <= 2 s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
