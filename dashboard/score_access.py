"""Where the scores of the shown store live, and the one `ScoreBook` each server shares.

A single run's database is `runs/<name>/scores.sqlite`, beside the store
(`feature_store.scores.default_path`). A study's is one book for all its runs,
`<study>/scores.sqlite`, so one rater's blind queue can mix SoLU and GeLU units; each row
names its run. `FEATURE_SCORES` names another file in either case. Pages pass the store they
show (in a study, the chosen run's); `score_book` and `run_of` turn it into the right book and
run. Unlike the store, scores change while the server runs, so nothing read from them is
cached: only the `ScoreBook` handle, which opens a connection per operation and is safe to
share across sessions.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from dashboard import store_access
from feature_store.scores import ScoreBook, default_path


def study() -> str | None:
    """The study this server shows (`FEATURE_STORE` names one), else None."""
    return store_access.study_root(store_access.store_path())


def scores_path(store: str) -> str:
    """`FEATURE_SCORES`, else the study's book when the server shows a study, else
    `<store>/../scores.sqlite`; read at call time (tests set it)."""
    if os.environ.get("FEATURE_SCORES"):
        return os.environ["FEATURE_SCORES"]
    root = study()
    if root is not None:
        return str(default_path(store_access.open_study(root).path))  # <study>/scores.sqlite
    return str(default_path(store))


@st.cache_resource(show_spinner=False)
def _book(path: str) -> ScoreBook:
    return ScoreBook(path)


def score_book(store: str) -> ScoreBook:
    return _book(scores_path(store))


def run_of(store: str) -> str:
    """The study run whose store is `store`, "" outside a study (a single run's book stores
    run "")."""
    root = study()
    if root is None:
        return ""
    for run in store_access.study_variants(root):
        if store_access.variant_store(root, run) == store:
            return run
    return ""


def unit_means(store: str, dictionary: str) -> pd.Series:
    """Mean latest total per scored unit of `dictionary` in this store's run (empty if
    nothing was scored; a missing database is not created by looking)."""
    book = score_book(store)
    if not book.exists:
        return pd.Series(dtype=float)
    return book.unit_means(dictionary, run_of(store))
