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
    train = read_sequences(mini_run / "tokens" / "train.parquet")
    assert metrics["train_passes"] == pytest.approx(metrics["tokens_trained"] / train.size, abs=0.01)


def test_overfitting_is_said_only_when_the_curve_ends_above_its_best():
    from pipelines.model.stage import overfit_note

    tokens = [1_000_000, 2_000_000, 3_000_000, 4_000_000]
    assert overfit_note([5.0, 4.2, 4.1, 4.1], tokens, 3.0) == ""  # still at its best
    assert overfit_note([5.0, 4.2, 4.1, 4.12], tokens, 3.0) == ""  # within 1%: noise
    note = overfit_note([5.0, 4.0, float("nan"), 4.3], tokens, 67.0)
    assert "rose from 4.000 at 2.0M tokens to 4.300" in note and "67.0 passes" in note
    assert overfit_note([float("nan"), 4.0], tokens[:2], 1.0) == ""  # one evaluation: no curve


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


def test_replayed_model_step_trains_as_the_eager_one(mini_run, tmp_path, monkeypatch):
    """`model.graph`: the stage's step recorded (here by the tests' stand-in for CUDA's
    capture, which really runs the two warm-up steps that recording must undo) and replayed
    gives the eager stage's losses and weights. On a GPU, benchmarks/gpu_check.py runs it."""
    import dataclasses
    import shutil

    from pipelines.model import stage as model_stage
    from tests.conftest import mini_config
    from tests.stand_in_capture import StandInCapture

    for part in ("tokenizer", "tokens"):
        shutil.copytree(mini_run / part, tmp_path / part)
    cfg = dataclasses.replace(mini_config().model, train_tokens=12_000, eval_every=5)
    outs = {}
    for mode in ("eager", "replayed"):
        out = tmp_path / mode
        out.mkdir()
        if mode == "replayed":
            capture = StandInCapture()
            monkeypatch.setattr(model_stage, "use_model_graph", lambda *a: True)
            monkeypatch.setattr("pipelines.graph_capture.CudaCapture", lambda: capture)
        _, metrics = model_stage.run(cfg, tmp_path, out)
        outs[mode] = (pq.read_table(out / "loss_curve.parquet").to_pandas(),
                      load_transformer(out).state_dict(), metrics)
    assert capture.recorded == 1 and capture.warmed == 2
    assert outs["replayed"][2]["graph"] == "on" and outs["eager"][2]["graph"] == "off"
    (eager_curve, eager_w, _), (curve, weights, _) = outs["eager"], outs["replayed"]
    np.testing.assert_allclose(curve["train_loss"], eager_curve["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(curve["val_loss"], eager_curve["val_loss"], rtol=1e-5)
    for name, value in eager_w.items():
        if name.endswith("attn.k.bias"):  # its exact gradient is 0: Adam's steps are rounding noise
            continue                     # (the optimizers' forms round differently; as in test_distributed)
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=name)
