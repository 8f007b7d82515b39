"""What the Score and Results page tests read a page with: everything it sends to the
browser, blindness checks, and the rubric's widgets. Shared by test_scoring_pages.py,
test_blind_scale.py and test_study_scoring.py."""

from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from dashboard import links

SCORE, RESULTS = links.SCORE, links.RESULTS
# The scoring store's dictionaries (`stores.SCORING`): names that occur nowhere else.
NAMES = ("neurons", "sae_96", "sae_160")
ITEMS = dict(confidence=3, activation_consistency=4, logit_consistency=2, separation=1,
             specificity=2)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    return at


def rendered(at: AppTest) -> str:
    """Everything the browser receives as text, labels, keys or chart data."""
    parts = [e.value for kind in ("markdown", "caption", "title", "subheader", "header",
                                  "success", "info", "warning", "error")
             for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [h.proto.body for h in at.get("html")]
    parts += [c.proto.spec for c in at.get("plotly_chart")]  # light charts' data is in the html
    parts += [e.proto.label for e in at.get("expandable")]
    for kind in ("button", "radio", "text_area", "text_input", "toggle", "number_input",
                 "multiselect", "checkbox"):
        for w in getattr(at, kind):
            parts += [str(w.label), str(w.key or "")]
            parts += [str(o) for o in getattr(w, "options", [])]
    parts += [f"{k}={v}" for k, v in at.query_params.items()]
    return "\n".join(str(p) for p in parts)


def sent(at: AppTest) -> str:
    """Every element the script sent, as its whole message (labels, keys and ids, bodies,
    chart specs, link targets and their query strings, help texts), plus the URL's query
    parameters: a name absent from this is absent from the browser."""
    parts = [str(node.proto) for node in at._tree if getattr(node, "proto", None) is not None]
    parts += [f"{k}={v}" for k, v in at.query_params.items()]
    return "\n".join(parts)


def assert_blind(at: AppTest, unit: tuple, names: tuple[str, ...] = NAMES) -> None:
    """`unit`: (dictionary, index), or a study's (run, dictionary, index); `names`: every
    dictionary and run name of the store or study, none of which may reach the browser."""
    *_, dictionary, index = unit
    shown = rendered(at)
    everything = sent(at)
    for name in names:
        assert name not in shown, f"{name!r} shown on a blind page"
        assert name not in everything, f"{name!r} sent to the browser on a blind page"
    for pattern in (rf"feature\s*{index}\b", rf"#\s*{index}\b", rf"index\W*{index}\b",
                    rf"/\s*{index}\b(?!\s*/)", r"unit_index"):
        assert not re.search(pattern, shown, re.IGNORECASE), pattern
    params = dict(at.query_params.items())
    assert set(params) <= {"rater", "pos"}, params
    assert all(part not in str(v) for v in params.values() for part in unit[:-1])


def widget(items, suffix: str):
    """The one widget among `items` whose key ends with `suffix`."""
    found = [w for w in items if (w.key or "").endswith(suffix)]
    assert len(found) == 1, (suffix, [w.key for w in items])
    return found[0]


def fill_rubric(at: AppTest, text: str, values: dict[str, int]) -> None:
    widget(at.text_area, "_interpretation").input(text)
    for item, value in values.items():
        widget(at.radio, f"_{item}").set_value(value)


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, (label, [b.label for b in at.button])
    return found[0]
