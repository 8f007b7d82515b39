"""Feature page: /feature?dictionary=<name>&feature=<index>[&shade=ablation]."""

import streamlit as st

from dashboard import feature_views, interp_views, study_views, url_state

path = url_state.require_store()
record = url_state.chosen_feature(path)
feature_views.header(record)  # a dead unit's one block is here: no chart, no examples below
feature_views.keyboard_shortcuts()
study_views.match_lines(record)  # in a study: the best match in every other run
interp_views.feature_block(path, record.dictionary, record.index)  # issue 13
left, right = st.columns([2, 3], gap="medium")
if record.density_class == "dead":
    with left:
        feature_views.logits(record)
    with right:
        feature_views.related(path, record)
else:
    with left:
        feature_views.activation_histogram(record)
        feature_views.logits(record)
        feature_views.related(path, record)
    with right:
        mode = feature_views.shading_mode(record)
        feature_views.examples(record, mode)
