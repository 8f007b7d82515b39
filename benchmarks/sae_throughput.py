"""SAE training throughput: activations/s per dictionary size, and the achieved FLOP/s as a
share of a dense matmul of the same shapes timed in this process (the machine's practical
limit). FLOPs are counted as a dense implementation would spend them: 12·d_in·d_sae per
activation (encoder, decoder and their backward passes; SAELens' trainer reaches 0.66 of the
dense rate on 2 CPU cores). A share above 1 means sparsity saved work a dense trainer does.

    python benchmarks/sae_throughput.py [--run-dir runs/tiny] [--sizes 512,1024,2048] [--k 32]

Uses the run's cached activations when they exist (steady state: real data, inputs scaled
as the sae stage scales them), otherwise Gaussian inputs. Quiet machine recommended: the
ratio is robust to load, absolute rates are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.sae.autoencoder import SparseAutoencoder  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def dense_rate(batch: int, d_in: int, d_sae: int, device: str, repeats: int = 5) -> float:
    """FLOP/s of x @ W^T for x [batch, d_in], W [d_sae, d_in] in fp32: the best of a few runs."""
    x, w = torch.randn(batch, d_in, device=device), torch.randn(d_sae, d_in, device=device)
    x @ w.T
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        x @ w.T
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * batch * d_in * d_sae / best


def inputs(run_dir: Path, batch: int, n_batches: int, d_in: int) -> tuple[torch.Tensor, str]:
    shards = sorted((run_dir / "activations").glob("train-*.parquet"))
    if shards:
        from pipelines.activations.shards import read_shard

        x = torch.from_numpy(read_shard(shards[0])["acts"][: batch * n_batches])
        source = f"{shards[0]}"
    else:
        x, source = torch.randn(batch * n_batches, d_in), "Gaussian"
    x = x * (x.shape[1] ** 0.5 / x.norm(dim=1).mean())
    return x.reshape(-1, batch, x.shape[1]), source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    sizes = [int(s) for s in args.sizes.split(",")]
    data, source = inputs(Path(args.run_dir), args.batch, args.steps, 512)
    data = data.to(args.device)
    d_in = data.shape[-1]
    rows = []
    for size in sizes:
        sae = SparseAutoencoder(d_in, size, "topk", k=args.k, b_dec_init=data[0].mean(0).cpu(),
                                device=args.device)
        for x in data[:3]:  # warm-up, also lets codes settle away from the init
            sae.step(x, 1e-3)
        sync(args.device)
        t = time.perf_counter()
        for x in data[3:]:
            sae.step(x, 1e-3)
        sync(args.device)
        seconds = time.perf_counter() - t
        acts_per_s = (len(data) - 3) * args.batch / seconds
        dense = dense_rate(args.batch, d_in, size, args.device)
        share = 12 * d_in * size * acts_per_s / dense
        rows.append({"d_sae": size, "activations_per_s": round(acts_per_s), "dense_gflops": round(dense / 1e9, 1),
                     "share_of_dense": round(share, 2)})
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{torch.get_num_threads()} CPU threads, {platform.machine()}")
    print(f"SAE training throughput (topk k={args.k}, batch {args.batch}, d_in {d_in}, {where}, inputs: {source})")
    print(f"{'d_sae':>7} {'act/s':>9} {'dense GFLOP/s':>14} {'share of dense':>15}")
    for r in rows:
        print(f"{r['d_sae']:>7} {r['activations_per_s']:>9,} {r['dense_gflops']:>14} {r['share_of_dense']:>15}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
