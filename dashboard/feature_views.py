"""The parts of a feature page, each taking a `FeatureRecord` and drawing one section.

The page script (`app_pages/feature.py`) only parses the URL and calls these in order; the
compare-sizes page reuses `compact_column`. All token text goes through `token_html`.
"""

from __future__ import annotations

import html
import json
import math

import streamlit as st

from dashboard import charts, light_plotly, links, store_access, token_html
from feature_store import schema
from feature_store.records import FeatureRecord, Neighbour

N_NEIGHBOUR_LINKS = 8  # per dictionary: enough to see a split, few enough to scan
COMPACT_CONTEXT = (5, 2)  # in the narrow columns of the compare page
PREVIOUS, NEXT = "← previous", "next →"  # link labels; the ← / → keys press them


def threshold_text(value: float) -> str:
    """A density threshold as the pages write it: `3e-7`, not Python's `3e-07`."""
    mantissa, _, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def density_text(record: FeatureRecord) -> str:
    if record.density <= 0:
        return "never fires"
    return f"{record.density:.2e} (1 in {1 / record.density:,.0f} tokens)"


def one_in(record: FeatureRecord) -> str:
    return f"1 in {1 / record.density:,.0f} tokens" if record.density > 0 else "never fires"


def interval_heading(number: int, interval, n_intervals: int, count: bool = True) -> str:
    """`Interval n · [lo, hi) · share`: numbers only, so no corpus text needs escaping here."""
    closing = "]" if number == n_intervals else ")"
    tail = f" ({interval.count:,})" if count else ""
    return (f"<div class='interval-head'><b>Interval {number}</b> · "
            f"[{interval.lo:.3f}, {interval.hi:.3f}{closing} · "
            f"<b>{interval.share:.1%}</b> of activations{tail}</div>")


def density_caveat(record: FeatureRecord) -> str:
    """A line of HTML (numbers only) saying what the density class means for reading this
    unit, or "" for a normal one: the class alone is easy to overlook."""
    if record.density_class == "dead":
        return (f"<p class='caveat'>Dead: never fired on the {record.n_tokens:,} tokens the "
                "statistics cover, so there is nothing here to interpret.</p>")
    if record.density_class == "ultralow":
        return (f"<p class='caveat'>Ultralow density (fired on {record.n_active:,} of "
                f"{record.n_tokens:,} tokens): such features form their own cluster in the density "
                "histogram and are mostly hard to interpret; few examples back each interval, and "
                "the splitting families leave them out.</p>")
    if record.density_class == "dense":
        return (f"<p class='caveat'>Dense: fires on more than 1 in "
                f"{1 / schema.DENSE_DENSITY:,.0f} tokens, so its top examples say little about "
                "what it does; read the lower intervals and the logit effects too.</p>")
    return ""


def header(record: FeatureRecord) -> None:
    """Title, the numbers that classify the feature, and where to go next."""
    title = (f"<h3 class='feature-title'>{html.escape(record.dictionary)} · feature "
             f"{record.index} <span>of {record.n_features:,}</span></h3>")
    st.html(title + token_html.stats_html([
        ("density", f"{record.density:.2e}", one_in(record),
         "Share of tokens on which the activation is > 0."),
        ("class", record.density_class, "",
         f"dead: never fires; ultralow: < {threshold_text(schema.ULTRALOW_DENSITY)}; normal; "
         f"dense: > {threshold_text(schema.DENSE_DENSITY)}"),
        ("active tokens", f"{record.n_active:,}", f"of {record.n_tokens:,}",
         f"of the {record.n_tokens:,} tokens the statistics cover"),
        ("mean act", f"{record.mean_act:.3f}", "over active tokens", "Mean activation where > 0."),
        ("max act", f"{record.max_act:.3f}", "", "Largest activation seen."),
    ]) + density_caveat(record))
    with st.container(horizontal=True, gap="small"):
        if record.index > 0:
            links.feature_link(record.dictionary, record.index - 1, PREVIOUS, help="key: ←")
        if record.index + 1 < record.n_features:
            links.feature_link(record.dictionary, record.index + 1, NEXT, help="key: →")
        links.feature_link(record.dictionary, record.index, "Compare sizes", links.COMPARE)
        links.feature_link(record.dictionary, record.index, links.splitting_label(record.dictionary), links.SPLITTING)
        links.feature_link(record.dictionary, record.index, "Browse", links.BROWSER)
        links.feature_link(record.dictionary, record.index, "Score it", links.SCORE,
                           help="Score this unit on the rubric, knowingly (stored as not blind).")


SHORTCUTS_MARK = "data-feature-shortcuts"  # TOKEN_CSS hides the element that carries it
# ← / → press the page's own "← previous" / "next →" links, so paging through features is
# the same in-app navigation (URL, back button) as a click. Installed once per tab and only
# acting on /feature, outside text fields and without modifier keys.
_SHORTCUTS_JS = r"""(function () {
  if (window.__featureShortcuts) return;
  window.__featureShortcuts = true;
  var labels = %(labels)s;
  document.addEventListener("keydown", function (e) {
    var label = labels[e.key], t = e.target;
    if (!label || e.repeat || e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey ||
        e.shiftKey) return;  // held keys: one step per press, not a pile of navigations
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    if (!/\/feature\/?$/.test(location.pathname)) return;
    var links = document.querySelectorAll("a");
    for (var i = 0; i < links.length; i++) {
      if (links[i].textContent.trim() === label) { e.preventDefault(); links[i].click(); return; }
    }
  });
})();"""


def keyboard_shortcuts() -> None:
    """← and → for the previous and next feature (a hidden element; no corpus text)."""
    script = _SHORTCUTS_JS % {"labels": json.dumps({"ArrowLeft": PREVIOUS, "ArrowRight": NEXT})}
    st.html(f"<script {SHORTCUTS_MARK}>{script}</script>", unsafe_allow_javascript=True)


def logits(record: FeatureRecord) -> None:
    """Top raised and lowered next-token logits side by side (wrapping when a token is
    long), then the histogram of all of them."""
    scale = max([abs(e.value) for e in record.top_logits + record.bottom_logits] or [0.0])
    st.html(token_html.logit_columns_html(record.top_logits, record.bottom_logits, scale))
    light_plotly.chart(charts.logit_histogram_figure(record), key="feature_logit_histogram")


def neighbour_links(title: str, neighbours: tuple[Neighbour, ...], absolute: bool = False) -> None:
    """A wrap of small links, each with its cosine, so a split is visible at a glance."""
    if not neighbours:
        return
    st.markdown(f"**{title}**")
    shown = neighbours[:N_NEIGHBOUR_LINKS]
    cols = st.columns(2)
    for i, n in enumerate(shown):
        with cols[i % 2]:
            cosine = abs(n.cosine) if absolute else n.cosine
            links.feature_link(n.dictionary, n.index, f"#{n.index} · {cosine:+.2f}"
                               if not absolute else f"#{n.index} · |cos| {cosine:.2f}")


def related(record: FeatureRecord) -> None:
    """Aligned neurons, nearest features here and in every other size."""
    if record.aligned_neurons:
        neighbour_links("Aligned neurons", record.aligned_neurons, absolute=True)
    neighbour_links(f"Nearest in {record.dictionary}", record.neighbours)
    for other, neighbours in record.counterparts:
        neighbour_links(f"Nearest in {other}", neighbours)


def shading_mode(record: FeatureRecord) -> token_html.Mode:
    """How the examples' tokens are shaded, from the URL (`?shade=ablation`), and the switch
    that flips it: a page link drawn as a toggle (Material's toggle icons), not `st.toggle`.
    So a shared URL shows the same shading, the back button undoes a switch, and a first
    visit loads no widget code (the toggle's lazily loaded chunk held the whole page back
    by about 0.1 s)."""
    on = st.query_params.get("shade") == "ablation"
    params = links.feature_params(record.dictionary, record.index)
    if not on:
        params["shade"] = "ablation"
    st.page_link(links.FEATURE, label=f"Shade by ablation effect: {'on' if on else 'off'}",
                 query_params=params,
                 icon=":material/toggle_on:" if on else ":material/toggle_off:",
                 help="Colour each token by Δ log p(next token) when this feature is removed "
                      "at it, instead of by the feature's activation.")
    return "ablation" if on else "activation"


def examples(record: FeatureRecord, mode: token_html.Mode) -> None:
    """Top examples, then all 11 intervals (highest first), each with its share and range.

    One `st.html` element for the whole section: on a first visit the browser's time goes
    into rendering Streamlit elements, and 25 small ones cost more than one of the same HTML."""
    everything = list(record.top_examples)
    for interval in record.intervals:
        everything.extend(interval.examples)
    scale = token_html.ablation_scale(everything) if mode == "ablation" else record.max_act
    parts = [token_html.legend_html(mode, scale),
             f"<div class='interval-head'><b>Top activations</b> ({len(record.top_examples)})</div>",
             token_html.examples_html(record.top_examples, mode, scale,
                                      token_html.EXAMPLE_CONTEXT,
                                      empty="This feature never fired."),
             f"<div class='interval-head'><b>{len(record.intervals)} equal-width intervals over "
             "(0, max act]</b>, examples drawn uniformly from each</div>"]
    for number, interval in reversed(list(enumerate(record.intervals, start=1))):
        parts.append(interval_heading(number, interval, len(record.intervals)))
        parts.append(token_html.examples_html(interval.examples, mode, scale,
                                              token_html.EXAMPLE_CONTEXT,
                                              empty="no activations in this interval"))
    st.html("".join(parts))


def activation_histogram(record: FeatureRecord) -> None:
    light_plotly.chart(charts.activation_histogram_figure(record), key="feature_activation_histogram")


def compact_column(record: FeatureRecord, caption: str, n_examples: int = 8,
                   n_logits: int = 6,
                   context: tuple[int, int] = COMPACT_CONTEXT) -> None:
    """One dictionary's feature in a narrow column: density, logits, top examples cropped
    to a few tokens around the drawn one."""
    links.feature_link(record.dictionary, record.index,
                       f"{record.dictionary} #{record.index}")
    st.caption(caption)
    st.markdown(f"density {density_text(record)} · max {record.max_act:.2f} · "
                f"{record.density_class}")
    scale = max([abs(e.value) for e in record.top_logits[:n_logits]] or [0.0])
    st.html(token_html.logit_table_html(record.top_logits[:n_logits], scale, raises=True))
    st.html(token_html.examples_html(record.top_examples[:n_examples], "activation",
                                     record.max_act, context=context,
                                     empty="never fired", wrap=True))


def finite_or_dash(value: float, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def go_to(path: str, record: FeatureRecord, page: str) -> None:
    """A small form to jump to another feature on the same page (the URL follows)."""
    names = store_access.dictionaries(path)
    with st.form(key=f"go_to_{page}", border=False):
        a, b, c = st.columns([2, 1, 1], vertical_alignment="bottom")
        dictionary = a.selectbox("dictionary", names, index=names.index(record.dictionary))
        index = b.number_input("feature", min_value=0, value=record.index, step=1)
        if c.form_submit_button("Go"):
            links.open_feature(dictionary, int(index), page)
