"""How fast a feature page's data comes back: FeatureStore read times on a store of 4 × 16,384.

Builds a synthetic store (neurons + 4 SAEs of 16,384 features, through StoreWriter) in a
temporary folder, then times:
- `FeatureStore.open` (manifest, schema check, every table's footer, vocab, metrics);
- `.feature(dictionary, index)` on 200 random pairs over the 4 SAEs: *cold* on a freshly
  opened store (so the first touch of each dictionary pays for loading its small tables) and
  *warm* (the same pairs again);
- `.features(dictionary)`: the first call per dictionary (loads its tables) and repeats.
Targets (issue 4): `.feature()` p95 ≤ 50 ms, `.features()` ≤ 200 ms on 2 CPU cores, `open` < 1 s.
The OS page cache is warm (the store was just written): these are the server's own costs.

    python benchmarks/store_read.py [--n-features 16384] [--pairs 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store import FeatureStore  # noqa: E402
from feature_store.synthetic import build_synthetic_store  # noqa: E402

TARGETS_MS = {"open": 1000.0, "feature": 50.0, "features": 200.0}


def _ms(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1e3, out


def _row(name: str, times: list[float], target: float | None) -> str:
    t = np.asarray(times)
    p50, p95 = np.percentile(t, 50), np.percentile(t, 95)
    verdict = "" if target is None else ("ok" if p95 <= target else "OVER")
    target_s = "" if target is None else f"{target:.0f}"
    return (f"{name:<34} {len(t):>5} {p50:>9.2f} {p95:>9.2f} {t.max():>9.2f} "
            f"{target_s:>8} {verdict:>5}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-features", type=int, default=16_384)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--keep", help="build the store here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="store_read_"))
    path = root / "store"
    try:
        build_s, _ = _ms(lambda: build_synthetic_store(path, (args.n_features,) * 4))
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        print(f"store: neurons + 4 × {args.n_features:,} features, {size_mb:.0f} MiB, "
              f"built in {build_s / 1e3:.1f} s -> {path}")

        open_times = [_ms(lambda: FeatureStore.open(path))[0] for _ in range(5)]
        store = FeatureStore.open(path)
        saes = [d for d in store.dictionaries() if d != "neurons"]
        rng = np.random.default_rng(0)
        pairs = [(saes[rng.integers(len(saes))], int(rng.integers(args.n_features)))
                 for _ in range(args.pairs)]
        cold = [_ms(lambda p=p: store.feature(*p))[0] for p in pairs]
        warm = [_ms(lambda p=p: store.feature(*p))[0] for p in pairs]

        fresh = FeatureStore.open(path)
        first = [_ms(lambda d=d: fresh.features(d))[0] for d in saes]
        repeat = [_ms(lambda d=d: fresh.features(d))[0] for d in saes for _ in range(10)]
        examples = [len(store.feature(*p).top_examples) +
                    sum(len(i.examples) for i in store.feature(*p).intervals) for p in pairs[:50]]

        print(f"feature(): {np.mean(examples):.0f} example windows per record on average\n")
        print(f"{'operation (ms)':<34} {'n':>5} {'p50':>9} {'p95':>9} {'max':>9} "
              f"{'target':>8} {'':>5}")
        print(_row("FeatureStore.open", open_times, TARGETS_MS["open"]))
        print(_row("feature(), cold (fresh store)", cold, TARGETS_MS["feature"]))
        print(_row("feature(), warm (same pairs)", warm, TARGETS_MS["feature"]))
        print(_row("features(), first call per dict", first, TARGETS_MS["features"]))
        print(_row("features(), repeat", repeat, TARGETS_MS["features"]))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
