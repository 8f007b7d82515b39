"""The scoring page's parts: the rater's name, the queue setup, a unit shown blind, the rubric.

Blindness is a property of what reaches the browser, not of what is drawn prominently: until
the rater's score for a unit is saved, nothing rendered (text, HTML, chart, widget label or
key, link, URL) names the unit's run, its dictionary, its size or its index. The URL carries
only the rater and a 1-based queue position (`/score?rater=ann&pos=3`); the queue itself is
in the scores database.

In a study the queue draws from every run x dictionary the rater picks ("solu · neurons",
"gelu · neurons", "solu · sae_2048", ...), one book for the whole study, and the page has no
run picker and no `run=` while blind (the run would give away half the answer): each slot's
unit is (run, dictionary, index) in the database, and the page loads it from that run's
store by itself. The records it renders (`FeatureRecord`) know their dictionary but never
their run. Shown: the positive and negative logit tables and the logit histogram, all
11 intervals with their share of activations and samples, the top examples behind an
expander. Not shown, because they give the answer away: density, activation counts, the
activation histogram, links to neighbours. Widget keys are built from the queue's creation
time and the position, never from the unit.

Numbers are relative while blind. The scale of activations differs systematically between
SAE features and neurons, neurons before and after SoLU's LayerNorm, SoLU and GeLU, and so
does the scale of logit weights: a rater could read the source off "[2.41, 2.68)". So until
the score is saved every activation the page prints (interval bounds, the drawn token's
value, every token's hover value) is a share of the unit's max activation, the intervals
read "[0.36, 0.45) of max" for every unit, the legend prints no max, a value at or below 0
reads 0 (a negative one would name a neuron), a token's hover has no Δ log p (an effect in
nats has a scale of its own), and logit weights, in the tables and the
histogram, are shares of the unit's largest |logit weight|: ranking and relative sizes are
what the rubric judges, not the scale. The shading is unchanged (it was relative already).
Once revealed, when editing, and on a named (not blind) unit the page prints absolute
values, as the feature page does.

After a submit the page says "saved" only once `ScoreBook.submit` has returned (the row is
committed), then reveals what the unit was. A unit already scored by this rater opens
revealed, with Edit (a new row; history kept, the latest counts).

Opened from a feature page (`/score?dictionary=…&feature=…`, plus `run=` in a study), the
page scores that unit *not blind*: a banner says so, and the row is stored with `blind = 0`
(and its run), which the results page leaves out by default.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import streamlit as st

from dashboard import (charts, feature_views, interp_views, light_plotly, links, store_access,
                       token_html)
from feature_store.records import FeatureRecord, Unit
from feature_store import rubric as rubric_items
from feature_store.scores import (
    INTERVAL_SCALE, MAX_TOTAL, QUITE_INTERPRETABLE, RUBRIC, Queue, Score, ScoreBook, ScoreError,
    unit_key,
)
from feature_store.scores_results import source_label

DEFAULT_SAMPLE = 20
INTERPRETATION = rubric_items.INTERPRETATION
QUESTIONS = {  # the form's labels: DESIGN.md's rubric, numbered in its order (1: interpretation)
    name: f"{number} · {question}"
    for number, (name, question) in enumerate(rubric_items.QUESTIONS.items(), start=1)}
_FLASH = "score_flash"  # session key: (position key, message) shown once after a save


# -- rater and queue ---------------------------------------------------------------------------

def rater_name() -> str | None:
    """The rater's name, kept in `?rater=`; None until they give one."""
    current = st.query_params.get("rater", "")
    name = st.text_input("Your name (rater)", value=current, max_chars=60,
                         placeholder="e.g. ann", key="rater_input", width=360).strip()
    if name and name != current:
        st.query_params["rater"] = name
        for key in ("pos", "setup"):
            st.query_params.pop(key, None)
        st.rerun()
    return name or None


def sources(path: str, study: str | None) -> dict[str, tuple[str, str]]:
    """What a queue can draw from, by the label the setup shows: every dictionary of the
    store, or in a study every run x dictionary ("solu · neurons"), as (run, dictionary)
    with run "" outside a study."""
    if study is None:
        return {name: ("", name) for name in store_access.dictionaries(path)}
    out = {}
    for run in store_access.study_variants(study):
        for name in store_access.dictionaries(store_access.variant_store(study, run)):
            out[source_label(run, name)] = (run, name)
    return out


def without_logits(path: str, dictionary: str) -> bool:
    """Whether the store says the dictionary has no logit weights (SoLU's `neurons_pre_ln`:
    a LayerNorm lies between it and W_out). Its units show empty logit tables, which would
    tell a blind rater what they are, and leave rubric items 4 and 5 nothing to judge."""
    info = store_access.dictionary_info(path, dictionary)
    return bool((info.get("not_applicable") or {}).get("logits"))


def unit_store(path: str, study: str | None, run: str) -> str | None:
    """The store a queue unit of `run` lives in: the study run's, or `path` outside a study;
    None when the unit cannot be in this server's stores (a run the study no longer has, or
    a single run's unit in a study's book and the other way round)."""
    if study is None:
        return path if not run else None
    if run not in store_access.study_variants(study):
        return None
    return store_access.variant_store(study, run)


def queue_setup(path: str, book: ScoreBook, rater: str, current: Queue | None,
                study: str | None = None) -> None:
    """Sources, sample size and seed -> a new queue for this rater (replacing theirs). In a
    study, every run x dictionary is a source."""
    offered = sources(path, study)
    names = list(offered)
    no_logits = [label for label, (run, name) in offered.items() if without_logits(
        store_access.variant_store(study, run) if study else path, name)]
    st.subheader("New scoring queue")
    st.caption("A balanced random mix: the sample is split evenly across the chosen sources "
               "and shuffled, so you cannot tell a unit's source from its place in the "
               "queue. Units that never fired are left out."
               + (" Each run of the study is its own source; the page names neither the run "
                  "nor the dictionary of a unit until you have saved its score."
                  if study else ""))
    if no_logits:
        st.caption(f"Not picked by default: {', '.join(no_logits)}. These units have no logit "
                   "weights (a LayerNorm lies between them and the output), so their empty "
                   "logit tables would give them away among the others, and rubric items 4 "
                   "and 5 would have nothing to judge. Add them to score them anyway.")
    with st.form("queue_setup", border=True):
        picked = st.multiselect("Sources", names,
                                default=[n for n in names if n not in no_logits])
        a, b = st.columns(2)
        size = a.number_input("Sample size", min_value=1, max_value=5_000, step=1,
                              value=current.sample_size if current else DEFAULT_SAMPLE)
        seed = b.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1,
                              value=current.seed if current else 0)
        start = st.form_submit_button("Start queue", type="primary")
    if current is not None and st.button("Keep my current queue"):
        st.query_params.pop("setup", None)
        st.rerun()
    if start:
        population = {}
        for label in picked:
            run, name = offered[label]
            population[(run, name) if study else name] = _alive(
                store_access.variant_store(study, run) if study else path, name)
        try:
            book.make_queue(rater, population, int(size), int(seed))
        except ScoreError as err:
            st.error(str(err))
            return
        st.query_params.pop("setup", None)
        st.query_params["pos"] = "1"
        st.rerun()


def _alive(path: str, dictionary: str) -> list[int]:
    table = store_access.features(path, dictionary)
    return table.loc[table["density_class"] != "dead", "index"].astype(int).tolist()


def position(book: ScoreBook, queue: Queue) -> int:
    """1-based position: the URL's if valid, else where the database says the rater was;
    both are brought into agreement."""
    raw = st.query_params.get("pos", "")
    pos = int(raw) if raw.isdigit() and 1 <= int(raw) <= len(queue) + 1 else queue.position + 1
    if pos - 1 != queue.position:
        book.set_position(queue.rater, pos - 1)
    if st.query_params.get("pos") != str(pos):
        st.query_params["pos"] = str(pos)
    return pos


def go(book: ScoreBook, queue: Queue, pos: int) -> None:
    """Move to `pos` (1-based): database first, then URL, then rerun."""
    pos = max(1, min(pos, len(queue) + 1))
    book.set_position(queue.rater, pos - 1)
    st.query_params["pos"] = str(pos)
    st.rerun()


def queue_key(queue: Queue, pos: int) -> str:
    """Widget-key prefix for one queue slot: new queue or new slot, fresh widgets; says
    nothing about the unit."""
    return f"q{zlib.crc32(queue.created_at.encode()):08x}_{pos}"


def finished(book: ScoreBook, queue: Queue) -> None:
    scored = sum(book.latest(queue.rater, d, i, run=r) is not None
                 for r, d, i in map(unit_key, queue.units))
    st.success(f"Queue finished: you scored {scored} of {len(queue)} units.")
    with st.container(horizontal=True):
        if st.button("← Back"):
            go(book, queue, len(queue))
        if st.button("New queue"):
            st.query_params["setup"] = "1"
            st.rerun()
        st.page_link(links.RESULTS, label="See the results")


# -- one unit ----------------------------------------------------------------------------------

def logit_evidence(record: FeatureRecord, key: str, relative: bool = False) -> None:
    """Raised and lowered next-token logits, then the histogram of all of them; `relative`
    (blind): every weight as a share of the largest |weight| (the tables hold the largest
    and the most negative weights, so their largest |value| is the vocabulary's)."""
    if not record.top_logits and not record.bottom_logits:  # e.g. a neuron before a LayerNorm
        st.info("This unit has no logit weights: score items 4 and 5 as 0 (not applicable).")
        return
    scale = max([abs(e.value) for e in record.top_logits + record.bottom_logits] or [0.0])
    st.html(token_html.logit_columns_html(record.top_logits, record.bottom_logits, scale,
                                          relative=relative))
    light_plotly.chart(charts.logit_histogram_figure(record, scale if relative else None),
                       key=f"{key}_logit_hist")


def relative_interval_heading(number: int, interval, n_intervals: int, max_act: float) -> str:
    """`feature_views.interval_heading` for a blind page: bounds as shares of the max
    activation (the same for every unit: 11 equal intervals over (0, max]), no count."""
    closing = "]" if number == n_intervals else ")"
    lo, hi = (token_html.relative_act(v, max_act) for v in (interval.lo, interval.hi))
    return (f"<div class='interval-head'><b>Interval {number}</b> · "
            f"[{lo:.2f}, {hi:.2f}{closing} of max · "
            f"<b>{interval.share:.1%}</b> of activations</div>")


def interval_evidence(record: FeatureRecord, key: str, scoring: bool = True,
                      relative: bool = False) -> list[int | None] | None:
    """All intervals, highest first, with their share of activations and samples (top
    examples behind an expander). With `scoring`, a toggle offers a 0-5 score per interval;
    returns those (lowest interval first, None where not given) or None if not chosen.
    `relative` (blind): activations printed as shares of the max activation."""
    per_interval = scoring and st.toggle(
        "Also score each interval (0–5: how consistent its samples are with your "
        "interpretation)", key=f"{key}_per_interval")
    st.html(token_html.legend_html("activation", record.max_act, relative=relative))
    of_max = record.max_act if relative else None
    with st.expander(f"Top activations ({len(record.top_examples)})"):
        st.html(token_html.examples_html(record.top_examples, "activation", record.max_act,
                                         token_html.EXAMPLE_CONTEXT, empty="never fired",
                                         relative_to=of_max))
    scores: list[int | None] = [None] * len(record.intervals)
    lo, hi = INTERVAL_SCALE
    n = len(record.intervals)
    for number, interval in reversed(list(enumerate(record.intervals, start=1))):
        heading = (relative_interval_heading(number, interval, n, record.max_act) if relative
                   else feature_views.interval_heading(number, interval, n, count=False))
        st.markdown(heading, unsafe_allow_html=True)
        st.html(token_html.examples_html(interval.examples, "activation", record.max_act,
                                         token_html.EXAMPLE_CONTEXT,
                                         empty="no activations in this interval",
                                         relative_to=of_max))
        if per_interval and interval.examples:
            scores[number - 1] = st.radio(
                f"Interval {number} score ({lo}–{hi})", list(range(lo, hi + 1)), index=None,
                horizontal=True, key=f"{key}_interval_{number}")
    return scores if per_interval else None


def rubric(key: str, initial: Score | None) -> dict[str, Any]:
    """The six rubric items with bounded widgets (out-of-range values cannot be entered) and
    the live total; returns the picked values (None where not yet picked)."""
    st.markdown("**Rubric**")
    values: dict[str, Any] = {INTERPRETATION: st.text_area(
        QUESTIONS[INTERPRETATION], value=initial.rubric.interpretation if initial else "",
        height=80, key=f"{key}_{INTERPRETATION}",
        placeholder="What does this unit respond to, and what does it do?")}
    for item, (lo, hi) in RUBRIC.items():
        options = list(range(lo, hi + 1))
        before = getattr(initial.rubric, item) if initial else None
        values[item] = st.radio(f"{QUESTIONS[item]} ({lo}–{hi})", options, horizontal=True,
                                index=None if before is None else options.index(before),
                                key=f"{key}_{item}")
    total = sum(v for item, v in values.items() if item in RUBRIC and v is not None)
    missing = [QUESTIONS[i].split(" · ")[0] for i in RUBRIC if values[i] is None]
    if not values[INTERPRETATION].strip():
        missing.insert(0, QUESTIONS[INTERPRETATION].split(" · ")[0])
    note = f"still to answer: {', '.join(missing)}" if missing else "all items answered"
    st.metric("Total", f"{total} / {MAX_TOTAL}", help=f"Above {QUITE_INTERPRETABLE} reads as "
              "'quite interpretable'.", delta=note, delta_color="off", delta_arrow="off")
    values["_missing"] = missing
    return values


def submit_row(book: ScoreBook, rater: str, unit: Unit, values: dict[str, Any],
               intervals: list[int | None] | None, blind: bool, key: str,
               cancel: Callable[[], None] | None = None, run: str = "") -> None:
    """Submit (disabled until every item is answered; validated again by the ScoreBook).
    "Saved" is flashed only after `submit` returned, i.e. after the commit."""
    with st.container(horizontal=True):
        clicked = st.button("Submit score", type="primary", disabled=bool(values["_missing"]),
                            key=f"{key}_submit")
        if cancel is not None:
            cancel()
    if not clicked:
        return
    rubric_values = {k: v for k, v in values.items() if not k.startswith("_")}
    try:
        saved = book.submit(rater, unit.dictionary, unit.index, rubric_values,
                            interval_scores=intervals,
                            blind=blind, run=run)
    except ScoreError as err:
        st.error(f"Not saved: {err}")
        return
    st.session_state[_FLASH] = (key, f"Saved: {saved.total} / {MAX_TOTAL}, committed at "
                                     f"{saved.created_at[11:19]} UTC.")
    st.session_state.pop(f"{key}_editing", None)
    st.rerun()


def revealed(book: ScoreBook, rater: str, record: FeatureRecord, latest: Score,
             key: str, run: str = "", path: str | None = None) -> bool:
    """What the unit was (in a study: which run too), and the rater's latest score of it;
    returns True if they chose to edit it. `path`: the unit's store."""
    flash = st.session_state.get(_FLASH)
    if flash and flash[0] == key:
        st.success(flash[1])
        del st.session_state[_FLASH]
    versions = len(book.history(rater, record.dictionary, record.index, run=run))
    st.markdown(f"This was **{record.dictionary} · feature {record.index}** "
                f"(of {record.n_features:,})" + (f" of run **{run}**." if run else "."))
    st.markdown(f"Your score: **{latest.total} / {MAX_TOTAL}**"
                f"{'' if latest.blind else ' (not blind)'} · {versions} version"
                f"{'s' if versions > 1 else ''} saved, the latest counts.")
    items = " · ".join(f"{item.replace('_', ' ')} {getattr(latest.rubric, item)}"
                       for item in RUBRIC)
    st.caption(f"“{latest.rubric.interpretation}” — {items}")
    links.feature_link(record.dictionary, record.index, "Open its feature page",
                       view={"run": run} if run else None)
    # issue 13: the automated explanation only now, after the score is saved (never before)
    interp_views.after_score_block(path or store_access.store_path(), record.dictionary,
                                   record.index)
    return st.button("Edit my score", key=f"{key}_edit")


def score_unit(book: ScoreBook, rater: str, record: FeatureRecord, key: str,
               blind: bool, run: str = "", path: str | None = None) -> None:
    """One unit: revealed with its score if this rater has scored it (unless editing),
    else the evidence and the rubric. `key` must not identify the unit; `run` is the
    study's run it belongs to ("" outside a study), `path` its store."""
    latest = book.latest(rater, record.dictionary, record.index, run=run)
    editing_key = f"{key}_editing"
    relative = blind and latest is None  # no scale until the reveal (module docstring)
    # logits | intervals | rubric: the evidence and the form side by side, no scrolling to
    # score; the intervals come first in code so their scores exist when Submit is handled
    logits_col, intervals_col, form_col = st.columns([1.1, 2.4, 1.3], gap="medium")
    with logits_col:
        logit_evidence(record, key, relative)
    if latest is not None and not st.session_state.get(editing_key):
        with intervals_col:
            interval_evidence(record, key, scoring=False)
        with form_col:
            if revealed(book, rater, record, latest, key, run, path):
                st.session_state[editing_key] = True
                st.rerun()
        return
    form_key = f"{key}_{latest.score_id[:8] if latest else 'new'}"
    with intervals_col:
        intervals = interval_evidence(record, form_key, relative=relative)
    with form_col:
        if latest is not None:
            st.info(f"Editing your score ({latest.total} / {MAX_TOTAL}); the old one stays "
                    "in the history and the new one counts.")
        values = rubric(form_key, latest)

        def cancel() -> None:
            if latest is not None and st.button("Cancel edit", key=f"{form_key}_cancel"):
                st.session_state.pop(editing_key, None)
                st.rerun()

        submit_row(book, rater, Unit(record.dictionary, record.index), values, intervals, blind,
                   key, cancel, run=run)
