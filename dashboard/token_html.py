"""Token text to HTML: the one place untrusted corpus text is escaped.

Every token string (example windows, logit tables) passes through `_text` exactly once, at
the last step before it becomes HTML, so nothing is missed and nothing is escaped twice
(`&amp;` in the corpus must show as `&amp;`, not `&`). Colours and numbers are computed
here from floats, never from corpus text. Styling is inline so a block renders correctly
even where the page-wide stylesheet (`TOKEN_CSS`) has not loaded.

Bidi: `_text` shows format characters (U+202E and the other bidi controls, zero-width
characters) as escapes (`feature_store.token_display`), and every token span is its own
bidi isolate (`unicode-bidi: isolate`), so a right-to-left token shows its own letters right
to left but can never reorder the tokens around it.

Two shadings:
- activation: orange, alpha = act / scale (the feature's max activation, so windows on one
  page compare);
- ablation: diverging, from `Example.ablation` (Δ log p(next token) when the feature is
  removed). Blue where the feature *raised* the log-probability of the next token (removing
  it lowers it, Δ < 0), red where it lowered it; scale = the 99th percentile of |Δ| over the
  page's tokens where the feature fired (`ablation_scale`), printed in the legend: the
  largest |Δ| alone let one outlier wash every other token out to white.

Relative numbers (blind scoring): with `relative_to` (the unit's max activation) an example
prints every activation as a share of it; with `relative=True` the legend prints no max, and
the logit tables print each weight as a share of the largest |weight| (the `scale` passed). The scale of a dictionary's numbers differs systematically between SAE
features and neurons, before and after a LayerNorm, SoLU and GeLU, so a blind rater could
read the source off absolute values; shares in 0–1 say the same about the unit's own shape.
An activation at or below 0 reads 0 there, as an inactive ReLU feature's does (a negative
value would name a neuron), and a token's hover leaves out its Δ log p(next): ablating a
neuron and ablating a feature move log-probabilities by amounts typical of each, in nats, so
the hover would name the source too (the blind page shows no ablation shading either). The
defaults print absolute values, unchanged.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from dashboard.colours import ACTIVATION_RGB, LOWER_RGB, RAISE_RGB, rgba
from feature_store import token_display
from feature_store.records import Example, LogitEntry

Mode = Literal["activation", "ablation"]

# Tokens shown before / after the drawn one in a full-width example window, on the feature
# and the score pages alike, so a rater judges the same evidence a feature page shows.
EXAMPLE_CONTEXT = (16, 6)

TOKEN_CSS = """
.tokens { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
          font-size: 0.82rem; line-height: 1.55; }
.tokens .ex { white-space: nowrap; overflow-x: auto; padding: 1px 0;
              border-bottom: 1px solid rgba(128,128,128,0.15); }
.tokens.wrap .ex { white-space: normal; }
.tokens.wrap .tok { white-space: pre-wrap; overflow-wrap: anywhere; }
.tokens .ex-act { display: inline-block; min-width: 3.6em; color: #777; margin-right: .4em;
                  text-align: right; font-size: 0.75rem; }
.tok { unicode-bidi: isolate; }
.tokens .tok { white-space: pre; border-radius: 2px; padding: 0 1px; }
.tokens .tok.c { outline: 1.5px solid #333; }
.tokens .tok:hover { outline: 1px solid #000; }
.logits { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
          font-size: 0.8rem; border-collapse: collapse; }
.logits td { padding: 0 4px; white-space: pre; }
.logits td.v { text-align: right; color: #555; padding-left: 10px; }
.legend { font-size: 0.75rem; color: #666; }
.interval-head { margin: 0.8rem 0 0.2rem; font-size: 0.9rem; }
.feature-title { font-size: 1.75rem; font-weight: 600; line-height: 1.2; margin: 0 0 0.5rem; padding: 0; }
.feature-title span { font-size: 0.8rem; font-weight: 400; color: #777; }
.run-table { border-collapse: collapse; font-size: 0.9rem; margin: 0.4rem 0 0.6rem; }
.run-table th { font-weight: 600; text-align: left; padding: 0.3rem 0.8rem;
                border-bottom: 1px solid #ccc; text-decoration: underline dotted #aaa; }
.run-table th.n { text-align: right; }
.run-table td { padding: 0.25rem 0.8rem; border-bottom: 1px solid rgba(128,128,128,0.2); }
.run-table td.n { text-align: right; font-variant-numeric: tabular-nums; }
.caveat { font-size: 0.85rem; color: #8a5a00; margin: 0.2rem 0 0.4rem; }
.stats { display: flex; flex-wrap: wrap; gap: 0.3rem 2.4rem; margin: 0 0 0.3rem; }
.stats .l { font-size: 0.85rem; color: #555; text-decoration: underline dotted #aaa; }
.stats .v { font-size: 1.7rem; line-height: 1.25; }
.stats .s { font-size: 0.8rem; color: #777; }
div[data-testid="stElementContainer"]:has(script[data-light-plotly-preload]),
div[data-testid="stElementContainer"]:has(script[data-feature-shortcuts]) { display: none; }
"""


def stats_html(stats: Sequence[tuple[str, str, str, str]]) -> str:
    """A row of (label, value, subline, hover help) figures: one element where five
    `st.metric`s cost a lazily loaded chunk and five React widgets on a first visit."""
    cells = []
    for label, value, sub, help_text in stats:
        sub_html = f'<div class="s">{html.escape(sub)}</div>' if sub else ""
        cells.append(f'<div class="stat" title="{html.escape(help_text, quote=True)}">'
                     f'<div class="l">{html.escape(label)}</div>'
                     f'<div class="v">{html.escape(value)}</div>{sub_html}</div>')
    return f'<div class="stats">{"".join(cells)}</div>'


# Every span holding token text carries this inline (not only in TOKEN_CSS): a token must not
# reorder its neighbours even before the stylesheet has loaded.
ISOLATE = "unicode-bidi:isolate"


def _text(token: str) -> str:
    """Escape untrusted token text; here and only here. Display forms already show
    whitespace and format characters, but a store written before that rule (or by other code)
    may hold them raw: a newline would break the line, a U+202E turn the rest of it backwards."""
    return html.escape(token_display.visible(token), quote=True)


def activation_background(act: float, scale: float) -> str:
    alpha = min(max(act / scale, 0.0), 1.0) if scale > 0 and math.isfinite(act) else 0.0
    return rgba(ACTIVATION_RGB, alpha) if alpha >= 0.01 else "transparent"


def ablation_background(delta: float, scale: float) -> str:
    """Δ < 0 (feature helped predict the next token) is blue, Δ > 0 red."""
    if not math.isfinite(delta) or scale <= 0 or delta == 0:
        return "transparent"
    alpha = min(abs(delta) / scale, 1.0)
    return rgba(RAISE_RGB if delta < 0 else LOWER_RGB, alpha) if alpha >= 0.01 else "transparent"


def token_span(text: str, background: str, title: str, centre: bool = False) -> str:
    """One token: escaped text, its shade, and the numbers on hover (`title` holds no corpus
    text, only numbers formatted here)."""
    cls = "tok c" if centre else "tok"
    shade = "" if background == "transparent" else f";background:{background}"
    return (f'<span class="{cls}" style="{ISOLATE}{shade}" '
            f'title="{html.escape(title, quote=True)}">{_text(text)}</span>')


def _window(example: Example, context: tuple[int, int] | None) -> range:
    """Tokens from `before` ahead of the drawn one to `after` past it: the drawn token stays
    near the same column on every line, and the text before it (what the feature reads)
    gets most of the room."""
    n = len(example.tokens)
    if context is None:
        return range(n)
    before, after = context
    return range(max(0, example.center - before), min(n, example.center + after + 1))


def relative_act(act: float, max_act: float) -> float:
    """An activation as a share of the unit's max (0 at or below 0, and when there is no max);
    NaN stays NaN."""
    if math.isnan(act):
        return act
    return max(act, 0.0) / max_act if max_act > 0 else 0.0


def example_html(example: Example, mode: Mode, scale: float,
                 context: tuple[int, int] | None = None, wrap: bool = False,
                 relative_to: float | None = None) -> str:
    """One example window on one line (`wrap`: a line break may fall between tokens), its
    activation at the drawn token in the margin; with `relative_to` (the max activation)
    every printed activation is a share of it (see the module docstring)."""
    if relative_to is None:
        def shown(act: float) -> float:
            return act

        def hover(act: float, delta: float) -> str:
            delta_text = f"{delta:+.3f}" if math.isfinite(delta) else "n/a (no next token)"
            return f"act {act:.3f} · Δ log p(next) {delta_text}"
        margin_help = "activation at the outlined token"
    else:
        def shown(act: float) -> float:
            return relative_act(act, relative_to)

        def hover(act: float, delta: float) -> str:  # no Δ: nats have a scale of their own
            return f"act {shown(act):.3f} of max"
        margin_help = "activation at the outlined token, as a share of the max"
    spans = []
    for t in _window(example, context):
        act = example.acts[t]
        delta = example.ablation[t] if t < len(example.ablation) else math.nan
        if mode == "ablation":
            background = ablation_background(delta, scale)
        else:
            background = activation_background(act, scale)
        title = hover(act, delta)
        spans.append(token_span(example.tokens[t], background, title, t == example.center))
    return (f'<div class="ex"><span class="ex-act" title="{margin_help}">'
            f'{shown(example.act):.2f}</span>{("<wbr>" if wrap else "").join(spans)}</div>')


def examples_html(examples: Sequence[Example], mode: Mode, scale: float,
                  context: tuple[int, int] | None = None, empty: str = "no examples",
                  wrap: bool = False, relative_to: float | None = None) -> str:
    """Examples one per line; `wrap` lets a line wrap (narrow columns) instead of scrolling;
    `relative_to`: print activations as shares of it (blind scoring)."""
    if not examples:
        return f'<div class="tokens legend">{html.escape(empty)}</div>'
    rows = "".join(example_html(e, mode, scale, context, wrap, relative_to) for e in examples)
    return f'<div class="tokens{" wrap" if wrap else ""}">{rows}</div>'


ABLATION_PERCENTILE = 99  # full colour at this percentile of |Δ|; the few above it saturate


def ablation_magnitudes(examples: Iterable[Example]) -> list[float]:
    """|Δ log p| at every token of the examples where it was measured: finite and nonzero
    (Δ is exactly 0 where the feature did not fire, NaN where no next token is shown)."""
    return [abs(delta) for example in examples for delta in example.ablation
            if math.isfinite(delta) and delta != 0]


def ablation_scale(examples: Iterable[Example]) -> float:
    """The |Δ| that gets full colour: the ABLATION_PERCENTILE-th percentile of the examples'
    magnitudes (an observed value, so the legend prints a real |Δ|), one scale for the whole
    page so its windows compare; 0 when nothing was measured."""
    magnitudes = ablation_magnitudes(examples)
    if not magnitudes:
        return 0.0
    return float(np.percentile(magnitudes, ABLATION_PERCENTILE, method="higher"))


def ablation_scale_text(scale: float, magnitudes: Sequence[float]) -> str:
    """How the ablation scale was chosen, in words (numbers only: no corpus text)."""
    if not magnitudes:
        return "no ablation effect measured on these examples"
    return (f"full colour at |Δ| ≥ {scale:.3f}, the {ABLATION_PERCENTILE}th percentile of |Δ| "
            f"over the {len(magnitudes):,} shown tokens where it fired (largest "
            f"{max(magnitudes):.3f})")


def ablation_key_html(scale: float) -> str:
    """A small diverging colour bar from −scale (blue) through 0 to +scale (red)."""
    bar = (f"background:linear-gradient(to right,{rgba(RAISE_RGB, 1.0)},transparent,"
           f"{rgba(LOWER_RGB, 1.0)})")
    return (f'<span style="white-space:nowrap">{-scale:+.3f} <span style="display:inline-block;'
            f'width:7em;height:0.8em;vertical-align:middle;border:1px solid #ccc;{bar}"></span> '
            f'{scale:+.3f}</span>')


def legend_html(mode: Mode, scale: float, scale_text: str = "", relative: bool = False) -> str:
    """The shading's key; for ablation `scale_text` (from `ablation_scale_text`) says where
    full colour starts, so a reader can read a shade as a number. `relative` (activation
    mode): no number, the numbers shown are activation / max."""
    if mode == "activation" and relative:
        body = (f'<span class="tok" style="background:{rgba(ACTIVATION_RGB, 1.0)}">full orange</span>'
                " = the unit's max activation; numbers are activation / max (0–1); outlined ="
                " the drawn token; hover for values")
    elif mode == "ablation":
        body = (f'<span class="tok" style="background:{rgba(RAISE_RGB, 0.8)}">blue</span> '
                f'the feature raised log p(next token) (Δ &lt; 0 when removed), '
                f'<span class="tok" style="background:{rgba(LOWER_RGB, 0.8)}">red</span> '
                f'lowered it. Δ log p: {ablation_key_html(scale)}, '
                f'{html.escape(scale_text or f"full colour at |Δ| {scale:.3f}")}; '
                'hover for values')
    else:
        body = (f'<span class="tok" style="background:{rgba(ACTIVATION_RGB, 1.0)}">full orange</span>'
                f' = max activation {scale:.3f}; outlined = the drawn token; hover for values')
    return f'<div class="tokens legend">{body}</div>'


def logit_table_html(entries: Sequence[LogitEntry], scale: float, raises: bool,
                     relative: bool = False) -> str:
    """Token / weight rows shaded by |weight|: blue for raised logits, red for lowered;
    `relative`: each weight printed as a share of `scale` (the largest |weight|)."""
    rgb = RAISE_RGB if raises else LOWER_RGB
    rows = []
    for entry in entries:
        alpha = min(abs(entry.value) / scale, 1.0) if scale > 0 else 0.0
        shade = rgba(rgb, alpha * 0.7)
        value = (entry.value / scale if scale > 0 else 0.0) if relative else entry.value
        rows.append(f'<tr><td><span class="tok" style="{ISOLATE};background:{shade}" '
                    f'title="token id {int(entry.token_id)}">{_text(entry.token)}</span></td>'
                    f'<td class="v">{value:+.3f}</td></tr>')
    return f'<table class="logits">{"".join(rows)}</table>'


def logit_columns_html(raised: Sequence[LogitEntry], lowered: Sequence[LogitEntry],
                       scale: float, relative: bool = False) -> str:
    """Both logit tables in one block that wraps instead of overlapping in a narrow column;
    `relative`: weights as shares of `scale`, the largest |weight| (blind scoring)."""
    head = '<div class="legend"><b>{}</b></div>'
    raises = "Raises (d·W_out·W_U / largest |weight|)" if relative else "Raises (d·W_out·W_U)"
    return ('<div style="display:flex;flex-wrap:wrap;gap:4px 24px">'
            f'<div>{head.format(html.escape(raises, quote=False))}'
            f'{logit_table_html(raised, scale, raises=True, relative=relative)}</div>'
            f'<div>{head.format("Lowers")}'
            f'{logit_table_html(lowered, scale, raises=False, relative=relative)}</div>'
            '</div>')


def inline_tokens_html(tokens: Iterable[str]) -> str:
    """A compact run of plain token chips (e.g. top logits in a narrow column)."""
    chips = " ".join(f'<span class="tok" style="{ISOLATE};background:rgba(128,128,128,0.15)">'
                     f'{_text(t)}</span>' for t in tokens)
    return f'<div class="tokens">{chips}</div>'
