"""Head to head with SAELens at full training length: same data, order, scale, size, batch and lr.

Two data sets: the tiny run's cached activations (`--run-dir`, 2M activations = two shuffled
epochs of its 1M training tokens) and planted activations (pipelines/sae/planted.py, the issue-16
setting: d 512, 1,024 directions, planted L0 10, noise 0.05), where the truth is known and MMCS
can be scored. Both sides read their batches from benchmarks/peers/same_data.py, so they see
identical numbers in identical order; each times only its optimizer steps.

Ours is the sae stage's training loop (`pipelines.sae.stage.train_saes`) at SaeConfig's
defaults (lr decay over the last 20%, AuxK, for l1 the λ warm-up); SAELens' TopK and standard
(ReLU + L1) SAEs with its trainer at its defaults run in benchmarks/peers/.venv (it needs
TransformerLens < 4) through benchmarks/peers/saelens_train.py, with the same constant lr, and
for L1 the same λ (both losses are Σ_dims (x − x̂)² + λ·Σ f_i‖d_i‖ per token, on inputs scaled
to mean norm √d_in) and the same warm-up.

    python benchmarks/sae_vs_saelens.py                       # both data sets, topk (and l1 on planted)
    python benchmarks/sae_vs_saelens.py --data planted --samples 400000 --recipes topk   # quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.config import SaeConfig  # noqa: E402
from pipelines.sae.stage import train_saes  # noqa: E402

PEER_PYTHON = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"
PLANTED = {"d": 512, "n_features": 1024, "mean_active": 10.0, "noise": 0.05, "seed": 0}


def load_same_data():
    spec = importlib.util.spec_from_file_location("same_data", ROOT / "benchmarks" / "peers" / "same_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SameData


def ours(job: dict) -> dict:
    data = load_same_data()(job)
    cfg = SaeConfig(dict_sizes=(job["d_sae"],), recipe=job["recipe"], k=job.get("k", 32), lr=job["lr"],
                    batch_size=data.batch, buffer_tokens=data.batch,
                    l1_coefficient=job.get("l1_coefficient", SaeConfig.l1_coefficient))
    b_dec_init = data.b_dec_init()
    saes, info = train_saes(cfg, data.d_in, lambda epoch: data.batches() if epoch == 0 else iter(()),
                            data.steps, 1.0, b_dec_init, "cpu", desc=f"ours {job['recipe']}")
    (sae,) = saes.values()

    def encode(x):
        _, _, codes = sae.encode_codes(x)
        return codes.to_dense()

    scores = data.evaluate(encode, lambda f: f @ sae.W_dec + sae.b_dec, sae.W_dec.detach())
    return {"peer": f"ours {job['recipe']} (pipelines/sae/autoencoder.py)", "d_sae": job["d_sae"], "steps": data.steps,
            "batch": data.batch,
            "activations_per_s": data.steps * data.batch / (info["train_seconds"] - data.data_seconds), **scores}


def saelens(job: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out = Path(tmp) / "job.json", Path(tmp) / "peer.json"
        job_path.write_text(json.dumps(job))
        done = subprocess.run([str(PEER_PYTHON), str(ROOT / "benchmarks" / "peers" / "saelens_train.py"),
                               str(job_path), str(out)], capture_output=True, text=True)
        if done.returncode != 0:  # a peer's failure is a result too: say what broke
            errors = [l for l in done.stderr.splitlines() if "Error" in l and "registered at" not in l]
            return {"peer": f"SAELens {job['architecture']}", "d_sae": job["d_sae"],
                    "failed": (errors[-1] if errors else (done.stderr.strip().splitlines() or ["?"])[-1])[:160]}
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--data", default="tiny,planted", help="comma-separated: tiny, planted")
    parser.add_argument("--recipes", default="topk,l1", help="topk and/or l1 (l1 runs on planted data only)")
    parser.add_argument("--samples", type=int, default=2_000_000, help="training activations per trainer")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} missing: make bench-peers (or see benchmarks/peers/requirements.txt)")
    recipes = args.recipes.split(",")
    rows = []
    for name in args.data.split(","):
        if name == "tiny":  # the tiny preset's k and lr
            base = {"data": "run", "run_dir": str(Path(args.run_dir).resolve()), "k": 32, "lr": 2e-3}
        else:  # SaeConfig's default lr; k at the planted L0
            base = {"data": "planted", "spec": PLANTED, "k": round(PLANTED["mean_active"]), "lr": SaeConfig.lr,
                    "eval": 131072}
        base.update(samples=args.samples, batch=args.batch, d_sae=args.size)
        pairs = [("topk", "topk")] if "topk" in recipes else []
        if "l1" in recipes and name == "planted":
            pairs.append(("l1", "standard"))
        for recipe, architecture in pairs:
            job = {**base, "recipe": recipe, "architecture": architecture, "l1_coefficient": SaeConfig.l1_coefficient,
                   "l1_warm_up_steps": round(SaeConfig.l1_warmup_fraction * (args.samples // args.batch))}
            mine = {"data": name, **ours(job)}
            peer = {"data": name, **saelens(job)}
            if "failed" not in peer:
                peer["our_speedup"] = mine["activations_per_s"] / peer["activations_per_s"]
            rows += [mine, peer]
            print(json.dumps(mine), json.dumps(peer), sep="\n", file=sys.stderr, flush=True)
    print(f"SAE training head to head at full length ({args.samples:,} activations, batch {args.batch}, "
          f"{args.size:,} features, {torch.get_num_threads()} CPU threads; same data, order and scale). "
          f"tiny: {args.run_dir} activations, topk k=32, lr 2e-3; planted: d 512, 1,024 directions, "
          f"L0 10, topk k=10, lr {SaeConfig.lr:g}, λ {SaeConfig.l1_coefficient:g}")
    print(f"{'data':<8} {'trainer':<52} {'act/s':>7} {'FVU':>6} {'L0':>5} {'dead':>6} {'MMCS':>7} {'ours is':>8}")
    for r in rows:
        if "failed" in r:
            print(f"{r['data']:<8} {r['peer']:<52} failed on CPU: {r['failed']}")
            continue
        speed = f"{r['our_speedup']:.2f}x" if "our_speedup" in r else ""
        mmcs = f"{r['mmcs']:.4f}" if "mmcs" in r else ""
        print(f"{r['data']:<8} {r['peer']:<52} {r['activations_per_s']:>7,.0f} {r['fvu']:>6.3f} {r['l0']:>5.1f} "
              f"{100 * r['dead']:>5.1f}% {mmcs:>7} {speed:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
