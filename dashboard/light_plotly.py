"""Static plotly charts drawn by plotly.js's *basic* bundle (1.2 MB) instead of Streamlit's
own plotly chunk (4.7 MB).

Why: on a first visit (empty browser cache) on a 2-core machine, evaluating Streamlit's
plotly chunk takes about 1.1 s of main-thread time before the first chart can draw, which
put the feature page's first chart near 3 s. The basic bundle (scatter, bar, pie: every
trace type the feature, overview, score and results pages use) evaluates in about 0.12 s.
It is served by Streamlit's static file serving from `dashboard/static/`
(`server.enableStaticServing = true` in `.streamlit/config.toml`), loaded once per browser
tab, and each chart is an `st.html` element whose script draws the figure (the figure is
JSON inside the script, escaped so no `</script>` or `<` can end it early).

When static serving is off (e.g. the app is started from another working directory, so
the config file is not read), `chart` falls back to `st.plotly_chart`: same figure, slower
first paint, never a broken chart. Charts that send selections back to Python (the
splitting page) keep `st.plotly_chart`. `figures_in(body)` reads a figure back out of an
element's HTML, for tests.

The vendored file is plotly.js-basic-dist-min 4.1.1 from npm (MIT, see
`static/plotly-LICENSE.txt`), the same plotly.js version the `plotly` Python package ships.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import streamlit as st
from plotly import graph_objects as go

BUNDLE_URL = "app/static/plotly-basic.min.js"  # relative: works under a server.baseUrlPath
BUNDLE_PATH = Path(__file__).parent / "static" / "plotly-basic.min.js"
CONFIG = {"displayModeBar": False}
PRELOAD_MARK = "data-light-plotly-preload"  # TOKEN_CSS hides the element that carries it

# Defines one loader per tab (idempotent), so the preload script and every chart share a
# single download of the bundle.
_LOADER_JS = """
window.__lightPlotlyLoad = window.__lightPlotlyLoad || function () {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__lightPlotly) {
    window.__lightPlotly = new Promise(function (resolve, reject) {
      var script = document.createElement("script");
      script.src = new URL(%(src)s, document.baseURI).href;
      script.async = true;
      script.onload = function () { resolve(window.Plotly); };
      script.onerror = function () {
        window.__lightPlotly = undefined;
        reject(new Error("could not load " + script.src));
      };
      document.head.appendChild(script);
    });
  }
  return window.__lightPlotly;
};
"""

# Draws the figure into the element just before the script. One task per chart (setTimeout)
# so the first chart paints before the next one draws; a ResizeObserver instead of plotly's
# `responsive` window listener, so nothing outlives the chart when Streamlit replaces it.
_DRAW_JS = """(function (script) {
  var el = script.previousElementSibling.previousElementSibling;
  var figure = JSON.parse(script.previousElementSibling.textContent);
  window.__lightPlotlyLoad().then(function (Plotly) {
    setTimeout(function () {
      if (!el.isConnected) return;
      Plotly.newPlot(el, figure.data || [], figure.layout || {}, %(config)s).then(function () {
        var width = el.clientWidth;
        new ResizeObserver(function () {
          if (el.isConnected && el.clientWidth !== width) { width = el.clientWidth; Plotly.Plots.resize(el); }
        }).observe(el);
      });
    }, 0);
  }, function (err) { el.textContent = "Chart could not be drawn: " + err.message; });
})(document.currentScript);"""
FIGURE_TAG = '<script type="application/json" data-light-plotly-figure>'
_FIGURE_RE = re.compile(re.escape(FIGURE_TAG) + r"(.*?)</script>", re.DOTALL)

_SCRIPT_SAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                ord("\u2028"): "\\u2028", ord("\u2029"): "\\u2029"}


_LOADER = _LOADER_JS % {"src": json.dumps(BUNDLE_URL)}
_DRAW = _DRAW_JS % {"config": json.dumps(CONFIG)}


def script_safe_json(text: str) -> str:
    """JSON that can sit inside a <script> element: `<`, `>`, `&` (and the two JS line
    separators) only ever occur inside JSON strings, where their \\u escapes mean the same."""
    return text.translate(_SCRIPT_SAFE)


def enabled() -> bool:
    """True when the server serves `dashboard/static/` (so the bundle can load)."""
    return bool(st.get_option("server.enableStaticServing"))


def preload() -> None:
    """Start fetching the bundle from `app.py`, ahead of the page's own elements, so it
    downloads while they render (charts further down would only ask for it once they mount;
    about 0.05 s earlier first chart on a cold visit). Hidden by `TOKEN_CSS`."""
    if enabled():
        st.html(f"<script {PRELOAD_MARK}>{_LOADER}window.__lightPlotlyLoad().catch(function(){{}});"
                "</script>", unsafe_allow_javascript=True)


def chart(fig: go.Figure, key: str) -> None:
    """Draw a static (no selection) plotly figure, as fast as a cold browser allows.

    An `st.html` element with a script, not a component: its code chunk is already loaded
    for the page's token HTML, while a custom component pulls in 200 KB more (Arrow) before
    it can mount."""
    if not enabled():
        st.plotly_chart(fig, config=CONFIG, key=key)
        return
    st.html(chart_html(fig, key), unsafe_allow_javascript=True)


def chart_html(fig: go.Figure, key: str) -> str:
    """A placeholder div, the figure as JSON data, and the script that draws one into the
    other. Pure, so the escaping is testable without a browser."""
    fig.update_layout(template=_template())
    height = int(fig.layout.height or 450)
    return (f'<div class="light-plotly" data-chart="{html.escape(key, quote=True)}" '
            f'style="min-height:{height}px"></div>'
            f"{FIGURE_TAG}{script_safe_json(fig.to_json())}</script>"
            f"<script>{_LOADER}{_DRAW}</script>")


def figures_in(body: str) -> list[dict]:
    """The figures `chart` put into an element's HTML (for tests and tools)."""
    return [json.loads(m) for m in _FIGURE_RE.findall(body)]


def without_figures(body: str) -> str:
    """The element's HTML with the figure data cut out (what a reader sees as markup)."""
    return _FIGURE_RE.sub("", body)


@st.cache_resource(show_spinner=False)
def _template() -> go.layout.Template:
    """plotly_white in the app's font and text colour, close to Streamlit's own chart theme."""
    import plotly.io as pio

    template = go.layout.Template(pio.templates["plotly_white"])
    template.layout.font = dict(family='"Source Sans", sans-serif', size=13, color="#31333F")
    template.layout.title.font = dict(size=15)
    return template
