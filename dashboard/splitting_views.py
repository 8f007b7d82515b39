"""Feature splitting: a feature's family across sizes, its edges' numbers, and the joint UMAP.

Both charts are clickable: a click selects a point, Streamlit reruns with the selection, and
the page moves to that feature's page (`charts.picked_feature`). Every edge's numbers are
also printed in a table under the graph (a reader judging whether a split is real should
not have to hover over each edge), and the family's members are listed as links, each with
its top activating tokens and density, so a split can be read (what each child keeps of its
parent) without opening every member.
"""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from dashboard import charts, links, store_access, token_html
from dashboard.colours import UNLISTED_DICTIONARY
from dashboard.feature_views import finite_or_dash
from feature_store.records import Family, FeatureRecord, SplitEdge, Unit, is_neurons

EDGE_TOKENS = 5  # top tokens per parent / child in the edge table
# (header, hover help) of the edge table's columns, in order
EDGE_COLUMNS = (
    ("parent (smaller)", "The feature of the smaller dictionary."),
    ("parent's top tokens", "Centre tokens of its top activating examples."),
    ("child (larger)", "The feature of the next larger dictionary that splits off it."),
    ("child's top tokens", "Centre tokens of its top activating examples."),
    ("activation cosine", "Cosine between the two features' activations, over the tokens "
                          "where the child fires: 1 = the parent is active exactly in "
                          "proportion wherever the child is."),
    ("decoder cosine", "Cosine between the two features' decoder directions: how alike "
                       "their effects on the MLP output are."),
    ("containment", "Share of the child's activation energy (sum of squared activations) "
                    "that falls on tokens where the parent fires: near 100% = the child "
                    "fires inside the parent's territory."),
)
NUMERIC_FROM = 4  # columns from here on are numbers (right-aligned)


def default_feature(path: str) -> Unit | None:
    """With no feature in the URL, start at the parent with the most children (ties: the
    closest directions): a page that opens on a real split shows what the page is for, where
    a single strongest edge is often a feature that merely persists across sizes."""
    edges = store_access.splits(path)
    if edges.empty:
        return None
    per_parent = edges.groupby(["dictionary_a", "index_a"], sort=True).agg(
        children=("index_b", "size"), closeness=("decoder_cosine", "mean"))
    best = per_parent.sort_values(["children", "closeness"], ascending=False,
                                  kind="stable").index[0]
    return Unit(str(best[0]), int(best[1]))


def no_family_text(record: FeatureRecord) -> str:
    """Why this unit has no family: neurons never have one; an SAE feature may not."""
    if is_neurons(record.dictionary):
        return (f"Neurons are not in families: feature splitting relates the features of SAEs "
                f"of adjacent sizes, and the raw MLP neurons are the baseline those SAEs are "
                f"compared with, not a dictionary that splits. Open an SAE feature (e.g. from "
                f"the neuron's counterparts on its feature page) to see a family; below, "
                f"neuron #{record.index} is marked on the joint UMAP.")
    return (f"{record.dictionary} #{record.index} belongs to no family: no feature of an "
            "adjacent size passed the splitting criterion with it, or it is ultralow density "
            "and was left out.")


def family_graph(path: str, record: FeatureRecord) -> Family | None:
    """The family's graph, its edge table and its members; None when there is no family."""
    family = store_access.family(path, record.dictionary, record.index)
    if family is None:
        st.info(no_family_text(record))
        return None
    order = store_access.dictionaries(path)
    summaries = {d: store_access.features(path, d).set_index("index")
                 for d in {d for d, _ in family.members}}
    top = {Unit(d, i): str(summaries[d].at[i, "top_tokens"]) for d, i in family.members}
    event = st.plotly_chart(
        charts.family_graph_figure(family, order, Unit(record.dictionary, record.index), top),
        on_select="rerun", selection_mode="points", key="family_graph",
        config={"displayModeBar": False})
    _follow(event)
    layers = [d for d in order if any(name == d for name, _ in family.members)]
    by_dictionary = charts.family_layer_order(family, layers)  # listed in the graph's order
    st.markdown("**Edges**, parent → child in the graph's order")
    st.html(edge_table_html(family, by_dictionary, top, charts.dictionary_colours(order)))
    members(by_dictionary, summaries, top, charts.dictionary_colours(order))
    return family


def ordered_edges(family: Family, by_dictionary: dict[str, list[int]]) -> list[SplitEdge]:
    """Edges top to bottom as drawn: by the parent's layer and row, then the child's row."""
    depth = {name: k for k, name in enumerate(by_dictionary)}
    row = {Unit(d, i): r for d, indices in by_dictionary.items() for r, i in enumerate(indices)}

    def key(edge: SplitEdge) -> tuple[int, int, int]:
        parent, child = charts.split_ends(edge)
        return (depth.get(parent.dictionary, len(depth)), row.get(parent, 0), row.get(child, 0))

    return sorted(family.edges, key=key)


def _member_cell(dictionary: str, index: int, colours: dict[str, str]) -> str:
    """A member as a link to its feature page, with its dictionary's colour chip. Names and
    numbers only (dictionary names are a safe alphabet), escaped anyway."""
    url = html.escape(links.feature_url(dictionary, index), quote=True)
    return (f'<td>{charts.colour_chip_html(colours.get(dictionary, UNLISTED_DICTIONARY))}'
            f'<a href="{url}" target="_self">{html.escape(dictionary)} #{index}</a></td>')


def _tokens_cell(tokens: str) -> str:
    return f"<td>{token_html.inline_tokens_html(tokens.split()[:EDGE_TOKENS])}</td>"


def edge_table_html(family: Family, by_dictionary: dict[str, list[int]],
                    top: dict[Unit, str], colours: dict[str, str]) -> str:
    """One row per edge with both cosines and the containment, written out so no number
    needs a hover. Pure (no Streamlit), so it is testable; token text escaped by
    `token_html`."""
    head = "".join(
        f'<th class="{"n" if k >= NUMERIC_FROM else "t"}" '
        f'title="{html.escape(help_text, quote=True)}">{html.escape(label)}</th>'
        for k, (label, help_text) in enumerate(EDGE_COLUMNS))
    rows = []
    for edge in ordered_edges(family, by_dictionary):
        parent, child = charts.split_ends(edge)
        numbers = (finite_or_dash(float(edge.masked_cosine), ".2f"),
                   finite_or_dash(float(edge.decoder_cosine), ".2f"),
                   finite_or_dash(float(edge.containment), ".0%"))
        rows.append("<tr>" + _member_cell(*parent, colours) + _tokens_cell(top.get(parent, ""))
                    + _member_cell(*child, colours) + _tokens_cell(top.get(child, ""))
                    + "".join(f'<td class="n">{html.escape(n)}</td>' for n in numbers) + "</tr>")
    return (f'<table class="run-table edge-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def members(by_dictionary: dict[str, list[int]], summaries: dict[str, pd.DataFrame],
            top: dict[Unit, str], colours: dict[str, str]) -> None:
    """Each layer's members in the graph's order: link, top tokens, density, max act."""
    cols = st.columns(max(1, len(by_dictionary)))
    for col, (dictionary, indices) in zip(cols, by_dictionary.items()):
        with col:
            st.html(f"<b>{charts.colour_chip_html(colours.get(dictionary, UNLISTED_DICTIONARY))}"
                    f"{html.escape(dictionary)}</b>")
            for index in indices:
                row = summaries[dictionary].loc[index]
                links.feature_link(dictionary, index, f"#{index}")
                st.html(token_html.inline_tokens_html(top[Unit(dictionary, index)].split()) +
                        f'<div class="legend">density {row["density"]:.1e} · '
                        f'max act {row["max_act"]:.2f}</div>')


def umap_points(path: str) -> pd.DataFrame:
    """The joint UMAP's points with each unit's top tokens (for the hover)."""
    points: pd.DataFrame = store_access.umap(path)
    if points.empty:
        return points
    tops = [store_access.features(path, d)[["index", "top_tokens"]].assign(dictionary=d)
            for d in points["dictionary"].unique()]
    return points.merge(pd.concat(tops), on=["dictionary", "index"], how="left")


def joint_umap(path: str, record: FeatureRecord, family: Family | None) -> None:
    points = umap_points(path)
    if points.empty:
        st.info("The store holds no UMAP.")
        return
    highlight = list(family.members) if family else [Unit(record.dictionary, record.index)]
    event = st.plotly_chart(
        charts.umap_figure(points, store_access.dictionaries(path), highlight),
        on_select="rerun", selection_mode="points", key="umap")
    _follow(event)


def _follow(event: object) -> None:
    """A clicked node or point opens that feature's page (the one asked about too: the
    click says "open it")."""
    picked = charts.picked_feature(event)
    if picked:
        links.open_feature(*picked)
