"""Skip, rerun on change, force, and crashes at any moment leaving nothing that looks complete."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pipelines.data.tokens
from pipelines.run_folder import Manifest
from pipelines.runner import run_pipeline
from tests.conftest import MINI, mini_config
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _run(cfg, run_dir, **kw) -> list[str]:
    lines: list[str] = []
    run_pipeline(cfg, run_dir, "test.toml", log=lines.append, until=kw.pop("until", "tokens"), **kw)
    return lines


def test_rerun_skips_every_stage_with_one_line_each(tmp_path):
    _run(mini_config(), tmp_path / "r")
    lines = _run(mini_config(), tmp_path / "r")
    assert lines == [line for line in lines if "up to date, skipped" in line]
    assert len(lines) == 3


def test_config_change_reruns_that_stage_and_downstream_only(tmp_path):
    _run(mini_config(), tmp_path / "r")
    before = Manifest(tmp_path / "r").entries
    lines = _run(mini_config(tokenizer={"vocab_size": 280}), tmp_path / "r")
    assert lines[0].startswith("corpus: up to date")
    assert lines[1] == "tokenizer: running (config changed (vocab_size))"
    assert any(line.startswith("tokens: running (inputs changed)") for line in lines)
    after = Manifest(tmp_path / "r").entries
    assert after["corpus"] == before["corpus"]
    assert after["tokens"].output_hash != before["tokens"].output_hash


def test_force_reruns_stage_and_everything_downstream(tmp_path):
    _run(mini_config(), tmp_path / "r")
    lines = _run(mini_config(), tmp_path / "r", force=("tokenizer",))
    assert [line.split(":")[0] for line in lines if "running (forced)" in line] == ["tokenizer", "tokens"]


def test_a_corpus_edit_reruns_from_the_corpus(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    words = "some words here and there the first document long enough to count".split()
    rng = random.Random(0)  # varied text: a repeated sentence makes every held-out sequence a training one
    for i in range(30):
        (data / f"{i}.txt").write_text(f"document {i}: " + " ".join(rng.choices(words, k=200)))
    cfg = mini_config(corpus={"source": "files", "paths": [str(data)]}, tokens={"n_ctx": 16})
    _run(cfg, tmp_path / "r")
    (data / "0.txt").write_text("a different first document, long enough to count. " * 10)
    lines = _run(cfg, tmp_path / "r")
    assert lines[0] == "corpus: running (inputs changed)"


def test_crash_mid_write_leaves_no_output_that_looks_complete(tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    real = pipelines.data.tokens.run

    def crash(cfg, run_dir, out):
        (out / "train.parquet").write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt  # what a Ctrl-C or a kill mid-write looks like to the stage

    monkeypatch.setattr(pipelines.data.tokens, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(mini_config(), run_dir)
    assert not (run_dir / "tokens").exists()
    assert not (run_dir / "tokens.incomplete").exists()
    assert "tokens" not in Manifest(run_dir).entries
    assert {"corpus", "tokenizer"} <= set(Manifest(run_dir).entries)

    monkeypatch.setattr(pipelines.data.tokens, "run", real)
    lines = _run(mini_config(), run_dir)
    assert lines[:2] == [l for l in lines[:2] if "up to date" in l]
    assert lines[2] == "tokens: running (never completed)"
    assert (run_dir / "tokens" / "train.parquet").exists()


def test_output_without_manifest_entry_is_rebuilt(tmp_path):
    """A crash after the rename but before the manifest write: the folder is not trusted."""
    run_dir = tmp_path / "r"
    _run(mini_config(), run_dir)
    manifest = Manifest(run_dir)
    manifest.drop("tokens")
    assert (run_dir / "tokens").exists()
    lines = _run(mini_config(), run_dir)
    assert lines[-2] == "tokens: running (never completed)"


def test_sigkill_during_training_then_rerun_resumes(tmp_path, capsys):
    """A real kill -9 while the model stage is writing; the rerun finishes the run. The
    killed run is a process of its own; the rerun is the same command run in this one
    (`pipelines.cli.main`), sparing a second interpreter start."""
    run_dir = tmp_path / "r"
    cfg_file = tmp_path / "mini.toml"
    sections = {k: dict(v) for k, v in MINI.items()}
    sections["model"]["train_tokens"] = 5_000_000  # long enough to be killed mid-stage
    cfg_file.write_text("\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items())
        for name, body in sections.items()))
    cmd = [sys.executable, "-m", "pipelines", "run", "--config", str(cfg_file), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "model.incomplete").exists():
        assert proc.poll() is None and time.time() < deadline, "model stage never started"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "model").exists()
    assert "model" not in Manifest(run_dir).entries

    cfg_file.write_text(cfg_file.read_text().replace("5000000", "20000"))
    # the resume is what is under test: stop after the stage that was killed
    done = run_cli(capsys, *cmd[3:], "--until", "model")
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout and "model.incomplete" in done.stdout
    assert "corpus: up to date, skipped" in done.stdout
    assert (run_dir / "model" / "model.safetensors").exists()


def test_second_writer_is_refused(tmp_path):
    from pipelines.errors import InputError
    from pipelines.run_folder import run_lock

    (tmp_path / "r").mkdir()
    with run_lock(tmp_path / "r"):
        with pytest.raises(InputError, match="another pipeline run"):
            _run(mini_config(), tmp_path / "r")
