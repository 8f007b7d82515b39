"""Results page: /results[?all=1] — score distributions per source, agreement, export/import.
By default only blind scores count (`?all=1` includes scores given from a feature page).

In a study the scores are the study's one book and every source is a run x dictionary
("solu · neurons", "gelu · neurons", "solu · sae_2048"); the run picker (`?run=`) chooses
only whose automated scores the "human vs automated" section compares with."""

import streamlit as st

from dashboard import (interp_views, light_plotly, results_views, score_access, store_access,
                       url_state)
from feature_store.scores_results import results, source_label

path = url_state.require_store()
book = score_access.score_book(path)
study = score_access.study()
st.title("Scoring results")
st.caption(f"scores: `{book.path}`"
           + (" (one book for every run of the study)" if study else ""))
everything = st.toggle("Include scores that were not blind", value=st.query_params.get("all") == "1",
                       help="Scores given from a feature page, knowing the unit.")
if everything:
    st.query_params["all"] = "1"
else:
    st.query_params.pop("all", None)
if study is None:
    runs: list[str] = []
    order = store_access.dictionaries(path)  # the store's, for the shared colours
    sources = order
else:
    runs = store_access.study_variants(study)
    per_run = {r: store_access.dictionaries(store_access.variant_store(study, r)) for r in runs}
    order = list(dict.fromkeys(d for r in runs for d in per_run[r]))
    sources = [source_label(r, d) for r in runs for d in per_run[r]]
res = results(book, order=sources, blind_only=not everything)
if res.ratings.empty:
    st.info("No scores yet: score units on the Score page, or import a file below.")
else:
    st.markdown(results_views.ratings_note(res, not everything))
    st.markdown(results_views.agreement_line(res))
    left, right = st.columns([3, 2], gap="medium")
    with left:
        light_plotly.chart(results_views.distribution_figure(res, order, runs),
                           key="results_distribution")
    with right:
        results_views.summary_table(res)
        light_plotly.chart(results_views.items_figure(res, order, runs), key="results_items")
    results_views.item_table(res)
    results_views.interval_table(res)
    run = score_access.run_of(path)
    if run and interp_views.interp_summary(path) is not None:
        st.caption(f"Below: the scores of run **{run}** against its automated scores "
                   "(the run picker in the sidebar chooses the run).")
    interp_views.results_section(path, res.ratings[res.ratings["run"] == run])  # issue 13
st.subheader("Export and import")
if book.exists:
    results_views.export_buttons(book)
results_views.import_box(book)
