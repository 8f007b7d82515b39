"""The universality stage on a built study: seconds, and token × unit-pair throughput.

Issue 12's budget: the tiny study (SoLU + GeLU, neurons and three SAE sizes) in ≤ 30 s on 2
CPU cores. Computes exactly what the stage computes (every pair's correlations, best matches,
logit-weight correlations) and writes the study store into a temporary folder, so the study
itself is not touched. Baseline, timed in the same process: a dense fp32 matmul probe
(GFLOP/s), to state the speed as a ratio a different machine can compare.

    python benchmarks/universality.py [--study-dir runs/tiny-study]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe import matmul_gflops  # noqa: E402
from feature_store import study_store  # noqa: E402
from pipelines.universality import stage as universality  # noqa: E402
from pipelines.study.runner import RUNS, STUDY_FILE  # noqa: E402
from pipelines.study.config import UniversalityConfig  # noqa: E402

TARGET_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study-dir", default="runs/tiny-study")
    args = parser.parse_args()
    study_dir = Path(args.study_dir)
    if not (study_dir / STUDY_FILE).exists():
        print(f"no study at {study_dir}; build it with python -m pipelines study --preset tiny "
              f"--study-dir {study_dir}")
        sys.exit(1)
    names = [v["name"] for v in json.loads((study_dir / STUDY_FILE).read_text())["variants"]]
    runs = {n: study_dir / RUNS / n for n in names}
    probe = matmul_gflops()
    cfg = UniversalityConfig(device="cpu")
    start = time.perf_counter()
    universality.check_same_tokens(runs)
    variants = [universality._Variant(n, d, "cpu") for n, d in runs.items()]
    t_load = time.perf_counter() - start
    with torch.no_grad():
        t0 = time.perf_counter()
        corr, sides, n_tokens = universality.correlate(variants, cfg, "cpu")
        t_corr = time.perf_counter() - t0
        t0 = time.perf_counter()
        records = universality.match_rows(variants, corr, sides, n_tokens)
        t_match = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = study_store.write_study_store(Path(tmp), [{"name": n, "store": ""} for n in names],
                                                records, n_tokens)
        t_write = time.perf_counter() - t0
    total = time.perf_counter() - start
    pairs = sum(int(c.numel()) for c in corr.values())
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}, fp32 matmul probe "
          f"{probe:.0f} GFLOP/s")
    print(f"universality on {study_dir} ({', '.join(names)}): {total:.1f} s "
          f"(target <= {TARGET_S:.0f} s on 2 cores): load models and SAEs {t_load:.1f} s, "
          f"correlations {t_corr:.1f} s, matches + logit correlations {t_match:.1f} s, "
          f"write {t_write:.1f} s")
    print(f"{n_tokens:,} tokens x {pairs:,} unit pairs = {n_tokens * pairs / t_corr:.3g} "
          f"token-unit-pairs/s in the correlation pass; per probe GFLOP/s: "
          f"{n_tokens * pairs / t_corr / probe / 1e9:.3f}")
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for row in summary:
        if names.index(row["variant"]) < names.index(row["other"]):
            kind = "same model (SAE-seed control)" if row["same_model"] else "different models"
            print(f"  {row['variant']}->{row['other']} {row['dictionary']} [{kind}]: median "
                  f"best-match corr {num(row['median_best_corr'], '.3f')}, mean "
                  f"{num(row['mean_best_corr'], '.3f')}, > 0.5 "
                  f"{num(row['share_above_0_5'], '.0%')}, > 0.9 "
                  f"{num(row['share_above_0_9'], '.0%')}, median logit-weight corr "
                  f"{num(row['median_logit_corr'], '.3f')}, median decoder cosine "
                  f"{num(row['median_decoder_cosine'], '.3f')}")


if __name__ == "__main__":
    main()
