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


def test_a_command_cut_short_keeps_what_it_printed(monkeypatch):
    """gpu_check's sections run commands under the budget; one that runs past it is killed,
    and the stages it finished before (their summary lines) must reach the report."""
    import sys

    import pytest

    check = benchmark("gpu_check")
    monkeypatch.setattr(check, "MIN_TIMEOUT", 0.5)
    code = ("import sys, time; print('model: solu_ln, 20M tokens at 900,000 tok/s', flush=True); "
            "print('sae 30% |###|', flush=True); time.sleep(30)")
    with pytest.raises(check.CutShort) as cut:
        check.run([sys.executable, "-c", code], 1.0)
    assert "model: solu_ln, 20M tokens" in cut.value.output
    message = str(cut.value)
    assert "cut short after" in message and "finished before the cut:\nmodel: solu_ln" in message
    assert "%|" not in message.split("last lines:")[0]  # progress bars are not summaries


def _manifest(folder: Path, stages: dict) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"stages": stages}), encoding="utf-8")


def _paper_stages(model_seconds: float) -> dict:
    from pipelines.config import load_config

    full = load_config("paper", None, [])
    return {
        "tokens": {"duration_s": 3.0, "results": {"n_ctx": 128, "train_sequences": 10_000}},
        "model": {"duration_s": model_seconds, "results": {"train_seconds": model_seconds,
                                                           "tokens_trained": full.model.train_tokens,
                                                           "tokens_per_second": 1e6}},
        "activations": {"duration_s": 5.0, "results": {"caching_seconds": 5.0, "val_tokens": 1000,
                                                       "train_tokens": 10_000 * 127, "tokens_per_second": 2e6}},
    }


def test_acceptance_reads_each_line_back_and_says_what_was_not_reached(tmp_path):
    """The report's verdicts come from what the sections wrote: the trainer's JSON rows
    against the line each size must meet, the runs' manifests; a paper run cut before its
    stats stage gives a lower bound, which can fail the 8 minutes but never pass them."""
    import json

    check = benchmark("gpu_check")
    rows = [{"d_sae": 512, "vs_reference": 1.2, "fvu": 0.1, "reference_fvu": 0.1, "never_fired": 0.0,
             "reference_never_fired": 0.0},
            {"d_sae": 4096, "vs_reference": 0.5, "fvu": 0.1, "reference_fvu": 0.1, "never_fired": 0.0,
             "reference_never_fired": 0.0},
            {"d_sae": 16384, "vs_reference": 2.5, "fvu": 0.1, "reference_fvu": 0.1, "never_fired": 0.0,
             "reference_never_fired": 0.0}]
    (tmp_path / "throughput.json").write_text(json.dumps(rows), encoding="utf-8")
    _manifest(tmp_path / "paper", _paper_stages(model_seconds=100.0))
    text = check.acceptance(tmp_path, tmp_path / "tiny", "a test")
    lines = text.splitlines()
    assert any(line.startswith("trainer    512: 1.20x") and line.split(";")[0].endswith("PASS") for line in lines)
    assert any(line.startswith("trainer  16384: 2.50x") and "needs >= 3x): FAIL" in line for line in lines)
    assert any(line.startswith("trainer   4096") and "(no line)" in line for line in lines)
    assert "small preset sae stage: not measured" in lines
    assert "tiny dead share at 2,048: not measured" in lines
    assert "activations (paper): 2,000,000 tok/s (needs >= 1M): PASS" in lines
    paper = next(line for line in lines if line.startswith("paper preset"))
    assert "at least" in paper and "not decided" in paper and "stats" in paper, paper
    assert "at least" in check.paper_estimate(tmp_path / "paper").splitlines()[-1]

    _manifest(tmp_path / "paper", _paper_stages(model_seconds=600.0))  # already past 8 minutes
    paper = next(line for line in check.acceptance(tmp_path, tmp_path / "tiny", "a test").splitlines()
                 if line.startswith("paper preset"))
    assert paper.endswith("FAIL"), paper

    _manifest(tmp_path / "paper", {"tokens": _paper_stages(1.0)["tokens"]})  # cut in the model stage
    assert "paper preset end to end: not measured" in check.acceptance(tmp_path, tmp_path / "tiny", "x")
    assert check.paper_estimate(tmp_path / "paper").startswith("no estimate")


def test_a_section_in_a_child_gives_its_text_and_a_hang_costs_only_its_time(monkeypatch):
    """gpu_check runs each section's device code in a child process (`in_child`): what the
    function returns comes back as the section's text, and one that never returns is cut at
    its timeout instead of holding the device call until the call's own limit."""
    import pytest

    check = benchmark("gpu_check")
    text = check.in_child("summaries('model: solu_ln, 1M tokens\\nsae 30% |###|')", 60)
    assert text == "model: solu_ln, 1M tokens"
    with pytest.raises(RuntimeError, match="AttributeError: 'NoneType'"):  # the traceback, for the report
        check.in_child("summaries(None)", 60)
    monkeypatch.setattr(check, "MIN_TIMEOUT", 0.5)
    with pytest.raises(check.CutShort):
        check.in_child("time.sleep(30)", 1.0)
