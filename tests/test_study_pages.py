"""The dashboard on a study: run picker in the URL, the Universality page, match links."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dashboard import charts, links
from feature_store.store import FeatureStore
from feature_store.study_store import StudyStore
from tests.helpers.app import chart_figures, open_page


@pytest.fixture()
def study_app(mini_study, monkeypatch):
    monkeypatch.setenv("FEATURE_STORE", str(mini_study[0]))
    return mini_study[0]


def values(array) -> np.ndarray:
    """A figure JSON array: a list, or plotly's typed array {dtype, bdata (base64)}."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array, dtype=float)


def page_text(at) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.caption]
    parts += [e.proto.body for e in at.get("html")]
    parts += [e.value for e in at.title] + [e.value for e in at.header]
    parts += [e.value for e in at.subheader]
    return "\n".join(str(p) for p in parts)


def test_overview_of_a_study_shows_both_runs(study_app):
    at = open_page(links.OVERVIEW)
    text = page_text(at)
    assert "Runs of this study" in text and "solu_ln" in text and "gelu" in text
    assert "median best corr" in text
    assert "Are features more universal than neurons?" in text and "No SAE-seed control" in text
    assert "Control: run gelu (gelu)" in text  # the other run's explanation medians beside
    assert at.query_params["run"] == "solu"


def test_run_parameter_picks_the_run(study_app):
    at = open_page(links.FEATURE, run="gelu", dictionary="neurons", feature="3")
    assert at.query_params["run"] == "gelu"
    assert "runs/gelu/store" in "\n".join(str(e.proto.body) for e in at.get("html")) \
        or at.sidebar.radio[0].value == "gelu"
    text = page_text(at)
    assert "match in <b>solu</b>" in text and "run=solu" in text


def test_unknown_run_is_a_clear_page_not_another_run(study_app):
    at = open_page(links.FEATURE, run="relu", dictionary="neurons", feature="0")
    assert at.error and "Unknown run 'relu'" in at.error[0].value
    assert "solu, gelu" in at.error[0].value


@pytest.mark.parametrize("params", [{}, {"run": "gelu", "other": "solu", "dictionary": "sae_128",
                                          "feature": "5"}])
def test_universality_page(study_app, params):
    at = open_page(links.UNIVERSALITY, **params)
    figures = chart_figures(at)
    assert figures and figures[0]["data"][0]["type"] == "bar"  # the light bundle has no histogram
    assert abs(values(figures[0]["data"][0]["y"]).sum() - 1) < 1e-6  # shares of units
    names = " ".join(t["name"] for t in figures[0]["data"])
    assert "neurons" in names and "sae_" in names
    # each dictionary in the colour every other page gives it (its place in the run's store)
    study = StudyStore.open(study_app)
    colours = charts.dictionary_colours(
        FeatureStore.open(study.store_path(params.get("run", "solu"))).dictionaries())
    for trace in figures[0]["data"]:
        assert trace["marker"]["color"] == colours[trace["name"].split()[0]]
    text = page_text(at)
    assert "its best match in" in text and "activation correlation" in text
    assert at.dataframe and len(at.dataframe[0].value) > 0
    if params:
        assert at.query_params["feature"] == "5" and at.query_params["run"] == "gelu"
    else:  # opens on the largest SAE, the neurons beside it
        assert at.query_params["dictionary"] == "sae_128"


def test_universality_opens_on_the_largest_sae_not_neurons_pre_ln(mini_run, tmp_path,
                                                                   monkeypatch):
    """Two SoLU runs also compare neurons_pre_ln (d_mlp units, as many as the smallest SAE's
    features here): the page still opens on the largest SAE. A study over the mini run's
    store twice, with made-up matches, is enough for the page."""
    from feature_store.store import FeatureStore
    from feature_store.study_store import write_study_store

    store = FeatureStore.open(mini_run / "store")
    assert "neurons_pre_ln" in store.dictionaries()
    records = []
    for variant, other in (("a", "b"), ("b", "a")):
        for name in store.dictionaries():
            n = store.n_features(name)
            records.append({
                "variant": variant, "other": other, "dictionary": name,
                "n_active": np.ones(n), "best_match": np.arange(n), "best_corr": np.full(n, 0.9),
                "second_match": np.zeros(n), "second_corr": np.full(n, 0.1),
                "logit_corr": np.full(n, np.nan), "decoder_cosine": np.full(n, np.nan),
                "directions_comparable": False, "same_model": False, "n_tokens": 100})
    study = tmp_path / "study" / "store"
    study.mkdir(parents=True)
    variants = [{"name": v, "store": str(mini_run / "store")} for v in ("a", "b")]
    write_study_store(study, variants, records, n_tokens=100)
    monkeypatch.setenv("FEATURE_STORE", str(study.parent))
    at = open_page(links.UNIVERSALITY)
    largest = max((n for n in store.dictionaries() if n.startswith("sae_")),
                  key=store.n_features)
    assert at.query_params["dictionary"] == largest
    names = " ".join(t["name"] for t in chart_figures(at)[0]["data"])
    assert largest in names and "neurons (" in names


@pytest.mark.parametrize("params, message", [
    ({"other": "relu"}, "Unknown run 'relu' to match against"),
    ({"dictionary": "sae_9"}, "Unknown dictionary 'sae_9'"),
    ({"feature": "abc"}, "is not a number"),
    ({"feature": "100000"}, "No unit 100000"),
])
def test_universality_bad_urls(study_app, params, message):
    at = open_page(links.UNIVERSALITY, **params)
    assert at.error and message in at.error[0].value


def test_universality_on_a_single_run_says_how_to_build_a_study(mini_run, monkeypatch, tmp_path):
    from pipelines.stats.stage import run as _  # noqa: F401 - the mini run has a store
    monkeypatch.setenv("FEATURE_STORE", str(mini_run / "store"))
    at = open_page(links.UNIVERSALITY)
    assert "python -m pipelines study" in "\n".join(c.value for c in at.code)


def test_paper_comparison_puts_the_sae_seed_control_first_then_the_paper():
    import pandas as pd

    from dashboard.universality_views import (OTHER_MODEL, PAPER_FEATURES, SAME_MODEL,
                                              paper_comparison)

    def row(variant, other, dictionary, n, median, same, cosine=None):
        return {"variant": variant, "other": other, "dictionary": dictionary, "n_units": n,
                "median_best_corr": median, "same_model": same,
                "median_decoder_cosine": cosine}

    summary = pd.DataFrame([
        row("solu", "gelu", "neurons", 64, 0.40, False),
        row("solu", "gelu", "sae_128", 128, 0.45, False),
        row("solu", "gelu", "sae_64", 64, 0.50, False),
        row("gelu", "solu", "sae_64", 64, 0.55, False),  # the other direction: left out
        row("solu", "seed1", "neurons", 64, 1.0, True),
        row("solu", "seed1", "neurons_pre_ln", 64, 1.0, True),
        row("solu", "seed1", "sae_64", 64, 0.80, True, 0.9),
        row("gelu", "seed1", "sae_64", 64, 0.30, False),  # seed1 is solu's copy: left out
    ])
    table = paper_comparison(summary, ["solu", "gelu", "seed1"])
    assert "gelu ↔ seed1" not in set(table["pair"])
    assert list(table["kind"]) == [SAME_MODEL, "two model seeds (the paper)", OTHER_MODEL,
                                   OTHER_MODEL]
    table = table[table["kind"] != "two model seeds (the paper)"].reset_index(drop=True)
    assert list(table["dictionary"][:3]) == ["sae_64", "sae_64", "sae_128"]
    assert pd.isna(table["gap"].iloc[0])  # the control's neurons are 1 by construction
    assert table["gap"].iloc[1] == pytest.approx(0.10)
    assert table["decoder cosine"].iloc[0] == pytest.approx(0.9)
    assert PAPER_FEATURES not in set(table["features"])  # the paper's row is the one removed


def _summary_rows(pairs: dict[tuple[str, str], dict[str, float]], same=()) -> "pd.DataFrame":
    import pandas as pd

    rows = []
    for (a, b), medians in pairs.items():
        for dictionary, median in medians.items():
            rows.append({"variant": a, "other": b, "dictionary": dictionary, "n_units": 64,
                         "median_best_corr": median, "same_model": (a, b) in same,
                         "median_decoder_cosine": None})
    return pd.DataFrame(rows)


SOLU = {"act_fn": "solu_ln", "d_model": 32, "d_mlp": 64, "tokens_trained": 6_000_000,
        "activations": "model"}


def test_pair_kinds_name_what_a_pair_compares():
    from dashboard.universality_views import (MODEL_SEEDS, OTHER_MODEL, PLANTED, SAME_MODEL,
                                              UNTRAINED, pair_kind)

    gelu, untrained = SOLU | {"act_fn": "gelu"}, SOLU | {"tokens_trained": 0}
    planted = SOLU | {"activations": "planted"}
    assert pair_kind(SOLU, SOLU, same_model=True) == SAME_MODEL
    assert pair_kind(SOLU, dict(SOLU), same_model=False) == MODEL_SEEDS
    assert pair_kind(SOLU, gelu, same_model=False) == OTHER_MODEL
    assert pair_kind(SOLU, untrained, same_model=False) == UNTRAINED
    assert pair_kind(planted, planted, same_model=False) == PLANTED


def test_gap_reading_says_what_limits_the_gap():
    from dashboard.universality_views import gap_reading, paper_comparison

    infos = {"solu": SOLU, "seed1": dict(SOLU), "saeseed1": dict(SOLU)}
    variants = ["solu", "seed1", "saeseed1"]

    def reading(seeds: float, control: float) -> str:
        summary = _summary_rows({("solu", "seed1"): {"neurons": 0.45, "sae_64": seeds},
                                 ("solu", "saeseed1"): {"neurons": 1.0, "sae_64": control}},
                                same={("solu", "saeseed1")})
        return gap_reading(paper_comparison(summary, variants, infos), infos)

    models = reading(seeds=0.50, control=0.90)  # SAEs agree on one model, not across two
    assert "+0.05" in models and "have not yet learned the same features" in models
    assert "6.0M tokens" in models and "1/16,667" in models
    saes = reading(seeds=0.50, control=0.55)  # the SAEs are the limit
    assert "not reproducible" in saes
    assert "as in the paper" in reading(seeds=0.70, control=0.90)  # the target is met
    no_control = _summary_rows({("solu", "seed1"): {"neurons": 0.45, "sae_64": 0.5}})
    assert "Add an SAE-seed control" in gap_reading(
        paper_comparison(no_control, ["solu", "seed1"], infos), infos)
    only_gelu = _summary_rows({("solu", "gelu"): {"neurons": 0.45, "sae_64": 0.5}})
    gelu_infos = {"solu": SOLU, "gelu": SOLU | {"act_fn": "gelu"}}
    assert gap_reading(paper_comparison(only_gelu, ["solu", "gelu"], gelu_infos),
                       gelu_infos) is None  # no two-seed pair: nothing to read
