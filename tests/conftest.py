"""Shared fixtures: a miniature run built once per test session (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import RunConfig, build_config

# Tiny shapes: the real pipeline end to end in a few seconds on 2 cores.
MINI = {
    "corpus": {"source": "embedded", "max_chars": 300_000},
    "tokenizer": {"vocab_size": 300},
    "tokens": {"n_ctx": 32, "val_fraction": 0.15},
    "model": {"d_model": 32, "d_mlp": 64, "n_heads": 2, "d_head": 16, "train_tokens": 40_000,
              "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "eval_every": 20,
              "eval_sequences": 32},
    "activations": {"max_tokens": 30_000, "shard_tokens": 8192},
    "sae": {"dict_sizes": [64, 128], "k": 4, "batch_size": 256, "buffer_tokens": 4096,
            "dead_window": 5000, "eval_sequences": 16, "lr": 3e-3},
    "interp": {"explain_tokens": 8192, "random_windows": 32},
}


def mini_config(**overrides: dict) -> RunConfig:
    raw = {k: dict(v) for k, v in MINI.items()}
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return build_config(raw, "tests/conftest.py")


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory) -> Path:
    """A complete miniature run folder; tests must not modify it (copy it first)."""
    from pipelines.runner import run_pipeline

    run_dir = tmp_path_factory.mktemp("mini") / "run"
    run_pipeline(mini_config(), run_dir, "tests/conftest.py", log=lambda line: None)
    return run_dir


def study_raw(**variants: dict) -> dict:
    """A mini study: the mini run's settings, SoLU and GeLU variants (or `variants`)."""
    raw = {k: dict(v) for k, v in MINI.items()}
    raw["stats"] = {"umap": False}  # the joint UMAP is the runs' business, not the study's
    raw["variants"] = variants or {"solu": {"model": {"act_fn": "solu_ln"}},
                                   "gelu": {"model": {"act_fn": "gelu"}}}
    return raw


@pytest.fixture(scope="session")
def mini_study(tmp_path_factory) -> tuple[Path, list[str]]:
    """A complete two-run mini study folder and its log; tests must not modify it."""
    from pipelines.study.runner import run_study
    from pipelines.study.config import build_study

    study_dir = tmp_path_factory.mktemp("study") / "s"
    lines: list[str] = []
    run_study(build_study(study_raw(), "tests/conftest.py"), study_dir, log=lines.append)
    return study_dir, lines


@pytest.fixture(scope="session")
def ray_session():
    """Ray started once for the whole test session (2 CPUs: 2 stats workers), shut down at
    the end. Imported here, not at the top: only the tests that ask for it load Ray."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
