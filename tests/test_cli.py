"""The command line: one clear line and exit 2 on bad input, the run folder left as it was.

`pipelines.cli.main` runs in this process (tests/helpers/cli.py says why); one test runs the
real `python -m pipelines`, for the exit code and stderr a shell sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("args, fragment", [
    (["--set", "model.foo=1"], "unknown key model.foo=1"),
    (["--set", "model.d_mlp=0"], "model.d_mlp=0: must be positive"),
    (["--set", "corpus.source=files", "--set", "corpus.paths=['{empty}']"], "corpus folder has no"),
    (["--set", "corpus.source=files", "--set", "corpus.paths=['{bad}']"], "unreadable Parquet file"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(mini_run, tmp_path, capsys, args,
                                                             fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    args = [a.format(empty=tmp_path / "empty", bad=tmp_path / "bad.parquet") for a in args]
    before = _snapshot(mini_run)
    done = run_cli(capsys, "run", "--preset", "tiny", "--run-dir", str(mini_run), *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
    assert _snapshot(mini_run) == before
    fresh = tmp_path / "fresh"
    done = run_cli(capsys, "run", "--preset", "tiny", "--run-dir", str(fresh), *args)
    assert done.returncode == 2 and not fresh.exists()
    assert done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr


def test_status_reports_each_stage(mini_run, capsys):
    done = run_cli(capsys, "status", str(mini_run))
    assert done.returncode == 0, done.stderr
    for stage in ("corpus", "tokenizer", "tokens", "model"):
        assert any(line.startswith(stage) and "up to date" in line for line in done.stdout.splitlines())
    assert "validation loss" in done.stdout


def test_status_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    done = run_cli(capsys, "status", str(tmp_path / "nope"))
    assert done.returncode == 2 and "no run here" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_the_real_entry_point_exits_2_with_one_stderr_line(tmp_path):
    """The one test that runs `python -m pipelines` as a shell would: bad input ends the
    process with exit code 2 and exactly one line on stderr (no traceback, no warning an
    import might print), nothing on stdout, and the path it refused left as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a run\n")
    done = subprocess.run([sys.executable, "-m", "pipelines", "run", "--preset", "tiny",
                           "--run-dir", str(notes)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert str(notes) in done.stderr and "not a folder" in done.stderr, done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert notes.read_text() == "my notes, not a run\n"
