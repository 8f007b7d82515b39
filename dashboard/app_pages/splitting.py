"""Splitting: /splitting?dictionary=<name>&feature=<index>."""

import streamlit as st

from dashboard import feature_views, links, splitting_views, url_state

path = url_state.require_store()
record = url_state.chosen_feature(path, splitting_views.default_feature(path))
st.title(f"Splitting · {record.dictionary} #{record.index}")
feature_views.go_to(path, record, links.SPLITTING)
st.caption("Edges join features of adjacent sizes whose activations overlap (masked cosine); "
           "click a node or a UMAP point to open that feature.")
family = splitting_views.family_graph(path, record)
splitting_views.joint_umap(path, record, family)
