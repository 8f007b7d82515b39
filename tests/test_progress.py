"""Progress reaches a log file: plain lines at most every LOG_INTERVAL_S, and a heartbeat for
steps with no loop."""

from __future__ import annotations

import io
import time

from pipelines import progress


def test_a_bar_writes_whole_lines_to_a_file(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    out = io.StringIO()
    bar = progress.bar(total=4, desc="model (cpu)", unit="step", stream=out)
    for _ in range(4):
        time.sleep(0.06)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) >= 3 and all(line.startswith("model (cpu):") for line in lines)
    assert "4/4" in lines[-1]


def test_a_bar_in_a_file_is_quiet_between_intervals():
    out = io.StringIO()
    bar = progress.bar(total=1000, desc="sae", stream=out)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) <= 3  # first, maybe one refresh, last


def test_heartbeat_reports_a_long_step_and_stops_with_it():
    out = io.StringIO()
    with progress.heartbeat("stats (umap)", every=0.05, stream=out):
        time.sleep(0.18)
    n = len(out.getvalue().splitlines())
    assert n >= 2 and out.getvalue().startswith("stats (umap): running, ")
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == n


def test_a_second_open_bar_writes_no_escape_codes_to_a_file():
    """A bar left open (a stage that raised) must not push later bars in a log to a cursor
    position: tqdm would write ESC[A into the file."""
    out = io.StringIO()
    left_open = progress.bar(total=10, desc="activations (val)", stream=out)
    bar = progress.bar(total=2, desc="model (cpu)", stream=out)
    bar.update(2)
    bar.close()
    assert "\x1b" not in out.getvalue()
    left_open.close()
