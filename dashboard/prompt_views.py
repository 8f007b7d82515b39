"""Prompt explorer views: a typed prompt's tokens, its active features, and what ablating or
clamping one feature does to the next-token distribution.

The only dashboard module that needs the live model; it reaches it through
`feature_store.live`, which imports torch when the run is opened, so no other page pays for it.

The view follows the prompt. The URL keeps the last view (text, dictionary, feature,
position) so it can be shared, but a feature index means something only in the dictionary it
was chosen in, and a position only for the text and feature it was chosen for: when the
prompt, the dictionary or the feature changes, the stale parts are dropped
(`feature_for`, `position_for`) instead of showing, say, the next-token changes at a
position where the new feature does not fire (all +0.000). A click on a token picks the
position (`token_strip`, a small custom component).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import links, token_html
from feature_store.live import LiveRun, NextTokenChange, PromptActivations

POSITION_KEY = "prompt_position"  # the position slider's widget key


class BadFeature(ValueError):
    """`?feature=` is not a feature of the dictionary it names; the message says why."""


def feature_for(raw: str | None, chosen_in: str, dictionary: str, n_features: int,
                default: int) -> int:
    """The feature to show in `dictionary`, given the URL's `raw` index chosen in dictionary
    `chosen_in` (the URL's dictionary, i.e. the last view's). An index chosen in another
    dictionary is dropped for `default` (the reader just switched dictionary: feature 12 of
    sae_512 is unrelated to feature 12 of sae_1024). An index for this dictionary that is
    not a number or out of range is bad input: `BadFeature` names it and the valid range."""
    if chosen_in != dictionary or raw is None or raw.strip() == "":
        return default
    try:
        index = int(raw)
    except ValueError:
        raise BadFeature(f"Feature {raw!r} is not a number; {dictionary} has features "
                         f"0 to {n_features - 1}.") from None
    if not 0 <= index < n_features:
        raise BadFeature(f"No feature {index} in {dictionary}: it has features 0 to "
                         f"{n_features - 1}.")
    return index


def strongest_position(values: np.ndarray) -> int | None:
    """The position after BOS where `values` is largest and positive, else None."""
    if len(values) < 2:
        return None
    after_bos = np.nan_to_num(np.asarray(values[1:], dtype=float), nan=0.0)
    best = int(np.argmax(after_bos))
    return best + 1 if after_bos[best] > 0 else None


def default_position(feature_acts: np.ndarray, kl: np.ndarray) -> int:
    """Where the feature fires most (where ablating it changes something); if it is silent
    in this prompt, where the intervention moves the distribution most (a clamp
    everywhere); else the last token."""
    for values in (feature_acts, kl):
        found = strongest_position(values)
        if found is not None:
            return found
    return len(kl) - 1


def position_for(*, widget: int | None, url: str | None, same_view: bool, default: int,
                 n_positions: int) -> int:
    """The position to show: the slider's (or a clicked token's) value while the view is
    unchanged, else the URL's (a shared link, a reload) while it matches the view, else
    `default`. Clamped to the prompt."""
    pos = default
    if same_view and widget is not None:
        pos = widget
    elif same_view and url is not None:
        try:
            pos = int(url)
        except ValueError:
            pos = default
    return min(max(int(pos), 0), n_positions - 1)


def same_view(url: Mapping[str, str], current: Mapping[str, str],
              defaults: Mapping[str, str]) -> bool:
    """Whether the URL (the last view) shows what is shown now: a missing URL parameter
    stands for its default."""
    return all(url.get(key, defaults.get(key)) == value for key, value in current.items())


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
    """The prompt's tokens shaded by `values` (a feature's activation, or a per-token KL);
    one `.tok` span per position, in order (the click handler counts on it)."""
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


def change_panel(change: NextTokenChange, token: str, note: str | None = None) -> None:
    """Before / after / most moved at one position; `note` (from `silent_note`) replaces
    the tables when nothing moved."""
    st.markdown(f"Next token after position {change.position}: KL(before ‖ after) = "
                f"{change.kl:.4f} nats")
    st.html(token_html.inline_tokens_html([token]))  # corpus text: escaped there, once
    if note:
        st.info(note)
        st.markdown("**Next-token distribution** (unchanged)")
        st.html(distribution_html(change.top_before, "{:.3f}"))
        return
    before, after, moved = st.columns(3)
    before.markdown("**Before**")
    before.html(distribution_html(change.top_before, "{:.3f}"))
    after.markdown("**After**")
    after.html(distribution_html(change.top_after, "{:.3f}"))
    moved.markdown("**Most probability moved**", help="Tokens ranked by |Δp|, with Δ log p "
                   "beside it (the log-probability change alone favours tokens too rare to matter).")
    moved.html(distribution_html(change.biggest_changes, "{:+.3f}", "{:+.2f}",
                                 header=("Δp", "Δ log p")))


# Renders the strip's HTML (built and escaped by token_html in Python) and reports a click on
# the n-th token as position n. Runs again whenever the data changes.
_STRIP_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector(".prompt-strip");
  root.innerHTML = data.html;
  root.querySelectorAll(".tok").forEach((span, i) => {
    if (i === data.pos) span.classList.add("c");
    span.addEventListener("click", () => setTriggerValue("pos", i));
  });
}
"""
_STRIP_CSS = token_html.TOKEN_CSS + """
.prompt-strip .tok { cursor: pointer; }
.prompt-strip .tok.c { outline: 2px solid #333; }
"""
_strip = None


def _strip_component():
    """Defined on first use, not at import (importing does nothing)."""
    global _strip
    if _strip is None:
        _strip = st.components.v2.component(
            "prompt_token_strip", html='<div class="prompt-strip"></div>', css=_STRIP_CSS,
            js=_STRIP_JS)
    return _strip


def _take_click(key: str) -> None:
    """Callback: a clicked token becomes the slider's value before the page reruns."""
    clicked = getattr(st.session_state.get(key), "pos", None)
    if clicked is not None:
        st.session_state[POSITION_KEY] = int(clicked)


def token_strip(strip_html: str, pos: int, key: str) -> None:
    """The prompt's tokens (shaded HTML from `tokens_html`), the chosen position outlined;
    clicking a token moves the position there."""
    _strip_component()(key=key, data={"html": strip_html, "pos": int(pos)},
                       on_pos_change=partial(_take_click, key))


def silent_note(change: NextTokenChange, feature: int, mode: str) -> str | None:
    """Why nothing moved at this position (rather than a list of tokens at +0.000)."""
    if change.kl > 0 or any(abs(row[1]) > 0 for row in change.biggest_changes):
        return None
    if change.position == 0:
        return "Position 0 is BOS: interventions leave it alone."
    if mode == "ablate":
        return (f"Feature #{feature} does not fire at position {change.position}, so ablating "
                "it changes nothing here. Click a shaded token (or move the slider) to see its "
                "effect where it fires.")
    return f"The intervention changes nothing at position {change.position}."
