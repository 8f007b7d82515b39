"""`make bench`'s report says which machine measured it: a GPU run is not labelled CPU only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_header_names_the_device():
    module = benchmark("run_all")
    info = {"date": "2026-11-30T00:00:00+00:00", "cpu": "AMD EPYC", "cores": 2, "python": "3.11.7",
            "torch": "2.13.0", "transformer-lens": "4.3.0", "streamlit": "1.67.0", "gpu": None}
    results = {"sae_throughput": {"command": "x", "seconds": 1.0, "output": "512 1.4", "ok": True}}
    assert "CPU only" in module.write_markdown(info, results)
    gpu = module.write_markdown({**info, "gpu": "NVIDIA H200"}, results)
    assert "GPU: NVIDIA H200" in gpu and "CPU only" not in gpu
    assert "## sae_throughput" in gpu and "512 1.4" in gpu


def test_paper_estimate_scales_only_the_work_that_grows(tmp_path):
    """A capped paper run's stage times scaled to the full preset: the model's training to
    its 200M tokens, the activations' caching and the SAE's training to the activations the
    full preset would cache; the model's loading, the evaluation and the other stages as
    measured. The numbers here are chosen so each wrong scaling gives another total."""
    import json

    from pipelines.config import load_config

    full = load_config("paper", None, [])
    n_ctx = 128
    train_sequences = 2 * full.activations.max_tokens // (n_ctx - 1)  # the corpus holds more than the cap
    stages = {
        "tokens": {"duration_s": 3.0, "results": {"n_ctx": n_ctx, "train_sequences": train_sequences}},
        "model": {"duration_s": 25.0, "results": {"train_seconds": 20.0, "tokens_trained": full.model.train_tokens // 10,
                                                  "tokens_per_second": 1e6}},
        "activations": {"duration_s": 12.0, "results": {"caching_seconds": 10.0, "val_tokens": 1_000_000,
                                                        "train_tokens": full.activations.max_tokens // 5 - 1_000_000}},
        "sae": {"duration_s": 30.0, "results": {"train_seconds": 20.0}},
        "stats": {"duration_s": 40.0, "results": {}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}), encoding="utf-8")
    text = benchmark("gpu_check").paper_estimate(tmp_path)
    cached = full.activations.max_tokens
    model = 25 + 20 * (10 - 1)
    activations = 12 + 10 * ((1_000_000 + cached) / (cached // 5) - 1)
    sae = 30 + 20 * (cached / (cached // 5 - 1_000_000) - 1)
    total = 3 + model + activations + sae + 40
    assert f"{total:8.0f} s" in text.splitlines()[-1], text
    assert f"{model:8.0f} s" in text and f"{activations:8.0f} s" in text and f"{sae:8.0f} s" in text
