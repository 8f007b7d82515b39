"""`--run-dir` naming something that cannot be a run folder: one line naming the path, exit 2,
and the file (or the folder around it) exactly as it was. In process (tests/helpers/cli.py);
test_cli.py runs the first case through the real `python -m pipelines`."""

from __future__ import annotations

import pytest

from tests.helpers.cli import run_cli


@pytest.mark.parametrize("where, fragment", [
    ("notes.txt", "not a folder"),  # the run folder is a file
    ("notes.txt/run", "cannot create the run folder"),  # a file where a parent folder goes
])
def test_run_dir_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, where, fragment):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a run\n")
    run_dir = tmp_path / where
    done = run_cli(capsys, "run", "--preset", "tiny", "--run-dir", str(run_dir))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert str(run_dir) in done.stderr and fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert notes.read_text() == "my notes, not a run\n"
