"""The pages of a SoLU run's `neurons_pre_ln` (the neurons before the mid-MLP LayerNorm),
on the mini run's real store: what does not apply says why instead of a blank, and each
neuron links to itself at the other hook."""

from __future__ import annotations

import pytest

from feature_store import FeatureStore
from feature_store.records import NEURONS, NEURONS_PRE_LN
from tests.helpers.app import chart_figures, open_page


@pytest.fixture
def app(mini_run, monkeypatch):
    monkeypatch.setenv("FEATURE_STORE", str(mini_run / "store"))
    return open_page


def _busiest(mini_run) -> int:
    table = FeatureStore.open(mini_run / "store").features(NEURONS_PRE_LN)
    return int(table.sort_values("n_active", ascending=False)["index"].iloc[0])


def _html(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def _links(at) -> list[tuple[str, str]]:
    return [(link.proto.label, link.proto.query_string) for link in at.get("page_link")]


def test_pre_ln_feature_page_says_why_logits_and_neighbours_do_not_apply(app, mini_run):
    index = _busiest(mini_run)
    at = app("app_pages/feature.py", dictionary=NEURONS_PRE_LN, feature=str(index))
    body = _html(at)
    assert "Logit weights: not applicable" in body and "Nearest units: not applicable" in body
    assert "LayerNorm" in body and "no fixed" in body
    assert any("No automated explanation" in c.value for c in at.caption)
    assert "class=\"logits\"" not in body  # no empty logit tables drawn
    assert "Top activations" in body and "Interval 11" in body  # its own examples are there
    assert (f"Same neuron after the mid-MLP LayerNorm (what W_out reads): {NEURONS} #{index}",
            f"dictionary={NEURONS}&feature={index}") in _links(at)


def test_post_ln_neuron_links_to_itself_before_the_layer_norm(app, mini_run):
    index = _busiest(mini_run)
    at = app("app_pages/feature.py", dictionary=NEURONS, feature=str(index), shade="ablation")
    body = _html(at)
    assert "not applicable" not in body  # neurons after the LN have logits and neighbours
    assert (f"Same neuron before the mid-MLP LayerNorm: {NEURONS_PRE_LN} #{index}",
            f"dictionary={NEURONS_PRE_LN}&feature={index}&shade=ablation") in _links(at)


def test_compare_page_puts_the_same_neuron_first(app, mini_run):
    index = _busiest(mini_run)
    at = app("app_pages/compare.py", dictionary=NEURONS_PRE_LN, feature=str(index))
    captions = [c.value for c in at.caption]
    assert "the same neuron after the mid-MLP LayerNorm" in captions
    assert not [i for i in at.info if "no counterparts" in i.value]
    at = app("app_pages/compare.py", dictionary=NEURONS, feature=str(index))
    captions = [c.value for c in at.caption]
    asked = captions.index("the feature asked about")
    assert captions[asked + 1] == "the same neuron before the mid-MLP LayerNorm"


def test_overview_and_browser_list_the_pre_ln_neurons(app):
    at = app("app_pages/overview.py")
    table = next(h.proto.body for h in at.get("html") if 'class="run-table"' in h.proto.body)
    assert f"<td>{NEURONS_PRE_LN}</td>" in table
    at = app("app_pages/browser.py", dictionary=NEURONS_PRE_LN)
    assert not at.error


def test_neurons_pre_ln_is_not_taken_for_an_sae(app, mini_run):
    """A page with no dictionary in the URL opens on the smallest SAE, and the overview's CE
    curve over SAE sizes has no point for either neuron dictionary (100% by definition)."""
    saes = [n for n in FeatureStore.open(mini_run / "store").dictionaries()
            if n.startswith("sae_")]
    at = app("app_pages/browser.py")
    assert at.query_params["dictionary"] == saes[0]
    ce = next(f for f in chart_figures(app("app_pages/overview.py"))
              if f["layout"]["title"]["text"] == "CE loss recovered vs size")
    assert list(ce["data"][0]["customdata"]) == saes
