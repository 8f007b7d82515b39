"""Feature browser: /browser?dictionary=<name>&q=<token text>&in=tokens|logits&exact=1&class=<classes>."""

import streamlit as st

from dashboard import browser_views, url_state

path = url_state.require_store()
st.title("Feature browser")
dictionary = browser_views.pick_dictionary(path)
search, classes = browser_views.filters()
browser_views.feature_table(path, dictionary, search, classes)
