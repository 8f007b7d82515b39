"""The SAE-seed control (issue 28): variants that differ only in their SAEs share the model
and the activation cache, and universality compares their decoder directions. (A kill -9
while the shared model trains, then the rerun: tests/test_study.py.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from feature_store.study_store import StudyStore
from feature_store.transformer_files import weights_hash
from pipelines.run_folder import Manifest
from pipelines.study.config import build_study
from pipelines.study.runner import model_owners, run_study
from tests.conftest import study_raw

# The session's mini study (solu, gelu) plus a variant that differs from solu in its SAEs only
SEEDS = {"seed0": {"model": {"act_fn": "solu_ln"}}, "gelu": {"model": {"act_fn": "gelu"}},
         "seed1": {"model": {"act_fn": "solu_ln"}, "sae": {"seed": 1}}}


@pytest.fixture(scope="module")
def seed_study(mini_study, tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the mini study with its solu variant renamed seed0 and a seed1 variant
    added: only seed1's SAEs (and the study stage) are new, so the fixture trains no model."""
    study_dir = tmp_path_factory.mktemp("seeds") / "s"
    shutil.copytree(mini_study[0], study_dir, symlinks=True)
    (study_dir / "runs" / "solu").rename(study_dir / "runs" / "seed0")
    lines: list[str] = []
    run_study(build_study(study_raw(**SEEDS), "t.toml"), study_dir, log=lines.append,
              parallel=1)
    return study_dir, lines


def test_owners_are_the_first_variant_with_the_same_model_side_config():
    cfg = build_study(study_raw(**SEEDS, seed2={"sae": {"seed": 2, "k": 2}},
                                cache={"activations": {"max_tokens": 20_000}}), "t.toml")
    assert model_owners(cfg) == {"seed0": "seed0", "gelu": "gelu", "seed1": "seed0",
                                 "seed2": "seed0", "cache": "cache"}


def test_model_and_activations_are_built_once_and_linked(seed_study):
    study_dir, lines = seed_study
    runs = study_dir / "runs"
    assert not any("] model: running" in line or "] activations: running" in line
                   for line in lines), lines  # seed0's (and gelu's) were built already
    assert "[seed1] sae: running (never completed)" in lines
    assert "model and activations shared: seed0 for seed1" in lines
    for stage in ("model", "activations"):
        assert (runs / "seed0" / stage).is_dir() and not (runs / "seed0" / stage).is_symlink()
        assert os.readlink(runs / "seed1" / stage) == os.path.join("..", "seed0", stage)
        assert Manifest(runs / "seed1").get(stage) == Manifest(runs / "seed0").get(stage)
    assert not (runs / "gelu" / "model").is_symlink()
    # the SAEs are the variant's own, trained with its seed
    a = (runs / "seed0" / "sae" / "64" / "sae.safetensors").read_bytes()
    assert a != (runs / "seed1" / "sae" / "64" / "sae.safetensors").read_bytes()


def test_the_control_compares_decoder_directions(seed_study):
    study_dir, _ = seed_study
    study = StudyStore.open(study_dir)
    summary = study.summary()
    control = summary[(summary["variant"] == "seed0") & (summary["other"] == "seed1")]
    cross = summary[(summary["variant"] == "seed0") & (summary["other"] == "gelu")]
    assert control["same_model"].all()
    directed = control[control["dictionary"] != "neurons_pre_ln"]  # it has no direction
    assert directed["directions_comparable"].all() and directed["median_decoder_cosine"].notna().all()
    assert not cross["same_model"].any() and not cross["directions_comparable"].any()
    rows = study.matches("seed0", "seed1", "sae_64")
    assert rows["decoder_cosine"].notna().any()
    cosine = rows["decoder_cosine"].dropna().to_numpy()
    assert (np.abs(cosine) <= 1 + 1e-5).all()
    # neurons of one model against themselves: every neuron is its own best match
    neurons = study.matches("seed0", "seed1", "neurons")
    live = neurons["best_match"] >= 0
    assert (neurons.loc[live, "best_match"] == neurons.loc[live, "index"]).all()
    assert neurons.loc[live, "best_corr"].min() > 0.999


def test_a_variant_that_stops_sharing_builds_its_own_model(seed_study, tmp_path):
    study_dir, _ = seed_study
    copy = tmp_path / "s"
    shutil.copytree(study_dir, copy, symlinks=True)
    lines: list[str] = []
    raw = study_raw(**{**SEEDS, "seed1": {"sae": {"seed": 1},
                                          "model": {"act_fn": "solu_ln", "seed": 1}}})
    run_study(build_study(raw, "t.toml"), copy, log=lines.append, parallel=1)
    seed1 = copy / "runs" / "seed1"
    assert not (seed1 / "model").is_symlink() and (seed1 / "model").is_dir()
    assert any(line.startswith("[seed1] model: running") for line in lines), lines
    assert (copy / "runs" / "seed0" / "model").is_dir()  # the owner's folder is untouched
    assert weights_hash(seed1 / "model") != weights_hash(copy / "runs" / "seed0" / "model")


def test_weights_hash_is_the_weights_not_the_folder(seed_study, tmp_path):
    """Universality's "same model" test: equal for the same weights whatever else the
    folder holds, different for other weights."""
    study_dir, _ = seed_study
    a = study_dir / "runs" / "seed0" / "model"
    b = tmp_path / "model"
    shutil.copytree(a, b)
    (b / "metrics.json").write_text("{}")
    assert weights_hash(a) == weights_hash(b)
    assert weights_hash(a) != weights_hash(study_dir / "runs" / "gelu" / "model")


def test_overview_and_universality_pages_show_the_control(seed_study, monkeypatch):
    from dashboard import links
    from tests.helpers.app import open_page

    monkeypatch.setenv("FEATURE_STORE", str(seed_study[0]))
    for page, params in ((links.OVERVIEW, {}),
                         (links.UNIVERSALITY, {"run": "seed0", "other": "seed1"})):
        at = open_page(page, **params)
        assert not at.exception and not at.error
        shown = "\n".join(str(e.proto.body) for e in at.get("html"))
        shown += "\n".join(str(e.value) for e in at.caption)
        assert "SAE seeds (same model)" in shown and "seed0 ↔ seed1" in shown
        assert "seed0 ↔ gelu" in shown and "Towards Monosemanticity" in shown
