"""Model and SAE files that cannot be read: one error naming the file, never a traceback from
safetensors or TransformerLens, and a run folder left as it was."""

from __future__ import annotations

import json
import shutil

import pytest

from feature_store.errors import StoreError
from feature_store.sae_files import load_sae
from feature_store.transformer_files import load_transformer
from pipelines.errors import InputError
from pipelines.runner import run_pipeline
from tests.conftest import mini_config


def _sae_copy(mini_run, tmp_path):
    folder = tmp_path / "sae"
    shutil.copytree(next(p for p in sorted((mini_run / "sae").iterdir()) if p.is_dir()), folder)
    return folder


def test_truncated_sae_weights_name_the_file(mini_run, tmp_path):
    folder = _sae_copy(mini_run, tmp_path)
    weights = folder / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(StoreError, match=rf"^{weights}: unreadable SAE weights"):
        load_sae(folder)


@pytest.mark.parametrize("change, fragment", [
    (lambda raw: "{not json", "unreadable SAE config"),
    (lambda raw: json.dumps({k: v for k, v in raw.items() if k != "d_sae"}), "unreadable SAE config"),
    (lambda raw: json.dumps({**raw, "d_sae": raw["d_sae"] + 1}), "W_enc has shape"),
])
def test_bad_sae_config_names_the_file(mini_run, tmp_path, change, fragment):
    folder = _sae_copy(mini_run, tmp_path)
    config = folder / "config.json"
    config.write_text(change(json.loads(config.read_text())))
    with pytest.raises(StoreError, match=fragment) as err:
        load_sae(folder)
    assert str(folder) in str(err.value)


def test_truncated_model_weights_name_the_file(mini_run, tmp_path):
    shutil.copytree(mini_run / "model", tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(StoreError, match=rf"^{weights}: unusable model weights"):
        load_transformer(tmp_path / "model")


def test_stats_on_a_corrupt_sae_stops_with_the_file_and_keeps_the_store(mini_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mini_run, run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "store").rglob("*")
              if p.is_file()}
    weights = sorted((run_dir / "sae").glob("*/sae.safetensors"))[-1]
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match=rf"^{weights}: unreadable SAE weights"):
        run_pipeline(mini_config(), run_dir, "tests/conftest.py", force=("stats",),
                     log=lambda line: None)
    after = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "store").rglob("*")
             if p.is_file()}
    assert after == before
    assert not (run_dir / "store.incomplete").exists()
