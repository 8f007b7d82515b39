"""Feature browser: /browser?dictionary=<name>&q=<token text>&class=<classes>."""

import streamlit as st

from dashboard import browser_views, url_state

path = url_state.require_store()
st.title("Feature browser")
dictionary = browser_views.pick_dictionary(path)
query, classes = browser_views.filters()
browser_views.feature_table(path, dictionary, query, classes)
