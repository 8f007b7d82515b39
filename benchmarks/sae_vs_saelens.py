"""Head to head with SAELens: same activations, order, scale, size, batch, k, lr and steps.

Our trainer runs here; SAELens' TopK SAE and trainer run in benchmarks/peers/.venv (it needs
TransformerLens < 4) through benchmarks/peers/saelens_train.py, twice: with its defaults and
with its own `use_sparse_activations` option. Each side is timed over the same steps after the
same 3 warm-up steps; FVU and L0 over every validation token, computed the same way.

    python benchmarks/sae_vs_saelens.py [--run-dir runs/tiny] [--sizes 2048] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from feature_store.sae_files import SaeSpec, encode, reconstruct  # noqa: E402
from pipelines.activation_shards import read_shard, shard_paths  # noqa: E402
from pipelines.sae_training import SparseAutoencoder  # noqa: E402

PEER_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
BATCH = 4096


def ours(run_dir: Path, d_sae: int, steps: int, k: int, lr: float) -> dict:
    train = np.concatenate([read_shard(p)["acts"] for p in shard_paths(run_dir / "activations", "train")])
    d_in = train.shape[1]
    scale = float(np.sqrt(d_in) / np.linalg.norm(train[:65536], axis=1).mean())
    order = np.random.default_rng(0).permutation(len(train))[: steps * BATCH]
    batches = torch.from_numpy(train[order] * scale).split(BATCH)
    del train
    sae = SparseAutoencoder(d_in, d_sae, "topk", k=k, lr=lr, b_dec_init=batches[0].mean(0))
    for x in batches[:3]:
        sae.step(x, lr)
    t = time.perf_counter()
    for x in batches[3:]:
        sae.step(x, lr)
    seconds = time.perf_counter() - t
    spec = SaeSpec(d_in=d_in, d_sae=d_sae, recipe="topk", k=k, input_scale=scale)
    tensors = sae.tensors()
    val = np.concatenate([read_shard(p)["acts"] for p in shard_paths(run_dir / "activations", "val")])
    var_sum = float(((val - val.astype(np.float64).mean(0)) ** 2).sum())
    sq_err = l0 = 0.0
    with torch.no_grad():
        for chunk in torch.from_numpy(val).split(8192):
            sq_err += float(((reconstruct(spec, tensors, chunk) - chunk) ** 2).sum())
            l0 += float((encode(spec, tensors, chunk) > 0).sum())
    return {"peer": "ours (pipelines/sae_training.py)", "d_sae": d_sae, "steps": steps, "batch": BATCH,
            "activations_per_s": (steps - 3) * BATCH / seconds, "fvu": sq_err / var_sum, "l0": l0 / len(val)}


def saelens(run_dir: Path, d_sae: int, steps: int, k: int, lr: float, sparse: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        cmd = [str(PEER_PYTHON), str(ROOT / "benchmarks" / "peers" / "saelens_train.py"), str(run_dir),
               str(d_sae), str(steps), str(k), str(lr), str(out), *(["sparse"] if sparse else [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # a peer's failure is a result too: say what broke
            errors = [l for l in done.stderr.splitlines() if "Error" in l and "registered at" not in l]
            return {"peer": f"SAELens TopK{' (use_sparse_activations)' if sparse else ''}", "d_sae": d_sae,
                    "failed": (errors[-1] if errors else done.stderr.strip().splitlines()[-1])[:160]}
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--sizes", default="2048")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} missing: make bench-peers (or see benchmarks/peers/requirements.txt)")
    run_dir = Path(args.run_dir)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        mine = ours(run_dir, size, args.steps, args.k, args.lr)
        rows.append(mine)
        for sparse in (False, True):
            peer = saelens(run_dir, size, args.steps, args.k, args.lr, sparse)
            if "failed" not in peer:
                peer["our_speedup"] = mine["activations_per_s"] / peer["activations_per_s"]
            rows.append(peer)
    print(f"SAE training head to head (topk k={args.k}, batch {BATCH}, {args.steps} steps, lr {args.lr}, "
          f"{torch.get_num_threads()} CPU threads; same data, order and scale)")
    print(f"{'trainer':<58} {'d_sae':>6} {'act/s':>8} {'FVU':>6} {'L0':>5} {'ours is':>8}")
    for r in rows:
        if "failed" in r:
            print(f"{r['peer']:<58} {r['d_sae']:>6} failed on CPU: {r['failed']}")
            continue
        speed = f"{r['our_speedup']:.1f}x" if "our_speedup" in r else ""
        print(f"{r['peer']:<58} {r['d_sae']:>6} {r['activations_per_s']:>8,.0f} {r['fvu']:>6.3f} {r['l0']:>5.1f} {speed:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
