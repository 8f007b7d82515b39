"""The study machinery on planted truth at the tiny preset's size (issue 26's full-size check;
tests/test_planted_study.py is the small one).

Builds a study of two variants that share one (untrained: it explains nothing here) model and
whose activation caches are the same planted sparse features seen through two random rotations
(`activations.source = "planted"`, `planted_basis_seed` 0 and 1), then reports what the
production stages found:

- universality (the study store): features' and neurons' median best-match correlation, both
  directions; built so features are the same and neurons are not;
- splitting (each run's `splits.parquet`): how many planted families the two dictionaries show
  split, how many split edges the stats stage's rule drew, precision and recall
  (`pipelines.activations.planted.split_recovery`);
- recovery: the share of planted directions some SAE feature matches at cosine >= 0.9.

    python benchmarks/planted_study.py --study-dir runs/planted     # tiny shapes: d_mlp 512
    python benchmarks/planted_study.py --study-dir runs/planted --set sae.k=8 --set sae.epochs=5

The default dictionary sizes bracket the planted hierarchy: `features - families` is one
feature per single and per family (the split not yet made), `features + families` room for
every sibling. `--set` takes any study override (`section.key=value`); a built study is read,
not rebuilt (the study runner skips what is up to date).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe import matmul_gflops  # noqa: E402
from feature_store.sae_files import decoder_directions, load_sae  # noqa: E402
from feature_store.study_store import StudyStore  # noqa: E402
from pipelines.activations.planted import read_truth, split_recovery  # noqa: E402
from pipelines.config import parse_override, read_config_file  # noqa: E402
from pipelines.study.config import build_study  # noqa: E402
from pipelines.study.runner import run_study  # noqa: E402


def study_raw(features: int, families: int, active: float, sets: list[str]) -> dict:
    raw, _ = read_config_file("tiny", None)
    raw.pop("variants", None)
    small, large = features - families, features + families
    raw.setdefault("model", {})["train_tokens"] = 0  # the model is not what is measured
    raw.setdefault("sae", {}).update({"dict_sizes": [small, large], "k": 8, "epochs": 3})
    raw.setdefault("stats", {})["umap"] = False
    for text in sets:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    planted = {"source": "planted", "planted_features": features, "planted_families": families,
               "planted_active": active}
    raw["variants"] = {name: {"activations": {**planted, "planted_basis_seed": seed}}
                       for name, seed in (("a", 0), ("b", 1))}
    return raw


def report(study_dir: Path) -> None:
    summary = StudyStore.open(study_dir / "store").summary()
    print("universality (median best-match correlation; built so features ≈ 1, neurons low):")
    for (variant, other), group in summary.groupby(["variant", "other"], sort=False):
        cells = ", ".join(f"{r.dictionary} {r.median_best_corr:.3f}" for r in group.itertuples())
        print(f"  {variant} → {other}: {cells}")
    for variant in ("a", "b"):
        run = study_dir / "runs" / variant
        truth = read_truth(run / "activations")
        sizes = sorted(int(p.name) for p in (run / "sae").iterdir() if p.name.isdigit())
        dirs = {n: decoder_directions(*load_sae(run / "sae" / str(n))) for n in sizes}
        unit = torch.nn.functional.normalize
        planted = unit(truth["directions"].float(), dim=1)
        for n in sizes:
            best = (unit(dirs[n].float(), dim=1) @ planted.T).max(0).values
            print(f"  {variant} sae_{n}: {float((best >= 0.9).float().mean()):.1%} of "
                  f"{len(planted)} planted directions matched at cosine >= 0.9")
        edges = pd.read_parquet(run / "store" / "splits.parquet")
        for small, large in zip(sizes, sizes[1:]):
            e = edges[(edges["dictionary_a"] == f"sae_{small}")
                      & (edges["dictionary_b"] == f"sae_{large}")]
            got = split_recovery(truth, dirs[small], dirs[large],
                                 list(zip(e["index_a"], e["index_b"])))
            print(f"  {variant} splits sae_{small} → sae_{large}: {got.displayed} of "
                  f"{got.planted} planted families displayed, {got.found} split by the rule, "
                  f"precision {got.precision:.2f}, recall {got.recall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-dir", type=Path, required=True)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--families", type=int, default=64)
    parser.add_argument("--active", type=float, default=8.0, help="mean active per token")
    parser.add_argument("--set", action="append", default=[], dest="sets")
    args = parser.parse_args()
    gflops = matmul_gflops()
    start = time.perf_counter()
    raw = study_raw(args.features, args.families, args.active, args.sets)
    run_study(build_study(raw, "benchmarks/planted_study.py"), args.study_dir, log=print)
    seconds = time.perf_counter() - start
    report(args.study_dir)
    print(f"planted study: {seconds:.0f} s on a box whose fp32 matmul probe read "
          f"{gflops:.0f} GFLOP/s -> {args.study_dir}")


if __name__ == "__main__":
    main()
