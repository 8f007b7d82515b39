"""Where the scores of the shown store live, and the one `ScoreBook` each server shares.

The database is `runs/<name>/scores.sqlite`, beside the store (`feature_store.scores.
default_path`), unless `FEATURE_SCORES` names another file. Unlike the store, scores change
while the server runs, so nothing read from them is cached: only the `ScoreBook` handle,
which opens a connection per operation and is safe to share across sessions.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from feature_store.scores import ScoreBook, default_path


def scores_path(store: str) -> str:
    """`FEATURE_SCORES`, else `<store>/../scores.sqlite`; read at call time (tests set it)."""
    return os.environ.get("FEATURE_SCORES") or str(default_path(store))


@st.cache_resource(show_spinner=False)
def _book(path: str) -> ScoreBook:
    return ScoreBook(path)


def score_book(store: str) -> ScoreBook:
    return _book(scores_path(store))


def unit_means(store: str, dictionary: str) -> pd.Series:
    """Mean latest total per scored unit of `dictionary` (empty if nothing was scored; a
    missing database is not created by looking)."""
    book = score_book(store)
    if not book.exists:
        return pd.Series(dtype=float)
    return book.unit_means(dictionary)
