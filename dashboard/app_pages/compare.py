"""Compare sizes: /compare?dictionary=<name>&feature=<index>."""

import streamlit as st

from dashboard import compare_views, feature_views, links, url_state
from feature_store.records import is_neurons

path = url_state.require_store()
record = url_state.chosen_feature(path)
st.title(f"Compare sizes · {record.dictionary} #{record.index}")
feature_views.go_to(path, record, links.COMPARE)
st.caption("Its nearest feature (decoder cosine) in every other dictionary, most similar "
           "first. Names open the feature page.")
links.feature_link(record.dictionary, record.index,
                   "Splitting graph for this feature"
                   if not is_neurons(record.dictionary)
                   else links.splitting_label(record.dictionary), links.SPLITTING)
compare_views.columns(path, record)
