"""Automated explanations and their held-out scores (issue 13), wherever a page shows them.

- feature page: the unit's explanation, every score beside its controls (the same unit
  scored with another unit's explanation; its best single-token explanation) and how many
  held-out examples stand behind each;
- Score page: the same block, but only once the rater's score is saved (before, it would
  unblind them: the text names tokens and the numbers hint at neuron vs feature);
- browser: score columns, a minimum-score filter and a search in the explanation text;
- overview: each dictionary's score distribution with its controls' medians;
- Results: each human rubric total against the unit's auto score.

Explanation text holds corpus tokens and is untrusted: it reaches HTML only through
`html.escape` here (and the browser's grid draws text on a canvas, never as HTML). A store
the interp stage has not run on shows one line saying so.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, light_plotly, store_access
from feature_store import schema, token_display
from feature_store.records import ExplanationRecord

NOT_RUN = ("No automated explanations in this store yet: run the interp stage "
           "(`python -m pipelines run --run-dir <run>`; it comes after stats).")
CONTROL_LABELS = {"shuffled": "another unit's explanation",
                  "single_token": "best single token"}
SCORE_HELP = {
    "sim_top_random": "Pearson correlation of simulated and true activations over held-out "
                      "top, interval and random windows (Bills et al.)",
    "sim_random": "The same over random held-out windows only (NaN when it never fires there)",
    "detection": "Balanced accuracy telling firing windows from random silent ones (0.5 chance)",
    "detection_neighbours": "Balanced accuracy against silent windows from its nearest "
                            "units' top examples (harder; 0.5 chance)",
    "logits": "AUC of its top positive-logit tokens against random tokens, ranked by the "
              "explanation's next-token weights (0.5 chance)",
}


@st.cache_data(show_spinner=False)
def interp_summary(path: str) -> dict | None:
    return store_access.open_store(path).interp_summary()


@st.cache_data(show_spinner=False, max_entries=16)
def explanations(path: str, dictionary: str) -> pd.DataFrame | None:
    return store_access.open_store(path).explanations(dictionary)


@st.cache_data(show_spinner=False, max_entries=512)
def explanation(path: str, dictionary: str, index: int) -> ExplanationRecord | None:
    return store_access.open_store(path).explanation(dictionary, index)


def _num(value: float, fmt: str = "{:.2f}") -> str:
    return "–" if value is None or not math.isfinite(value) else fmt.format(value)


def explanation_html(rec: ExplanationRecord) -> str:
    """The block as HTML; every piece of stored text escaped here."""
    counts = dict(rec.counts)
    controls = {(c, s): v for c, s, v in rec.controls}
    behind = {"sim_top_random": f"{counts['n_score_windows']} + {counts['n_random_windows']} "
                                f"random windows",
              "sim_random": f"{counts['n_random_windows']} random windows",
              "detection": f"{counts['n_detection_positive']} firing vs "
                           f"{counts['n_detection_random']} silent",
              "detection_neighbours": f"{counts['n_detection_positive']} firing vs "
                                      f"{counts['n_detection_neighbour']} silent",
              "logits": f"{counts['n_logit_tokens']} top vs random tokens"}
    rows = []
    for name, label in schema.EXPLANATION_SCORES.items():
        shuffled = controls.get(("shuffled", name), float("nan"))
        single = controls.get(("single_token", name), float("nan"))
        rows.append(
            f"<tr title='{html.escape(SCORE_HELP[name], quote=True)}'><td>{html.escape(label)}</td>"
            f"<td class='interp-score'><b>{_num(rec.score(name))}</b></td>"
            f"<td>{_num(shuffled)}</td><td>{_num(single)}</td>"
            f"<td class='interp-n'>{html.escape(behind[name])}</td></tr>")
    text = html.escape(token_display.visible(rec.explanation))
    single = html.escape(token_display.visible(rec.single_token)) or "–"
    return (
        "<div class='interp-block'>"
        f"<div class='interp-label'>Automated explanation "
        f"<span class='interp-n'>({html.escape(rec.explainer)}, fitted on "
        f"{counts['n_explain_windows']} training windows, scored on held-out ones)</span></div>"
        f"<div class='interp-text'>{text}</div>"
        "<table class='interp-table'><tr><th>score</th><th>this</th>"
        f"<th>{html.escape(CONTROL_LABELS['shuffled'])}</th>"
        f"<th>{html.escape(CONTROL_LABELS['single_token'])} ({single})</th>"
        "<th>behind it</th></tr>" + "".join(rows) + "</table>"
        "<style>.interp-block{margin:.3rem 0 .8rem}.interp-label{font-weight:600}"
        ".interp-text{font-family:monospace;margin:.2rem 0 .4rem;overflow-wrap:anywhere}"
        ".interp-table{font-size:.85rem;border-collapse:collapse}"
        ".interp-table td,.interp-table th{padding:.1rem .5rem;text-align:left}"
        ".interp-n{color:#777;font-size:.8rem}</style></div>")


def feature_block(path: str, dictionary: str, index: int) -> None:
    """The feature page's block (a caption when the store has no explanations, or why this
    dictionary has none)."""
    rec = explanation(path, dictionary, index)
    if rec is None:
        why = (store_access.dictionary_info(path, dictionary).get("not_applicable")
               or {}).get("explanations")
        st.caption(why or NOT_RUN)
        return
    st.html(explanation_html(rec))


def after_score_block(path: str, dictionary: str, index: int) -> None:
    """The Score page's block: call only once the rater's score is saved."""
    rec = explanation(path, dictionary, index)
    if rec is not None:
        st.html(explanation_html(rec))


# -- browser ----------------------------------------------------------------------------------

def browser_filters() -> tuple[str, float | None]:
    """Explanation text search and a minimum simulation score, kept in the URL
    (`expl=`, `min_sim=`)."""
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    text = left.text_input("Search explanations", value=st.query_params.get("expl", ""),
                           key="expl_input", placeholder="e.g. def, after ·self",
                           help="Units whose automated explanation contains this text (any case)")
    raw = st.query_params.get("min_sim", "")
    try:
        current = float(raw) if raw else None
    except ValueError:
        current = None
    minimum = right.number_input("min simulation", min_value=-1.0, max_value=1.0,
                                 value=current, step=0.1, key="min_sim_input",
                                 placeholder="any",
                                 help="Hide units whose simulation score (top + random) is "
                                      "below this or undefined")
    for key, value in (("expl", text), ("min_sim", "" if minimum is None else f"{minimum:g}")):
        if value:
            st.query_params[key] = value
        elif key in st.query_params:
            del st.query_params[key]
    return text, minimum


def filter_rows(rows: pd.DataFrame, table: pd.DataFrame | None, text: str,
                minimum: float | None) -> pd.DataFrame:
    """Rows (with an `index` column) kept by the explanation search and the minimum score."""
    if table is None or (not text and minimum is None):
        return rows
    keep = np.ones(len(table), dtype=bool)
    if text:
        keep &= table["explanation"].str.casefold().str.contains(
            text.casefold(), regex=False).to_numpy()
    if minimum is not None:
        keep &= (table["sim_top_random"].to_numpy(dtype=float) >= minimum)
    return rows[rows["index"].isin(table["index"].to_numpy()[keep])]


def browser_columns(view: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """The browser's view with score and explanation columns added (if the store has them)."""
    if table is None:
        return view
    by_index = table.set_index("index")
    at = view["feature"].to_numpy()
    view = view.copy()
    view.insert(2, "simulation", by_index["sim_top_random"].reindex(at).to_numpy())
    view.insert(3, "detection", by_index["detection"].reindex(at).to_numpy())
    view["explanation"] = [token_display.visible(str(t)) for t in
                           by_index["explanation"].reindex(at).fillna("")]
    return view


BROWSER_COLUMN_CONFIG = {
    "simulation": st.column_config.NumberColumn("simulation", format="%.2f", width=80,
                                                help=SCORE_HELP["sim_top_random"]),
    "detection": st.column_config.NumberColumn("detection", format="%.2f", width=75,
                                               help=SCORE_HELP["detection"]),
    "explanation": st.column_config.TextColumn("explanation", width="large",
                                               help="The automated explanation (held-out "
                                                    "scores beside it)"),
}


# -- overview ---------------------------------------------------------------------------------

def summary_table_html(summary: dict, order: Sequence[str]) -> str:
    """Per dictionary: the median of every score, each control's median beside it."""
    head = ("<tr><th>dictionary</th><th>units scored</th>"
            + "".join(f"<th title='{html.escape(SCORE_HELP[s], quote=True)}'>"
                      f"{html.escape(label)}</th>" for s, label in
                      schema.EXPLANATION_SCORES.items()) + "</tr>")
    rows = []
    for name in order:
        d = summary["dictionaries"].get(name)
        if d is None:
            continue
        cells = []
        for s in schema.EXPLANATION_SCORES:
            ctl = " · ".join(f"{'shuffled' if c == 'shuffled' else '1 token'} "
                             f"{_num(v.get(s))}" for c, v in d["controls"].items() if s in v)
            cells.append(f"<td><b>{_num(d['medians'].get(s))}</b>"
                         f"<div class='interp-n'>{html.escape(ctl)}</div></td>")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{d['n_scored']:,} / "
                    f"{d['n_units']:,}</td>{''.join(cells)}</tr>")
    return ("<table class='interp-table'>" + head + "".join(rows) + "</table>"
            "<style>.interp-table{font-size:.85rem;border-collapse:collapse}"
            ".interp-table td,.interp-table th{padding:.15rem .6rem;text-align:left;"
            "vertical-align:top}.interp-n{color:#777;font-size:.75rem}</style>")


def distribution_figure(frames: dict[str, pd.DataFrame], order: Sequence[str],
                        score: str = "sim_top_random") -> go.Figure:
    """Per dictionary, the share of units in each score bin (solid), and the same for its
    shuffled control (dotted, same colour). Step lines, not box plots: the overview's charts
    use plotly.js's basic bundle, which draws scatter and bar traces only."""
    colours = charts.dictionary_colours(order)
    control = schema.EXPLANATION_CONTROLS["shuffled"].get(score)
    lo = -0.4 if score.startswith("sim") else 0.0
    edges = np.linspace(lo, 1.0, int(round((1.0 - lo) / 0.05)) + 1)
    fig = go.Figure()
    for name in order:
        frame = frames.get(name)
        if frame is None:
            continue
        for column, dash, label in ((score, "solid", name),
                                    (control, "dot", f"{name}, shuffled")):
            if column is None:
                continue
            v = frame[column].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            counts, _ = np.histogram(np.clip(v, lo, 1.0), bins=edges)
            share = counts / v.size
            fig.add_trace(go.Scatter(
                x=edges, y=np.append(share, share[-1]), mode="lines", line_shape="hv",
                name=label, line=dict(color=colours.get(name), dash=dash, width=2),
                hovertemplate=f"{html.escape(label)}<br>from %{{x:.2f}}: %{{y:.1%}} of units"
                              "<extra></extra>"))
    fig.update_layout(title=f"{schema.EXPLANATION_SCORES[score]}: explanation (solid) vs "
                            f"shuffled (dotted)",
                      height=330, margin=dict(l=40, r=10, t=40, b=40),
                      xaxis_title=schema.EXPLANATION_SCORES[score], yaxis_title="share of units",
                      yaxis_tickformat=".0%")
    return fig


def overview_section(path: str, extra_controls: dict[str, dict] | None = None) -> None:
    """Score medians with controls per dictionary, and their distributions.

    `extra_controls` ({label: another store's interp_summary()}) is the hook for a study's
    untrained-model variant: its medians are listed under the label, beside this run's."""
    st.subheader("Automated explanations")
    summary = interp_summary(path)
    if summary is None:
        st.caption(NOT_RUN)
        return
    order = store_access.dictionaries(path)
    st.caption(f"Explainer `{summary.get('explainer')}`: explanations fitted on "
               f"{summary.get('explain_split')} windows, scored on held-out "
               f"{summary.get('score_split')} windows. Medians over units with a defined "
               f"score; under each, the controls' medians (shuffled: each unit scored with "
               f"another unit's explanation; 1 token: its best single-token explanation).")
    st.html(summary_table_html(summary, order))
    for label, other in (extra_controls or {}).items():
        st.markdown(f"**Control: {label}**")
        st.html(summary_table_html(other, order))
    frames = {name: explanations(path, name) for name in order}
    left, right = st.columns(2)
    with left:
        light_plotly.chart(distribution_figure(frames, order, "sim_top_random"),
                           key="overview_interp_sim")
    with right:
        light_plotly.chart(distribution_figure(frames, order, "detection"),
                           key="overview_interp_detection")


# -- results ----------------------------------------------------------------------------------

def human_vs_auto_frame(path: str, ratings: pd.DataFrame,
                        score: str = "sim_top_random") -> pd.DataFrame:
    """One row per rated unit with an auto score: dictionary, index, human (mean rubric total
    over raters), auto."""
    if ratings.empty:
        return pd.DataFrame(columns=["dictionary", "index", "human", "auto"])
    human = (ratings.groupby(["dictionary", "unit_index"])["total"].mean().reset_index()
             .rename(columns={"unit_index": "feature"}))
    rows = []
    for name, part in human.groupby("dictionary"):
        try:
            table = explanations(path, str(name))
        except Exception:  # a source the store no longer has
            table = None
        if table is None:
            continue
        auto = table.set_index("index")[score].reindex(part["feature"].to_numpy()).to_numpy()
        rows.append(pd.DataFrame({"dictionary": name, "index": part["feature"].to_numpy(),
                                  "human": part["total"].to_numpy(), "auto": auto}))
    out = pd.concat(rows) if rows else pd.DataFrame(
        columns=["dictionary", "index", "human", "auto"])
    return out[np.isfinite(out["auto"].to_numpy(dtype=float))] if len(out) else out


def human_vs_auto_figure(frame: pd.DataFrame, order: Sequence[str]) -> go.Figure:
    colours = charts.dictionary_colours(order)
    fig = go.Figure()
    for name in [o for o in order if o in set(frame["dictionary"])]:
        part = frame[frame["dictionary"] == name]
        fig.add_trace(go.Scatter(x=part["auto"], y=part["human"], mode="markers", name=name,
                                 marker=dict(color=colours.get(name), size=8),
                                 text=[f"{name} · {i}" for i in part["index"]],
                                 hovertemplate="%{text}<br>auto %{x:.2f}, human %{y}"))
    fig.update_layout(title="Human rubric total vs automated simulation score", height=340,
                      xaxis_title="simulation score (held-out)", yaxis_title="rubric total",
                      margin=dict(l=40, r=10, t=40, b=40))
    return fig


def results_section(path: str, ratings: pd.DataFrame) -> None:
    """Human totals against auto scores where both exist, with their rank correlation."""
    if interp_summary(path) is None:
        return
    frame = human_vs_auto_frame(path, ratings)
    st.subheader("Human vs automated scores")
    if frame.empty:
        st.caption("No scored unit has an automated score yet.")
        return
    if len(frame) >= 3:
        rho = pd.Series(frame["human"].to_numpy(dtype=float)).corr(
            pd.Series(frame["auto"].to_numpy(dtype=float)), method="spearman")
        st.caption(f"{len(frame)} units scored by hand and automatically; Spearman "
                   f"correlation {_num(rho)}.")
    else:
        st.caption(f"{len(frame)} unit(s) scored both ways; a correlation needs 3.")
    light_plotly.chart(human_vs_auto_figure(frame, store_access.dictionaries(path)),
                       key="results_human_auto")
