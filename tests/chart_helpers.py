"""Reading charts back out of an AppTest run, whichever way the page drew them."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from dashboard import light_plotly


def chart_figures(at: AppTest) -> list[dict]:
    """`st.plotly_chart` figures, then `light_plotly` ones (a page uses one kind or the other:
    light charts unless static serving is off)."""
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    for element in at.get("html"):
        figures.extend(light_plotly.figures_in(element.proto.body))
    return figures
