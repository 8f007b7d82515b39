"""Which SAE settings make features more universal than neurons? (issue 26's sweep)

On a built study with two variants that differ only in the model seed (default `solu` and
`seed1`), each row retrains the SAEs of both with the row's `sae.*` overrides, plus a third
set on the first variant's activations with another SAE seed (the control: the same model,
so its agreement bounds what two models can show), then runs the universality stage's own
matching (`pipelines/universality/stage.py`: `correlate`, `match_rows`, the study store's
medians) on (model seed 0, model seed 1) and (SAE seed 0, SAE seed 1). Nothing of the study is
touched: each row lives under `--out/<row>/`, linking the study's model and activations, and
a row already trained with the same settings is read, not retrained.

Per row and dictionary: features' and neurons' median best-match activation correlation over
the two model seeds and their gap (the paper: 0.72 vs 0.46, gap 0.26), the SAE-seed control,
FVU, L0 and dead share (the sae stage's held-out metrics), and the median best decoder
cosine of each live feature to the next smaller size (does a larger dictionary refine the
smaller one?).

    python benchmarks/universality_sweep.py --study-dir runs/tiny-seeds --out runs/sweep \\
        --row k32: --row k8:sae.k=8 --row "k8x3:sae.k=8;sae.epochs=3"

A row is `name:key=value;key=value` (keys as `--set` takes them, `sae.` section only). A row
with no overrides reads the study's own SAEs (its control: the variant `--control`, e.g. one
built with `--set variants.saeseed1.sae.seed=1`). The table goes to stdout and, as JSON
lines, to `--out/sweep.jsonl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe import matmul_gflops  # noqa: E402
from feature_store.sae_files import decoder_directions, load_sae  # noqa: E402
from feature_store.study_store import _summary  # noqa: E402
from pipelines.config import RunConfig, parse_override  # noqa: E402
from pipelines.runner import saved_config  # noqa: E402
from pipelines.sae import stage as sae_stage  # noqa: E402
from pipelines.study.config import UniversalityConfig  # noqa: E402
from pipelines.universality import stage as universality  # noqa: E402

LINKED = ("tokenizer", "tokens", "model", "activations")


def parse_row(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition(":")
    overrides = {}
    for item in filter(None, sets.split(";")):
        section, key, value = parse_override(item)
        if section != "sae":
            raise SystemExit(f"--row {text}: only sae.* keys (the sweep reuses the models)")
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return name, overrides


def side_dir(out: Path, source: Path) -> Path:
    """A run folder whose model side links `source`'s (resolved: the study may link too)."""
    out.mkdir(parents=True, exist_ok=True)
    for stage in LINKED:
        link = out / stage
        if not link.exists():
            link.symlink_to((source / stage).resolve(), target_is_directory=True)
    return out


def train(cfg, run_dir: Path, log) -> dict:
    """The sae stage into run_dir/sae, unless it holds these settings already."""
    wanted = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=list)
    stamp = run_dir / "sae.config.json"
    if (run_dir / "sae" / "metrics.parquet").exists() and stamp.exists() \
            and stamp.read_text() == wanted:
        return metrics(run_dir)
    staging = run_dir / "sae.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    start = time.perf_counter()
    summary, results = sae_stage.run(cfg, run_dir, staging)
    shutil.rmtree(run_dir / "sae", ignore_errors=True)
    staging.rename(run_dir / "sae")
    stamp.write_text(wanted)
    log(f"  {run_dir.name}: {summary} ({time.perf_counter() - start:.0f} s)")
    return metrics(run_dir)


def metrics(run_dir: Path) -> list[dict]:
    """The sae stage's held-out metrics, one dict per dictionary."""
    return pq.read_table(run_dir / "sae" / "metrics.parquet").to_pylist()


DENSE = 0.01  # a feature firing on >= 1% of tokens; most of the paper's 4,096 fire on fewer


def match(a: Path, b: Path, names: tuple[str, str], device: str) -> dict[str, dict]:
    """The universality stage's summary rows, a→b, by dictionary, each with `sparse_median`
    and `sparse_share`: the median best-match correlation of the features firing on < 1% of
    tokens, and their share (dense features are the least universal at these sizes)."""
    variants = [universality._Variant(names[0], a, device), universality._Variant(names[1], b, device)]
    with torch.no_grad():
        corr, sides, n_tokens = universality.correlate(variants, UniversalityConfig(), device)
        records = universality.match_rows(variants, corr, sides, n_tokens)
    out = {}
    for r in records:
        if r["variant"] != names[0]:
            continue
        best = np.asarray(r["best_corr"], dtype=np.float64)
        sparse = (np.asarray(r["n_active"]) / n_tokens < DENSE) & np.isfinite(best)
        out[r["dictionary"]] = _summary(r) | {
            "sparse_median": float(np.median(best[sparse])) if sparse.any() else float("nan"),
            "sparse_share": float(sparse.mean())}
    return out


def refinement(run_dir: Path, sizes: list[int]) -> dict[int, float]:
    """Median over live features of size n of the best decoder cosine to the next smaller size."""
    out = {}
    for small, large in zip(sizes, sizes[1:]):
        dirs = []
        for n in (small, large):
            spec, tensors = load_sae(run_dir / "sae" / str(n))
            d = decoder_directions(spec, tensors).float()
            dirs.append(torch.nn.functional.normalize(d, dim=1))
        live = next(m for m in metrics(run_dir) if m["n_features"] == large)
        best = (dirs[1] @ dirs[0].T).max(1).values.numpy()
        out[large] = float(np.median(best)) if live["dead_fraction"] < 1 else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--a", default="solu", help="variant with model seed 0")
    parser.add_argument("--b", default="seed1", help="variant with another model seed")
    parser.add_argument("--row", action="append", required=True, help="name:sae.key=value,...")
    parser.add_argument("--control", default="saeseed1",
                        help="the study's SAE-seed variant, for a row without overrides")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the SAE-seed control (a third set of SAEs per row)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    study, out = Path(args.study_dir), Path(args.out)
    base: RunConfig = saved_config(study / "runs" / args.a)
    if base is None:
        raise SystemExit(f"{study / 'runs' / args.a}: no saved config; build the study first")
    probe = matmul_gflops()
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"probe {probe:.0f} GFLOP/s")
    for text in args.row:
        name, overrides = parse_row(text)
        cfg = dataclasses.replace(base.sae, **overrides)
        control = dataclasses.replace(cfg, seed=cfg.seed + 1)
        start = time.perf_counter()
        row_dir = out / name
        out.mkdir(parents=True, exist_ok=True)
        if not overrides:  # the study's own SAEs
            a, b, c = (study / "runs" / v for v in (args.a, args.b, args.control))
            res = {"a": metrics(a)}
        else:
            a = side_dir(row_dir / "a", study / "runs" / args.a)
            b = side_dir(row_dir / "b", study / "runs" / args.b)
            c = side_dir(row_dir / "a_saeseed", study / "runs" / args.a)
            sides = [("a", cfg, a), ("b", cfg, b)] + ([] if args.no_control else [("c", control, c)])
            res = {k: train(cfg_k, d, log) for k, cfg_k, d in sides}
        seeds = match(a, b, ("a", "b"), args.device)
        ctrl = {} if args.no_control else match(a, c, ("a", "c"), args.device)
        sizes = sorted(cfg.dict_sizes)
        refine = refinement(a, sizes)
        neurons = seeds["neurons"]["median_best_corr"]
        for n in sizes:
            m = next(r for r in res["a"] if r["n_features"] == n)
            s = seeds[f"sae_{n}"]
            k = ctrl.get(f"sae_{n}", {"median_best_corr": float("nan"),
                                     "median_decoder_cosine": float("nan")})
            rec = {"row": name, "overrides": overrides, "dictionary": n,
                   "features": s["median_best_corr"], "neurons": neurons,
                   "gap": s["median_best_corr"] - neurons,
                   "sparse_features": s["sparse_median"], "sparse_share": s["sparse_share"],
                   "control": k["median_best_corr"], "control_cosine": k["median_decoder_cosine"],
                   "fvu": m["fvu"], "l0": m["l0"], "dead": m["dead_fraction"],
                   "ce_recovered": m["ce_loss_recovered"],
                   "refinement": refine.get(n), "row_seconds": time.perf_counter() - start,
                   "probe_gflops": probe}
            with (out / "sweep.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            log(f"{name:>12} {n:>6}  features {rec['features']:.2f}  neurons {neurons:.2f}  "
                f"gap {rec['gap']:+.2f}  sparse {rec['sparse_features']:.2f} "
                f"({100 * rec['sparse_share']:.0f}%)  control {rec['control']:.2f} (cos "
                f"{rec['control_cosine']:.2f})  FVU {rec['fvu']:.3f}  L0 {rec['l0']:.1f}  "
                f"dead {100 * rec['dead']:.1f}%  refine "
                + (f"{rec['refinement']:.2f}" if rec["refinement"] is not None else "-"))
        log(f"{name}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
