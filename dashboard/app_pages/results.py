"""Results page: /results[?all=1] — score distributions per source, agreement, export/import.
By default only blind scores count (`?all=1` includes scores given from a feature page)."""

import streamlit as st

from dashboard import (interp_views, light_plotly, results_views, score_access, store_access,
                       url_state)
from feature_store.scores_results import results

path = url_state.require_store()
book = score_access.score_book(path)
st.title("Scoring results")
st.caption(f"scores: `{score_access.scores_path(path)}`")
everything = st.toggle("Include scores that were not blind", value=st.query_params.get("all") == "1",
                       help="Scores given from a feature page, knowing the unit.")
if everything:
    st.query_params["all"] = "1"
else:
    st.query_params.pop("all", None)
order = store_access.dictionaries(path)
res = results(book, order=order, blind_only=not everything)
if res.ratings.empty:
    st.info("No scores yet: score units on the Score page, or import a file below.")
else:
    st.markdown(results_views.ratings_note(res, not everything))
    st.markdown(results_views.agreement_line(res))
    left, right = st.columns([3, 2], gap="medium")
    with left:
        light_plotly.chart(results_views.distribution_figure(res, order), key="results_distribution")
    with right:
        results_views.summary_table(res)
        light_plotly.chart(results_views.items_figure(res, order), key="results_items")
    results_views.item_table(res)
    results_views.interval_table(res)
    interp_views.results_section(path, res.ratings)  # issue 13
st.subheader("Export and import")
if book.exists:
    results_views.export_buttons(book)
results_views.import_box(book)
