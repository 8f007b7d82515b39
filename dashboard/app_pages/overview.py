"""Overview: the run at a glance."""

import streamlit as st

from dashboard import interp_views, run_views, study_views, url_state

path = url_state.require_store()
root = study_views.study()
st.title("Run overview" if root is None else f"Study overview · run {url_state.chosen_run(root)}")
if root is not None:
    study_views.overview_section(root)
    st.header(f"Run {url_state.chosen_run(root)}")
st.caption(f"store: `{path}`")
run_views.model_summary(path)
run_views.metrics_table(path)
run_views.charts_row(path)
interp_views.overview_section(  # issue 13; in a study, the other runs' medians beside
    path, study_views.other_runs_interp(root, url_state.chosen_run(root)) if root else None)
