"""The prompt explorer against a real miniature run (model, tokenizer, SAEs and store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import links
from tests.helpers.app import open_page


def _page(store: Path, monkeypatch, **params: str) -> AppTest:
    """The prompt explorer on `store` (its first run loads the model: a longer timeout)."""
    monkeypatch.setenv("FEATURE_STORE", str(store))
    return open_page(links.PROMPT, timeout=120, **params)


def _strips(at: AppTest) -> list[dict]:
    """The clickable token strips' data ({"html", "pos"}): custom components, which AppTest
    lists as unknown elements with the data as JSON."""
    return [json.loads(e.proto.json) for e in at.get("bidi_component")]


def _html(at: AppTest) -> str:
    """All HTML the page sends: `st.html` bodies and the token strips'."""
    return "\n".join([h.proto.body for h in at.get("html")] + [s["html"] for s in _strips(at)])


def test_prompt_page_shows_tokens_features_and_an_ablation(mini_run, monkeypatch):
    at = _page(mini_run / "store", monkeypatch, dictionary="sae_64",
               text="def f(x):\n    return <b>x</b> & 1")
    body = _html(at)
    assert "&lt;" in body and "<b>" not in body  # prompt tokens are escaped too
    assert "KL(before" in "\n".join(m.value for m in at.markdown)
    assert at.get("arrow_data_frame") or at.dataframe
    assert at.query_params["dictionary"] == ["sae_64"] or at.query_params["dictionary"] == "sae_64"


def test_prompt_page_clamps_a_neuron(mini_run, monkeypatch):
    at = _page(mini_run / "store", monkeypatch, dictionary="neurons", feature="5", mode="clamp",
               value="8", everywhere="1", text="import os\nprint(os.getcwd())")
    assert "clamp" in "\n".join(m.value for m in at.markdown)


@pytest.mark.parametrize("params, message", [
    ({"dictionary": "sae_9999"}, "Unknown dictionary 'sae_9999'; this run has neurons, sae_64, sae_128."),
    ({"dictionary": "sae_64", "feature": "64"}, "No feature 64 in sae_64: it has features 0 to 63."),
    ({"dictionary": "sae_64", "feature": "abc"},
     "Feature 'abc' is not a number; sae_64 has features 0 to 63."),
])
def test_prompt_page_bad_input(mini_run, monkeypatch, params, message):
    at = _page(mini_run / "store", monkeypatch, **params)
    assert [e.value for e in at.error] == [message]
    assert "invalid literal" not in message


# -- the view follows the prompt ---------------------------------------------------------------

TEXT_A = "import os\nprint(os.getcwd())\nfor name in os.listdir(path):\n    print(name)"
TEXT_B = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        return None"


def _acts(store: Path, text: str, dictionary: str) -> np.ndarray:
    from feature_store.live import LiveRun

    return LiveRun.open(store).activations(text, dictionary).acts


def _peak(acts: np.ndarray, feature: int) -> int:
    """Where `feature` fires most after BOS (brute force, not the page's helper)."""
    return 1 + int(np.argmax(acts[1:, feature]))


def _widget(items, label: str):
    (found,) = [w for w in items if w.label.startswith(label)]
    return found


def _shown(at: AppTest) -> tuple[str, int, int]:
    """(dictionary, feature, position) as the page shows them and the URL keeps them."""
    dictionary = _widget(at.selectbox, "Dictionary").value
    feature = _widget(at.selectbox, "Feature").value
    pos = _widget(at.slider, "Position").value
    assert (at.query_params["dictionary"], at.query_params["feature"], at.query_params["pos"]) \
        == (dictionary, str(feature), str(pos))
    return dictionary, feature, pos


def test_a_prompt_edit_moves_the_position_to_where_the_feature_fires(mini_run, monkeypatch):
    store = mini_run / "store"
    a, b = _acts(store, TEXT_A, "sae_64"), _acts(store, TEXT_B, "sae_64")
    both = [f for f in range(a.shape[1]) if a[1:, f].max() > 0 and b[1:, f].max() > 0]
    assert both, "no sae_64 feature fires in both prompts"
    feature = both[0]
    at = _page(store, monkeypatch, dictionary="sae_64", text=TEXT_A, feature=str(feature),
               pos="1")  # a stale position from some other view
    assert _shown(at) == ("sae_64", feature, 1)  # the URL's view as given: its position kept
    _widget(at.text_area, "Prompt").set_value(TEXT_B).run()
    assert not at.exception
    assert _shown(at) == ("sae_64", feature, _peak(b, feature))
    assert at.query_params["text"] == TEXT_B
    strips = _strips(at)  # activation and KL, each outlining the position
    assert len(strips) == 2 and all(s["pos"] == _peak(b, feature) for s in strips)
    assert all(s["html"].count('class="tok"') == len(b) for s in strips)  # one per position


def test_a_new_dictionary_drops_the_old_feature_and_position(mini_run, monkeypatch):
    """Feature 100 of sae_128 does not exist in sae_64: switching dictionary must not turn it
    into an error or keep it; the strongest sae_64 feature of the prompt is shown instead."""
    store = mini_run / "store"
    at = _page(store, monkeypatch, dictionary="sae_128", text=TEXT_A, feature="100", pos="2")
    assert _shown(at) == ("sae_128", 100, 2)
    _widget(at.selectbox, "Dictionary").set_value("sae_64").run()
    assert not at.exception and not at.error
    acts = _acts(store, TEXT_A, "sae_64")
    strongest = int(np.argmax(acts.max(0)))
    assert _shown(at) == ("sae_64", strongest, _peak(acts, strongest))


def test_a_new_feature_moves_the_position_and_other_changes_keep_it(mini_run, monkeypatch):
    store = mini_run / "store"
    acts = _acts(store, TEXT_A, "sae_64")
    firing = [f for f in np.argsort(-acts.max(0)) if acts[1:, f].max() > 0]
    first, second = int(firing[0]), int(firing[1])
    at = _page(store, monkeypatch, dictionary="sae_64", text=TEXT_A, feature=str(first))
    assert _shown(at) == ("sae_64", first, _peak(acts, first))
    moved = (_peak(acts, first) % (len(acts) - 1)) + 1  # another position, by the slider
    _widget(at.slider, "Position").set_value(moved).run()
    assert _shown(at)[2] == moved
    _widget(at.radio, "Intervention").set_value("clamp").run()  # same prompt and feature
    assert _shown(at) == ("sae_64", first, moved)
    _widget(at.selectbox, "Feature").set_value(second).run()
    assert _shown(at) == ("sae_64", second, _peak(acts, second))


def test_a_position_where_the_feature_is_silent_says_so(mini_run, monkeypatch):
    store = mini_run / "store"
    acts = _acts(store, TEXT_A, "sae_64")
    feature = int(np.argmax(acts.max(0)))
    silent = next(p for p in range(1, len(acts)) if acts[p, feature] == 0)
    at = _page(store, monkeypatch, dictionary="sae_64", text=TEXT_A, feature=str(feature),
               pos=str(silent))
    assert any(f"does not fire at position {silent}" in i.value for i in at.info)
    assert "Most probability moved" not in "\n".join(m.value for m in at.markdown)


@pytest.mark.parametrize("raw, chosen_in, expected", [
    (None, "d1", 7), ("", "d1", 7), ("3", "d1", 3), ("63", "d1", 63),
    ("100", "d2", 7), ("abc", "d2", 7),  # chosen in another dictionary: dropped
])
def test_feature_for(raw, chosen_in, expected):
    from dashboard.prompt_views import feature_for

    assert feature_for(raw, chosen_in, "d1", 64, default=7) == expected


@pytest.mark.parametrize("raw", ["64", "-1", "abc", "1.5"])
def test_feature_for_rejects_bad_input_for_its_own_dictionary(raw):
    from dashboard.prompt_views import BadFeature, feature_for

    with pytest.raises(BadFeature, match="d1 has features 0 to 63|it has features 0 to 63"):
        feature_for(raw, "d1", "d1", 64, default=7)


def test_position_for_and_default_position():
    from dashboard.prompt_views import default_position, position_for

    assert default_position(np.array([5.0, 0, 2, 3, 0]), np.zeros(5)) == 3  # BOS ignored
    assert default_position(np.zeros(5), np.array([0, 0.1, 0.4, 0, 0])) == 2
    assert default_position(np.zeros(5), np.zeros(5)) == 4
    assert position_for(widget=2, url="1", same_view=True, default=3, n_positions=5) == 2
    assert position_for(widget=None, url="1", same_view=True, default=3, n_positions=5) == 1
    assert position_for(widget=None, url="x", same_view=True, default=3, n_positions=5) == 3
    assert position_for(widget=2, url="1", same_view=False, default=3, n_positions=5) == 3
    assert position_for(widget=None, url="99", same_view=True, default=3, n_positions=5) == 4


def test_prompt_page_without_a_run_folder_says_so(tmp_path, monkeypatch):
    from feature_store.synthetic import build_synthetic_store

    store = tmp_path / "store"
    build_synthetic_store(store, n_features=(64,), d_mlp=64, n_tokens=10_000)
    at = _page(store, monkeypatch)
    assert any("needs the model behind this store" in e.value for e in at.error)
