"""The command line: one clear line and exit 2 on bad input, the run folder left as it was."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("args, fragment", [
    (["--set", "model.foo=1"], "unknown key model.foo=1"),
    (["--set", "model.d_mlp=0"], "model.d_mlp=0: must be positive"),
    (["--set", "corpus.source=files", "--set", "corpus.paths=['{empty}']"], "corpus folder has no"),
    (["--set", "corpus.source=files", "--set", "corpus.paths=['{bad}']"], "unreadable Parquet file"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(mini_run, tmp_path, args, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    args = [a.format(empty=tmp_path / "empty", bad=tmp_path / "bad.parquet") for a in args]
    before = _snapshot(mini_run)
    done = _cli("run", "--preset", "tiny", "--run-dir", str(mini_run), *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
    assert _snapshot(mini_run) == before
    fresh = tmp_path / "fresh"
    done = _cli("run", "--preset", "tiny", "--run-dir", str(fresh), *args)
    assert done.returncode == 2 and not fresh.exists()


def test_status_reports_each_stage(mini_run):
    done = _cli("status", str(mini_run))
    assert done.returncode == 0, done.stderr
    for stage in ("corpus", "tokenizer", "tokens", "model"):
        assert any(line.startswith(stage) and "up to date" in line for line in done.stdout.splitlines())
    assert "validation loss" in done.stdout


def test_status_of_a_missing_run_is_a_clear_error(tmp_path):
    done = _cli("status", str(tmp_path / "nope"))
    assert done.returncode == 2 and "no run here" in done.stderr
