"""The parts of a feature page, each taking a `FeatureRecord` and drawing one section.

The page script (`app_pages/feature.py`) only parses the URL and calls these in order; the
compare-sizes page reuses `compact_column`. All token text goes through `token_html`.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

import streamlit as st

from dashboard import charts, light_plotly, links, store_access, token_html
from dashboard.colours import UNLISTED_DICTIONARY
from feature_store import schema
from feature_store.records import (NEURONS, NEURONS_PRE_LN, FeatureRecord, Neighbour, Unit,
                                    is_neurons)

N_NEIGHBOUR_LINKS = 6  # per list: enough to see a split, few enough to scan
N_CHIP_TOKENS = 4  # top tokens beside each listed unit: what it is, at a glance
ABLATION_VIEW = {"shade": "ablation"}  # the URL parameter of the ablation shading
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


# A dead unit's one block (in place of an empty chart and eleven empty intervals): boxed, so
# it reads as the page's message rather than a footnote.
DEAD_BLOCK_STYLE = ("border:1px solid #e0c080;background:#fff8e6;border-radius:6px;"
                    "padding:0.6rem 0.8rem;margin:0.4rem 0 0.8rem;font-size:0.95rem")


def density_caveat(record: FeatureRecord) -> str:
    """A line of HTML (numbers only) saying what the density class means for reading this
    unit, or "" for a normal one: the class alone is easy to overlook."""
    if record.density_class == "dead":
        return (f"<div class='caveat' style='{DEAD_BLOCK_STYLE}'><b>Dead: never fired on the "
                f"{record.n_tokens:,} tokens the statistics cover</b>, so there are no "
                "examples, intervals or activation histogram to show and nothing to interpret "
                "from its behaviour. Below, from its weights alone: the logits it would raise "
                "and lower if it fired, and its nearest units.</div>")
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
        view = kept_view()  # previous / next (and so the ← / → keys) keep the shading
        if record.index > 0:
            links.feature_link(record.dictionary, record.index - 1, PREVIOUS, help="key: ←",
                               view=view)
        if record.index + 1 < record.n_features:
            links.feature_link(record.dictionary, record.index + 1, NEXT, help="key: →",
                               view=view)
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


def not_applicable(path: str, dictionary: str) -> dict[str, str]:
    """Statistic -> why it does not apply to this dictionary, as the store says (e.g. no
    logit weights before a LayerNorm); empty for SAEs and plain neurons."""
    return dict(store_access.dictionary_info(path, dictionary).get("not_applicable") or {})


def not_applicable_html(title: str, reason: str) -> str:
    """A boxed note in place of a section that does not apply (the reason is the store's
    text, escaped like any stored string)."""
    return (f"<div class='not-applicable' style='{NOT_APPLICABLE_STYLE}'><b>"
            f"{html.escape(title)}</b><br>{html.escape(reason)}</div>")


NOT_APPLICABLE_STYLE = ("border:1px solid #c8c8d8;background:#f6f6fb;border-radius:6px;"
                        "padding:0.5rem 0.7rem;margin:0.4rem 0 0.8rem;font-size:0.9rem")


def same_unit_link(path: str, record: FeatureRecord) -> None:
    """For a SoLU neuron: the same neuron read at the MLP's other hook (before / after the
    mid-MLP LayerNorm), one click away, keeping the view. Nothing for other dictionaries."""
    twin = store_access.dictionary_info(path, record.dictionary).get("same_units_as")
    if not twin or twin not in store_access.dictionaries(path):
        return
    where = ("before the mid-MLP LayerNorm" if twin == NEURONS_PRE_LN
             else "after the mid-MLP LayerNorm (what W_out reads)")
    links.feature_link(twin, record.index, f"Same neuron {where}: {twin} #{record.index}",
                       view=kept_view(),
                       help="Compare the intervals: the LayerNorm rescales every token by the "
                            "norm over all neurons, which reorders the weak activations.")


def logits(record: FeatureRecord, not_applicable: str | None = None) -> None:
    """Top raised and lowered next-token logits side by side (wrapping when a token is
    long), then the histogram of all of them; or why there are none."""
    if not_applicable:
        st.html(not_applicable_html("Logit weights: not applicable", not_applicable))
        return
    scale = max([abs(e.value) for e in record.top_logits + record.bottom_logits] or [0.0])
    st.html(token_html.logit_columns_html(record.top_logits, record.bottom_logits, scale))
    light_plotly.chart(charts.logit_histogram_figure(record), key="feature_logit_histogram")


@dataclass(frozen=True)
class RelatedList:
    """One list of nearby units and, in words, what its cosine measures: the lists measure
    different things (see `related_lists`), so each says which."""

    dictionary: str  # where the listed units live
    title: str
    measure: str
    units: tuple[Neighbour, ...]


DECODER_COSINE = "decoder cosine: the same direction in the MLP's activations"


def related_lists(record: FeatureRecord) -> list[RelatedList]:
    """The page's lists of nearby units, own dictionary first, then the other SAEs, then the
    neurons. How the stats stage measures each (pipelines/stats/stage.py, directions.py):

    - SAE to SAE: cosine of decoder directions in the MLP's activation space (d_mlp).
    - SAE feature to neurons, two different numbers, hence two lists: "made of" is the same
      decoder cosine against each neuron's own axis, d[j] / |d| (its squares over all neurons
      sum to 1); "same output" compares what each writes to the residual stream, W_out·d
      against the neuron's W_out row, ranked by |cosine|. Many neurons' outputs share the
      smaller residual stream, so a neuron can write nearly the same direction without being
      part of the feature: merged into one list, the two would read as one measure.
    - Neuron to neurons: their axes are orthogonal, so only their W_out rows can differ.
    - Neuron to SAE features: each feature's "made of" weight on this neuron."""
    units = {other: listed(found) for other, found in record.counterparts}
    if is_neurons(record.dictionary):
        out = [RelatedList(record.dictionary, "Nearest neurons by output",
                           "cosine of W_out rows (what each writes to the residual stream); "
                           "their own axes are orthogonal, so this is the cosine that varies",
                           listed(record.neighbours))]
        out += [RelatedList(other, f"{other} features made of it",
                            "each feature's decoder weight on this neuron, d[j] / |d| (the "
                            "cosine of its direction with this neuron's axis), largest first",
                            found) for other, found in units.items()]
        return [r for r in out if r.units]
    out = [RelatedList(record.dictionary, f"Nearest in {record.dictionary}", DECODER_COSINE,
                       listed(record.neighbours))]
    out += [RelatedList(other, f"Nearest in {other}", DECODER_COSINE, found)
            for other, found in units.items() if other != NEURONS]
    out.append(RelatedList(NEURONS, "Neurons it is made of",
                           "its decoder direction's weight on each neuron, d[j] / |d| (the "
                           "cosine with the neuron's own axis; squares over all neurons sum "
                           "to 1), largest first", units.get(NEURONS, ())))
    out.append(RelatedList(NEURONS, "Neurons with the same output",
                           "cosine of what it writes to the residual stream (W_out·d) with "
                           "each neuron's W_out row, largest |cos| first. Many neurons share "
                           "the smaller residual stream, so a neuron can score high here "
                           "without being part of the feature (compare the list above)",
                           listed(record.aligned_neurons)))
    return [r for r in out if r.units]


def listed(units: tuple[Neighbour, ...]) -> tuple[Neighbour, ...]:
    """Without the writer's padding (index -1: fewer units than asked for)."""
    return tuple(n for n in units if n.index >= 0)


@st.cache_data(show_spinner=False, max_entries=1024)
def top_tokens_of(path: str, units: tuple[Unit, ...]) -> dict[Unit, list[str]]:
    """Each unit's top tokens (the browse table's `top_tokens`: its top examples' first
    distinct drawn tokens), so a listed neighbour says what it is, not only its number.
    Cached per feature page: the store copies a whole features table per dictionary asked."""
    store = store_access.open_store(path)
    wanted: dict[str, list[int]] = {}
    for dictionary, index in units:
        wanted.setdefault(dictionary, []).append(index)
    out: dict[Unit, list[str]] = {}
    for dictionary, indices in wanted.items():
        text = store.features(dictionary)["top_tokens"]  # rows are indices 0..n-1
        for index in indices:  # `.iat`: a whole column to numpy costs ~4 ms per 16k rows
            shown = str(text.iat[index] or "") if 0 <= index < len(text) else ""
            out[Unit(dictionary, index)] = [t for t in shown.split(" ") if t]
    return out


def related_row_html(dictionary: str, unit: Neighbour, tokens: list[str],
                     view: dict[str, str]) -> str:
    """`#17  +0.83  tok tok tok`: a link keeping the page's view, the cosine, top tokens."""
    url = html.escape(links.feature_url(dictionary, unit.index, view=view), quote=True)
    chips = (token_html.inline_tokens_html(tokens[:N_CHIP_TOKENS]) if tokens
             else '<span class="legend">no examples (never fires)</span>')
    return (f'<tr><td style="padding:0 0.5em 0 0;white-space:nowrap">'
            f'<a href="{url}" target="_self">#{unit.index}</a></td>'
            f'<td style="padding:0 0.7em 0 0;text-align:right;color:#555;'
            f'font-variant-numeric:tabular-nums">{unit.cosine:+.2f}</td><td>{chips}</td></tr>')


def related_html(lists: list[RelatedList], tokens: dict[Unit, list[str]],
                 colours: dict[str, str], view: dict[str, str]) -> str:
    """Every list as one HTML block (one element draws faster than dozens of links):
    title with its dictionary's colour, what the cosine measures, then the units."""
    parts = []
    for group in lists:
        rows = "".join(related_row_html(group.dictionary, n,
                                        tokens.get(Unit(group.dictionary, n.index), []), view)
                       for n in group.units[:N_NEIGHBOUR_LINKS])
        chip = charts.colour_chip_html(colours.get(group.dictionary, UNLISTED_DICTIONARY))
        parts.append(f'<div class="related" style="margin:0.7rem 0 0">'
                     f'<b>{chip}{html.escape(group.title)}</b>'
                     f'<div class="legend">{html.escape(group.measure)}</div>'
                     f'<table style="border-collapse:collapse;margin-top:0.2rem">{rows}</table>'
                     '</div>')
    return "".join(parts)


def related(path: str, record: FeatureRecord, not_applicable: str | None = None) -> None:
    """Nearest units in this and every other dictionary, each with its top tokens; or why
    there are none."""
    if not_applicable:
        st.html(not_applicable_html("Nearest units: not applicable", not_applicable))
        return
    lists = related_lists(record)
    if not lists:
        return
    units = tuple(dict.fromkeys(Unit(g.dictionary, n.index) for g in lists
                                for n in g.units[:N_NEIGHBOUR_LINKS]))
    colours = charts.dictionary_colours(store_access.dictionaries(path))
    st.html(related_html(lists, top_tokens_of(path, units), colours, kept_view()))


def shading_on() -> bool:
    """The URL asks for ablation shading (`?shade=ablation`)."""
    return st.query_params.get("shade") == ABLATION_VIEW["shade"]


def kept_view() -> dict[str, str]:
    """What a link to another feature carries over from this page's URL: the shading, so
    paging through features or following a neighbour does not switch it off."""
    return dict(ABLATION_VIEW) if shading_on() else {}


def shading_mode(record: FeatureRecord) -> token_html.Mode:
    """How the examples' tokens are shaded, from the URL (`?shade=ablation`), and the switch
    that flips it: a page link drawn as a toggle (Material's toggle icons), not `st.toggle`.
    So a shared URL shows the same shading, the back button undoes a switch, and a first
    visit loads no widget code (the toggle's lazily loaded chunk held the whole page back
    by about 0.1 s)."""
    on = shading_on()
    params = links.feature_params(record.dictionary, record.index,
                                  None if on else ABLATION_VIEW)
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
    if mode == "ablation":
        scale = token_html.ablation_scale(everything)
        legend = token_html.legend_html(mode, scale, token_html.ablation_scale_text(
            scale, token_html.ablation_magnitudes(everything)))
    else:
        scale, legend = record.max_act, token_html.legend_html(mode, record.max_act)
    parts = [legend,
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
                   context: tuple[int, int] = COMPACT_CONTEXT, link: bool = True) -> None:
    """One dictionary's feature in a narrow column: density, logits, top examples cropped
    to a few tokens around the drawn one."""
    if link:
        links.feature_link(record.dictionary, record.index,
                           f"{record.dictionary} #{record.index}")
    st.caption(caption)
    st.markdown(f"density {density_text(record)} · max {record.max_act:.2f} · "
                f"{record.density_class}")
    if record.top_logits:
        scale = max([abs(e.value) for e in record.top_logits[:n_logits]] or [0.0])
        st.html(token_html.logit_table_html(record.top_logits[:n_logits], scale, raises=True))
    else:  # neurons before a LayerNorm have none; their feature page says why
        st.caption("no logit weights (see its feature page)")
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
