"""The interp stage on a built run: seconds for every unit of every dictionary (issue 13's
budget: all 4,096 units of the tiny run in <= 90 s on 2 cores), where the time goes, and the
median scores with their controls.

Baseline, timed in the same process: one plain encoding of the same training tokens by every
dictionary (read + encode, nothing kept), the least any explain pass over them can cost.
The stage runs into a temporary folder, so the run itself is not touched.

    python benchmarks/interp.py [--run-dir runs/tiny] [--set interp.explain_tokens=131072]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from feature_store.transformer_files import load_transformer
from pipelines.interp import stage as interp
from pipelines.model.readout import model_readout
from pipelines.activations.shards import sequence_batches
from pipelines.config import build_config
from pipelines.stats.dictionaries import load_dictionaries
from pipelines.runner import saved_config

TARGET_S = 90.0


def encode_baseline(run_dir: Path, cfg, device: str = "cpu") -> tuple[float, int]:
    """Seconds to read and encode the explain tokens once by every dictionary."""
    model = load_transformer(run_dir / "model", device=device)
    n_ctx = int(model.cfg.n_ctx)
    W_out, _ = model_readout(model)
    dictionaries = load_dictionaries(run_dir, W_out, device)
    t0, n = time.perf_counter(), 0
    with torch.no_grad():
        for batch in sequence_batches(run_dir / "activations", "train", n_ctx, cfg.batch_tokens,
                                      cfg.explain_tokens, device):
            n += batch.x.shape[0]
            for d in dictionaries:
                d.entries(batch.x)
    return time.perf_counter() - t0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/tiny")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    base = saved_config(run_dir)
    raw = base.to_dict() if base is not None else {}
    cfg = build_config(raw, str(run_dir / "config.json"), args.overrides).interp
    base_s, n_tok = encode_baseline(run_dir, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        summary, results = interp.run(cfg, run_dir, Path(tmp) / "explanations")
        seconds = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        manifest = json.loads((Path(tmp) / "explanations" / "_manifest.json").read_text())
    n_units = results["n_units"]
    print(summary)
    load = os.getloadavg()[0]
    print(f"interp: {n_units:,} units in {seconds:.1f} s ({n_units / seconds:,.0f} units/s); "
          f"target {TARGET_S:.0f} s: {'met' if seconds <= TARGET_S else 'MISSED'} "
          f"({seconds / TARGET_S:.2f} of it); load average {load:.1f} on {os.cpu_count()} "
          f"cores (above the core count, other work shared them)")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"  CPU time of the stage {cpu:.1f} s (user + system, all threads): what it costs "
          f"whatever else runs; on {os.cpu_count()} free cores the wall time is at most this "
          f"(less where torch uses both cores)")
    print(f"  explain set {results['explain_set_seconds']:.1f} s, held-out set "
          f"{results['score_set_seconds']:.1f} s, fit {results['fit_seconds']:.1f} s, "
          f"score {results['score_seconds']:.1f} s")
    print(f"baseline: one encoding of the {n_tok:,} explain tokens by every dictionary "
          f"{base_s:.1f} s; the explain set costs {results['explain_set_seconds'] / base_s:.1f}x "
          f"that")
    print("| dictionary | simulation (top+random) | shuffled | single token | simulation "
          "(random) | detection | shuffled | single token | detection (neighbours) | logits |")
    print("| --- " * 10 + "|")
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for name, d in manifest["dictionaries"].items():
        m, c = d["medians"], d["controls"]
        print(f"| {name} | {f(m['sim_top_random'])} | {f(c['shuffled']['sim_top_random'])} | "
              f"{f(c['single_token']['sim_top_random'])} | {f(m['sim_random'])} | "
              f"{f(m['detection'])} | {f(c['shuffled']['detection'])} | "
              f"{f(c['single_token']['detection'])} | {f(m['detection_neighbours'])} | "
              f"{f(m['logits'])} (shuffled {f(c['shuffled']['logits'])}) |")


if __name__ == "__main__":
    main()
