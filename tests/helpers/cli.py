"""`python -m pipelines ...` run in process: `pipelines.cli.main(argv)`, what the entry
point calls, with its output captured by pytest's capsys.

Why in process: a fresh interpreter costs seconds of imports (torch) per command, and what
the CLI tests check (exit status, the one-line error, what is left on disk) is decided in
`main`. One test (test_cli.py) still runs the real entry point, for its exit code and stderr.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipelines.cli import main


@dataclass(frozen=True)
class Done:
    """What a command left: its exit status and everything it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """`python -m pipelines *args`, in this process. argparse's own errors exit through
    SystemExit; its code is the status the real command would exit with."""
    capsys.readouterr()  # only this command's output
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return Done(code, out, err)
