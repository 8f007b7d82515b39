"""The light chart element: figure data that cannot end its <script> early, read back exactly,
and the fallback to `st.plotly_chart` when static serving is off."""

from __future__ import annotations

from html.parser import HTMLParser

import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import light_plotly
from tests.helpers.html import HOSTILE


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def hostile_figure() -> go.Figure:
    text = list(HOSTILE) + ["</script><img src=x onerror=alert(1)>", "\u2028\u2029", "]]>"]
    return go.Figure(go.Bar(x=list(range(len(text))), y=[1] * len(text), hovertext=text,
                            name="</SCRIPT >"), layout=dict(title="<b>a</b> & </script>", height=210))


def test_hostile_text_stays_inside_the_figure_data():
    fig = hostile_figure()
    body = light_plotly.chart_html(fig, key="k\"<x>")
    parser = Elements()
    parser.feed(body)
    parser.close()
    # a div, the JSON data and the drawing script: nothing the text could have added
    assert [tag for tag, _ in parser.tags] == ["div", "script", "script"]
    assert parser.tags[0][1]["data-chart"] == 'k"<x>'
    assert body.count("</script>") == 2 and "<img" not in body and "</SCRIPT" not in body
    assert "\u2028" not in body and "\u2029" not in body
    [figure] = light_plotly.figures_in(body)
    assert figure["data"][0]["hovertext"] == list(fig.data[0].hovertext)
    assert figure["layout"]["title"]["text"] == "<b>a</b> & </script>"
    assert figure["layout"]["height"] == 210
    assert "min-height:210px" in body
    assert light_plotly.without_figures(body).count("<script") == 1


def test_bundle_is_vendored():
    bundle = light_plotly.BUNDLE_PATH
    assert bundle.is_file() and bundle.stat().st_size > 500_000
    assert b"plotly.js (basic - minified)" in bundle.read_bytes()[:200]


APP = """
import streamlit as st
import plotly.graph_objects as go
from dashboard import light_plotly
light_plotly.chart(go.Figure(go.Bar(x=[1, 2], y=[3, 4])), key="one")
"""


@pytest.mark.parametrize("static_serving", [True, False])
def test_chart_or_fallback(static_serving):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(light_plotly, "enabled", lambda: static_serving)
        at = AppTest.from_string(APP, default_timeout=30).run()
    assert not at.exception
    light = [h for h in at.get("html") if light_plotly.figures_in(h.proto.body)]
    plain = at.get("plotly_chart")
    assert (len(light), len(plain)) == ((1, 0) if static_serving else (0, 1))
