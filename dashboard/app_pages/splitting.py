"""Splitting: /splitting?dictionary=<name>&feature=<index>."""

import streamlit as st

from dashboard import feature_views, links, splitting_views, url_state

path = url_state.require_store()
record = url_state.chosen_feature(path, splitting_views.default_feature(path))
st.title(f"Splitting · {record.dictionary} #{record.index}")
feature_views.go_to(path, record, links.SPLITTING)
st.caption("A family joins each feature of a larger dictionary to the feature of the next "
           "smaller one it splits off (its parent); edges are labelled activation cosine / "
           "decoder cosine, and the table under the graph lists every edge's numbers. Click "
           "a node or a UMAP point to open that feature.")
family = splitting_views.family_graph(path, record)
splitting_views.joint_umap(path, record, family)
