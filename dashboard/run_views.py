"""The overview page's sections: the model, one row per dictionary, and two charts."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard import charts, light_plotly, links, store_access


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def model_summary(path: str) -> None:
    """act_fn, parameters, and validation loss against the unigram baseline: a model that
    barely beats unigram statistics has little for features to explain."""
    info = store_access.run_info(path)
    model = info.get("model", {}) if isinstance(info.get("model"), dict) else {}
    get = lambda key: info.get(key, model.get(key))  # noqa: E731 - flat or nested run info
    val, unigram = _number(get("val_loss")), _number(get("unigram_val_loss"))
    n_params = _number(get("n_params"))
    cols = st.columns(5)
    cols[0].metric("activation function", str(get("act_fn") or "–"))
    cols[1].metric("parameters", f"{n_params:,.0f}" if math.isfinite(n_params) else "–")
    cols[2].metric("validation loss", f"{val:.3f}" if math.isfinite(val) else "–",
                   delta=f"{val - unigram:+.3f} vs unigram"
                   if math.isfinite(val) and math.isfinite(unigram) else None,
                   delta_color="inverse")
    cols[3].metric("unigram baseline", f"{unigram:.3f}" if math.isfinite(unigram) else "–")
    n_tokens = _number(get("stats_tokens") if get("stats_tokens") is not None else get("n_tokens"))
    cols[4].metric("tokens in statistics", f"{n_tokens:,.0f}" if math.isfinite(n_tokens) else "–")


def metrics_table(path: str) -> None:
    """One row per dictionary; each name links to its feature browser."""
    table = store_access.metrics(path).copy()
    table.insert(0, "browse", [f"{links.URL_PATHS[links.BROWSER]}?dictionary={d}"
                               for d in table["dictionary"]])
    for col in ("dead_fraction", "ce_loss_recovered"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce") * 100
    shown = [c for c in ("browse", "dictionary", "n_features", "l0", "fvu",
                         "ce_loss_recovered", "dead_fraction", "dead_eval_tokens",
                         "n_ultralow", "n_dense", "recipe") if c in table]
    st.dataframe(
        table[shown], hide_index=True,
        column_config={
            "browse": st.column_config.LinkColumn("", display_text="browse", width="small"),
            "n_features": st.column_config.NumberColumn("features", format="%d"),
            "l0": st.column_config.NumberColumn("L0", format="%.1f",
                                                help="mean active features per token"),
            "fvu": st.column_config.NumberColumn("FVU", format="%.3f",
                                                 help="fraction of variance unexplained"),
            "ce_loss_recovered": st.column_config.NumberColumn(
                "CE recovered %", format="%.1f",
                help="(CE zero-ablation − CE with dictionary) / (CE zero-ablation − CE clean)"),
            "dead_fraction": st.column_config.NumberColumn("dead %", format="%.1f"),
            "dead_eval_tokens": st.column_config.NumberColumn(
                "dead: tokens checked", format="%d",
                help="a feature is dead if it never fired on this many evaluation tokens"),
            "n_ultralow": st.column_config.NumberColumn("ultralow", format="%d"),
            "n_dense": st.column_config.NumberColumn("dense", format="%d"),
        })


def charts_row(path: str) -> None:
    order = store_access.dictionaries(path)
    left, right = st.columns([3, 2])
    with left:
        light_plotly.chart(charts.density_histograms_figure(store_access.density_histograms(path),
                                                            order), key="overview_density")
    with right:
        light_plotly.chart(charts.ce_recovered_figure(store_access.metrics(path), order),
                           key="overview_ce")
