"""Overview: the run at a glance."""

import streamlit as st

from dashboard import interp_views, run_views, url_state

path = url_state.require_store()
st.title("Run overview")
st.caption(f"store: `{path}`")
run_views.model_summary(path)
run_views.metrics_table(path)
run_views.charts_row(path)
interp_views.overview_section(path)  # issue 13
