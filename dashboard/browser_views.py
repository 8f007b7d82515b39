"""The feature browser: one dictionary's features as a sortable, filterable table.

Filters live in the URL (`?dictionary=&q=&class=`) so a filtered view can be shared.
Each row links to its feature page (the `open` column), and selecting a row goes there too.
The table is rendered by Streamlit's data grid, which draws text on a canvas: token text
in cells is never HTML.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import links, score_access, store_access, url_state
from feature_store.records import DENSITY_CLASSES


def pick_dictionary(path: str) -> str:
    names = store_access.dictionaries(path)
    current = url_state.chosen_dictionary(path)
    chosen = st.segmented_control("Dictionary", names, default=current, key="dictionary_pick")
    chosen = chosen or current
    url_state.keep_in_url(dictionary=chosen)
    return chosen


def filters() -> tuple[str, list[str]]:
    """Token search and density classes, read from and written to the URL."""
    left, right = st.columns([2, 3])
    query = left.text_input("Search top tokens and top logits", value=st.query_params.get("q", ""),
                            placeholder="e.g. def, ·the, ↵", key="q_input")
    default_classes = [c for c in st.query_params.get("class", "").split(",") if c in
                       DENSITY_CLASSES] or ["ultralow", "normal", "dense"]
    classes = right.multiselect("Density class", DENSITY_CLASSES, default=default_classes,
                                key="class_input")
    for key, value in (("q", query), ("class", ",".join(classes))):
        if value:
            st.query_params[key] = value
        elif key in st.query_params:
            del st.query_params[key]
    return query, classes


def filtered(table: pd.DataFrame, query: str, classes: list[str]) -> pd.DataFrame:
    """Rows whose density class is chosen and whose top tokens or logits contain `query`
    (case-insensitive, literal: `.` or `(` in a token is not a pattern)."""
    keep = table["density_class"].isin(classes)
    if query:
        needle = query.casefold()
        text = (table["top_tokens"].fillna("").astype(str) + " \u2016 "
                + table["top_logits"].fillna("").astype(str)).str.casefold()
        keep &= text.str.contains(needle, regex=False)
    return table[keep]


def feature_table(path: str, dictionary: str, query: str, classes: list[str]) -> None:
    table = store_access.features(path, dictionary)
    rows = filtered(table, query, classes)
    st.caption(f"{len(rows):,} of {len(table):,} features · click a column header to sort, "
               "select a row (left edge) or click *open* to view a feature")
    view = pd.DataFrame({
        "open": [links.feature_url(dictionary, i) for i in rows["index"]],
        "feature": rows["index"].to_numpy(),
        "log10 density": np.log10(rows["density"].to_numpy(dtype=float).clip(1e-12)),
        "density": rows["density"].to_numpy(),
        "class": rows["density_class"].to_numpy(),
        "max act": rows["max_act"].to_numpy(),
        "mean act": rows["mean_act"].to_numpy(),
        "top tokens": rows["top_tokens"].to_numpy(),
        "top logits": rows["top_logits"].to_numpy(),
    })
    means = score_access.unit_means(path, dictionary)
    if len(means):  # only once something in this dictionary was scored
        view.insert(2, "score", rows["index"].map(means).to_numpy())
    event = st.dataframe(
        view, hide_index=True, height=620, on_select="rerun", selection_mode="single-row",
        key=f"table_{dictionary}", placeholder="–",  # not "None": an unscored unit
        column_config={
            "open": st.column_config.LinkColumn("", display_text="open", width=50),
            "feature": st.column_config.NumberColumn("feature", format="%d", width=70),
            "log10 density": st.column_config.ProgressColumn(
                "log10 density", min_value=-7.0, max_value=0.0, format="%.2f", width=110),
            "density": st.column_config.NumberColumn("density", format="%.2e", width=80),
            "class": st.column_config.TextColumn("class", width=70),
            "max act": st.column_config.NumberColumn("max act", format="%.2f", width=70),
            "mean act": st.column_config.NumberColumn("mean act", format="%.2f", width=70),
            "top tokens": st.column_config.TextColumn("top tokens", width="large"),
            "top logits": st.column_config.TextColumn("top logits", width="large"),
            "score": st.column_config.NumberColumn(
                "score", format="%.1f", width=60,
                help="Rubric total: mean over raters of each rater's latest score"),
        })
    selected = getattr(getattr(event, "selection", None), "rows", None)
    if selected:
        links.open_feature(dictionary, int(view["feature"].iloc[selected[0]]))
