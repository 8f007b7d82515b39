"""Feature page (issue 15, item 4), headless: nearby units show their top tokens and say what
their cosine measures, the ablation shading's scale is a robust percentile printed on the
page, `shade=ablation` is carried by previous/next and neighbour links, and a dead unit is
one block instead of an empty chart and eleven empty intervals."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dashboard import feature_views, token_html
from feature_store import FeatureStore, token_display
from feature_store.records import NEURONS, Example
from tests.helpers.app import chart_figures, open_page


@pytest.fixture
def feature_page(synthetic_store, monkeypatch):
    monkeypatch.setenv("FEATURE_STORE", str(synthetic_store))
    return lambda **params: open_page("app_pages/feature.py", **params)


def html_bodies(at) -> list[str]:
    return [h.proto.body for h in at.get("html")]


def related_block(at) -> str:
    (block,) = [b for b in html_bodies(at) if 'class="related"' in b]
    return block


def related_rows(block: str) -> list[tuple[str, str, str]]:
    """(href, cosine, HTML of the token chips) per listed unit."""
    return re.findall(r'<a href="([^"]+)" target="_self">#\d+</a></td><td[^>]*>([^<]+)</td>'
                      r'<td>(.*?)</td></tr>', block)


@pytest.mark.parametrize("dictionary, index", [("sae_64", 3), (NEURONS, 3)])
def test_every_listed_unit_shows_its_top_tokens(feature_page, synthetic_store, dictionary,
                                                index):
    block = related_block(feature_page(dictionary=dictionary, feature=str(index)))
    rows = related_rows(block)
    assert len(rows) >= 10
    opened = FeatureStore.open(synthetic_store)
    for href, _, chips in rows:
        name = re.search(r"dictionary=(\w+)", href).group(1)
        unit = int(re.search(r"feature=(\d+)", href).group(1))
        tokens = [t for t in opened.features(name)["top_tokens"][unit].split(" ") if t]
        shown = re.findall(r'<span class="tok"[^>]*>(.*?)</span>', chips)
        assert shown == [html.escape(token_display.visible(t), quote=True)
                         for t in tokens[:feature_views.N_CHIP_TOKENS]]


def test_hostile_top_tokens_in_the_lists_are_text(feature_page):
    block = related_block(feature_page(dictionary=NEURONS, feature="3"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in block  # neuron #9's top token
    assert "<script" not in block and "<img" not in block


def test_each_list_says_what_its_cosine_measures(feature_page, synthetic_store):
    record = FeatureStore.open(synthetic_store).feature("sae_64", 3)
    lists = {r.title: r for r in feature_views.related_lists(record)}
    assert list(lists) == ["Nearest in sae_64", "Nearest in sae_128", "Neurons it is made of",
                           "Neurons with the same output"]
    assert lists["Neurons it is made of"].units == dict(record.counterparts)[NEURONS]
    assert lists["Neurons with the same output"].units == record.aligned_neurons
    block = related_block(feature_page(dictionary="sae_64", feature="3"))
    for title, measure in (("Neurons it is made of", "d[j] / |d|"),
                           ("Neurons with the same output", "W_out")):
        assert html.escape(title) in block and html.escape(measure) in block
    neuron = {r.title for r in feature_views.related_lists(
        FeatureStore.open(synthetic_store).feature(NEURONS, 3))}
    assert neuron == {"Nearest neurons by output", "sae_64 features made of it",
                      "sae_128 features made of it"}


def ablation_example(deltas: list[float]) -> Example:
    n = len(deltas) + 1
    return Example(seq_id=0, position=0, center=0, act=1.0, tokens=("t",) * n,
                   token_ids=(0,) * n, acts=(1.0,) * n, ablation=(*deltas, math.nan))


def test_ablation_scale_is_a_percentile_an_outlier_cannot_wash_out():
    deltas = [-0.1 * (k % 10 + 1) for k in range(300)] + [25.0]  # one huge outlier
    examples = [ablation_example(deltas[:150]), ablation_example(deltas[150:] + [0.0] * 40)]
    scale = token_html.ablation_scale(examples)
    assert scale == pytest.approx(1.0)  # not 25: the 99th percentile of the 301 nonzero |Δ|
    text = token_html.ablation_scale_text(scale, token_html.ablation_magnitudes(examples))
    assert "1.000" in text and "301 shown tokens" in text and "largest 25.000" in text


def test_the_page_prints_the_scale_it_shades_with(feature_page, synthetic_store):
    at = feature_page(dictionary="sae_64", feature="3", shade="ablation")
    record = FeatureStore.open(synthetic_store).feature("sae_64", 3)
    shown = [*record.top_examples, *(e for i in record.intervals for e in i.examples)]
    magnitudes = [abs(d) for e in shown for d in e.ablation if math.isfinite(d) and d != 0]
    want = float(np.percentile(magnitudes, token_html.ABLATION_PERCENTILE, method="higher"))
    assert want < max(magnitudes)
    (examples,) = [b for b in html_bodies(at) if "Top activations" in b]
    assert f"full colour at |Δ| ≥ {want:.3f}" in html.unescape(examples)
    assert f"{-want:+.3f}" in examples and f"{want:+.3f}" in examples  # the colour bar's ends


def view_links(at) -> dict[str, str]:
    return {link.proto.label: link.proto.query_string for link in at.get("page_link")}


@pytest.mark.parametrize("shade", [True, False])
def test_previous_next_and_neighbour_links_keep_the_shading(feature_page, shade):
    at = feature_page(dictionary="sae_64", feature="3", **({"shade": "ablation"} if shade else {}))
    kept = "&shade=ablation" if shade else ""
    found = view_links(at)
    assert found[feature_views.PREVIOUS] == f"dictionary=sae_64&feature=2{kept}"
    assert found[feature_views.NEXT] == f"dictionary=sae_64&feature=4{kept}"
    assert found["Compare sizes"] == "dictionary=sae_64&feature=3"  # other pages: no shading
    hrefs = [html.unescape(href) for href, _, _ in related_rows(related_block(at))]
    assert all(("shade=ablation" in href) == shade for href in hrefs)


def test_a_dead_unit_is_one_block(feature_page, synthetic_store):
    table = FeatureStore.open(synthetic_store).features("sae_64")
    dead = int(table[table.density_class == "dead"]["index"].iloc[0])
    at = feature_page(dictionary="sae_64", feature=str(dead), shade="ablation")
    shown = "".join(html_bodies(at))
    assert shown.count("Dead: never fired") == 1
    assert "Interval 1" not in shown and "Top activations" not in shown
    titles = [figure["layout"]["title"]["text"] for figure in chart_figures(at)]
    assert titles == ["Logit weights, all tokens"]  # no empty activation histogram
    assert not any(label.startswith("Shade by") for label in view_links(at))
    assert "Raises" in shown and 'class="related"' in shown  # what its weights alone say
    assert view_links(at)[feature_views.NEXT].endswith("&shade=ablation")
