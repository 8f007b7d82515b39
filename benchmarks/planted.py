"""Do the SAE recipes recover a dictionary that is known to be there?

Generates activations from a planted dictionary (pipelines/sae/planted.py: unit-norm directions,
sparse non-negative coefficients, noise, optional Zipf frequencies), trains every requested
recipe with the sae stage's own training loop (`pipelines.sae.stage.train_saes`: same input
scaling, lr schedule, λ warm-up, resampling, λ calibration), and scores each: MMCS, share of
planted directions recovered at cosine ≥ 0.9, FVU, L0 and dead share on held-out samples.

    python benchmarks/planted.py                                  # the issue-16 setting (2M samples)
    python benchmarks/planted.py --d 128 --features 256 --dict 512 --samples 200000   # quick look
    python benchmarks/planted.py --run recipe=l1,target_l0=10 --run recipe=topk,k=10,aux_coefficient=0

Each `--run` is a comma-separated list of `sae.*` overrides on top of SaeConfig's defaults
(plus lr/batch from the command line); without `--run`, every recipe at its defaults with the
sparsity matched to the planted L0 where the recipe has such a knob, plus topk at k = 32, and
TopK without AuxK and with OpenAI's two-sided AuxK (its dead share each way).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tomllib
import warnings
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipelines.config import SaeConfig  # noqa: E402
from pipelines.sae.planted import PlantedData, PlantedSpec, score  # noqa: E402
from pipelines.sae.stage import train_saes  # noqa: E402


def parse_run(text: str) -> dict:
    out = {}
    for part in filter(None, re.split(r",(?=\s*\w+=)", text)):  # a comma before key=
        key, raw = part.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()
    return out


def label(overrides: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def train_and_score(data: PlantedData, cfg: SaeConfig, steps: int, eval_batches: int) -> dict:
    scale = data.input_scale()
    b_dec_init = torch.cat(list(data.batches("train", 4))).mean(0) * scale
    t = time.perf_counter()
    saes, info = train_saes(cfg, data.spec.d, lambda epoch: data.batches("train", steps), steps, scale,
                            b_dec_init, "cpu", desc=f"{cfg.recipe}")
    seconds = time.perf_counter() - t
    (size, sae), = saes.items()

    def reconstruct(x):
        xs = x * scale
        _, _, codes = sae.encode_codes(xs)
        x_hat = codes.times(sae.W_dec) + sae.b_dec
        active = codes.vals > 0
        return x_hat / scale, (codes.rows()[active], codes.cols[active])

    s = score(data, sae.W_dec.detach(), reconstruct, eval_batches)
    return {**s.as_dict(), "d_sae": size, "seconds": round(seconds, 1),
            "activations_per_s": round(info["activations_per_second"]),
            "l1_coefficient": info["l1_coefficients"][size] if cfg.recipe_spec.l1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--features", type=int, default=1024, help="planted directions")
    parser.add_argument("--active", type=float, default=10.0, help="planted L0 (mean active per sample)")
    parser.add_argument("--zipf", type=float, default=0.0)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--dict", type=int, default=2048, help="learned features")
    parser.add_argument("--samples", type=int, default=2_000_000, help="training activations")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--eval", type=int, default=131_072, help="held-out samples for FVU, L0, dead")
    parser.add_argument("--run", action="append", help="sae.* overrides, e.g. recipe=l1,target_l0=10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    spec = PlantedSpec(d=args.d, n_features=args.features, mean_active=args.active, zipf=args.zipf,
                       noise=args.noise, seed=args.seed)
    data = PlantedData(spec, args.batch)
    steps = args.samples // args.batch
    k = max(1, round(args.active))
    runs = [parse_run(r) for r in args.run] if args.run else [
        {"recipe": "topk", "k": k}, {"recipe": "topk", "k": k, "aux_coefficient": 0.0},  # with and without AuxK
        {"recipe": "topk", "k": k, "aux_one_sided": False},  # OpenAI's two-sided AuxK
        {"recipe": "topk", "k": 32}, {"recipe": "l1-unit"}, {"recipe": "l1"},
        {"recipe": "l1-unit", "target_l0": float(k)}, {"recipe": "l1", "target_l0": float(k)}]
    base = SaeConfig(dict_sizes=(args.dict,), batch_size=args.batch, buffer_tokens=max(args.batch, 262_144),
                     seed=args.seed)
    rows = []
    for overrides in runs:
        cfg = replace(base, **overrides)
        row = {"run": label(overrides), **train_and_score(data, cfg, steps, args.eval // args.batch)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"Planted dictionary: d {spec.d}, {spec.n_features:,} unit-norm directions, planted L0 "
          f"{spec.mean_active:g}, zipf {spec.zipf:g}, noise {spec.noise:g}; {args.dict:,} learned features, "
          f"{steps * args.batch:,} training samples (batch {args.batch}), {rows[0]['eval_samples']:,} held-out; "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'run':<44} {'MMCS':>7} {'cos≥0.9':>8} {'FVU':>6} {'L0':>6} {'dead':>6} {'λ':>7} {'act/s':>7}")
    for r in rows:
        print(f"{r['run']:<44} {r['mmcs']:>7.4f} {100 * r['recovered']:>7.1f}% {r['fvu']:>6.3f} {r['l0']:>6.1f} "
              f"{100 * r['dead']:>5.1f}% {'' if r['l1_coefficient'] is None else format(r['l1_coefficient'], '.3g'):>7} "
              f"{r['activations_per_s']:>7,}")
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec.__dict__, "samples": steps * args.batch, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
