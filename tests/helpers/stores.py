"""The synthetic stores the test session builds, one per shape (tests/conftest.py's
session fixtures build each once, in its own folder, the first time a test asks).

A shape is part of what its tests check (the dictionaries a page lists, which unit is dead,
how many nearest units there are), so tests that need other dictionaries get another shape
rather than a bigger shared one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from feature_store.study_store import write_study_store
from feature_store.synthetic import build_synthetic_store, write_synthetic_explanations


@dataclass(frozen=True)
class Shape:
    """`build_synthetic_store`'s arguments, plus whether synthetic explanations are added."""

    n_features: tuple[int, ...]
    d_mlp: int
    n_tokens: int
    d_vocab: int = 4096
    seed: int = 0
    explanations: bool = False

    def build(self, path: Path) -> Path:
        build_synthetic_store(path, n_features=self.n_features, d_mlp=self.d_mlp,
                              n_tokens=self.n_tokens, seed=self.seed, d_vocab=self.d_vocab)
        if self.explanations:
            write_synthetic_explanations(path)
        return path


# Two SAEs: the feature page (its nearest-unit lists: sae_64 and sae_128), the browser
# search, and every real-browser test on a synthetic store.
FEATURE = Shape((64, 128), d_mlp=64, n_tokens=200_000)
# Three SAEs: every page headless, families across three sizes (test_dashboard_pages.py).
PAGES = Shape((64, 128, 256), d_mlp=64, n_tokens=200_000)
# Dictionary names that occur nowhere else (sae_96, sae_160): blindness is "never sent".
SCORING = Shape((96, 160), d_mlp=48, n_tokens=100_000)
# Explanations and their scores on every unit (test_interp_pages.py, test_interp_browser.py).
INTERP = Shape((32, 64), d_mlp=32, n_tokens=50_000, d_vocab=128, explanations=True)

# A study of two synthetic runs (test_study_scoring.py): run names that occur nowhere else
# (no syllable of the synthetic vocab, no word of the pages' HTML or CSS), different
# dictionaries (sae_160 only in the first) and different numbers (other seeds).
STUDY_RUNS = {"wjbx": SCORING, "yfcw": Shape((96,), d_mlp=48, n_tokens=100_000)}


def build_study(root: Path, runs: dict[str, Shape] = STUDY_RUNS) -> Path:
    """A study folder as `pipelines study` lays it out: runs/<name>/store and store/, each
    run's store built with its own seed (1, 2, ...)."""
    for seed, (run, shape) in enumerate(runs.items(), start=1):
        replace(shape, seed=seed).build(root / "runs" / run / "store")
    (root / "store").mkdir(parents=True)
    write_study_store(root / "store", [{"name": r, "store": f"../runs/{r}/store"} for r in runs],
                      records=[], n_tokens=0)
    return root
