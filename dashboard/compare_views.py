"""Compare sizes: one feature beside its nearest counterpart in every other dictionary.

Each column is topped by its dictionary's colour (the palette every chart uses), and its
example lines wrap between tokens rather than scroll, so in a narrow column the firing
(outlined) token and its activation stay in view.
"""

from __future__ import annotations

import html

import streamlit as st

from dashboard import charts, feature_views, store_access
from dashboard.colours import UNLISTED_DICTIONARY
from feature_store.records import NEURONS_PRE_LN, FeatureRecord, Neighbour


WEAK_COSINE = 0.4  # below this a "counterpart" is only the least unlike feature there


def ordered_counterparts(record: FeatureRecord) -> list[tuple[str, Neighbour, tuple[Neighbour, ...]]]:
    """(dictionary, nearest, runners-up) per other dictionary, most similar first."""
    rows = [(other, found[0], found[1:]) for other, found in record.counterparts if found]
    return sorted(rows, key=lambda row: -row[1].cosine)


def counterpart_caption(other: str, nearest: Neighbour, rest: tuple[Neighbour, ...]) -> str:
    """`decoder cosine 0.31 · weak match: … · next: #12 (0.30), …`. The weak test uses the
    cosine as shown (two decimals), so the label never contradicts the number beside it."""
    shown = round(nearest.cosine, 2)
    weak = f" · weak match: {other} may have no counterpart" if shown < WEAK_COSINE else ""
    runners = ", ".join(f"#{n.index} ({n.cosine:.2f})" for n in rest[:3])
    return f"decoder cosine {shown:.2f}{weak}" + (f" · next: {runners}" if runners else "")


def same_unit(path: str, record: FeatureRecord) -> FeatureRecord | None:
    """A SoLU neuron's record at the MLP's other hook (before / after the mid-MLP
    LayerNorm), or None: it comes first among the columns, being the same unit."""
    twin = store_access.dictionary_info(path, record.dictionary).get("same_units_as")
    if not twin or twin not in store_access.dictionaries(path):
        return None
    return store_access.feature(path, twin, record.index)


def columns(path: str, record: FeatureRecord) -> None:
    counterparts = ordered_counterparts(record)
    twin = same_unit(path, record)
    if not counterparts and twin is None:
        st.info(f"The store holds no counterparts of {record.dictionary} #{record.index} in "
                "other dictionaries.")
    colours = charts.dictionary_colours(store_access.dictionaries(path))
    cols = st.columns(1 + (twin is not None) + len(counterparts), gap="small")
    with cols[0]:
        st.html(colour_bar_html(colours.get(record.dictionary, UNLISTED_DICTIONARY)))
        feature_views.compact_column(record, "the feature asked about")
    if twin is not None:
        with cols[1]:
            st.html(colour_bar_html(colours.get(twin.dictionary, UNLISTED_DICTIONARY)))
            feature_views.compact_column(twin, "the same neuron "
                                         + ("before" if twin.dictionary == NEURONS_PRE_LN
                                            else "after") + " the mid-MLP LayerNorm")
        cols = cols[1:]
    for col, (other, nearest, rest) in zip(cols[1:], counterparts):
        with col:
            found = store_access.feature(path, other, nearest.index)
            st.html(colour_bar_html(colours.get(other, UNLISTED_DICTIONARY)))
            feature_views.compact_column(found, counterpart_caption(other, nearest, rest))


def colour_bar_html(colour: str) -> str:
    """A thin bar in a dictionary's colour (a palette constant, no corpus text)."""
    return (f'<div class="dictionary-bar" style="height:4px;border-radius:2px;'
            f'background:{html.escape(colour, quote=True)}"></div>')
