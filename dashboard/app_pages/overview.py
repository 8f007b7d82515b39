"""Overview: the run at a glance."""

import streamlit as st

from dashboard import interp_views, overview_views, universality_views, url_state

path = url_state.require_store()
root = universality_views.study()
st.title("Run overview" if root is None else f"Study overview · run {url_state.chosen_run(root)}")
if root is not None:
    universality_views.overview_section(root)
    st.header(f"Run {url_state.chosen_run(root)}")
st.caption(f"store: `{path}`")
overview_views.model_summary(path)
overview_views.metrics_table(path)
overview_views.charts_row(path)
interp_views.overview_section(  # issue 13; in a study, the other runs' medians beside
    path, universality_views.other_runs_interp(root, url_state.chosen_run(root)) if root else None)
