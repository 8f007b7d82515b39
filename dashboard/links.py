"""Where each page lives and how to link to a feature, so every view is a shareable URL.

Page files live in `app_pages/`, not `pages/`: a `pages/` folder beside the entry script
switches Streamlit 1.67's server into the old directory-based multipage mode, which runs the
page file alone and never calls `st.navigation` in `app.py` (no wide layout, no stylesheet,
file names in the sidebar). They are registered in `app.py` under these url paths; links carry the view in query
parameters (strings, as `st.query_params` holds them). Two kinds of link: `st.page_link`
navigates inside the running session (fast, keeps caches warm in the browser), and plain
URLs (`feature_url`) serve tables and charts that can only hold an href.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

import streamlit as st

from feature_store.records import is_neurons

OVERVIEW = "app_pages/overview.py"
BROWSER = "app_pages/browser.py"
FEATURE = "app_pages/feature.py"
COMPARE = "app_pages/compare.py"
SPLITTING = "app_pages/splitting.py"
SCORE = "app_pages/score.py"  # `score?dictionary=&feature=` scores that unit, not blind
RESULTS = "app_pages/results.py"
PROMPT = "app_pages/prompt.py"
UNIVERSALITY = "app_pages/universality.py"  # a study's runs matched unit by unit
URL_PATHS = {OVERVIEW: "overview", BROWSER: "browser", FEATURE: "feature",
             COMPARE: "compare", SPLITTING: "splitting", SCORE: "score", RESULTS: "results",
             PROMPT: "prompt", UNIVERSALITY: "universality"}


def splitting_label(dictionary: str) -> str:
    """The label of a link to the splitting page: for a neuron it says up front that neurons
    have no family (the page explains why), so the link does not promise a graph."""
    return ("Splitting (neurons are not in families)" if is_neurons(dictionary)
            else "Splitting")


def feature_params(dictionary: str, index: int,
                   view: Mapping[str, str] | None = None) -> dict[str, str]:
    """The query parameters naming a feature, plus `view` (how the page shows it, e.g.
    `shade=ablation`), so a link to another feature keeps the reader's view. In a study the
    current run goes along (`view` may name another: `{"run": "gelu"}`)."""
    run = st.query_params.get("run")
    return {"dictionary": dictionary, "feature": str(int(index)),
            **({"run": run} if run else {}), **(view or {})}


def feature_url(dictionary: str, index: int, page: str = FEATURE,
                view: Mapping[str, str] | None = None) -> str:
    """A relative URL (no leading slash) so it also works behind `server.baseUrlPath`."""
    return f"{URL_PATHS.get(page, page)}?{urlencode(feature_params(dictionary, index, view))}"


def feature_link(dictionary: str, index: int, label: str | None = None,
                 page: str = FEATURE, help: str | None = None,
                 view: Mapping[str, str] | None = None) -> None:
    """An in-app link to a feature's view on `page`."""
    st.page_link(page, label=label or f"{dictionary} #{index}", help=help,
                 query_params=feature_params(dictionary, index, view))


def open_feature(dictionary: str, index: int, page: str = FEATURE) -> None:
    """Navigate now (after a table row or chart point was picked)."""
    st.switch_page(page, query_params=feature_params(dictionary, index))
