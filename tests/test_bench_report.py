"""`make bench`'s report says which machine measured it: a GPU run is not labelled CPU only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_header_names_the_device():
    module = run_all()
    info = {"date": "2026-11-30T00:00:00+00:00", "cpu": "AMD EPYC", "cores": 2, "python": "3.11.7",
            "torch": "2.13.0", "transformer-lens": "4.3.0", "streamlit": "1.67.0", "gpu": None}
    results = {"sae_throughput": {"command": "x", "seconds": 1.0, "output": "512 1.4", "ok": True}}
    assert "CPU only" in module.write_markdown(info, results)
    gpu = module.write_markdown({**info, "gpu": "NVIDIA H200"}, results)
    assert "GPU: NVIDIA H200" in gpu and "CPU only" not in gpu
    assert "## sae_throughput" in gpu and "512 1.4" in gpu
