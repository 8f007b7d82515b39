"""Read the view from the URL, check it against the store, and stop with a clear page if not.

Bad input never becomes a traceback or, worse, another feature shown in its place: a
missing store, an unknown dictionary or an out-of-range index stops the page with one
`st.error` naming the problem and the command that builds a store. What was asked for and
found is written back to the URL, so the address bar is always a shareable link.
"""

from __future__ import annotations

from typing import NoReturn

import streamlit as st

from dashboard import store_access
from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import FeatureRecord, Unit, is_neurons


def stop_with(problem: str, *, build_hint: bool = True) -> NoReturn:
    """The one way a page gives up: say what is wrong, how to fix it, and stop."""
    st.error(problem)
    if build_hint:
        st.markdown("Build a store with one of these, then reload (or set `FEATURE_STORE` "
                    "to an existing store):")
        st.code("\n".join(store_access.BUILD_COMMANDS), language="bash")
    st.stop()
    raise AssertionError("unreachable")  # st.stop raises; this keeps type checkers honest


RUN_KEY = "run"  # the URL parameter naming a study's run (variant)
_SESSION_RUN = "_study_run"  # the run last shown in this session: nav links carry no parameters


def require_store(run_picker: bool = True) -> str:
    """The store path, after checking it opens; otherwise a page saying how to build one.

    When `FEATURE_STORE` names a study, this is the chosen run's store (`?run=`, else the
    run last shown in this session, else the first), with a run picker unless the page must
    not show one (the blind Score page)."""
    path = store_access.store_path()
    study = store_access.study_root(path)
    if study is not None:
        path = chosen_run_store(study, run_picker)
    if store_access.drop_if_rebuilt(path):
        st.toast("The feature store was rebuilt; showing the new build.")
    try:
        store_access.open_store(path)
        store_access.dictionaries(path)
    except (StoreError, OSError) as err:
        stop_with(f"No usable feature store at `{path}`: {err}")
    return path


def chosen_run(study: str) -> str:
    """The study's run this view shows: `?run=` if the study has it (unknown stops: never
    another run in its place), else this session's last, else the first."""
    try:
        variants = store_access.study_variants(study)
    except (StoreError, OSError) as err:
        stop_with(f"No usable study at `{study}`: {err}")
    asked = st.query_params.get(RUN_KEY)
    if asked is not None and asked not in variants:
        stop_with(f"Unknown run {asked!r} in the study at `{study}`; its runs are "
                  f"{', '.join(variants)}.", build_hint=False)
    run = asked or st.session_state.get(_SESSION_RUN)
    return run if run in variants else variants[0]


def chosen_run_store(study: str, picker: bool = True) -> str:
    """The chosen run's store path; the run is kept in the URL and offered in a picker."""
    run = chosen_run(study)
    variants = store_access.study_variants(study)
    if picker and len(variants) > 1:
        st.session_state[_PICKER] = run  # the URL decides; the picker follows it
        st.sidebar.radio("Run (variant of the study)", variants, key=_PICKER,
                         on_change=_run_picked,
                         help="Each run is one model and its dictionaries, trained on the "
                              "same tokens as the others.")
    st.session_state[_SESSION_RUN] = run
    if picker:
        st.query_params[RUN_KEY] = run
    try:
        return store_access.variant_store(study, run)
    except (StoreError, OSError) as err:
        stop_with(f"The study at `{study}` has no usable store for run {run!r}: {err}")


_PICKER = "study_run_picker"


def _run_picked() -> None:
    """Runs before the script: the URL (which `chosen_run` reads first) takes the pick."""
    st.query_params[RUN_KEY] = st.session_state[_PICKER]
    st.session_state[_SESSION_RUN] = st.session_state[_PICKER]


def current_run() -> str | None:
    """The study run this session shows, or None outside a study (for links)."""
    return st.session_state.get(_SESSION_RUN) if store_access.study_root(
        store_access.store_path()) else None


def first_sae(names: list[str]) -> str:
    """The smallest SAE of `names` (in dictionary order): the first that is not a neuron
    dictionary; the first name when there is no SAE."""
    return next((n for n in names if not is_neurons(n)), names[0])


def default_dictionary(path: str) -> str:
    """The dictionary a page opens on when the URL names none: the store's smallest SAE."""
    return first_sae(store_access.dictionaries(path))


def chosen_dictionary(path: str, default: str | None = None) -> str:
    """`?dictionary=` if the store has it; absent means the default; unknown stops."""
    names = store_access.dictionaries(path)
    name = st.query_params.get("dictionary") or default or default_dictionary(path)
    if name not in names:
        stop_with(f"Unknown dictionary {name!r} in this store; it has {', '.join(names)}.",
                  build_hint=False)
    return name


def chosen_index(path: str, dictionary: str, default: int = 0) -> int:
    """`?feature=` as an in-range index; anything else stops with the valid range."""
    n = int(store_access.dictionary_info(path, dictionary)["n_features"])
    raw = st.query_params.get("feature")
    if raw is None or raw == "":
        return default
    try:
        index = int(raw)
    except ValueError:
        stop_with(f"Feature {raw!r} is not a number; {dictionary} has features 0 to {n - 1}.",
                  build_hint=False)
    if not 0 <= index < n:
        stop_with(f"No feature {index} in {dictionary}: it has features 0 to {n - 1}.",
                  build_hint=False)
    return index


def chosen_feature(path: str, default: Unit | None = None) -> FeatureRecord:
    """The feature the URL names (or `default`), loaded; the URL is rewritten to name it."""
    dictionary = chosen_dictionary(path, default.dictionary if default else None)
    fallback = default.index if default and default.dictionary == dictionary else 0
    index = chosen_index(path, dictionary, fallback)
    try:
        record = store_access.feature(path, dictionary, index)
    except FeatureNotFound as err:
        stop_with(f"No feature {index} in {dictionary}: {err}", build_hint=False)
    except StoreError as err:
        stop_with(f"The store at `{path}` could not give feature {dictionary} #{index}: {err}")
    keep_in_url(dictionary=dictionary, feature=str(index))
    return record


def keep_in_url(**params: str) -> None:
    """Write the view into the URL, leaving other parameters (e.g. the shading mode) alone.

    Written even when the server already holds the same values: after an `st.page_link` to
    the page that is already open (previous/next, a neighbour), Streamlit 1.67 runs the page
    with the new parameters but leaves the browser's address bar on the old ones; only a
    sent update moves it (and gives the back button its entry)."""
    for key, value in params.items():
        st.query_params[key] = value
