"""The study machinery on planted truth (issue 26): two "models" that hold the same sparse
features in different neuron bases (`activations.source = "planted"`, two basis seeds), run
through the production stages (activations, sae, stats, universality). Features must match
across the two and neurons must not; the stats stage's splitting rule must find the planted
families. Nothing here re-implements a stage: the figures are read from the study's store and
each run's `splits.parquet`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from feature_store.sae_files import decoder_directions, load_sae
from feature_store.study_store import StudyStore
from pipelines.activations.planted import (PlantedSource, read_truth, rotation,
                                           split_recovery)
from pipelines.activations.shards import read_shard
from pipelines.config import ActivationsConfig
from pipelines.errors import ConfigError
from pipelines.run_folder import Manifest
from pipelines.sae.planted import PlantedData, PlantedSpec
from pipelines.study.config import build_study
from pipelines.study.runner import run_study
from tests.conftest import study_raw

SMALL, LARGE = 80, 128  # 64 single features + 16 families: 80 holds one feature per family
PLANTED = {"source": "planted", "planted_features": 96, "planted_active": 3.0,
           "planted_families": 16}


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory) -> Path:
    """Variants a and b: one model, planted activations in two bases. The SAEs are trained
    long (20 epochs of 30k tokens, k 3): splitting needs converged dictionaries."""
    raw = study_raw(a={"activations": {**PLANTED, "planted_basis_seed": 0}},
                    b={"activations": {**PLANTED, "planted_basis_seed": 1}})
    raw["sae"].update({"dict_sizes": [SMALL, LARGE], "k": 3, "epochs": 20, "batch_size": 64})
    study_dir = tmp_path_factory.mktemp("planted") / "s"
    run_study(build_study(raw, "tests/test_planted_study.py"), study_dir, log=lambda line: None)
    return study_dir


def test_features_match_across_the_two_bases_and_neurons_do_not(planted_study):
    summary = StudyStore.open(planted_study / "store").summary()
    assert len(summary) == 6  # (a→b, b→a) × (neurons, two SAEs)
    for _, row in summary.iterrows():
        if row["dictionary"] == "neurons":
            assert row["median_best_corr"] <= 0.5, row.to_dict()
        else:
            assert row["median_best_corr"] >= 0.9, row.to_dict()
    # one model, but not the same activations: not the SAE-seed control, and the two bases'
    # decoder directions are not comparable
    assert not summary["same_model"].any()
    assert not summary["directions_comparable"].any()


@pytest.mark.parametrize("variant", ["a", "b"])
def test_the_splitting_rule_finds_the_planted_families(planted_study, variant):
    run = planted_study / "runs" / variant
    truth = read_truth(run / "activations")
    dirs = {n: decoder_directions(*load_sae(run / "sae" / str(n))) for n in (SMALL, LARGE)}
    edges = pd.read_parquet(run / "store" / "splits.parquet")
    edges = edges[(edges["dictionary_a"] == f"sae_{SMALL}")
                  & (edges["dictionary_b"] == f"sae_{LARGE}")]
    got = split_recovery(truth, dirs[SMALL], dirs[LARGE],
                         list(zip(edges["index_a"], edges["index_b"])))
    assert got.planted == 16
    assert got.displayed >= 10, got  # the sae stage must show most families split
    assert got.precision >= 0.9, got
    assert got.recall >= 0.9, got


def test_the_two_bases_hold_the_same_coefficients_on_the_same_tokens(planted_study):
    a, b = (planted_study / "runs" / v / "activations" for v in "ab")
    first = sorted(a.glob("val-*.parquet"))[0]
    cols = ("acts", "token_id")
    rows_a, rows_b = read_shard(first, cols), read_shard(b / first.name, cols)
    assert np.array_equal(rows_a["token_id"], rows_b["token_id"])
    x_a = torch.from_numpy(np.asarray(rows_a["acts"], dtype=np.float32))
    x_b = torch.from_numpy(np.asarray(rows_b["acts"], dtype=np.float32))
    d = x_a.shape[1]
    back = x_a @ rotation(d, 0).T @ rotation(d, 1)  # undo basis 0, apply basis 1
    assert torch.allclose(back, x_b, atol=2e-2 * float(x_b.abs().max()))
    entry = Manifest(planted_study / "runs" / "a").get("activations")
    assert "PLANTED" in entry.summary and entry.results["source"] == "planted"
    truth = read_truth(a)
    assert truth["directions"].shape == (96, d) and int(truth["parent"].max()) == 15


def test_a_models_activations_have_no_truth(mini_run):
    assert read_truth(mini_run / "activations") is None


def test_siblings_never_fire_together_and_lean_on_their_parent():
    spec = PlantedSpec(d=32, n_features=40, mean_active=4.0, families=5, child_cosine=0.75)
    D, P, parent = spec.directions(), spec.parent_directions(), spec.parent_of()
    kids = parent >= 0
    assert torch.allclose((D[kids] * P[parent[kids]]).sum(1), torch.full((10,), 0.75), atol=1e-5)
    assert torch.allclose(D.norm(dim=1), torch.ones(40), atol=1e-5)
    data = PlantedData(spec, batch_size=4096)
    codes = torch.cat([data.codes("train", i) for i in range(4)])
    siblings = codes[:, :10].view(-1, 5, 2).gt(0)
    assert not (siblings[..., 0] & siblings[..., 1]).any()  # one sibling at a time
    assert siblings[..., 0].any(0).all() and siblings[..., 1].any(0).all()  # each fires
    assert abs(float(codes.gt(0).sum(1).float().mean()) - 4.0) < 0.2  # mean_active holds
    x = data.batch("train", 0)  # the batch is the codes over the directions, plus noise
    noise = x - data.codes("train", 0) @ D
    assert float(noise.std()) == pytest.approx(spec.noise_std(), rel=0.05)


def test_without_families_the_stream_is_unchanged():
    """families = 0 must leave the stream the SAE recipe benchmarks were measured on."""
    spec = PlantedSpec(d=16, n_features=24, mean_active=3.0)
    data = PlantedData(spec, batch_size=256)
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + 1 * 7_919 + 0 * 104_729 + 13)
    active = torch.rand(256, 24, generator=g) < data.p  # train split seed 1: the draw order before families
    assert torch.equal(data.codes("train", 0).gt(0), active)


def test_the_planted_config_is_checked():
    with pytest.raises(ConfigError, match="activations.source"):
        ActivationsConfig(source="model2")
    with pytest.raises(ConfigError, match="planted_families"):
        ActivationsConfig(source="planted", planted_features=10, planted_families=6)
    source = PlantedSource.from_config(ActivationsConfig(source="planted", planted_features=20,
                                                         planted_families=3), 16)
    assert source.spec.families == 3 and source.spec.d == 16
    one = source.rows("val", 2, 100, 5000)
    assert np.array_equal(one, source.rows("val", 2, 100, 5000))  # a pure function
    assert not np.array_equal(one, source.rows("val", 1, 100, 5000))  # of the shard


def test_the_dashboard_says_the_activations_are_planted(planted_study, monkeypatch):
    from dashboard import links
    from dashboard.universality_views import PLANTED
    from tests.helpers.app import open_page

    monkeypatch.setenv("FEATURE_STORE", str(planted_study))
    at = open_page(links.OVERVIEW, run="a")
    assert any("activations are **planted**" in w.value for w in at.warning)
    page = "\n".join(str(h.value) for h in at.get("html")) if at.get("html") else ""
    assert PLANTED in page  # the comparison names the pair planted, not two models
