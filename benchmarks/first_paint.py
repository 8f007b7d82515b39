"""Time to first paint of the feature page in a real browser (Debian's chromium via Playwright).

Serves the dashboard with `streamlit run` on a free localhost port against a store (default
runs/tiny/store; `--synthetic N` builds a 4 x N-feature synthetic store instead), opens
`/feature?dictionary=..&feature=..` in a fresh browser context for several features and
records the time from navigation to the first visible plotly chart (`.js-plotly-plot`) and
to the last interval's examples. The first load of a fresh server (cold caches) is reported
apart from the rest. Target: first paint <= 2 s.

    python benchmarks/first_paint.py [--store runs/tiny/store] [--synthetic 16384] [-n 10]
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
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
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


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="runs/tiny/store")
    parser.add_argument("--synthetic", type=int, default=0, help="build a 4 x N synthetic store")
    parser.add_argument("-n", type=int, default=10)
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
            paint, done, warm = [], [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for dictionary, index in targets:  # cold: a new browser context (empty cache) each
                    page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
                    t = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/feature?dictionary={dictionary}&feature={index}")
                    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
                    paint.append(time.perf_counter() - t)
                    page.get_by_text("Interval 1 ").first.wait_for(timeout=60_000)
                    done.append(time.perf_counter() - t)
                    page.context.close()
                page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
                for dictionary, index in targets:  # warm: one context, its HTTP cache kept
                    t = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{port}/feature?dictionary={dictionary}&feature={index}")
                    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
                    warm.append(time.perf_counter() - t)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    warm_paint, warm_done = paint[1:], done[1:]
    result = {"store": str(args.store if not args.synthetic else f"synthetic 4 x {args.synthetic}"),
              "cold_first_paint_s": paint[0], "first_paint_p50_s": pct(warm_paint, 0.5),
              "first_paint_p95_s": pct(warm_paint, 0.95), "all_intervals_p50_s": pct(warm_done, 0.5),
              "pages": len(warm_paint), "cached_browser_first_paint_p50_s": pct(warm[1:], 0.5),
              "cached_browser_first_paint_p95_s": pct(warm[1:], 0.95)}
    print(f"first paint in chromium ({result['store']}): cold server {paint[0]:.2f} s; then "
          f"p50 {result['first_paint_p50_s']:.2f} s, p95 {result['first_paint_p95_s']:.2f} s over "
          f"{len(warm_paint)} pages with an empty browser cache (all 11 intervals shown: p50 "
          f"{result['all_intervals_p50_s']:.2f} s); with the browser's cache kept: p50 "
          f"{result['cached_browser_first_paint_p50_s']:.2f} s, p95 {result['cached_browser_first_paint_p95_s']:.2f} s; "
          f"target <= 2 s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
