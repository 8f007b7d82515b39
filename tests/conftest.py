"""Shared fixtures, each built once per test session: a miniature run and study (the real
pipeline, seconds not minutes), synthetic stores one per shape (tests/helpers/stores.py),
one dashboard server per store that a real-browser test opens, and one chromium with a
fresh browser context per test.

Session fixtures are shared: a test must not modify what one hands it. A test that scores
gets its own scores database (`tests.helpers.app.fresh_scores`); one that must change a
store copies it first.

Browser tests (those using `browser`, through `page`) run after all others: Playwright's
sync API keeps an asyncio event loop marked as running in this thread for as long as the
session's browser is open, and code that starts its own loop (`asyncio.run`) would fail
under it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import RunConfig, build_config
from tests.helpers import stores
from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, serving

VIEWPORT = (1600, 1200)  # a browser test's window unless marked @pytest.mark.viewport(w, h)

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
    """The mini run's config, with `overrides` ({section: {key: value}}) layered over it."""
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


def pytest_configure(config: pytest.Config) -> None:
    """Register the `viewport` marker (an unregistered marker is a typo pytest only warns of)."""
    config.addinivalue_line("markers", "viewport(width, height): the browser window of a "
                                       "test that uses `page` (default 1600 x 1200)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last, in their collected order (why: this module's docstring)."""
    in_browser = {id(item) for item in items if "browser" in getattr(item, "fixturenames", ())}
    items[:] = ([item for item in items if id(item) not in in_browser]
                + [item for item in items if id(item) in in_browser])


# -- synthetic stores, one per shape ---------------------------------------------------------

@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    """`stores.FEATURE`: neurons, sae_64, sae_128 (the feature page, search, browser tests)."""
    return stores.FEATURE.build(tmp_path_factory.mktemp("synthetic") / "store")


@pytest.fixture(scope="session")
def pages_store(tmp_path_factory) -> Path:
    """`stores.PAGES`: neurons, sae_64, sae_128, sae_256 (every page, headless)."""
    return stores.PAGES.build(tmp_path_factory.mktemp("pages") / "store")


@pytest.fixture(scope="session")
def scoring_store(tmp_path_factory) -> Path:
    """`stores.SCORING`: neurons, sae_96, sae_160, names that occur nowhere else."""
    return stores.SCORING.build(tmp_path_factory.mktemp("scoring") / "store")


@pytest.fixture(scope="session")
def interp_store(tmp_path_factory) -> Path:
    """`stores.INTERP`: neurons, sae_32, sae_64 with synthetic explanations and scores."""
    return stores.INTERP.build(tmp_path_factory.mktemp("interp") / "store")


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory) -> Path:
    """A study folder of two synthetic runs (`stores.STUDY_RUNS`)."""
    return stores.build_study(tmp_path_factory.mktemp("synthetic_study") / "study")


# -- one dashboard server per store a browser test opens --------------------------------------

@pytest.fixture(scope="session")
def synthetic_server(synthetic_store, tmp_path_factory) -> Iterator[str]:
    """`python -m dashboard.serve` on the synthetic store: its base URL."""
    with serving(synthetic_store, tmp_path_factory.mktemp("synthetic_server")) as base:
        yield base


@pytest.fixture(scope="session")
def mini_server(mini_run, tmp_path_factory) -> Iterator[str]:
    """The mini run's store: the prompt explorer needs its model and SAEs."""
    with serving(mini_run / "store", tmp_path_factory.mktemp("mini_server")) as base:
        yield base


@pytest.fixture(scope="session")
def study_server(mini_study, tmp_path_factory) -> Iterator[str]:
    """The mini study (two pipeline-built runs)."""
    with serving(mini_study[0], tmp_path_factory.mktemp("study_server")) as base:
        yield base


@pytest.fixture(scope="session")
def interp_server(interp_store, tmp_path_factory) -> Iterator[str]:
    """The synthetic store with explanations."""
    with serving(interp_store, tmp_path_factory.mktemp("interp_server")) as base:
        yield base


# -- one chromium, a fresh context per test ---------------------------------------------------

@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, launched once: a context per test keeps tests apart (cookies,
    storage, history) for the cost of a tab, not of a browser start."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, request):
    """A new page in a new browser context, closed after the test."""
    marker = request.node.get_closest_marker("viewport")
    width, height = marker.args if marker else VIEWPORT
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield context.new_page()
    finally:
        context.close()
