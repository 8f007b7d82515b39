"""No absolute activation or logit value reaches a blind Score page (issue 12, item 5).

The scale of a unit's numbers names its source: SAE features, neurons, neurons before
SoLU's LayerNorm, SoLU and GeLU models each have their own typical max activation and logit
magnitudes. While blind, the Score page prints activations as shares of the unit's max and
logit weights as shares of its largest |weight| (`score_views`' module docstring).

How this proves it: the store's reader is wrapped so that chosen units come back with every
activation multiplied by one factor and every logit weight by another (nothing else
changes), giving a unit a max activation no page would print by chance (4817.293...) and a
largest logit weight of 613.847.... Then:
- nothing the blind page sends (every element's whole message, `sent()`; the chart data
  decoded from plotly's base64 arrays) holds any of that unit's absolute values, printed to
  1-4 decimals or as repr, while the relative ones are there;
- the feature page of the same unit, and the Score page once the score is saved, do print
  absolute values;
- the blind page of a unit is byte-identical whatever the scale (factors that are powers of
  two, so shares are bit-identical): no number on it depends on the scale;
- two units of different dictionaries and very different scales print their numbers in the
  same formats, and the same 11 interval headings.
"""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dashboard import light_plotly, score_views, store_access
from dashboard.token_html import relative_act
from feature_store.records import Example, FeatureRecord, Histogram
from feature_store.scores import ScoreBook
from feature_store.store import FeatureStore
from tests.helpers.app import chart_figures, fresh_scores, open_page
from tests.helpers.scoring import ITEMS, SCORE, button, fill_rubric, ok, sent

FEATURE = "app_pages/feature.py"
MAX_ACT, MAX_LOGIT = 4817.293127, 613.847291  # distinctive: printed by no page by chance
NEURON, FEATURE_UNIT = ("neurons", 5), ("sae_96", 5)
SCALES: dict[tuple[str, int], tuple[float, float]] = {}  # unit -> (activation, logit) factor


@pytest.fixture
def scores(scoring_store, tmp_path, monkeypatch) -> Path:
    """A fresh scores database (these tests save scores); the store's reader scales the
    units in `SCALES`. The store is the session's, shared with test_scoring_pages.py:
    scaling reaches no other test, as it is a patch of the reader undone after each test
    (monkeypatch), and the one cache that holds records read under it
    (`store_access.feature`) is emptied before and after (`set_scales`)."""
    path = fresh_scores(scoring_store, tmp_path, monkeypatch)
    read = FeatureStore.feature

    def feature(self, dictionary: str, index: int) -> FeatureRecord:
        record = read(self, dictionary, index)
        factors = SCALES.get((dictionary, index))
        return scaled(record, *factors) if factors else record

    monkeypatch.setattr(FeatureStore, "feature", feature)
    set_scales({})
    yield path
    set_scales({})


def set_scales(scales: dict) -> None:
    SCALES.clear()
    SCALES.update(scales)
    store_access.feature.clear()  # st.cache_data would hand back the record read before


def original(store: Path, unit: tuple[str, int]) -> FeatureRecord:
    return FeatureStore.open(store).feature(*unit)


def scaled(record: FeatureRecord, act: float, logit: float) -> FeatureRecord:
    """The same unit with every activation times `act` and every logit weight times `logit`."""
    def example(e: Example) -> Example:
        return replace(e, act=e.act * act, acts=tuple(a * act for a in e.acts))

    def entries(items):
        return tuple(replace(e, value=e.value * logit) for e in items)

    def hist(h: Histogram, factor: float) -> Histogram:
        return Histogram(tuple(x * factor for x in h.edges), h.counts)

    return replace(
        record, max_act=record.max_act * act, mean_act=record.mean_act * act,
        act_histogram=hist(record.act_histogram, act),
        top_examples=tuple(map(example, record.top_examples)),
        intervals=tuple(replace(i, lo=i.lo * act, hi=i.hi * act,
                                examples=tuple(map(example, i.examples)))
                        for i in record.intervals),
        top_logits=entries(record.top_logits), bottom_logits=entries(record.bottom_logits),
        logit_histogram=hist(record.logit_histogram, logit))


def to(record: FeatureRecord, max_act: float, max_logit: float) -> tuple[float, float]:
    """Factors that give `record` this max activation and largest |logit weight|."""
    return max_act / record.max_act, max_logit / largest_logit(record)


def largest_logit(record: FeatureRecord) -> float:
    return max(abs(e.value) for e in record.top_logits + record.bottom_logits)


def absolute_values(record: FeatureRecord) -> list[float]:
    """Every activation and logit number the record holds."""
    examples = [*record.top_examples, *(e for i in record.intervals for e in i.examples)]
    values = [record.max_act, record.mean_act, *record.act_histogram.edges,
              *(x for i in record.intervals for x in (i.lo, i.hi)),
              *(e.act for e in examples), *(a for e in examples for a in e.acts),
              *(e.value for e in record.top_logits + record.bottom_logits),
              *record.logit_histogram.edges]
    return [v for v in values if np.isfinite(v)]


def spellings(value: float) -> list[str]:
    return [f"{value:.1f}", f"{value:.2f}", f"{value:.3f}", f"{value:.4f}", repr(value)]


def chart_numbers(at) -> list[np.ndarray]:
    """Every numeric array of every chart's traces, decoded from plotly's base64 form."""
    arrays = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "bdata" in node and "dtype" in node:
                arrays.append(np.frombuffer(base64.b64decode(node["bdata"]),
                                            dtype=np.dtype(node["dtype"])))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if node and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                            for x in node):
                arrays.append(np.asarray(node, dtype=float))
            else:
                for value in node:
                    walk(value)

    for figure in chart_figures(at):
        walk(figure["data"])
    return arrays


def printed_numbers(text: str) -> set[str]:
    """Every unsigned number the text could be read as printing: each run of digits and dots
    that no digit or dot precedes, cut wherever no digit follows ("4817.293." holds 4817 and
    4817.293, not 4817.29). One pass, instead of a regex search per spelling."""
    found = set()
    for run in re.findall(r"(?<![\d.])[\d.]+", text):
        found.update(run[:i] for i in range(1, len(run) + 1) if i == len(run) or run[i] == ".")
    return found


def leaks(at, record: FeatureRecord) -> list[str]:
    """The record's absolute values (|v| >= 10, which no share in [-1, 1] can spell) found
    in what the page sent, as text (either sign) or in its charts' data."""
    printed = printed_numbers(sent(at))
    found = []
    for value in absolute_values(record):
        if abs(value) < 10:
            continue
        for spelled in spellings(value):
            if spelled.lstrip("-") in printed:
                found.append(spelled)
        if any(np.isclose(array.astype(float), value, rtol=1e-6, atol=0).any()
               for array in chart_numbers(at)):
            found.append(f"chart value {value!r}")
    return found


def test_printed_numbers_finds_a_value_where_a_page_would_print_it():
    text = 'max 4817.293. then <td>-613.847</td> and 14817.2931 and 4817.2937'
    printed = printed_numbers(text)
    assert {"4817.293", "4817", "613.847"} <= printed
    assert "4817.29" not in printed and "817.293" not in printed  # inside a longer number


def blind_page(scores: Path, unit: tuple[str, int], rater: str = "eve"):
    """The Score page of a one-unit queue: `unit`, blind."""
    ScoreBook(scores).make_queue(rater, {unit[0]: [unit[1]]}, 1, 0)
    return open_page(SCORE, rater=rater, pos="1")


def headings(at) -> list[str]:
    return [m.value for m in at.markdown if "interval-head" in m.value]


def html_bodies(at) -> str:
    return "\n".join(light_plotly.without_figures(h.proto.body) for h in at.get("html"))


@pytest.mark.parametrize("unit", [NEURON, FEATURE_UNIT])
def test_blind_page_sends_no_absolute_value(scores, scoring_store, unit):
    record = original(scoring_store, unit)
    set_scales({unit: to(record, MAX_ACT, MAX_LOGIT)})
    big = scaled(record, *SCALES[unit])
    assert big.max_act == pytest.approx(MAX_ACT) and largest_logit(big) == pytest.approx(MAX_LOGIT)
    assert sum(abs(v) >= 10 for v in absolute_values(big)) > 200  # the check has teeth

    at = blind_page(scores, unit)
    assert "Submit score" in sent(at)  # the dump really holds the unit's page
    assert leaks(at, big) == []
    # every number in the charts is a share (the logit histogram: edges / largest |weight|)
    for array in chart_numbers(at):
        if array.dtype.kind == "f":
            assert np.abs(array).max() <= 1.1, array
    # the relative numbers are there: the same 11 headings for every unit, the legend, the
    # drawn tokens' shares, the logit weights as shares of the largest
    n = len(big.intervals)
    assert headings(at) == [
        f"<div class='interval-head'><b>Interval {k}</b> · [{(k - 1) / n:.2f}, {k / n:.2f}"
        f"{']' if k == n else ')'} of max · <b>{big.intervals[k - 1].share:.1%}</b> of "
        "activations</div>" for k in range(n, 0, -1)]
    bodies = html_bodies(at)
    assert "numbers are activation / max (0–1)" in bodies
    assert "log p(next)" not in bodies  # no ablation effect in nats (token_html's docstring)
    assert not re.search(r"max activation \d", bodies)
    for example in (big.top_examples[0], *big.intervals[0].examples):
        assert (f'as a share of the max">{relative_act(example.act, big.max_act):.2f}</span>'
                in bodies)
    assert "+1.000</td>" in bodies or "-1.000</td>" in bodies
    for entry in big.top_logits:
        assert f"{entry.value / MAX_LOGIT:+.3f}</td>" in bodies


def test_feature_page_and_reveal_show_absolute_values(scores, scoring_store):
    unit = FEATURE_UNIT
    record = original(scoring_store, unit)
    set_scales({unit: to(record, MAX_ACT, MAX_LOGIT)})
    big = scaled(record, *SCALES[unit])
    absolute = [f"max activation {big.max_act:.3f}",
                f"[{big.intervals[-1].lo:.3f}, {big.intervals[-1].hi:.3f}]",
                f"{big.top_logits[0].value:+.3f}</td>"]

    page = open_page(FEATURE, dictionary=unit[0], feature=str(unit[1]))
    assert leaks(page, big), "the feature page prints absolute values"
    assert all(text in sent(page) for text in absolute), absolute

    at = blind_page(scores, unit)
    assert not any(text in sent(at) for text in absolute)
    fill_rubric(at, "x", ITEMS)
    ok(at.run())
    ok(button(at, "Submit score").click().run())
    assert "This was" in sent(at)  # revealed: absolute values, as the feature page has them
    assert all(text in sent(at) for text in absolute), absolute
    assert not any("of max" in h for h in headings(at))


def test_blind_page_does_not_depend_on_the_scale(scores, scoring_store):
    """Powers of two: a share of a scaled value is bit-identical to the unscaled share, so
    a page that prints only shares is byte-identical at every scale."""
    pages = []
    for act, logit in ((1.0, 1.0), (2.0 ** 10, 2.0 ** -6), (2.0 ** -7, 2.0 ** 9)):
        set_scales({FEATURE_UNIT: (act, logit)})
        page = sent(blind_page(scores, FEATURE_UNIT))
        # a new queue each time: widget keys and chart ids start with the queue's key (its
        # creation time's crc32), and widget ids hash the keys
        page = page.replace(score_views.queue_key(ScoreBook(scores).queue("eve"), 1), "Q")
        pages.append(re.sub(r"\$\$ID-[0-9a-f]{32}-", "$$ID-", page))
    assert "Submit score" in pages[0]
    assert pages[1] == pages[0] and pages[2] == pages[0]


NUMBER_FORMATS = {  # what each number on a blind page looks like, for every unit
    "margin": (r'as a share of the max">([^<]*)</span>', r"[01]\.\d\d"),
    "token": (r'title="act ([^ ]*) of max', r"[01]\.\d{3}"),
    "logit": (r'<td class="v">([^<]*)</td>', r"[+-][01]\.\d{3}"),
}


def test_units_of_different_dictionaries_print_the_same_formats(scores, scoring_store):
    """A neuron scaled up and a feature scaled down (max activation 1,000x apart, logit
    weights 100x): the same headings, and every number in the same format."""
    neuron, feature = original(scoring_store, NEURON), original(scoring_store, FEATURE_UNIT)
    set_scales({NEURON: to(neuron, 97.25, 41.5), FEATURE_UNIT: to(feature, 0.09725, 0.415)})
    seen = []
    for rater, unit in (("ann", NEURON), ("bob", FEATURE_UNIT)):
        at = blind_page(scores, unit, rater)
        bodies = html_bodies(at)
        for name, (where, form) in NUMBER_FORMATS.items():
            values = re.findall(where, bodies)
            assert values, (unit, name)
            assert all(re.fullmatch(form, v) and abs(float(v)) <= 1 for v in values), (
                unit, name, [v for v in values if not re.fullmatch(form, v)][:5])
        seen.append([re.sub(r"<b>[\d.]+%</b>", "", h) for h in headings(at)])
    assert seen[0] == seen[1]


def test_relative_token_html_escapes_and_hides_the_sign():
    """The relative forms still escape token text once, print no value of the record, and
    show an activation at or below 0 as 0 (a negative one would name a neuron)."""
    from dashboard import token_html
    from feature_store.records import LogitEntry
    from tests.helpers.html import HOSTILE, assert_safe

    acts = (-0.1734, 0.0, 3.5, 7.25, 1.75, *[0.0] * (len(HOSTILE) - 5))
    shown = Example(seq_id=0, position=3, center=3, act=7.25, tokens=HOSTILE,
                    token_ids=tuple(range(len(HOSTILE))), acts=acts,
                    ablation=(0.0,) * (len(HOSTILE) - 1) + (float("nan"),))
    markup = token_html.examples_html([shown], "activation", 7.25, relative_to=7.25)
    assert_safe(markup, HOSTILE)
    assert re.findall(r'title="act ([^ ]*) of max', markup)[:5] == [
        "0.000", "0.000", "0.483", "1.000", "0.241"]
    assert '">1.00</span>' in markup
    assert "log p" not in markup  # an effect in nats would have a scale of its own
    assert "log p(next) +0.000" in token_html.examples_html([shown], "activation", 7.25)
    for value in ("0.173", "0.17", "3.500", "7.250", "7.25", "1.750"):
        assert value not in markup
    entries = [LogitEntry(token, i, 2.5 - i) for i, token in enumerate(HOSTILE)]
    table = token_html.logit_columns_html(entries, entries[::-1], 5.5, relative=True)
    assert_safe(table, HOSTILE)
    assert "+0.455</td>" in table and "-0.818</td>" in table and "2.500" not in table
