"""SAE training under torchrun: 2 processes vs 1 (throughput ratio), and the memory one
dictionary feature costs (where one device stops and feature sharding would start).

    python benchmarks/ddp.py [--run-dir runs/tiny] [--size 2048] [--steps 30] [--batch 4096]

Both runs train the same SAE on the same global batches through `pipelines.sae.stage.
train_saes` (the sae stage's loop); the 2-process run is `torch.distributed.run --standalone
--nproc_per_node 2` with gloo, each process on 1 thread, the 1-process run on 2 threads. On
one 2-core CPU box the ratio measures the cost of the all-reduce and of splitting the matmuls,
not a speed-up: the cores are the same. Memory: peak resident set of a process training one
size for a few steps on Gaussian inputs of d 512 (reading shards would add its own peak), at
two sizes; the slope is the bytes one feature costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data(run_dir: Path | None, rows: int):
    """[rows, d] float32: the run's cached training activations, else Gaussian (d 512)."""
    import numpy as np

    from pipelines.activations.shards import read_shard, shard_paths

    folder = run_dir / "activations" if run_dir else None
    if folder is not None and folder.is_dir():
        parts, have = [], 0
        for path in shard_paths(folder, "train"):
            parts.append(read_shard(path)["acts"])
            have += len(parts[-1])
            if have >= rows:
                break
        x = np.concatenate(parts)[:rows]
        x = x.astype(np.float32)
        return x * np.float32(np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1).mean()), "the run's activations"
    return np.random.default_rng(0).standard_normal((rows, 512)).astype("float32"), "Gaussian"


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: reset by exec, unlike ru_maxrss, which a
    forked child inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """Train for --steps and print {act_per_s, peak_rss_mib} from rank 0."""
    import torch

    from pipelines import distributed
    from pipelines.config import SaeConfig
    from pipelines.sae.stage import train_saes

    x, _ = _data(None if args.gaussian else Path(args.run_dir), args.batch * 8)
    d = x.shape[1]
    cfg = SaeConfig(dict_sizes=(args.size,), k=32, batch_size=args.batch, lr=1e-3)
    batches = lambda epoch: (x[(i % 8) * args.batch: (i % 8 + 1) * args.batch]  # noqa: E731
                             for i in range(args.steps + 3))
    world = distributed.world()
    train_saes(cfg, d, lambda e: (x[: args.batch] for _ in range(3)), 3, 1.0,
               torch.zeros(d), "cpu")  # warm-up: allocator, CSR kernels, gloo
    world.barrier()
    t0 = time.perf_counter()
    train_saes(cfg, d, batches, args.steps, 1.0, torch.zeros(d), "cpu")
    seconds = time.perf_counter() - t0
    if world.is_main:
        print(json.dumps({"act_per_s": args.steps * args.batch / seconds,
                          "peak_rss_mib": _peak_rss_mib()}))
    distributed.shutdown()


def _launch(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gaussian", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--worker", "--run-dir", args.run_dir, "--steps", str(args.steps),
              "--batch", str(args.batch)]
    _, source = _data(Path(args.run_dir), 1)
    one = _launch(me + common + ["--size", str(args.size)], threads=2)
    two = _launch([sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2", *me[1:], *common, "--size", str(args.size)], threads=1)
    print(f"SAE training, topk k=32, {args.size:,} features, global batch {args.batch:,}, "
          f"{args.steps} steps on {source}:")
    print(f"  1 process (2 threads):         {one['act_per_s']:>10,.0f} act/s")
    print(f"  torchrun 2 processes (gloo):   {two['act_per_s']:>10,.0f} act/s   "
          f"ratio {two['act_per_s'] / one['act_per_s']:.2f}")
    small, large = args.size, args.size * 8
    # Gaussian inputs of the same d: reading shards would put its own peak in the slope
    rss = {n: _launch(me + ["--worker", "--gaussian", "--steps", "3", "--batch",
                            str(args.batch), "--size", str(n)], threads=2)["peak_rss_mib"]
           for n in (small, large)}
    per_feature = (rss[large] - rss[small]) * 2**20 / (large - small)
    print(f"  (peak RSS by size: {rss})", file=sys.stderr)
    print(f"memory: peak RSS {rss[small]:,.0f} MiB at {small:,} features, {rss[large]:,.0f} MiB "
          f"at {large:,}: {per_feature / 1024:,.1f} KiB per feature at batch {args.batch:,} "
          f"(weights, gradients, Adam state and the batch's pre-activations)")
    print(f"  so 80 GiB holds about {80 * 2**30 / per_feature / 1e6:,.1f}M features at this "
          f"d_in and batch")


if __name__ == "__main__":
    main()
