"""The results page's parts: score distributions per source, the summary and per-item tables,
inter-rater agreement, export and import.

The distribution chart follows Towards Monosemanticity's figure: one colour per source
(`neurons`, each SAE size), x the rubric total, y the share of that source's ratings, bars
overlaid so a bimodal "features high, neurons low" picture reads at a glance; a source's
colour is its dictionary's colour on every other page (`charts.dictionary_colours` over the
store's whole order, not over the sources that happen to have scores). In a study a source
is a run x dictionary ("solu · neurons"): it keeps its dictionary's colour, and each run
after the first gets a hatching pattern, so "SoLU neurons vs GeLU neurons" reads as one
colour, two fills. Figures are built without Streamlit calls (testable alone); uploaded files
are untrusted and go through `ScoreBook.import_file`, which validates every row before
writing any.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

from dashboard import charts
from feature_store.scores import MAX_TOTAL, QUITE_INTERPRETABLE, RUBRIC, ScoreBook, ScoreError
from feature_store.scores_results import Results


MIN_ALPHA_UNITS = 2  # Krippendorff's alpha over fewer units says nothing (see agreement_line)
RUN_PATTERNS = ("", "/", ".", "x", "\\", "+", "-", "|")  # the study's first run is plain


def source_styles(res: Results, order: Sequence[str],
                  runs: Sequence[str] = ()) -> dict[str, dict]:
    """Each source's bar marker: its dictionary's colour (`order`: the store's, or in a
    study every run's, dictionaries) and, in a study, its run's pattern (`runs` in the
    study's order)."""
    rows = res.by_source.set_index("source")
    dictionaries = {s: rows.loc[s, "dictionary"] if s in rows.index else s
                    for s in dict.fromkeys([*res.distribution.columns, *res.items.index])}
    colours = charts.dictionary_colours(order, extra=list(dictionaries.values()))
    styles = {}
    for source, dictionary in dictionaries.items():
        run = rows.loc[source, "run"] if source in rows.index else ""
        style: dict = {"color": colours[dictionary]}
        if run:
            k = list(runs).index(run) if run in runs else len(runs)
            if RUN_PATTERNS[k % len(RUN_PATTERNS)]:
                style["pattern"] = dict(shape=RUN_PATTERNS[k % len(RUN_PATTERNS)],
                                        fillmode="overlay", solidity=0.45)
        styles[source] = style
    return styles


def distribution_figure(res: Results, order: Sequence[str],
                        runs: Sequence[str] = ()) -> go.Figure:
    """`order`: the store's dictionaries, for the shared colours (`runs`: a study's, for
    the patterns)."""
    styles = source_styles(res, order, runs)
    fig = go.Figure()
    for source in res.distribution.columns:
        counts = res.distribution[source]
        share = counts / max(int(counts.sum()), 1)
        fig.add_trace(go.Bar(x=list(res.distribution.index), y=share, name=source,
                             marker=dict(**styles[source], opacity=0.6),
                             customdata=counts,
                             hovertemplate=f"{source}<br>score %{{x}}: %{{customdata}} ratings "
                                           "(%{y:.0%})<extra></extra>"))
    fig.add_vline(x=QUITE_INTERPRETABLE + 0.5, line_dash="dot", line_color="#888",
                  annotation_text=f"> {QUITE_INTERPRETABLE}: quite interpretable",
                  annotation_position="top right")
    fig.update_layout(barmode="overlay", height=340, margin=charts.MARGIN,
                      title="Rubric totals per source (each rater's latest score of a unit)",
                      xaxis=dict(title=f"total score (0–{MAX_TOTAL})", dtick=1,
                                 range=[-0.5, MAX_TOTAL + 0.5]),
                      yaxis=dict(title="share of ratings", tickformat=".0%"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def items_figure(res: Results, order: Sequence[str], runs: Sequence[str] = ()) -> go.Figure:
    """Each rubric item's mean as a share of its maximum, grouped by source (coloured as
    everywhere else: `order` is the store's dictionaries; `runs` a study's, for patterns)."""
    styles = source_styles(res, order, runs)
    labels = [item.replace("_", "<br>") for item in RUBRIC]  # two short lines: never rotated
    fig = go.Figure()
    for source, row in res.items.iterrows():
        fig.add_trace(go.Bar(x=labels, y=[row[i] / RUBRIC[i][1] for i in RUBRIC], name=source,
                             marker=styles[source],
                             customdata=[row[i] for i in RUBRIC],
                             hovertemplate=f"{source}<br>%{{x}}: mean %{{customdata:.2f}} "
                                           "(%{y:.0%} of max)<extra></extra>"))
    fig.update_layout(barmode="group", height=300, margin=charts.MARGIN,
                      title="Per rubric item: mean as a share of the item's maximum",
                      xaxis=dict(tickangle=0), yaxis=dict(tickformat=".0%", range=[0, 1]),
                      legend=dict(orientation="h", y=-0.35))
    return fig


def summary_table(res: Results) -> None:
    """One row per source (in a study, per run x dictionary): counts, median, mean, share
    above 8, and the source's own Krippendorff's alpha (blank under MIN_ALPHA_UNITS units
    scored by >= 2 raters, as for the overall one)."""
    share = f"share > {QUITE_INTERPRETABLE}"
    table = res.by_source.drop(columns=["run", "dictionary"]).rename(
        columns={"share_above_8": share, "alpha": "α", "alpha_units": "α units"})
    table[share] = table[share] * 100
    table.loc[table["α units"] < MIN_ALPHA_UNITS, "α"] = float("nan")
    st.dataframe(table, hide_index=True, placeholder="–", column_config={
        "median": st.column_config.NumberColumn(format="%.1f"),
        "mean": st.column_config.NumberColumn(format="%.2f"),
        share: st.column_config.NumberColumn(format="%.0f%%"),
        "α": st.column_config.NumberColumn(format="%.2f", help="Krippendorff's α (interval, "
                                           "on totals) over this source's units scored by "
                                           f"≥ 2 raters; shown from {MIN_ALPHA_UNITS} units"),
        "α units": st.column_config.NumberColumn(help="units of this source scored by "
                                                 "≥ 2 raters"),
    })


def item_table(res: Results) -> None:
    table = res.items.rename(columns=lambda c: f"{c.replace('_', ' ')} (0–{RUBRIC[c][1]})")
    st.dataframe(table.rename_axis("source").reset_index(), hide_index=True, placeholder="–",
                 column_config={c: st.column_config.NumberColumn(format="%.2f")
                                for c in table.columns})


def agreement_line(res: Results) -> str:
    """Krippendorff's alpha, or why it is not shown. Alpha weighs the raters' disagreement
    within units against the spread of scores across units: with fewer than two units that
    two raters both scored there is no spread to weigh against, and a number shown anyway
    (often 0 or undefined) would read as a finding."""
    n = res.alpha_units
    if n < MIN_ALPHA_UNITS:
        have = "none yet" if n == 0 else "only 1"
        return ("**Inter-rater agreement:** not shown. Krippendorff's α compares how much "
                "raters disagree on a unit with how much scores vary between units, so it "
                f"needs at least {MIN_ALPHA_UNITS} units each scored by 2 or more raters; "
                f"there {'is' if n == 1 else 'are'} {have}. Have a second rater score the "
                "same queue (same sources, sample size and seed).")
    alpha = "undefined (no variation)" if math.isnan(res.alpha) else f"{res.alpha:.3f}"
    return (f"**Inter-rater agreement:** Krippendorff's α (interval, on totals) = {alpha} "
            f"over {n} units scored by ≥ 2 raters.")


def interval_table(res: Results) -> None:
    if res.intervals.empty or res.intervals.isna().all().all():
        return
    st.markdown("**Per-interval scores** (mean 0–5, where raters scored intervals; "
                "interval 11 holds the highest activations)")
    st.dataframe(res.intervals.rename_axis("source").reset_index(), hide_index=True,
                 placeholder="–",
                 column_config={c: st.column_config.NumberColumn(format="%.1f")
                                for c in res.intervals.columns})


def export_buttons(book: ScoreBook) -> None:
    """CSV and Parquet of every stored row (the whole history, not only the latest)."""
    with st.container(horizontal=True):
        st.download_button("Download CSV", data=book.export_csv(), file_name="scores.csv",
                           mime="text/csv", key="download_csv")
        st.download_button("Download Parquet", data=book.export_parquet(),
                           file_name="scores.parquet", mime="application/octet-stream",
                           key="download_parquet")


def import_box(book: ScoreBook) -> None:
    """Merge an export from another machine; each upload is imported once per session and
    the page says how many rows were new."""
    upload = st.file_uploader("Import scores exported on another machine (CSV or Parquet)",
                              type=["csv", "parquet"], key="import_upload")
    if upload is None:
        return
    done = f"imported_{upload.file_id}"
    if done not in st.session_state:
        kind = upload.name.rsplit(".", 1)[-1].lower()
        try:
            added = book.import_file(upload.getvalue(), kind=kind, name=upload.name)
        except ScoreError as err:
            st.session_state[done] = ("error", str(err))
        else:
            st.session_state[done] = ("ok", added)
            st.rerun()  # redraw the results with the new rows
    status, value = st.session_state[done]
    if status == "error":
        st.error(f"Nothing imported: {value}")
    else:
        st.success(f"Imported {upload.name}: added {value} new score"
                   f"{'s' if value != 1 else ''} (rows already here were skipped).")


def ratings_note(res: Results, blind_only: bool) -> str:
    n = len(res.ratings)
    raters = res.ratings["rater"].nunique() if n else 0
    note = f"{n} rating{'s' if n != 1 else ''} by {raters} rater{'s' if raters != 1 else ''}"
    if blind_only and res.excluded_not_blind:
        note += f"; {res.excluded_not_blind} not-blind score(s) left out"
    return note
