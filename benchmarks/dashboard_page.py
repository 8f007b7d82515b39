"""Server time to assemble one feature page on a 4 × 16,384-feature store.

Builds a synthetic store (through `feature_store.synthetic`, cached in a tmp folder between
runs unless --rebuild), then for N random features of random dictionaries times:
- `store.feature()` for a feature not read before (the dictionary's arrays already loaded,
  as on a running server): the read itself;
- the whole feature page, headless (`AppTest`): URL parsing, the store read (a cache miss:
  every feature is new), every view, plotly figure JSON and protobuf serialisation — what
  the server does before the browser gets anything.
Prints p50/p95 of each against the 300 ms target. Run: `python -m benchmarks.dashboard_page`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

TARGET_MS = 300.0
APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ms)})"


def build(path: Path, sizes: tuple[int, ...], rebuild: bool) -> None:
    from feature_store.synthetic import build_synthetic_store

    if path.exists() and not rebuild:
        print(f"store: reusing {path}")
        return
    start = time.perf_counter()
    build_synthetic_store(path, n_features=sizes)
    print(f"store: built {path} in {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=16_384, help="features per dictionary")
    parser.add_argument("--dictionaries", type=int, default=4)
    parser.add_argument("-n", type=int, default=30, help="feature pages to time")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()

    from streamlit.testing.v1 import AppTest

    logging.getLogger("streamlit").setLevel(logging.ERROR)  # bare-mode context warnings

    from feature_store.store import FeatureStore

    # Repeated sizes get distinct names (sae_16384, sae_16384_2, ...); the 512 raw neurons
    # come on top as a fifth, small dictionary.
    sizes = (args.features,) * args.dictionaries
    path = args.store or Path(tempfile.gettempdir()) / f"bench_store_{args.dictionaries}x{args.features}"
    build(path, sizes, args.rebuild)

    store = FeatureStore.open(path)
    names = store.dictionaries()
    rng = random.Random(0)
    picks = [(name, rng.randrange(store.n_features(name)))
             for name in (rng.choice(names) for _ in range(args.n))]

    # Once per server: open the store and load each dictionary's per-feature arrays.
    start = time.perf_counter()
    for name in names:
        store.feature(name, store.n_features(name) - 1)
    load_s = time.perf_counter() - start
    read_ms = []
    for name, index in picks:  # distinct features: nothing of theirs is cached yet
        start = time.perf_counter()
        store.feature(name, index)
        read_ms.append((time.perf_counter() - start) * 1e3)

    os.environ["FEATURE_STORE"] = str(path)
    for name in names:  # the server's first page per dictionary loads it (load_s above)
        warm = AppTest.from_file(APP, default_timeout=120)
        warm.run()
        warm.query_params.update(dictionary=name, feature=str(store.n_features(name) - 1))
        warm.switch_page("app_pages/feature.py").run()
    page_ms = []
    for name, index in picks:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.query_params.update(dictionary=name, feature=str(index))
        at.switch_page("app_pages/feature.py")
        start = time.perf_counter()
        at.run()
        page_ms.append((time.perf_counter() - start) * 1e3)
        if at.exception or at.error:
            raise SystemExit(f"{name} #{index}: the page failed: {at.exception or at.error}")

    print(f"dictionaries: {', '.join(f'{n} ({store.n_features(n):,})' for n in names)}")
    print(f"once per server: load all dictionaries {load_s:.2f} s")
    print(f"store.feature(), new feature : {percentiles(read_ms)}")
    print(f"feature page, server side    : {percentiles(page_ms)}   target <= {TARGET_MS:.0f} ms")
    p95 = sorted(page_ms)[min(len(page_ms) - 1, round(0.95 * (len(page_ms) - 1)))]
    print(f"p95 / target = {p95 / TARGET_MS:.2f}")


if __name__ == "__main__":
    main()
