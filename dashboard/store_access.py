"""Cached access to the feature store: the only way a page gets data.

`open_store` shares one read-only `FeatureStore` per path across every session
(`st.cache_resource`); the accessors below copy records and frames out of it
(`st.cache_data`), so a page can never mutate what another user sees, and a repeated view
of a feature costs a dictionary lookup. Every accessor takes the store path as its first
argument so two stores (tests, a second run) never share cache entries.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from feature_store.records import Family, FeatureRecord
from feature_store.store import FeatureStore
from feature_store.study_store import StudyStore, is_study_store

DEFAULT_STORE = "runs/tiny/store"  # what `make demo` builds
BUILD_COMMANDS = ("make demo",
                  "python -m pipelines run --preset tiny --run-dir runs/tiny")


def store_path() -> str:
    """The store this server shows: `FEATURE_STORE`, else the tiny demo run's store. It may
    name a study, whose runs a page picks from (`url_state.require_store`).

    Read at call time, not import time, so tests can point it elsewhere per module."""
    return str(Path(os.environ.get("FEATURE_STORE", DEFAULT_STORE)))


@dataclass
class _Builds:
    """The build of each store path the caches hold, shared by every session."""
    seen: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@st.cache_resource(show_spinner=False)
def _builds() -> _Builds:
    return _Builds()


def drop_if_rebuilt(path: str) -> bool:
    """Empty every cache when the store at `path` is not the build they were filled from
    (the pipeline reran while the server was up): otherwise pages would go on showing the
    old build until a restart. True when a build the caches held was replaced (worth
    telling the reader; a store that merely appeared is not)."""
    builds = _builds()
    now = FeatureStore.build_stamp(path)
    with builds.lock:  # one session clears; the others then see the new build as seen
        before = builds.seen.setdefault(path, now)
        if before == now:
            return False
        builds.seen[path] = now
    st.cache_data.clear()
    st.cache_resource.clear()  # the store handle, the live model, and `_builds` itself
    _builds().seen[path] = now
    return before is not None


@st.cache_resource(show_spinner=False)
def open_store(path: str) -> FeatureStore:
    """One handle per store, shared by every session; treated as read-only."""
    return FeatureStore.open(path)


@st.cache_data(show_spinner=False)
def dictionaries(path: str) -> list[str]:
    """`neurons` first, then SAEs by size."""
    return list(open_store(path).dictionaries())


@st.cache_data(show_spinner=False)
def dictionary_info(path: str, dictionary: str) -> dict:
    return dict(open_store(path).dictionary_info(dictionary))


@st.cache_data(show_spinner=False)
def run_info(path: str) -> dict:
    return dict(open_store(path).run_info())


@st.cache_data(show_spinner=False)
def metrics(path: str) -> pd.DataFrame:
    return open_store(path).metrics()


@st.cache_data(show_spinner=False)
def density_histograms(path: str) -> pd.DataFrame:
    return open_store(path).density_histograms()


@st.cache_data(show_spinner=False, max_entries=16)
def features(path: str, dictionary: str) -> pd.DataFrame:
    """The per-feature summary table of one dictionary (one row per feature)."""
    return open_store(path).features(dictionary)


@st.cache_data(show_spinner=False, max_entries=512)
def feature(path: str, dictionary: str, index: int) -> FeatureRecord:
    return open_store(path).feature(dictionary, index)


@st.cache_data(show_spinner=False, max_entries=256)
def family(path: str, dictionary: str, index: int) -> Family | None:
    return open_store(path).family(dictionary, index)


@st.cache_data(show_spinner=False)
def umap(path: str) -> pd.DataFrame:
    return open_store(path).umap()


@st.cache_data(show_spinner=False)
def splits(path: str) -> pd.DataFrame:
    """Every split edge between adjacent sizes (with `family_id`)."""
    return open_store(path).splits()


# -- studies (several runs on the same tokens; feature_store/study_store.py) -------------------

def study_root(path: str) -> str | None:
    """`path` when it names a study (its folder or its store), else None."""
    return path if is_study_store(path) else None


@st.cache_resource(show_spinner=False)
def open_study(path: str) -> StudyStore:
    """One handle per study, shared by every session; treated as read-only."""
    return StudyStore.open(path)


@st.cache_data(show_spinner=False)
def study_variants(path: str) -> list[str]:
    return list(open_study(path).variants())


@st.cache_data(show_spinner=False)
def variant_store(path: str, variant: str) -> str:
    """The variant's own feature store, as a path every accessor above takes."""
    return str(open_study(path).store_path(variant))


@st.cache_data(show_spinner=False)
def study_summary(path: str) -> pd.DataFrame:
    return open_study(path).summary()


@st.cache_data(show_spinner=False, max_entries=64)
def study_matches(path: str, variant: str, other: str, dictionary: str) -> pd.DataFrame:
    """Every unit of `variant`'s `dictionary` with its best match in `other`."""
    return open_study(path).matches(variant, other, dictionary)
