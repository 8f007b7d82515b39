"""Score page: /score?rater=<name>&pos=<n> (blind, from the rater's queue), or
/score?dictionary=<name>&feature=<index>[&run=<run>][&rater=<name>] (one named unit, not
blind). See score_views.py for what blindness means here; in a study the blind queue mixes
runs, so the page shows no run picker and drops `run=` from the URL."""

import streamlit as st

from dashboard import score_access, score_views, store_access, url_state
from feature_store.errors import StoreError
from feature_store.scores import unit_key

study = score_access.study()
named = "dictionary" in st.query_params or "feature" in st.query_params
if study is not None and not named:
    st.query_params.pop(url_state.RUN_KEY, None)  # blind: the URL never names a run
path = url_state.require_store(run_picker=False)
book = score_access.score_book(path)
st.title("Score units")
if named:
    run = score_access.run_of(path)
    if run:
        url_state.keep_in_url(run=run)
    record = url_state.chosen_feature(path)
    st.warning("Not blind: you know which unit this is. The score is stored marked "
               "*not blind*, and the results page leaves such scores out unless asked. "
               "To score blind, open Score from the menu and use a queue.")
rater = score_views.rater_name()
if rater is None:
    st.info("Name yourself to start; your name stays in the URL, so bookmark it.")
    st.stop()
if named:
    st.markdown(f"### {record.dictionary} · feature {record.index}"
                + (f" · run {run}" if run else ""))
    score_views.score_unit(book, rater, record, key="named", blind=False, run=run, path=path)
    st.stop()

queue = book.queue(rater)
if queue is None or st.query_params.get("setup") == "1":
    score_views.queue_setup(path, book, rater, queue, study)
    st.stop()
pos = score_views.position(book, queue)
slot = unit_key(queue.units[pos - 1]) if pos <= len(queue) else None  # (run, dictionary, index)
scored = slot is not None and book.latest(rater, slot[1], slot[2], run=slot[0]) is not None
with st.container(horizontal=True, vertical_alignment="center"):
    st.markdown(f"**Unit {min(pos, len(queue))} of {len(queue)}**" if pos <= len(queue)
                else f"**{len(queue)} of {len(queue)}**")
    if pos > 1 and st.button("← Back", key="nav_back"):
        score_views.go(book, queue, pos - 1)
    if pos <= len(queue) and st.button("Next →" if scored else "Skip →", key="nav_next",
                                       type="primary" if scored else "secondary",
                                       help=None if scored else "Leave it unscored, go on"):
        score_views.go(book, queue, pos + 1)
    if st.button("New queue", key="nav_new"):
        st.query_params["setup"] = "1"
        st.rerun()
st.progress(min(pos - 1, len(queue)) / len(queue))
if pos > len(queue):
    score_views.finished(book, queue)
    st.stop()
run, dictionary, index = slot
unit_path = score_views.unit_store(path, study, run)
try:
    if unit_path is None:
        raise StoreError("its run is not in this study")
    record = store_access.feature(unit_path, dictionary, index)
except StoreError as err:  # the store was rebuilt smaller; say so without naming the unit
    url_state.stop_with(f"This queue slot's unit is not in the store any more ({type(err).__name__})"
                        "; skip it or start a new queue.", build_hint=False)
key = score_views.queue_key(queue, pos)
score_views.score_unit(book, rater, record, key=key, blind=True, run=run, path=unit_path)
