"""Feature page: /feature?dictionary=<name>&feature=<index>[&shade=ablation]."""

import streamlit as st

from dashboard import feature_views, interp_views, universality_views, url_state

path = url_state.require_store()
record = url_state.chosen_feature(path)
feature_views.header(record)  # a dead unit's one block is here: no chart, no examples below
feature_views.keyboard_shortcuts()
feature_views.same_unit_link(path, record)  # SoLU neurons: before / after the LayerNorm
universality_views.match_lines(record)  # in a study: the best match in every other run
interp_views.feature_block(path, record.dictionary, record.index)  # issue 13
missing = feature_views.not_applicable(path, record.dictionary)  # e.g. no logits before an LN
left, right = st.columns([2, 3], gap="medium")
if record.density_class == "dead":
    with left:
        feature_views.logits(record, missing.get("logits"))
    with right:
        feature_views.related(path, record, missing.get("neighbours"))
else:
    with left:
        feature_views.activation_histogram(record)
        feature_views.logits(record, missing.get("logits"))
        feature_views.related(path, record, missing.get("neighbours"))
    with right:
        mode = feature_views.shading_mode(record)
        feature_views.examples(record, mode)
