"""The stats stage's joint UMAP laid out in a second process while passes 1-3 run
(`pipelines/stats/umap_beside.py`): the same layout as after the passes, its failures the
stage's errors, and nothing left running."""

from __future__ import annotations

import multiprocessing

import pyarrow.parquet as pq
import pytest
import torch

from pipelines.config import StatsConfig
from pipelines.errors import ConfigError, PipelineError
from pipelines.stats import stage as stats
from pipelines.stats.umap_beside import JointUmap, beside_passes
from tests.conftest import mini_config


def _stats_cfg(**kw) -> StatsConfig:
    return StatsConfig(**{**mini_config().stats.__dict__, **kw})


def test_the_umap_beside_the_passes_is_the_umap_after_them(mini_run, tmp_path):
    """The whole stage both ways: the store's UMAP table is byte for byte the same, and the
    summary and manifest say where it was laid out."""
    after_summary, after = stats.run(_stats_cfg(umap_beside="off"), mini_run, tmp_path / "after")
    beside_summary, beside = stats.run(_stats_cfg(umap_beside="on"), mini_run, tmp_path / "beside")
    assert not after["umap_beside"] and beside["umap_beside"]
    assert "beside the passes" in beside_summary and "beside" not in after_summary
    assert after["umap_wait_seconds"] == after["umap_seconds"] > 0
    assert 0 <= beside["umap_wait_seconds"] and beside["umap_seconds"] > 0
    table = pq.read_table(tmp_path / "beside" / "umap.parquet")
    assert table.num_rows > 0
    assert table.equals(pq.read_table(tmp_path / "after" / "umap.parquet"))
    assert (tmp_path / "beside" / "umap.parquet").read_bytes() == \
        (tmp_path / "after" / "umap.parquet").read_bytes()
    assert not _umap_children()


def test_a_failed_layout_is_the_stages_error_and_leaves_nothing_running():
    """umap-learn refuses a NaN point; in the second process that must come back as a
    PipelineError naming the cause, not a hang or a missing table."""
    points = torch.randn(120, 8, generator=torch.Generator().manual_seed(0))
    points[5, 3] = float("nan")
    with JointUmap([points], 10, seed=0, beside=True) as umap:
        with pytest.raises(PipelineError, match="UMAP process failed: ValueError"):
            umap.result()
    assert not _umap_children()


def test_leaving_early_stops_the_layout():
    """A stage that fails in its passes leaves the `with` block before reading the layout:
    the second process is stopped, not left to finish (or to outlive a long-lived caller)."""
    points = torch.randn(3000, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="a pass failed"):
        with JointUmap([points], 15, seed=0, beside=True):
            assert _umap_children()
            raise RuntimeError("a pass failed")
    assert not _umap_children()


def test_auto_lays_out_beside_only_where_a_core_is_idle(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(4)))
    try:
        assert beside_passes("auto", "cuda")
        torch.set_num_threads(4)
        assert not beside_passes("auto", "cpu")  # torch has every core: after the passes
        torch.set_num_threads(3)
        assert beside_passes("auto", "cpu")
        assert not beside_passes("off", "cuda") and beside_passes("on", "cpu")
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ConfigError, match="stats.umap_beside"):
        _stats_cfg(umap_beside="yes")


def _umap_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "stats umap"]


def test_a_script_without_a_main_guard_fails_instead_of_hanging(tmp_path):
    """spawn re-runs an unguarded script in the child, which then dies while starting; with
    the inputs in the process's arguments (over a pipe buffer's worth) the parent blocked in
    that write for good. Now the script ends with the stage's error."""
    import os
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import torch\n"
        "from pipelines.stats.umap_beside import JointUmap\n"
        "points = torch.randn(3000, 64, generator=torch.Generator().manual_seed(0))\n"
        "with JointUmap([points], 10, seed=0, beside=True) as umap:\n"
        "    umap.result()\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode != 0
    assert "UMAP process exited with code" in done.stderr, done.stderr[-2000:]
