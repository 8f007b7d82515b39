"""SAE training throughput: activations/s per dictionary size, and the achieved FLOP/s as a
share of a dense matmul of the same shapes timed in this process (the machine's practical
limit). FLOPs are counted as a dense implementation would spend them: 12·d_in·d_sae per
activation (encoder, decoder and their backward passes; SAELens' trainer reaches 0.66 of the
dense rate on 2 CPU cores). A share above 1 means sparsity saved work a dense trainer does.

    python benchmarks/sae_throughput.py [--run-dir runs/tiny] [--sizes 512,1024,2048] [--k 32]
        [--codes auto|bag|csr] [--precision auto|fp32|bf16] [--graph auto|on|off] [--reference]
        [--device cpu|cuda]

`--reference` also times `benchmarks/dense_reference.py` (the naive dense TopK SAE, bf16
autocast on a GPU) on the same batches and prints ours / reference, with both trainers' FVU
on held-out rows and the share of features that never fired in the timed steps, so a speed-up
is only read at equal quality.

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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from feature_store.recipes import recipe  # noqa: E402
from pipelines.sae.autoencoder import SparseAutoencoder  # noqa: E402
from pipelines.sae.step_graph import GraphedStep, use_graph  # noqa: E402


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
    """n_batches training batches plus one held-out batch (the last), scaled to mean norm sqrt(d_in)."""
    shards = sorted((run_dir / "activations").glob("train-*.parquet"))
    rows = batch * (n_batches + 1)
    if shards:
        from pipelines.activations.shards import read_shard

        parts, have = [], 0
        for shard in shards:  # as many shards as the batches need
            parts.append(read_shard(shard)["acts"])
            have += len(parts[-1])
            if have >= rows:
                break
        x = torch.from_numpy(np.concatenate(parts)[:rows])
        if len(x) < rows:
            raise SystemExit(f"{run_dir}: {len(x):,} cached rows, the benchmark needs {rows:,}; lower --steps")
        source = f"{run_dir}/activations"
    else:
        x, source = torch.randn(rows, d_in), "Gaussian"
    x = x * (x.shape[1] ** 0.5 / x.norm(dim=1).mean())
    return x.reshape(-1, batch, x.shape[1]), source


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def timed(step, batches: torch.Tensor, device: str) -> float:
    """Seconds for `step` over the batches after 3 warm-up batches (which also let the codes
    settle away from the init)."""
    for x in batches[:3]:
        step(x)
    sync(device)
    t = time.perf_counter()
    for x in batches[3:]:
        step(x)
    sync(device)
    return time.perf_counter() - t


def ours(size: int, args, train: torch.Tensor, held_out: torch.Tensor) -> dict:
    sae = SparseAutoencoder(train.shape[-1], size, "topk", k=args.k, b_dec_init=train[0].mean(0).cpu(),
                            device=args.device, codes=args.codes, precision=args.precision,
                            dead_window=10**12, aux_coefficient=0.0)  # no AuxK: the reference has none
    graphed = use_graph(args.graph, args.device, recipe("topk"), False)
    stepper = GraphedStep(sae, train.shape[1]) if graphed else sae  # records during the warm-up batches
    seconds = timed(lambda x: stepper.step(x, 1e-3), train, args.device)
    with torch.no_grad():
        _, _, codes = sae.encode_codes(held_out)
        x_hat = codes.times(sae.W_dec) + sae.b_dec
    never = float((sae.since_fired >= sae.tokens_seen).float().mean())
    graph = ("on" if not stepper.failure else f"failed ({stepper.failure})") if graphed else "off"
    return {"seconds": seconds, "fvu": fvu(held_out, x_hat), "never_fired": never, "graph": graph}


def reference(size: int, args, train: torch.Tensor, held_out: torch.Tensor) -> dict:
    from benchmarks.dense_reference import DenseTopK

    ref = DenseTopK(train.shape[-1], size, args.k, args.device, b_dec_init=train[0].mean(0).cpu())
    seconds = timed(ref.step, train, args.device)
    with torch.no_grad():
        x_hat = ref.reconstruct(held_out)
    return {"seconds": seconds, "fvu": fvu(held_out, x_hat), "never_fired": float((~ref.fired).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--codes", default="auto", choices=("auto", "bag", "csr"), help="sae.codes")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"), help="sae.precision")
    parser.add_argument("--graph", default="auto", choices=("auto", "on", "off"),
                        help="sae.graph: replay each step as a CUDA graph (auto: on CUDA)")
    parser.add_argument("--reference", action="store_true", help="also time the dense reference")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks are "
                                              "implicitly disabled)")
    sizes = [int(s) for s in args.sizes.split(",")]
    data, source = inputs(Path(args.run_dir), args.batch, args.steps, 512)
    data = data.to(args.device)
    train, held_out = data[:-1], data[-1]
    d_in = data.shape[-1]
    rows = []
    for size in sizes:
        mine = ours(size, args, train, held_out)
        acts_per_s = (len(train) - 3) * args.batch / mine["seconds"]
        dense = dense_rate(args.batch, d_in, size, args.device)
        row = {"d_sae": size, "activations_per_s": round(acts_per_s), "dense_gflops": round(dense / 1e9, 1),
               "share_of_dense": round(12 * d_in * size * acts_per_s / dense, 2),
               "fvu": round(mine["fvu"], 4), "never_fired": round(mine["never_fired"], 4), "graph": mine["graph"]}
        if args.reference:
            ref = reference(size, args, train, held_out)
            row.update(reference_per_s=round((len(train) - 3) * args.batch / ref["seconds"]),
                       reference_fvu=round(ref["fvu"], 4), reference_never_fired=round(ref["never_fired"], 4))
            row["vs_reference"] = round(ref["seconds"] / mine["seconds"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{torch.get_num_threads()} CPU threads, {platform.machine()}")
    print(f"SAE training throughput (topk k={args.k}, batch {args.batch}, d_in {d_in}, codes {args.codes}, "
          f"precision {args.precision}, graph {', '.join(sorted({r['graph'] for r in rows}))}, "
          f"{len(train) - 3} timed steps, {where}, inputs: {source})")
    head = f"{'d_sae':>7} {'act/s':>11} {'dense GFLOP/s':>14} {'share':>6} {'FVU':>7} {'never':>6}"
    if args.reference:
        head += f" {'ref act/s':>11} {'ref FVU':>7} {'ref never':>9} {'ours/ref':>8}"
    print(head)
    for r in rows:
        line = (f"{r['d_sae']:>7} {r['activations_per_s']:>11,} {r['dense_gflops']:>14} {r['share_of_dense']:>6} "
                f"{r['fvu']:>7} {r['never_fired']:>6}")
        if args.reference:
            line += (f" {r['reference_per_s']:>11,} {r['reference_fvu']:>7} {r['reference_never_fired']:>9}"
                     f" {r['vs_reference']:>8}")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
