"""Feature page: /feature?dictionary=<name>&feature=<index>[&shade=ablation]."""

import streamlit as st

from dashboard import feature_views, url_state

path = url_state.require_store()
record = url_state.chosen_feature(path)
feature_views.header(record)
feature_views.keyboard_shortcuts()
left, right = st.columns([2, 3], gap="medium")
with left:
    feature_views.activation_histogram(record)
    feature_views.logits(record)
    feature_views.related(record)
with right:
    mode = feature_views.shading_mode(record)
    feature_views.examples(record, mode)
