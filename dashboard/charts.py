"""Plotly figures built from store records and frames; no Streamlit calls, so they test and
time on their own.

Points that open a feature carry `customdata = [dictionary, index, ...]` (further fields,
e.g. the escaped top tokens, feed the hover text); `picked_feature` reads the first two back
from a `st.plotly_chart(..., on_select="rerun")` event. Token text reaches plotly only as
hover text, which plotly renders as text (it supports a few tags, so it is escaped too, once,
via `hover_text`).

Every chart colours a dictionary with `dictionary_colours(order)`, `order` being the store's
whole dictionary order (neurons, then SAEs by size), never the subset a chart happens to
show: so `sae_1024` is the same colour on the overview, the splitting graph, the UMAP and the
results page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.colours import (DICTIONARY_PALETTE, INTERVAL_COLOURS, LOWER_RGB, RAISE_RGB,
                               UNLISTED_DICTIONARY, hex_colour)
from feature_store.records import Family, FeatureRecord, SplitEdge, Unit, is_neurons

MARGIN = dict(l=10, r=10, t=36, b=10)

# Marker shapes in the same order, so dictionaries stay apart where colours overlap (UMAP).
DICTIONARY_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x",
                      "triangle-down", "star", "hexagon", "pentagon")


def dictionary_colours(order: Sequence[str], extra: Sequence[str] = ()) -> dict[str, str]:
    """The colour of every dictionary: by position in the store's `order`, then `extra`
    names the store does not hold (e.g. scores imported from another run) after it. Pass the
    store's whole order, not only the dictionaries a chart shows, or colours shift."""
    names = list(dict.fromkeys([*order, *extra]))
    return {name: DICTIONARY_PALETTE[i % len(DICTIONARY_PALETTE)] for i, name in enumerate(names)}


def dictionary_symbols(order: Sequence[str]) -> dict[str, str]:
    """A marker shape per dictionary, by position in the store's order (like the colours)."""
    return {name: DICTIONARY_SYMBOLS[i % len(DICTIONARY_SYMBOLS)] for i, name in enumerate(order)}


def colour_chip_html(colour: str) -> str:
    """A small square of a dictionary's colour, to put beside its name in page text. The
    colour comes from `DICTIONARY_PALETTE` (a constant), never from corpus text."""
    return (f'<span style="display:inline-block;width:0.75em;height:0.75em;'
            f'border-radius:2px;background:{colour};margin-right:0.35em"></span>')


def hover_text(text: str) -> str:
    return html.escape(text, quote=False)


def density_histograms_figure(hist: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    """log10 feature density, one step line per dictionary: the ultralow cluster shows up as
    a separate bump on the left."""
    colours = dictionary_colours(order)
    fig = go.Figure()
    for name in order:
        rows = hist[hist["dictionary"] == name].sort_values("bin_lo")
        if rows.empty:
            continue
        centres = (rows["bin_lo"].to_numpy() + rows["bin_hi"].to_numpy()) / 2
        fig.add_trace(go.Scatter(x=centres, y=rows["count"], name=name, mode="lines",
                                 line=dict(shape="hvh", color=colours[name], width=2),
                                 hovertemplate=f"{name}<br>log10 density %{{x:.2f}}"
                                               "<br>%{y} features<extra></extra>"))
    fig.update_layout(title="Feature density (dead features excluded)", height=320,
                      margin=MARGIN, xaxis_title="log10 density (share of tokens)",
                      yaxis_title="features", legend=dict(orientation="h", y=-0.3))
    return fig


def ce_recovered_figure(metrics: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    """CE loss recovered against dictionary size (SAEs only: the neuron dictionaries are the
    identity, 100% by definition)."""
    colours = dictionary_colours(order)
    saes = metrics[~metrics["dictionary"].map(is_neurons).astype(bool)].copy()
    saes = saes[pd.to_numeric(saes["ce_loss_recovered"], errors="coerce").notna()]
    saes = saes.sort_values("n_features")
    fig = go.Figure(go.Scatter(
        x=saes["n_features"], y=saes["ce_loss_recovered"], mode="lines+markers+text",
        text=[f"{v:.1%}" for v in saes["ce_loss_recovered"]], textposition="top center",
        marker=dict(size=10, color=[colours.get(n, UNLISTED_DICTIONARY)
                                    for n in saes["dictionary"]]),
        line=dict(color="#999"), customdata=saes["dictionary"],
        hovertemplate="%{customdata}: %{y:.1%} of the MLP's loss recovered<extra></extra>"))
    fig.update_layout(title="CE loss recovered vs size", height=320, margin=MARGIN,
                      xaxis=dict(type="log", title="features", tickvals=list(saes["n_features"])),
                      yaxis=dict(title="CE loss recovered", tickformat=".1%"))
    values = pd.to_numeric(saes["ce_loss_recovered"]).to_numpy(dtype=float)
    if values.size:  # head room for the text labels above the top point
        span = max(float(values.max() - values.min()), 0.002)
        fig.update_yaxes(range=[values.min() - 0.15 * span, values.max() + 0.25 * span])
    return fig


def activation_histogram_figure(record: FeatureRecord) -> go.Figure:
    """The active values on a log10 axis, each bar coloured by which of the 11 equal-width
    intervals its centre lies in, so the interval examples below can be placed on it."""
    edges = np.asarray(record.act_histogram.edges, dtype=float)
    counts = np.asarray(record.act_histogram.counts)
    fig = go.Figure()
    if edges.size >= 2 and counts.sum() > 0:
        log_axis = bool(edges[0] > 0)
        x_edges = np.log10(edges) if log_axis else edges
        centres_value = np.sqrt(edges[:-1] * edges[1:]) if log_axis else (edges[:-1] + edges[1:]) / 2
        interval = _interval_of(centres_value, record)
        fig.add_trace(go.Bar(
            x=(x_edges[:-1] + x_edges[1:]) / 2, y=counts, width=np.diff(x_edges),
            marker=dict(color=[INTERVAL_COLOURS[i] for i in interval], line=dict(width=0)),
            customdata=np.stack([edges[:-1], edges[1:], interval + 1], axis=1),
            hovertemplate="act %{customdata[0]:.3g}–%{customdata[1]:.3g}<br>%{y} tokens"
                          "<br>interval %{customdata[2]}<extra></extra>"))
        fig.update_xaxes(title="log10 activation" if log_axis else "activation")
    fig.update_layout(title="Activation histogram (colour = interval)", height=230,
                      margin=MARGIN, yaxis_title="tokens", bargap=0, showlegend=False)
    return fig


def _interval_of(values: np.ndarray, record: FeatureRecord) -> np.ndarray:
    if record.max_act <= 0 or not record.intervals:
        return np.zeros(values.shape, dtype=int)
    n = len(record.intervals)
    return np.clip((values / record.max_act * n).astype(int), 0, n - 1)


def logit_histogram_figure(record: FeatureRecord, relative_to: float | None = None) -> go.Figure:
    """All d_vocab logit weights: a long tail on the right means a few tokens are boosted.
    `relative_to` (the largest |weight|, blind scoring): weights as shares of it, so the
    figure carries no absolute weight (its scale would name the unit's dictionary)."""
    edges = np.asarray(record.logit_histogram.edges, dtype=float)
    counts = np.asarray(record.logit_histogram.counts)
    relative = relative_to is not None
    if relative:
        edges = edges / relative_to if relative_to > 0 else np.zeros_like(edges)
    fig = go.Figure()
    if edges.size >= 2:
        centres = (edges[:-1] + edges[1:]) / 2
        weight = "weight / largest |weight|" if relative else "weight"
        fig.add_trace(go.Bar(x=centres, y=counts, width=np.diff(edges),
                             marker=dict(color=np.where(centres >= 0, hex_colour(RAISE_RGB),
                                                        hex_colour(LOWER_RGB)),
                                         line=dict(width=0)),
                             hovertemplate=f"{weight} %{{x:.3f}}<br>%{{y}} tokens"
                                           "<extra></extra>"))
    fig.update_layout(title="Logit weights, all tokens" + (" (/ largest |weight|)" if relative
                                                           else ""),
                      height=200, margin=MARGIN, bargap=0, showlegend=False,
                      yaxis_title="tokens")
    return fig


MAX_EDGE_LABELS = 40  # beyond this the labels overlap; the page's edge table has them all


def family_graph_figure(family: Family, order: Sequence[str], chosen: Unit,
                        top_tokens: dict[Unit, str] | None = None) -> go.Figure:
    """Members laid out in columns by size, edges drawn with width and opacity by masked
    cosine and labelled with it and the decoder cosine (readable without hovering); node
    hover shows the member and its top activating tokens (escaped)."""
    chosen = Unit(*chosen)
    layers = [name for name in order if any(d == name for d, _ in family.members)]
    members_by_layer = family_layer_order(family, layers)
    position: dict[Unit, tuple[float, float]] = {}
    for x, name in enumerate(layers):
        column = members_by_layer[name]
        for rank, index in enumerate(column):
            position[Unit(name, index)] = (x, (len(column) - 1) / 2 - rank)  # first on top
    fig = go.Figure()
    mids_x, mids_y, mids_label, mids_hover = [], [], [], []
    for edge in family.edges:
        a, b = split_ends(edge)
        if a not in position or b not in position:
            continue
        (xa, ya), (xb, yb) = position[a], position[b]
        strength = max(0.0, min(1.0, edge.decoder_cosine))  # the pipeline's rank
        fig.add_trace(go.Scatter(x=[xa, xb], y=[ya, yb], mode="lines", hoverinfo="skip",
                                 line=dict(width=1 + 5 * strength,
                                           color=f"rgba(90,90,90,{0.25 + 0.6 * strength:.2f})"),
                                 showlegend=False))
        mids_x.append((xa + xb) / 2)
        mids_y.append((ya + yb) / 2)
        mids_label.append(f"{edge.masked_cosine:.2f} / {edge.decoder_cosine:.2f}")
        mids_hover.append(f"{a[0]} #{a[1]} → {b[0]} #{b[1]}<br>activation cosine "
                          f"{edge.masked_cosine:.2f}<br>decoder cosine {edge.decoder_cosine:.2f}"
                          f"<br>containment {edge.containment:.0%}")
    labelled = len(mids_x) <= MAX_EDGE_LABELS
    fig.add_trace(go.Scatter(x=mids_x, y=mids_y, mode="markers+text" if labelled else "markers",
                             text=mids_label if labelled else None, textposition="top center",
                             textfont=dict(size=10, color="#555"), customdata=mids_hover,
                             marker=dict(size=6, color="rgba(90,90,90,0.35)"),
                             hovertemplate="%{customdata}<extra></extra>", showlegend=False))
    colours = dictionary_colours(order)
    keys = list(position)
    fig.add_trace(go.Scatter(
        x=[position[k][0] for k in keys], y=[position[k][1] for k in keys],
        mode="markers+text", text=[f"#{k.index}" for k in keys], textposition="top center",
        customdata=[[k.dictionary, k.index, hover_text((top_tokens or {}).get(k, ""))]
                    for k in keys],
        marker=dict(size=[22 if k == chosen else 15 for k in keys],
                    color=[colours.get(k.dictionary, UNLISTED_DICTIONARY) for k in keys],
                    line=dict(width=[3 if k == chosen else 1 for k in keys],
                              color="black")),
        hovertemplate="%{customdata[0]} #%{customdata[1]}<br>top tokens: %{customdata[2]}"
                      "<br>click to open<extra></extra>",
        showlegend=False))
    height = max(260, 60 * max(len(c) for c in members_by_layer.values()) + 80)
    ys = [y for _, y in position.values()] or [0.0]  # room above the top node's label
    legend = " · edge label: activation cosine / decoder cosine" if labelled and mids_x else ""
    fig.update_layout(title=f"Family {family.family_id}: {len(family.members)} features, "
                            f"{len(family.edges)} edges{legend}",
                      height=height, margin=dict(MARGIN, t=56), clickmode="event+select",
                      dragmode=False,
                      xaxis=dict(tickvals=list(range(len(layers))), ticktext=layers,
                                 range=[-0.4, len(layers) - 0.4], showgrid=False),
                      yaxis=dict(visible=False, range=[min(ys) - 0.4, max(ys) + 0.6]))
    return fig


def split_ends(edge: SplitEdge) -> tuple[Unit, Unit]:
    """(parent, child): the edge's unit in the smaller dictionary, then in the larger."""
    return Unit(edge.dictionary_a, edge.index_a), Unit(edge.dictionary_b, edge.index_b)


def family_layer_order(family: Family, layers: list[str]) -> dict[str, list[int]]:
    """Each layer's members sorted under their strongest parent in the layer before (then by
    index): a family is a tree of best parents, so its edges never cross."""
    depth = {name: i for i, name in enumerate(layers)}
    parent: dict[Unit, tuple[float, Unit]] = {}
    for edge in family.edges:
        a, b = split_ends(edge)
        if a[0] in depth and b[0] in depth and depth[b[0]] < depth[a[0]]:
            a, b = b, a
        if a[0] in depth and b[0] in depth and depth[b[0]] == depth[a[0]] + 1:
            if b not in parent or edge.decoder_cosine > parent[b][0]:
                parent[b] = (edge.decoder_cosine, a)
    out: dict[str, list[int]] = {}
    rank: dict[Unit, int] = {}
    for name in layers:
        members = [i for d, i in family.members if d == name]
        members.sort(key=lambda i: (rank.get(parent[Unit(name, i)][1], len(rank))
                                    if Unit(name, i) in parent else -1, i))
        out[name] = members
        rank.update({Unit(name, i): r for r, i in enumerate(members)})
    return out


UMAP_HOVER_TOKENS = 6  # top tokens shown per point on hover: enough to recognise a feature


def _point_data(rows: pd.DataFrame) -> np.ndarray | None:
    """customdata for map points: dictionary, index, escaped top tokens (when the frame has
    a `top_tokens` column)."""
    if rows.empty:
        return None
    tokens = (rows["top_tokens"].fillna("").astype(str) if "top_tokens" in rows
              else pd.Series("", index=rows.index))
    shown = [hover_text(" ".join(t.split()[:UMAP_HOVER_TOKENS])) for t in tokens]
    return np.stack([rows["dictionary"].to_numpy(object), rows["index"].to_numpy(object),
                     np.asarray(shown, dtype=object)], axis=1)


def umap_figure(points: pd.DataFrame, order: Sequence[str],
                highlight: Sequence[Unit] = ()) -> go.Figure:
    """All dictionaries' decoder directions in one 2-D map, each dictionary its own colour
    and marker shape (the shared palette), hover naming the unit and its top tokens
    (`points` may carry a `top_tokens` column); the highlighted features (a family) drawn
    on top, larger, with a black ring."""
    colours, symbols = dictionary_colours(order), dictionary_symbols(order)
    hover = ("%{customdata[0]} #%{customdata[1]}<br>top tokens: %{customdata[2]}"
             "<extra></extra>")
    fig = go.Figure()
    for name in order:
        rows = points[points["dictionary"] == name]
        if rows.empty:
            continue
        fig.add_trace(go.Scattergl(
            x=rows["x"], y=rows["y"], mode="markers", name=name,
            marker=dict(size=5, color=colours[name], symbol=symbols[name], opacity=0.6),
            customdata=_point_data(rows), hovertemplate=hover))
    if highlight:
        keys = set(map(tuple, highlight))
        marked = points[[(d, int(i)) in keys
                         for d, i in zip(points["dictionary"], points["index"])]]
        fig.add_trace(go.Scatter(
            x=marked["x"], y=marked["y"], mode="markers", name="this family",
            marker=dict(size=12, color=[colours.get(d, UNLISTED_DICTIONARY)
                                        for d in marked["dictionary"]],
                        symbol=[symbols.get(d, "circle") for d in marked["dictionary"]],
                        line=dict(width=2, color="black")),
            customdata=_point_data(marked), hovertemplate=hover))
    fig.update_layout(title="Joint UMAP of decoder directions (colour and shape = dictionary)",
                      height=520, margin=MARGIN, clickmode="event+select",
                      legend=dict(orientation="h", y=-0.08, itemsizing="constant"),
                      xaxis=dict(showticklabels=False, title=None),
                      yaxis=dict(showticklabels=False, title=None))
    return fig


def picked_feature(event: Any) -> Unit | None:
    """The unit of the first selected point that carries one: its customdata's first two
    fields, dictionary and index (points may carry more, e.g. hover text)."""
    try:
        points = event.selection.points
    except AttributeError:
        return None
    for point in points or ():
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            try:
                return Unit(str(data[0]), int(data[1]))
            except (TypeError, ValueError):
                continue
    return None


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
