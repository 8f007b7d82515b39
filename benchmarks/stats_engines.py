"""The stats stage on Ray (`stats.engine = "ray"`) against the in-process engine, same run.

Reruns only the stats stage (`pipelines.stats.stage.run`) of a run folder, into scratch stores,
once per engine, and prints each one's tokens/s and the ratio ray / local, after checking
the two stores are byte-identical (the engine's contract). Ray is started once before the
timed run, with one CPU per worker (its start-up, several seconds, is printed apart). The
split's activations are re-cut into `--shards` shards of whole sequences in a scratch copy
of the run (the rest of the run is linked, not copied): shards are the unit of work Ray
distributes, and a small run's split is often one shard. UMAP is off for both (the driver
runs it once either way).

    python benchmarks/stats_engines.py [--run-dir runs/tiny] [--workers 2] [--shards 4]

Without a complete run at --run-dir it builds a miniature one (the test suite's shapes,
plus more tokens) under benchmarks/out/ first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "out" / "stats_engines"


def complete(run_dir: Path) -> bool:
    return (run_dir / "model" / "model.safetensors").exists() and (run_dir / "sae").is_dir() \
        and any((run_dir / "activations").glob("val-*.parquet"))


def build_mini(run_dir: Path) -> None:
    from pipelines.runner import run_pipeline
    from tests.conftest import mini_config

    cfg = mini_config(activations={"max_tokens": 120_000, "shard_tokens": 16384},
                      corpus={"max_chars": 1_200_000})
    run_pipeline(cfg, run_dir, "benchmarks/stats_engines.py", until="sae", log=lambda s: None)


def scratch_copy(run_dir: Path, split: str, shards: int, n_ctx: int) -> Path:
    """The run with its split re-cut into `shards` shards; everything else symlinked."""
    dst = OUT / "run"
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "activations").mkdir(parents=True)
    for item in run_dir.iterdir():
        if item.name not in ("activations", "store", "manifest.json"):
            (dst / item.name).symlink_to(item.resolve())
    paths = sorted((run_dir / "activations").glob(f"{split}-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in paths])
    per = n_ctx - 1
    n_seq = table.num_rows // per
    for i in range(shards):
        lo, hi = n_seq * i // shards, n_seq * (i + 1) // shards
        pq.write_table(table.slice(lo * per, (hi - lo) * per),
                       dst / "activations" / f"{split}-{i:05d}.parquet")
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shards", type=int, default=0, help="default: 2 per worker")
    args = parser.parse_args()
    import torch

    from pipelines.stats import stage as stats
    from pipelines.config import StatsConfig, build_config

    run_dir = Path(args.run_dir)
    if not complete(run_dir):
        run_dir = OUT / "mini"
        if not complete(run_dir):
            print(f"{args.run_dir} is not a complete run; building a mini run in {run_dir}")
            build_mini(run_dir)
    cfg_file = run_dir / "config.json"
    cfg = (build_config(json.loads(cfg_file.read_text()), str(cfg_file)).stats
           if cfg_file.exists() else StatsConfig())
    cfg = replace(cfg, umap=False)
    from feature_store.transformer_files import load_transformer
    n_ctx = int(load_transformer(run_dir / "model").cfg.n_ctx)
    shards = args.shards or 2 * args.workers
    work = scratch_copy(run_dir, cfg.split, shards, n_ctx)
    print(f"run {run_dir}: split {cfg.split!r} re-cut into {shards} shards; "
          f"torch threads {torch.get_num_threads()}; {os.cpu_count()} cores")

    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    print(f"ray start-up: {time.perf_counter() - t0:.1f} s (not in the ray figure below)")
    out = {}
    for engine in ("local", "ray"):
        store = OUT / f"store_{engine}"
        shutil.rmtree(store, ignore_errors=True)
        c = replace(cfg, engine=engine, ray_workers=args.workers)
        t = time.perf_counter()
        summary, info = stats.run(c, work, store)
        seconds = time.perf_counter() - t
        out[engine] = (info["n_tokens"] / seconds, seconds)
        print(f"{engine:5s}: {info['n_tokens']:,} tokens in {seconds:.1f} s = "
              f"{info['n_tokens'] / seconds:,.0f} tokens/s   ({summary})")
    ray.shutdown()
    a, b = OUT / "store_local", OUT / "store_ray"
    files = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    same = files == sorted(p.relative_to(b) for p in b.rglob("*.parquet")) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)
    print(f"stores byte-identical ({len(files)} Parquet tables): {same}")
    print(f"ratio ray / local throughput: {out['ray'][0] / out['local'][0]:.2f} "
          f"({args.workers} workers, {shards} shards)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
