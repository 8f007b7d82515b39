"""Feature splitting: a feature's family across sizes, and the joint UMAP.

Both charts are clickable: a click selects a point, Streamlit reruns with the selection, and
the page moves to that feature (`charts.picked_feature`). The family's members are also
listed as links, each with its top activating tokens and density, so a split can be read
(what each child keeps of its parent) without opening every member.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, links, store_access, token_html
from feature_store.records import Family, FeatureRecord


def default_feature(path: str) -> tuple[str, int] | None:
    """With no feature in the URL, start at the smaller end of the strongest split edge:
    a page that opens on a family shows what the page is for."""
    edges = store_access.splits(path)
    if edges.empty:
        return None
    best = edges.sort_values("masked_cosine", ascending=False).iloc[0]
    return str(best["dictionary_a"]), int(best["index_a"])


def family_graph(path: str, record: FeatureRecord) -> Family | None:
    family = store_access.family(path, record.dictionary, record.index)
    if family is None:
        st.info(f"{record.dictionary} #{record.index} belongs to no family: no feature of an "
                "adjacent size shares its activations (masked cosine above the threshold), or "
                "it is ultralow density and was left out.")
        return None
    order = store_access.dictionaries(path)
    summaries = {d: store_access.features(path, d).set_index("index")
                 for d in {m[0] for m in family.members}}
    top = {(d, i): str(summaries[d].at[i, "top_tokens"]) for d, i in family.members}
    event = st.plotly_chart(
        charts.family_graph_figure(family, order, (record.dictionary, record.index), top),
        on_select="rerun", selection_mode="points", key="family_graph",
        config={"displayModeBar": False})
    _follow(event, record)
    by_dictionary = charts.family_layer_order(  # listed in the graph's order
        family, [d for d in order if any(m[0] == d for m in family.members)])
    cols = st.columns(max(1, len(by_dictionary)))
    for col, (dictionary, indices) in zip(cols, by_dictionary.items()):
        with col:
            st.markdown(f"**{dictionary}**")
            for index in indices:
                row = summaries[dictionary].loc[index]
                links.feature_link(dictionary, index, f"#{index}")
                st.html(token_html.inline_tokens_html(top[(dictionary, index)].split()) +
                        f'<div class="legend">density {row["density"]:.1e} · '
                        f'max act {row["max_act"]:.2f}</div>')
    return family


def joint_umap(path: str, record: FeatureRecord, family: Family | None) -> None:
    points: pd.DataFrame = store_access.umap(path)
    if points.empty:
        st.info("The store holds no UMAP.")
        return
    highlight = list(family.members) if family else [(record.dictionary, record.index)]
    event = st.plotly_chart(
        charts.umap_figure(points, store_access.dictionaries(path), highlight),
        on_select="rerun", selection_mode="points", key="umap")
    _follow(event, record)


def _follow(event: object, record: FeatureRecord) -> None:
    """A clicked feature other than this one opens its feature page."""
    picked = charts.picked_feature(event)
    if picked and picked != (record.dictionary, record.index):
        links.open_feature(*picked)
