import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from feature_store import FeatureStore
from feature_store.transformer_files import HOOK_POST, load_transformer
from pipelines.model.stage import lr_at, unigram_loss
from pipelines.config import ModelConfig
from pipelines.run_folder import Manifest
from pipelines.runner import STAGE_NAMES
from pipelines.data.tokens import read_sequences


def test_model_learned_and_reloads_exactly(mini_run):
    metrics = json.loads((mini_run / "model" / "metrics.json").read_text())
    assert np.isfinite(metrics["val_loss"])
    assert metrics["val_loss"] < metrics["unigram_val_loss"]  # learned more than token frequencies
    curve = pq.read_table(mini_run / "model" / "loss_curve.parquet").to_pandas()
    assert curve["train_loss"].iloc[-5:].mean() < curve["train_loss"].iloc[:5].mean()
    assert curve["val_loss"].notna().sum() >= 2

    model = load_transformer(mini_run / "model")
    again = load_transformer(mini_run / "model")
    val = torch.from_numpy(read_sequences(mini_run / "tokens" / "val.parquet")[:4].astype(np.int64))
    with torch.no_grad():
        assert torch.equal(model(val), again(val))
        loss = float(model(val, return_type="loss"))
        _, cache = model.run_with_cache(val, names_filter=lambda n: n == HOOK_POST)
    assert cache[HOOK_POST].shape == (4, 32, 64)
    assert abs(loss - metrics["val_loss"]) < 1.0


def test_gelu_variant_runs(mini_study):
    """A GeLU model through every stage of the pipeline: the mini study's `gelu` run (the
    session builds it anyway; a run of its own cost a minute of the suite)."""
    run = mini_study[0] / "runs" / "gelu"
    spec = json.loads((run / "model" / "config.json").read_text())
    assert spec["act_fn"] == "gelu"
    assert set(Manifest(run).entries) >= set(STAGE_NAMES)  # every stage completed
    assert load_transformer(run / "model").cfg.act_fn == "gelu"
    assert FeatureStore.open(run / "store").dictionaries()[:1] == ["neurons"]


def test_unigram_baseline_matches_brute_force():
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 7, (50, 9)), rng.integers(0, 7, (20, 9))
    counts = np.array([(train[:, 1:] == t).sum() + 1 for t in range(10)], float)
    expected = -np.mean([np.log(counts[t] / counts.sum()) for t in val[:, 1:].ravel()])
    assert unigram_loss(train, val, 10) == pytest.approx(expected)


def test_schedule_warms_up_then_decays_to_floor():
    cfg = ModelConfig(lr=1.0, warmup_steps=10, min_lr_fraction=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)


def test_mlp_activations_equal_the_cached_hook_and_leave_no_hook(mini_run):
    from feature_store.transformer_files import mlp_activations

    model = load_transformer(mini_run / "model")
    val = torch.from_numpy(read_sequences(mini_run / "tokens" / "val.parquet")[:3].astype(np.int64))
    with torch.no_grad():
        _, cache = model.run_with_cache(val, names_filter=lambda n: n == HOOK_POST)
        assert torch.equal(mlp_activations(model, val), cache[HOOK_POST])
        before = model(val)
        mlp_activations(model, val)
        assert torch.equal(model(val), before)  # the raising hook is gone
