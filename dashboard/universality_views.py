"""What a study adds to the pages: the runs side by side, the Universality page, and each
feature's best match in the other runs.

A study is several runs (variants: SoLU and GeLU, two seeds, an untrained control) on the
same tokens; `url_state.require_store` already hands every page the chosen run's store. The
universality numbers come from the study store (`feature_store/study_store.py`): for every
unit, the unit of another run whose activations correlate best with it over the same
held-out tokens. Towards Monosemanticity found median best-match correlation 0.72 for
features and 0.46 for neurons between two one-layer models that differed only in their seed.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, feature_views, light_plotly, links, overview_views, store_access, url_state
from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import NEURONS, FeatureRecord, dictionary_order_key, is_neurons

PAPER = "Towards Monosemanticity (two seeds of one model): median 0.72 for features, 0.46 for neurons"
PAPER_FEATURES, PAPER_NEURONS = 0.72, 0.46  # median best-match correlation, two model seeds
SAME_MODEL = "SAE seeds (same model)"  # a pair of runs that differ only in their SAEs
OTHER_MODEL = "different models"
MODEL_SEEDS = "two model seeds"  # the paper's comparison: same architecture and training
UNTRAINED = "against an untrained model"
PLANTED = "planted features, two bases"  # activations.source = planted: a check, not a model
PAPER_MODEL_TOKENS = 100e9  # the paper's one-layer models were trained on 100B tokens
STUDY_COMMAND = "python -m pipelines study --preset tiny --study-dir runs/tiny-study"


def study() -> str | None:
    """The study this server shows, or None for a single run."""
    return store_access.study_root(store_access.store_path())


def not_a_study() -> None:
    """The Universality page of a single run: what it needs, not an empty chart."""
    st.info("Universality compares the runs of a **study**: several models trained on the "
            f"same tokens. This server shows one run (`{store_access.store_path()}`). Build a "
            "study (SoLU and GeLU on the tiny corpus) and point the dashboard at it:")
    st.code(f"{STUDY_COMMAND}\nFEATURE_STORE=runs/tiny-study python -m dashboard.serve",
            language="bash")


# -- overview ------------------------------------------------------------------------------------

# metrics.parquet columns beside each other across runs: (column, header, format) as the
# overview's table shows them (`overview_views.METRIC_DISPLAY`)
COMPARE_COLUMNS = tuple((column, *overview_views.METRIC_DISPLAY[column][:2])
                        for column in ("l0", "fvu", "ce_loss_recovered", "dead_fraction"))


def runs_table(root: str) -> pd.DataFrame:
    """One row per (dictionary, run): the figures that say which run's units reconstruct
    and matter, with each run's model beside them. Dictionaries grouped, so the runs of one
    dictionary read as adjacent rows."""
    rows, keys = [], []
    for k, run in enumerate(store_access.study_variants(root)):
        path = store_access.variant_store(root, run)
        info = store_access.run_info(path)
        metrics = store_access.metrics(path)
        for _, m in metrics.iterrows():
            row = {"dictionary": m["dictionary"], "run": run, "act_fn": info.get("act_fn"),
                   "val loss": info.get("val_loss"), "unigram": info.get("unigram_val_loss")}
            for key, label, _ in COMPARE_COLUMNS:
                row[label] = m.get(key)
            rows.append(row)
            keys.append((dictionary_order_key(m["dictionary"], m["n_features"]), k))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.iloc[sorted(range(len(table)), key=keys.__getitem__)].reset_index(drop=True)


def runs_table_html(table: pd.DataFrame) -> str:
    """Plain HTML, like the overview's metrics table (pure, so it is testable)."""
    fmts = {"val loss": ".3f", "unigram": ".3f"} | {label: f for _, label, f in COMPARE_COLUMNS}
    return overview_views.table_html(table, [(c, c, fmts.get(c, ""), "") for c in table.columns])


def overview_section(root: str) -> None:
    """The study's runs side by side, and how universal their units are."""
    summary = store_access.study_summary(root)
    if not summary.empty:  # the study's headline answer first
        comparison_section(root, summary)
    st.header("Runs of this study, side by side")
    st.caption("Every run is trained on the same tokens; the picker on the left chooses the "
               "run every other section and page shows.")
    st.html(runs_table_html(runs_table(root)))
    if not summary.empty:
        st.markdown("**Universality, every pair and dictionary** (median best-match "
                    "activation correlation):")
        st.html(summary_table_html(summary))
        st.page_link(links.UNIVERSALITY, label="Open the Universality page")


def pair_kind(a: dict, b: dict, same_model: bool) -> str:
    """What a pair of runs compares, from their run facts (`FeatureStore.run_info`)."""
    if same_model:
        return SAME_MODEL
    if "planted" in (a.get("activations"), b.get("activations")):
        return PLANTED
    if 0 in (a.get("tokens_trained"), b.get("tokens_trained")):
        return UNTRAINED
    if all(a.get(k) == b.get(k) for k in ("act_fn", "d_model", "d_mlp", "tokens_trained")):
        return MODEL_SEEDS
    return OTHER_MODEL


def paper_comparison(summary: pd.DataFrame, variants: list[str],
                     infos: dict[str, dict] | None = None) -> pd.DataFrame:
    """Features against neurons, per pair of runs (in study order) and SAE, beside the
    paper's figure: features' median best-match correlation, the same pair's neurons', the
    gap, and the kind of pair (`pair_kind`, from each run's facts in `infos`; without them,
    only same model or not). A pair with the same model weights differs only in its SAEs:
    that is the SAE-seed control, the agreement two models' features could reach at best
    with these SAEs (its neurons agree perfectly, by construction)."""
    order = {v: i for i, v in enumerate(variants)}
    pairs = summary[summary["variant"].map(order) < summary["other"].map(order)]
    # a variant with the same model as an earlier one (an SAE-seed control) is compared with
    # that one only: its pairs with the other runs repeat the earlier variant's
    copies = set(pairs.loc[pairs["same_model"].astype(bool), "other"])
    rank = {SAME_MODEL: 0, MODEL_SEEDS: 1}  # the paper's row follows these (rank 2)
    rows = []
    for (run, other), group in pairs.groupby(["variant", "other"], sort=False):
        by_dictionary = group.set_index("dictionary")
        neurons = (by_dictionary.loc[NEURONS, "median_best_corr"]
                   if NEURONS in by_dictionary.index else None)
        same = bool(group["same_model"].any())
        if not same and (run in copies or other in copies):
            continue
        kind = (pair_kind(infos.get(run, {}), infos.get(other, {}), same) if infos is not None
                else SAME_MODEL if same else OTHER_MODEL)
        for dictionary, row in by_dictionary.iterrows():
            if is_neurons(dictionary):
                continue
            features = row["median_best_corr"]
            rows.append({
                "pair": f"{run} ↔ {other}", "kind": kind,
                "dictionary": dictionary, "features": features, "neurons": neurons,
                # the control's neurons match themselves (1 by construction): no gap to read
                "gap": (None if same or pd.isna(features) or pd.isna(neurons)
                        else features - neurons),
                "decoder cosine": row["median_decoder_cosine"],
                "order": (rank.get(kind, 3), order[run], order[other],
                          dictionary_order_key(dictionary, row["n_units"]))})
    rows.append({"pair": "Towards Monosemanticity", "kind": "two model seeds (the paper)",
                 "dictionary": "4,096 features", "features": PAPER_FEATURES,
                 "neurons": PAPER_NEURONS, "gap": PAPER_FEATURES - PAPER_NEURONS,
                 "decoder cosine": None, "order": (2,)})
    rows.sort(key=lambda r: r.pop("order"))
    return pd.DataFrame(rows)


def gap_reading(table: pd.DataFrame, infos: dict[str, dict]) -> str | None:
    """What the study's own figures say about the paper's gap (features − neurons 0.26 over
    two model seeds), when its two-seed pairs fall short of 0.2: whether the SAEs are the
    limit (the SAE-seed control is low too) or the models are (the control is well above the
    two models' agreement). None when the study has no two-seed pair or reaches the gap."""
    seeds = table[table["kind"] == MODEL_SEEDS].dropna(subset=["gap"])
    if seeds.empty:
        return None
    best = seeds.loc[seeds["gap"].idxmax()]
    if best["gap"] >= 0.2:
        return (f"{best['pair']} reaches a gap of {best['gap']:+.2f} at {best['dictionary']}: "
                f"features are clearly more universal than neurons, as in the paper "
                f"({PAPER_FEATURES - PAPER_NEURONS:+.2f}).")
    run = best["pair"].split(" ↔ ")[0]
    tokens = infos.get(run, {}).get("tokens_trained")
    trained = (f"trained on {tokens / 1e6:,.1f}M tokens, 1/{PAPER_MODEL_TOKENS / tokens:,.0f} "
               "of the paper's 100B" if tokens else "trained far less than the paper's (100B tokens)")
    text = (f"Here features beat neurons by at most {best['gap']:+.2f} "
            f"({best['pair']}, {best['dictionary']}; the paper: "
            f"{PAPER_FEATURES - PAPER_NEURONS:+.2f}).")
    control = table[table["kind"] == SAME_MODEL]
    if control.empty:
        return text + (" Add an SAE-seed control to tell whether the SAEs or the models "
                       "limit it.")
    same = control[control["dictionary"] == best["dictionary"]]
    ctrl = float((same if not same.empty else control)["features"].max())
    if ctrl - float(best["features"]) >= 0.15:
        return text + (f" Two SAEs on one model agree far better ({ctrl:.2f}) than the two "
                       f"models' SAEs do ({best['features']:.2f}): the SAEs are reproducible "
                       f"enough, the two models ({trained}) have not yet learned the same "
                       "features. docs/results.md has the sweep that measured this.")
    return text + (f" Two SAEs on one model agree little better ({ctrl:.2f}): the SAEs "
                   "themselves are not reproducible at these settings, which caps the "
                   "comparison (docs/results.md, the sweep).")


COMPARISON_COLUMNS = (("pair", "runs", ""), ("kind", "pair", ""), ("dictionary", "SAE", ""),
                      ("features", "features: median best corr", ".2f"),
                      ("neurons", "neurons", ".2f"), ("gap", "features − neurons", "+.2f"),
                      ("decoder cosine", "median decoder cosine", ".2f"))


def comparison_section(root: str, summary: pd.DataFrame) -> None:
    """The study's answer to the paper's question, with the control that bounds it."""
    variants = store_access.study_variants(root)
    infos = {v: store_access.run_info(store_access.variant_store(root, v)) for v in variants}
    table = paper_comparison(summary, variants, infos)
    st.markdown("**Are features more universal than neurons?** Median best-match activation "
                "correlation of each unit with the other run's units, features against "
                "neurons, beside Towards Monosemanticity's figure.")
    reading = gap_reading(table, infos)
    if reading:
        st.info(reading)
    st.html(overview_views.table_html(table, [(k, label, f, "")
                                              for k, label, f in COMPARISON_COLUMNS]))
    if (table["kind"] == PLANTED).any():
        st.caption("Rows marked planted read activations generated from a known sparse "
                   "dictionary seen in two random bases (`activations.source = \"planted\"`), "
                   "not the models': built so features match (≈ 1) and neurons do not. They "
                   "check the machinery; they say nothing about the models.")
    control = table[table["kind"] == SAME_MODEL]
    if control.empty:
        st.caption("No SAE-seed control in this study: add a variant that differs from "
                   "another only in `sae.seed` (e.g. `--set variants.saeseed1.sae.seed=1`). "
                   "It shares that run's model and activations (built once) and shows how far "
                   "two SAEs on the same activations agree, which bounds how far two models' "
                   "features can.")
    else:
        st.caption(f"Rows marked {SAME_MODEL!r} compare two SAEs trained on the same model's "
                   "activations with different seeds: their neurons agree exactly, so the "
                   "features' figure there is the most two models' features could agree with "
                   "SAEs trained this way. A control well below 1 says the SAEs themselves "
                   "are not reproducible at this scale, and caps the cross-model comparison.")


def other_runs_interp(root: str, run: str) -> dict[str, dict]:
    """{label: interp summary} of the study's other runs, for the overview's automated-
    explanation medians: beside this run's, the same scores for the other activation
    function, another seed or the untrained control (a study's `model.train_tokens = 0`
    variant), whichever the study has."""
    from dashboard import interp_views

    out = {}
    for other in store_access.study_variants(root):
        if other == run:
            continue
        path = store_access.variant_store(root, other)
        summary = interp_views.interp_summary(path)
        if summary is None:
            continue
        info = store_access.run_info(path)
        label = f"run {other} ({info.get('act_fn')}"
        if info.get("tokens_trained") == 0:
            label += ", untrained"
        out[label + ")"] = summary
    return out


# -- universality page ---------------------------------------------------------------------------

SUMMARY_COLUMNS = (("variant", "run", ""), ("other", "matched in", ""),
                   ("same_model", "same model", ""),
                   ("dictionary", "dictionary", ""), ("n_compared", "units compared", ",.0f"),
                   ("median_best_corr", "median best corr", ".2f"),
                   ("mean_best_corr", "mean", ".2f"), ("share_above_0_5", "> 0.5", ".0%"),
                   ("share_above_0_9", "> 0.9", ".0%"),
                   ("median_logit_corr", "median logit-weight corr", ".2f"),
                   ("median_decoder_cosine", "median decoder cosine", ".2f"))


def summary_table_html(summary: pd.DataFrame) -> str:
    shown = summary.assign(same_model=summary["same_model"].map({True: "yes", False: "no"}))
    return overview_views.table_html(shown, [(k, label, f, "") for k, label, f in SUMMARY_COLUMNS])


def correlation_histogram(features: pd.DataFrame, neurons: pd.DataFrame | None,
                          dictionary: str, run: str, other: str, order: list[str]) -> go.Figure:
    """The paper's universality figure: best-match correlations, features and neurons
    overlaid, each normalised to its own count (the two have different numbers of units).
    `order`: the run's store order, so each dictionary has its colour of every other page."""
    colours = charts.dictionary_colours(order, extra=[NEURONS, dictionary])
    fig = go.Figure()
    edges = np.linspace(-0.05, 1.0, 22)  # bars, not a histogram trace: the light bundle
    centres = (edges[:-1] + edges[1:]) / 2  # draws scatter, bar and pie only
    traces = [(dictionary, features)] + ([(NEURONS, neurons)] if neurons is not None else [])
    for name, rows in traces:
        values = rows["best_corr"].dropna().to_numpy()
        if not values.size:
            continue
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
        fig.add_trace(go.Bar(
            x=centres, y=counts / values.size, width=edges[1] - edges[0],
            name=f"{name} (median {np.median(values):.2f}, n={values.size:,})",
            marker_color=colours[name], opacity=0.6,
            hovertemplate=f"{name}<br>corr %{{x:.2f}}<br>%{{y:.1%}} of units<extra></extra>"))
    fig.update_layout(barmode="overlay", height=340, margin=charts.MARGIN,
                      title=f"Best-match activation correlation, {run} → {other}",
                      xaxis_title="correlation with the best-matching unit of the other run",
                      yaxis_title="share of units", legend=dict(orientation="h", y=-0.3))
    return fig


def units_table(root: str, run: str, other: str, dictionary: str) -> pd.DataFrame:
    """Every unit with its best match, top tokens of both, and links into both runs."""
    rows = store_access.study_matches(root, run, other, dictionary).copy()
    mine = store_access.features(store_access.variant_store(root, run), dictionary)
    theirs = store_access.features(store_access.variant_store(root, other), dictionary)
    tokens_mine = mine.set_index("index")["top_tokens"]
    tokens_theirs = theirs.set_index("index")["top_tokens"]
    rows["top tokens"] = rows["index"].map(tokens_mine).fillna("")
    rows["match top tokens"] = rows["best_match"].map(tokens_theirs).fillna("")
    return rows


def compared_dictionaries(summary: pd.DataFrame, run: str) -> list[str]:
    """The dictionaries `run` is matched on, in dictionary order (sizes from `n_units`)."""
    rows = summary[summary["variant"] == run]
    sizes = dict(zip(rows["dictionary"], rows["n_units"]))
    return sorted(sizes, key=lambda name: dictionary_order_key(name, sizes[name]))


def default_dictionary(dictionaries: list[str]) -> str:
    """The page opens on the largest SAE (the neurons are drawn alongside it); on the
    neurons when the runs share no SAE."""
    saes = [name for name in dictionaries if not is_neurons(name)]
    return saes[-1] if saes else (dictionaries[0] if dictionaries else NEURONS)


def chosen_pair(root: str, run: str) -> tuple[str, str] | None:
    """(other run, dictionary) from the URL, checked against the study; None when the study
    has only one run."""
    variants = store_access.study_variants(root)
    others = [v for v in variants if v != run]
    if not others:
        return None
    dictionaries = compared_dictionaries(store_access.study_summary(root), run)
    other = st.query_params.get("other") or others[0]
    if other not in others:
        url_state.stop_with(f"Unknown run {other!r} to match against; the other runs are "
                            f"{', '.join(others)}.", build_hint=False)
    dictionary = st.query_params.get("dictionary") or default_dictionary(dictionaries)
    if dictionary not in dictionaries:
        url_state.stop_with(f"Unknown dictionary {dictionary!r} for universality; the runs share "
                            f"{', '.join(dictionaries)}.", build_hint=False)
    a, b = st.columns(2)
    other = a.selectbox("Matched in run", others, index=others.index(other))
    dictionary = b.selectbox("Dictionary", dictionaries, index=dictionaries.index(dictionary))
    url_state.keep_in_url(other=other, dictionary=dictionary)
    return other, dictionary


def universality_page(root: str, run: str) -> None:
    st.title("Universality")
    st.caption("For each unit of this run, the unit of another run whose activations correlate "
               "best with it (Pearson, over the same held-out tokens). A high best-match "
               "correlation says both models learned the same feature; the logit-weight "
               f"correlation says whether they use it the same way. {PAPER}; this study's "
               "runs may differ in more than the seed (read the runs' settings on the Overview).")
    pair = chosen_pair(root, run)
    if pair is None:
        st.info("This study has one run: nothing to match. Add a variant to the preset "
                "(`[variants.<name>]`) and rerun the study; only the new run is built.")
        return
    other, dictionary = pair
    matches = store_access.study_matches(root, run, other, dictionary)
    neurons = (store_access.study_matches(root, run, other, NEURONS)
               if dictionary != NEURONS else None)
    order = store_access.dictionaries(store_access.variant_store(root, run))
    light_plotly.chart(correlation_histogram(matches, neurons, dictionary, run, other, order),
                       key="universality_histogram")
    summary = store_access.study_summary(root)
    st.html(summary_table_html(summary[summary["dictionary"].isin({dictionary, NEURONS})]))
    this_pair = summary[(summary["variant"] == run) & (summary["other"] == other)]
    comparable = bool(this_pair["directions_comparable"].any())
    if bool(this_pair["same_model"].any()):
        st.caption(f"{run} and {other} share the model (same weights) and differ only in "
                   "their SAEs: this pair is the SAE-seed control. Its neurons match "
                   "themselves; its features show how reproducible the SAEs are.")
    comparison_section(root, summary)
    if not comparable:
        st.caption("Decoder directions are not compared: the two runs are different models, "
                   "whose MLP neurons (and so SAE directions) live in unrelated bases. The "
                   "logit-weight correlation compares what the units do in the shared vocabulary.")
    unit_table(root, run, other, dictionary)
    side_by_side(root, run, other, dictionary)


def unit_table(root: str, run: str, other: str, dictionary: str) -> None:
    """Sort and filter units by how universal they are; each row opens both feature pages."""
    rows = units_table(root, run, other, dictionary)
    lo, hi = st.slider("Best-match correlation between", -1.0, 1.0, (-1.0, 1.0), 0.05,
                       key="universality_range")
    order = st.radio("Order", ["least universal first", "most universal first"],
                     horizontal=True, key="universality_order")
    shown = rows[rows["best_corr"].between(lo, hi)]
    shown = shown.sort_values("best_corr", ascending=order.startswith("least"),
                              na_position="last")
    st.caption(f"{len(shown):,} of {len(rows):,} units of {run} {dictionary} "
               f"({rows['best_corr'].isna().sum():,} never fire or never vary: no match)")
    view = pd.DataFrame({
        "unit": [links.feature_url(dictionary, i, view={"run": run}) for i in shown["index"]],
        "top tokens": shown["top tokens"].to_numpy(),
        "best corr": shown["best_corr"].to_numpy(),
        "match": [links.feature_url(dictionary, j, view={"run": other}) if j >= 0 else None
                  for j in shown["best_match"]],
        "match top tokens": shown["match top tokens"].to_numpy(),
        "2nd corr": shown["second_corr"].to_numpy(),
        "logit-weight corr": shown["logit_corr"].to_numpy(),
        "tokens active": shown["n_active"].to_numpy(),
        "side by side": [f"universality?{_side_query(run, other, dictionary, i)}"
                         for i in shown["index"]],
    })
    st.dataframe(view, hide_index=True, height=360, column_config={
        "unit": st.column_config.LinkColumn(f"{run} unit", display_text=r"feature=(\d+)"),
        "match": st.column_config.LinkColumn(f"match in {other}", display_text=r"feature=(\d+)"),
        "side by side": st.column_config.LinkColumn("compare", display_text="side by side"),
        "best corr": st.column_config.NumberColumn(format="%.3f"),
        "2nd corr": st.column_config.NumberColumn(format="%.3f"),
        "logit-weight corr": st.column_config.NumberColumn(format="%.3f"),
    })


def _side_query(run: str, other: str, dictionary: str, index: int) -> str:
    from urllib.parse import urlencode
    return urlencode({"run": run, "other": other, "dictionary": dictionary, "feature": int(index)})


def _record(root: str, run: str, dictionary: str, index: int) -> FeatureRecord | None:
    try:
        return store_access.feature(store_access.variant_store(root, run), dictionary, index)
    except (FeatureNotFound, StoreError):
        return None


def side_by_side(root: str, run: str, other: str, dictionary: str) -> None:
    """One unit and its match, each in its own run: examples, logits, density, both ways'
    correlations. `?feature=` picks the unit (default: this run's most universal unit)."""
    rows = store_access.study_matches(root, run, other, dictionary)
    n = len(rows)
    raw = st.query_params.get("feature")
    if raw in (None, ""):
        ranked = rows.dropna(subset=["best_corr"]).sort_values("best_corr", ascending=False)
        index = int(ranked["index"].iloc[0]) if len(ranked) else 0
    else:
        try:
            index = int(raw)
        except ValueError:
            url_state.stop_with(f"Feature {raw!r} is not a number; {dictionary} has units 0 to "
                                f"{n - 1}.", build_hint=False)
        if not 0 <= index < n:
            url_state.stop_with(f"No unit {index} in {run} {dictionary}: it has 0 to {n - 1}.",
                                build_hint=False)
    url_state.keep_in_url(feature=str(index))
    row = rows[rows["index"] == index].iloc[0]
    st.subheader(f"{run} {dictionary} #{index} and its best match in {other}")
    match = int(row["best_match"])
    if match < 0:
        st.info(f"{run} {dictionary} #{index} never fires (or never varies) on the compared "
                "tokens, so it has no match.")
        return
    back = store_access.study_matches(root, other, run, dictionary)
    back_row = back[back["index"] == match].iloc[0]
    mutual = int(back_row["best_match"]) == index
    st.markdown(
        f"activation correlation **{row['best_corr']:.3f}** (second best "
        f"{_num(row['second_corr'])}) · logit-weight correlation **{_num(row['logit_corr'])}** · "
        f"{other} #{match}'s own best match in {run} is #{int(back_row['best_match'])} "
        f"(corr {_num(back_row['best_corr'])}){' — a mutual match' if mutual else ''}")
    left, right = st.columns(2, gap="medium")
    for column, name, unit in ((left, run, index), (right, other, match)):
        with column:
            record = _record(root, name, dictionary, unit)
            st.markdown(f"**{html.escape(name)}**")
            if record is None:
                st.warning(f"{name} {dictionary} #{unit} is not in its run's store.")
                continue
            links.feature_link(dictionary, unit, f"open {name} {dictionary} #{unit}",
                               view={"run": name})
            feature_views.compact_column(record, f"in run {name}", n_examples=8,
                                         context=(8, 3), link=False)


def _num(value: object) -> str:
    return feature_views.finite_or_dash(float(value) if value is not None else math.nan, ".3f")


# -- feature page ----------------------------------------------------------------------------------

def match_lines(record: FeatureRecord) -> None:
    """On a feature page in a study: this unit's best match in every other run, with the
    correlation and a link into that run."""
    root = study()
    run = url_state.current_run()
    if root is None or run is None:
        return
    parts = []
    for other in store_access.study_variants(root):
        if other == run:
            continue
        try:
            rows = store_access.study_matches(root, run, other, record.dictionary)
        except StoreError:
            continue
        hit = rows[rows["index"] == record.index]
        if hit.empty:
            continue
        row = hit.iloc[0]
        j = int(row["best_match"])
        if j < 0:
            parts.append(f"no match in {html.escape(other)} (never varies here)")
            continue
        url = html.escape(links.feature_url(record.dictionary, j, view={"run": other}), quote=True)
        parts.append(f'match in <b>{html.escape(other)}</b>: <a href="{url}" target="_self">'
                     f"{html.escape(record.dictionary)} #{j}</a> (activation corr "
                     f"{_num(row['best_corr'])}, logit-weight corr {_num(row['logit_corr'])})")
    if parts:
        st.html(f'<div class="study-match">Run <b>{html.escape(run)}</b> · '
                + " · ".join(parts) + "</div>")
