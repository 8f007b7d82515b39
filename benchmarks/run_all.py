"""`make bench`: run every benchmark and write benchmarks/results.md (+ results.json).

Each benchmark runs as its own process (so one's imports and caches never flatter another)
and prints its figures as ratios against a baseline timed in the same run where one exists.
The pipeline figures come from rerunning the activations, sae and stats stages of a copy of
runs/tiny (built first if missing) and reading what each stage recorded in its manifest.

    python benchmarks/run_all.py [--skip saelens,first_paint] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
PY = sys.executable


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {name: metadata.version(name) for name in ("torch", "transformer-lens", "streamlit", "numpy")}
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "gpu": cuda_device(),
            **versions}


def cuda_device() -> str | None:
    """The CUDA card the pipeline stages will use ("auto" picks it), or None on a CPU box."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run(name: str, cmd: list[str], results: dict, timeout: int = 900) -> None:
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    text = done.stdout.strip()
    if done.returncode != 0:
        text += f"\n(exit {done.returncode})\n" + done.stderr.strip()[-3000:]
    print(text, flush=True)
    results[name] = {"command": " ".join(cmd), "seconds": round(seconds, 1), "output": text,
                     "ok": done.returncode == 0}


def pipeline(results: dict) -> None:
    """Rerun activations -> sae -> stats on a copy of the tiny run; read the manifest."""
    run_dir = OUT / "tiny"
    if not (run_dir / "model" / "model.safetensors").exists():
        if (ROOT / "runs" / "tiny" / "model" / "model.safetensors").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(ROOT / "runs" / "tiny", run_dir)
    cmd = [PY, "-m", "pipelines", "run", "--preset", "tiny", "--run-dir", str(run_dir), "--force", "activations"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run("pipeline", cmd, results, timeout=1500)
    peak_mib = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    figures = {"peak_rss_mib": round(peak_mib)}
    for stage in ("model", "activations", "sae", "stats", "interp"):
        entry = manifest.get(stage, {})
        figures[f"{stage}_seconds"] = entry.get("duration_s")
        figures[f"{stage}_results"] = {k: v for k, v in entry.get("results", {}).items()
                                       if k not in ("metrics", "curves")}
    figures["sae_metrics"] = manifest.get("sae", {}).get("results", {}).get("metrics")
    results["pipeline"]["figures"] = figures


def write_markdown(info: dict, results: dict) -> str:
    lines = ["# Benchmark results", "",
             f"Written by `make bench` on {info['date']}: {info['cpu']}, {info['cores']} cores; "
             f"Python {info['python']}, torch {info['torch']}, transformer-lens {info['transformer-lens']}, "
             f"streamlit {info['streamlit']}. "
             + (f"GPU: {info['gpu']} (the pipeline stages and `sae_throughput_gpu` use it; the "
                "other benchmarks are CPU). " if info.get("gpu") else
                "CPU only (see the GPU section for a lent card). ") +
             "Absolute rates depend on what else the machine runs; ratios against a baseline timed "
             "in the same process are the figures to compare.", ""]
    fig = results.get("pipeline", {}).get("figures")
    if fig:
        lines += ["## Pipeline stages (tiny preset, rerun from the activations stage)", "",
                  "| stage | seconds | rate |", "| --- | --- | --- |",
                  f"| activations | {fig['activations_seconds']} | "
                  f"{fig['activations_results'].get('tokens_per_second', 0):,.0f} tokens/s |",
                  f"| sae (all sizes, one pass) | {fig['sae_seconds']} | "
                  f"{fig['sae_results'].get('activations_per_second', 0):,.0f} activations/s |",
                  f"| stats | {fig['stats_seconds']} | "
                  f"{fig['stats_results'].get('tokens_per_second', 0):,.0f} tokens/s |",
                  f"| interp (every unit explained and scored) | {fig.get('interp_seconds')} | "
                  f"{fig.get('interp_results', {}).get('n_units', 0) / max(fig.get('interp_seconds') or 1, 1e-9):,.0f} "
                  f"units/s |", "",
                  f"Peak resident memory of the pipeline process: {fig['peak_rss_mib']:,} MiB.", ""]
        if fig.get("sae_metrics"):
            lines += ["| dictionary | L0 | FVU | CE loss recovered | dead |", "| --- | --- | --- | --- | --- |"]
            for r in fig["sae_metrics"]:
                lines.append(f"| {r['dictionary']} | {r['l0']:.1f} | {r['fvu']:.3f} | "
                             f"{100 * r['ce_loss_recovered']:.1f}% | {100 * r['dead_fraction']:.1f}% "
                             f"of {r['dead_eval_tokens']:,} tokens |")
            lines.append("")
    for name, res in results.items():
        lines += [f"## {name}", "", f"`{res['command']}` ({res['seconds']} s)", "", "```",
                  res["output"], "```", ""]
    gpu = ROOT / "benchmarks" / "results_gpu.md"
    if gpu.exists():  # measured on a lent card, kept apart from the CPU figures above
        lines += ["# GPU (separate machine; see benchmarks/results_gpu.md)", "",
                  *gpu.read_text().split("\n")[1:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip", default="", help="comma-separated: pipeline,sae_throughput,sae_throughput_gpu,"
                                                   "saelens,interp,planted,stats_engines,ddp,store_read,dashboard_page,first_paint")
    parser.add_argument("--quick", action="store_true", help="smaller stores and fewer steps")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    OUT.mkdir(parents=True, exist_ok=True)
    info, results = machine(), {}
    previous = ROOT / "benchmarks" / "results.json"
    if skip and previous.exists():  # a partial rerun keeps the other benchmarks' last figures
        results = json.loads(previous.read_text())["results"]
    n = "4096" if args.quick else "16384"
    if "pipeline" not in skip:
        pipeline(results)
    run_dir = str(OUT / "tiny") if (OUT / "tiny" / "activations").exists() else "runs/tiny"
    if "sae_throughput" not in skip:
        run("sae_throughput", [PY, "benchmarks/sae_throughput.py", "--run-dir", run_dir], results)
    if info["gpu"] and "sae_throughput_gpu" not in skip:  # the sizes the paper preset trains
        run("sae_throughput_gpu", [PY, "benchmarks/sae_throughput.py", "--run-dir", run_dir,
                                   "--device", "cuda", "--steps", "40",
                                   "--sizes", "512,1024,2048,4096,8192,16384"], results)
    if "saelens" not in skip:
        run("saelens", [PY, "benchmarks/sae_vs_saelens.py", "--run-dir", run_dir,  # issue 16: full length
                        "--samples", "204800" if args.quick else "2000000"], results, timeout=7200)
    if "interp" not in skip:  # issue 13: all units of the tiny run in <= 90 s on 2 cores
        run("interp", [PY, "benchmarks/interp.py", "--run-dir", run_dir], results)
    if "planted" not in skip:  # issue 16: do the recipes recover a planted dictionary?
        run("planted", [PY, "benchmarks/planted.py"] + (
            ["--d", "128", "--features", "256", "--active", "8", "--dict", "512", "--samples", "400000",
             "--batch", "2048", "--eval", "65536"] if args.quick else []), results, timeout=7200)
    if "universality" not in skip and (ROOT / "runs" / "tiny-study" / "study.json").exists():
        run("universality", [PY, "benchmarks/universality.py", "--study-dir", "runs/tiny-study"],
            results)  # issue 12: the tiny study (build it with `python -m pipelines study`)
    if "stats_engines" not in skip:  # issue 14: the stats stage on Ray vs in-process (ratio)
        run("stats_engines", [PY, "benchmarks/stats_engines.py", "--run-dir", run_dir], results,
            timeout=1800)
    if "ddp" not in skip:  # issue 14: SAE training under torchrun, 2 processes vs 1 (ratio)
        run("ddp", [PY, "benchmarks/ddp.py", "--run-dir", run_dir] + (
            ["--size", "1024", "--steps", "10"] if args.quick else []), results, timeout=1800)
    if "store_read" not in skip:
        run("store_read", [PY, "benchmarks/store_read.py", "--n-features", n], results)
    if "dashboard_page" not in skip:
        run("dashboard_page", [PY, "benchmarks/dashboard_page.py", "--features", n], results)
    if "first_paint" not in skip:
        store = Path(run_dir) / "store"
        run("first_paint", [PY, "benchmarks/first_paint.py", "--store", str(store)], results)
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    (ROOT / "benchmarks" / "results.md").write_text(write_markdown(info, results))
    print(f"bench: {len(results)} benchmarks -> benchmarks/results.md")


if __name__ == "__main__":
    main()
