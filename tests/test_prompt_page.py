"""The prompt explorer against a real miniature run (model, tokenizer, SAEs and store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


def _page(store: Path, monkeypatch, **params: str) -> AppTest:
    monkeypatch.setenv("FEATURE_STORE", str(store))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page("app_pages/prompt.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


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
    ({"dictionary": "sae_9999"}, "Unknown dictionary"),
    ({"dictionary": "sae_64", "feature": "64"}, "out of range"),
    ({"dictionary": "sae_64", "feature": "x"}, "Bad feature"),
])
def test_prompt_page_bad_input(mini_run, monkeypatch, params, message):
    at = _page(mini_run / "store", monkeypatch, **params)
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_prompt_page_without_a_run_folder_says_so(tmp_path, monkeypatch):
    from feature_store.synthetic import build_synthetic_store

    store = tmp_path / "store"
    build_synthetic_store(store, n_features=(64,), d_mlp=64, n_tokens=10_000)
    at = _page(store, monkeypatch)
    assert any("needs the model behind this store" in e.value for e in at.error)
