"""Prompt explorer views: a typed prompt's tokens, its active features, and what ablating or
clamping one feature does to the next-token distribution.

The only dashboard module that needs the live model; it reaches it through
`feature_store.live`, which imports torch when the run is opened, so no other page pays for it.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import links, token_html
from feature_store.live import LiveRun, NextTokenChange, PromptActivations


@st.cache_resource(show_spinner="Loading the model and SAEs…")
def live_run(store_path: str) -> LiveRun:
    """One live model per store, shared read-only by every session."""
    return LiveRun.open(store_path)


@st.cache_data(show_spinner=False, max_entries=64)
def prompt_activations(store_path: str, text: str, dictionary: str) -> PromptActivations:
    return live_run(store_path).activations(text, dictionary)


@st.cache_data(show_spinner=False, max_entries=64)
def intervention(store_path: str, text: str, dictionary: str, feature: int, mode: str,
                 value: float, everywhere: bool) -> list[NextTokenChange]:
    return live_run(store_path).intervene(text, dictionary, feature, mode=mode, value=value,
                                          everywhere=everywhere)


def tokens_html(acts: PromptActivations, values: np.ndarray, mode: str, title: str) -> str:
    """The prompt's tokens shaded by `values` (a feature's activation, or a per-token KL)."""
    finite = values[np.isfinite(values)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    spans = []
    for i, (token, value) in enumerate(zip(acts.tokens, values)):
        background = (token_html.activation_background(float(value), scale) if mode == "act"
                      else token_html.ablation_background(float(value), scale))
        spans.append(token_html.token_span(token, background, f"#{i} {title} {value:.3f}"))
    return f'<div class="tokens">{"<wbr>".join(spans)}</div>'


def top_features_table(acts: PromptActivations, dictionary: str, per_token: int = 3) -> pd.DataFrame:
    """One row per token: its strongest features, each a link to its feature page."""
    rows = []
    for pos in range(1, len(acts.tokens)):
        row = {"pos": pos, "token": acts.tokens[pos]}
        order = np.argsort(-acts.acts[pos])[:per_token]
        for rank, idx in enumerate(order):
            value = float(acts.acts[pos, idx])
            if value > 0:
                row[f"feature {rank + 1}"] = links.feature_url(dictionary, int(idx))
                row[f"act {rank + 1}"] = round(value, 3)
        rows.append(row)
    return pd.DataFrame(rows)


def feature_table_config(per_token: int = 3) -> dict:
    return {f"feature {r}": st.column_config.LinkColumn(f"feature {r}", display_text=r"feature=(\d+)")
            for r in range(1, per_token + 1)}


def distribution_html(rows: tuple[tuple, ...], *formats: str,
                      header: tuple[str, ...] = ()) -> str:
    """(token, number, ...) rows: the token escaped once, each number in its format."""
    head = ("<tr><th></th>" + "".join(f"<th class='v'>{html.escape(h)}</th>" for h in header)
            + "</tr>") if header else ""
    cells = "".join(f"<tr><td>{token_html.inline_tokens_html([row[0]])}</td>"
                    + "".join(f"<td class='v'>{fmt.format(x)}</td>" for fmt, x in zip(formats, row[1:]))
                    + "</tr>" for row in rows)
    return f"<table class='logits'>{head}{cells}</table>"


def change_panel(change: NextTokenChange, token: str) -> None:
    st.markdown(f"Next token after position {change.position}: KL(before ‖ after) = "
                f"{change.kl:.4f} nats")
    st.html(token_html.inline_tokens_html([token]))  # corpus text: escaped there, once
    before, after, moved = st.columns(3)
    before.markdown("**Before**")
    before.html(distribution_html(change.top_before, "{:.3f}"))
    after.markdown("**After**")
    after.html(distribution_html(change.top_after, "{:.3f}"))
    moved.markdown("**Most probability moved**", help="Tokens ranked by |Δp|, with Δ log p "
                   "beside it (the log-probability change alone favours tokens too rare to matter).")
    moved.html(distribution_html(change.biggest_changes, "{:+.3f}", "{:+.2f}",
                                 header=("Δp", "Δ log p")))
