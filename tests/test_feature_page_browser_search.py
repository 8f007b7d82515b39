"""Feature browser search (issue 15, item 6): tokens and logits searched separately, units
ranked by how strongly they respond to the searched token, exact matching as an option.

The store's two search readers are checked against what `FeatureStore.feature` returns for
every unit (the same examples and logits a feature page shows); the page's ranking against a
brute-force pass over those records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard import browser_views
from feature_store import FeatureStore
from tests.helpers.app import open_page


@pytest.fixture
def browse(synthetic_store, monkeypatch):
    monkeypatch.setenv("FEATURE_STORE", str(synthetic_store))
    return lambda **params: open_page("app_pages/browser.py", **params)


def records(store: Path, dictionary: str):
    opened = FeatureStore.open(store)
    return [opened.feature(dictionary, i) for i in range(opened.n_features(dictionary))]


@pytest.mark.parametrize("dictionary", ["neurons", "sae_64"])
def test_top_example_tokens_are_the_top_examples_drawn_tokens(synthetic_store, dictionary):
    got = FeatureStore.open(synthetic_store).top_example_tokens(dictionary)
    want = [(r.index, rank, e.token_ids[e.center], e.act)
            for r in records(synthetic_store, dictionary)
            for rank, e in enumerate(r.top_examples)]
    assert list(got.columns) == ["feature", "rank", "token_id", "act"]
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got[["feature", "rank", "token_id"]].to_numpy(),
                                  np.array([w[:3] for w in want]))
    np.testing.assert_allclose(got["act"].to_numpy(), [w[3] for w in want], rtol=1e-6)


def test_top_logit_tokens_are_each_units_raised_logits(synthetic_store):
    got = FeatureStore.open(synthetic_store).top_logit_tokens("sae_128")
    want = [(r.index, rank, e.token_id, e.value)
            for r in records(synthetic_store, "sae_128")
            for rank, e in enumerate(r.top_logits)]
    np.testing.assert_array_equal(got[["feature", "rank", "token_id"]].to_numpy(),
                                  np.array([w[:3] for w in want]))
    np.testing.assert_allclose(got["value"].to_numpy(), [w[3] for w in want], rtol=1e-6)


def test_matching_tokens_substring_any_case_or_exact():
    vocab = pd.DataFrame({"token_id": range(6),
                          "display": ["def", "·def", "Default", "undef", "d.f", "·the"]})

    def picked(query: str, exact: bool) -> list[str]:
        return browser_views.matching_tokens(vocab, query, exact)["display"].tolist()

    assert picked("def", exact=False) == ["def", "·def", "Default", "undef"]
    assert picked("def", exact=True) == ["def"]
    assert picked("Def", exact=True) == []  # exact is case-sensitive
    assert picked(".", exact=False) == ["d.f"]  # literal, not a pattern
    assert picked(" the", exact=True) == ["·the"]  # a typed space matches the shown ·


def test_strongest_matches_rank_by_strength_not_index():
    rows = pd.DataFrame({"feature": [0, 0, 1, 2, 2, 3],
                         "rank": [0, 1, 0, 0, 1, 0],
                         "token_id": [9, 7, 7, 7, 7, 5],
                         "act": [5.0, 1.0, 3.0, 2.5, 2.0, 9.0]})
    found = browser_views.strongest_matches(rows, "act", np.array([7]))
    assert found["index"].tolist() == [1, 2, 0]  # token 9 (act 5) and unit 3 do not count
    assert found["strength"].tolist() == [3.0, 2.5, 1.0]
    assert found["rank"].tolist() == [1, 1, 2]  # 1-based, of the strongest matching row
    assert found["hits"].tolist() == [1, 2, 1]


def brute_force(store: Path, dictionary: str, token_ids: set[int], where: str) -> dict[int, float]:
    """Each unit's strongest response to any of `token_ids`, straight from its records."""
    best: dict[int, float] = {}
    for r in records(store, dictionary):
        if where == "tokens":
            values = [e.act for e in r.top_examples if e.token_ids[e.center] in token_ids]
        else:
            values = [e.value for e in r.top_logits if e.token_id in token_ids]
        if values:
            best[r.index] = max(values)
    return best


@pytest.mark.parametrize("where", ["tokens", "logits"])
def test_search_ranks_units_by_their_response_to_the_token(browse, synthetic_store, where):
    at = browse(dictionary="sae_128", q="zi", **({"in": where} if where == "logits" else {}),
                **{"class": "dead,ultralow,normal,dense"})
    table = at.dataframe[0].value
    vocab = FeatureStore.open(synthetic_store).vocab()
    ids = set(vocab[vocab["display"].str.casefold().str.contains("zi")]["token_id"])
    want = brute_force(synthetic_store, "sae_128", ids, where)
    assert sorted(table["feature"]) == sorted(want)
    assert len(table) > 3
    np.testing.assert_allclose(table["strength"], [want[i] for i in table["feature"]], rtol=1e-6)
    assert list(table["strength"]) == sorted(table["strength"], reverse=True)
    assert list(table["feature"]) != sorted(table["feature"])  # not by index
    assert all("zi" in token.casefold() for token in table["matched"])
    assert ("hits" in table) == (where == "tokens") and ("rank" in table) == (where == "logits")
    caption = " ".join(c.value for c in at.caption)
    assert ("act on token" if where == "tokens" else "logit weight") in caption
    assert at.query_params.get("in") == ("logits" if where == "logits" else None)


def test_tokens_and_logits_are_searched_separately(browse):
    on_tokens = browse(dictionary="sae_64", q="<script>").dataframe[0].value
    on_logits = browse(dictionary="sae_64", q="<script>", **{"in": "logits"}).dataframe[0].value
    assert set(on_tokens["feature"]) != set(on_logits["feature"])


def test_exact_token_search_is_narrower(browse):
    loose = browse(dictionary="sae_64", q="·zi").dataframe[0].value
    at = browse(dictionary="sae_64", q="·zi", exact="1")
    exact = at.dataframe[0].value
    assert set(exact["matched"]) == {"·zi"}
    assert len(exact) < len(loose) and set(exact["feature"]) <= set(loose["feature"])
    assert at.query_params["exact"] == "1" and at.checkbox[0].value is True


def test_a_query_matching_no_token_says_so(browse):
    at = browse(dictionary="sae_64", q="qqqq")
    assert len(at.dataframe[0].value) == 0
    assert "No vocabulary token contains 'qqqq', so" in " ".join(c.value for c in at.caption)
    at = browse(dictionary="sae_64", q=" qqqq", exact="1")
    assert "No vocabulary token is ' qqqq' or '·qqqq'" in " ".join(c.value for c in at.caption)


def test_the_table_shows_format_characters_escaped(browse, synthetic_store):
    """The grid draws on a canvas, where a raw U+202E would reverse the cell: the table shows
    the escape, as token HTML does."""
    raw = FeatureStore.open(synthetic_store).features("sae_64")
    assert raw["top_tokens"].str.contains("\u202e").any()  # the hostile store holds it raw
    every_class = {"class": "dead,ultralow,normal,dense"}
    table = browse(dictionary="sae_64", **every_class).dataframe[0].value
    assert not table["top tokens"].str.contains("\u202e").any()
    assert table["top tokens"].str.contains("\\u202e", regex=False).any()
    found = browse(dictionary="sae_64", q="override").dataframe[0].value
    assert all("\u202e" not in token for token in found["matched"])
