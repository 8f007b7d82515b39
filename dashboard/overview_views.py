"""The overview page's sections: the model, one row per dictionary, and two charts."""

from __future__ import annotations

import html
import math

import pandas as pd
import streamlit as st

from dashboard import charts, light_plotly, links, store_access, token_html
from dashboard.feature_views import finite_or_dash, threshold_text
from feature_store import schema


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def model_summary(path: str) -> None:
    """act_fn, parameters, and validation loss against the unigram baseline: a model that
    barely beats unigram statistics has little for features to explain. One HTML element,
    not five `st.metric`s: each widget type costs the first visit a lazily loaded chunk."""
    info = store_access.run_info(path)
    model = info.get("model", {}) if isinstance(info.get("model"), dict) else {}
    get = lambda key: info.get(key, model.get(key))  # noqa: E731 - flat or nested run info
    val, unigram = _number(get("val_loss")), _number(get("unigram_val_loss"))
    n_params = _number(get("n_params"))
    n_tokens = _number(get("stats_tokens") if get("stats_tokens") is not None else get("n_tokens"))
    if get("activations") == "planted":
        st.warning("This run's activations are **planted**: samples of a known sparse "
                   "dictionary seen through a random rotation (`activations.source = "
                   "\"planted\"`), not the model's MLP. Its features check the pipeline "
                   "against a known answer; their examples and logit effects say nothing "
                   "about the model or the text.")
    if get("overfit"):  # the model stage's finding (pipelines/model/stage.py: overfit_note)
        st.warning(f"The model overfits its corpus: {get('overfit')}. Its features may describe "
                   "memorised training text more than the language.")
    trained, passes = _number(get("tokens_trained")), _number(get("train_passes"))
    below = ""
    if math.isfinite(val) and math.isfinite(unigram):
        below = f"{abs(unigram - val):.3f} nats {'below' if val <= unigram else 'ABOVE'} unigram"
    st.html(token_html.stats_html([
        ("activation function", str(get("act_fn") or "–"), "", "The MLP's activation function."),
        ("parameters", finite_or_dash(n_params, ",.0f"), "", "Parameters of the transformer."),
        ("tokens trained", finite_or_dash(trained, ",.0f"),
         f"{passes:.1f} passes over the training split" if math.isfinite(passes) else "",
         "Tokens the model was trained on; passes: how many times it saw each training token."),
        ("validation loss", finite_or_dash(val, ".3f"), below,
         "Cross-entropy (nats per token) on held-out documents."),
        ("unigram baseline", finite_or_dash(unigram, ".3f"), "",
         "Cross-entropy of the training set's token frequencies on the same held-out tokens."),
        ("tokens in statistics", finite_or_dash(n_tokens, ",.0f"), "",
         "Held-out tokens behind every density, histogram and example in this store."),
    ]))


# How pages show a column of metrics.parquet (`schema.METRIC_COLUMNS`): (header, number
# format or "" for text, hover help). `mse` is not shown: FVU is the same error, normalised.
METRIC_DISPLAY = {
    "dictionary": ("dictionary", "", ""),
    "n_features": ("features", ",.0f", ""),
    "l0": ("L0", ".1f", "mean active features per token"),
    "fvu": ("FVU", ".3f", "fraction of variance unexplained"),
    "ce_loss_recovered": ("CE recovered", ".1%",
                          "(CE zero-ablation − CE with dictionary) / (CE zero-ablation − CE clean)"),
    "ce_loss_recovered_mean_ablation": (
        "CE rec. vs mean abl.", ".1%",
        "the same against mean ablation, a stricter baseline than zero ablation"),
    "kl_div": ("KL", ".3f", "KL(clean next-token distribution ‖ with the dictionary), nats"),
    "dead_fraction": ("dead", ".1%", "never fired on the evaluation tokens (next column)"),
    "dead_eval_tokens": ("tokens checked", ",.0f",
                         "a feature is dead if it never fired on this many evaluation tokens"),
    "n_ultralow": ("ultralow", ",.0f",
                   f"features with density below {threshold_text(schema.ULTRALOW_DENSITY)}"),
    "n_dense": ("dense", ",.0f",
                f"features with density above {threshold_text(schema.DENSE_DENSITY)}"),
    "recipe": ("recipe", "", "training recipe (topk, l1, identity for the raw neurons)"),
}
# The overview table's columns, (column, header, format, hover help), in the schema's order;
# a column the store lacks is left out.
METRIC_TABLE_COLUMNS = tuple((column, *METRIC_DISPLAY[column])
                             for column in schema.METRIC_COLUMNS if column in METRIC_DISPLAY)


def metrics_table_html(table: pd.DataFrame) -> str:
    """The per-dictionary table as plain HTML (a handful of rows needs no data grid, whose
    code is 1.2 MB of JavaScript on a first visit). Pure, so it is testable."""
    return table_html(table, [c for c in METRIC_TABLE_COLUMNS if c[0] in table])


def table_html(table: pd.DataFrame, columns) -> str:
    """A few rows as a plain `run-table`: `columns` are (column, header, number format or ""
    for text, hover help); numbers that are missing or not finite show as a dash."""
    head = "".join(f'<th class="{"n" if fmt else "t"}" title="{html.escape(help_text, quote=True)}">'
                   f"{html.escape(label)}</th>" for _, label, fmt, help_text in columns)
    rows = []
    for _, row in table.iterrows():
        cells = []
        for column, _, fmt, _ in columns:
            value = row[column]
            if fmt:
                number = _number(value)
                cells.append(f'<td class="n">{html.escape(finite_or_dash(number, fmt))}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="run-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def metrics_table(path: str) -> None:
    """One row per dictionary, then a link to each dictionary's feature browser."""
    table = store_access.metrics(path)
    st.html(metrics_table_html(table))
    with st.container(horizontal=True, gap="small"):
        for dictionary in table["dictionary"]:
            st.page_link(links.BROWSER, label=f"browse {dictionary}",
                         query_params={"dictionary": str(dictionary)})


def charts_row(path: str) -> None:
    order = store_access.dictionaries(path)
    left, right = st.columns([3, 2])
    with left:
        light_plotly.chart(charts.density_histograms_figure(store_access.density_histograms(path),
                                                            order), key="overview_density")
    with right:
        light_plotly.chart(charts.ce_recovered_figure(store_access.metrics(path), order),
                           key="overview_ce")
