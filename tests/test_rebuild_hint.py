"""What a reader is told to run when `FEATURE_STORE` names a folder that is not a usable store.

`--run-dir <parent> --force stats` rebuilds `<parent>/store`, so it is only the right advice
when the folder is a run's own `store/` (its parent has the pipeline's run manifest);
anywhere else it would start a run in an unrelated folder, so the reader is told what a
store is and the command that builds one instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from feature_store import FeatureStore
from feature_store.errors import StoreError
from tests.helpers.app import APP


def _run_folder(root: Path) -> Path:
    """A run folder as the pipeline leaves it after `--until sae`: a manifest, no store yet."""
    run = root / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"schema": 1, "stages": {}}))
    return run


def _message(path: Path) -> str:
    with pytest.raises(StoreError) as err:
        FeatureStore.open(path)
    return str(err.value)


def test_a_runs_store_folder_gets_the_rebuild_command(tmp_path):
    run = _run_folder(tmp_path)
    (run / "store").mkdir()  # present but empty: no manifest
    message = _message(run / "store")
    assert f"python -m pipelines run --run-dir {run} --force stats" in message
    (run / "store").rmdir()
    message = _message(run / "store")  # missing altogether: same advice
    assert f"--run-dir {run} --force stats" in message


@pytest.mark.parametrize("where", [
    "documents",  # any folder: its parent is no run
    "run/other",  # inside a run, but not its store/: the rebuild would not write here
    "fake/store",  # named store/, but the manifest beside it is not a run's
])
def test_any_other_folder_is_told_what_a_store_is(tmp_path, where):
    _run_folder(tmp_path)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"schema_version": 3}))
    folder = tmp_path / where
    folder.mkdir()
    message = _message(folder)
    assert "--force stats" not in message
    assert "not a run's store/ folder" in message
    assert "a feature store is the store/ folder a pipeline run writes" in message
    assert "python -m pipelines run --preset tiny --run-dir runs/tiny" in message


@pytest.mark.parametrize("case", ["run store", "other folder"])
def test_the_dashboard_shows_the_same_advice(tmp_path, monkeypatch, case):
    run = _run_folder(tmp_path)
    folder = run / "store" if case == "run store" else tmp_path / "documents"
    folder.mkdir()
    monkeypatch.setenv("FEATURE_STORE", str(folder))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    error = at.error[0].value
    assert "No usable feature store" in error
    if case == "run store":
        assert f"--run-dir {run} --force stats" in error
    else:
        assert "--force stats" not in error and "a feature store is" in error
