"""Untrusted token text must reach the page as text: no element, attribute or handler it
could create, and no double escaping (`&amp;` in the corpus shows as `&amp;`)."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest

from dashboard import token_html
from feature_store.records import Example, LogitEntry
from tests.helpers.html import HOSTILE, assert_safe, parse


def example(tokens: tuple[str, ...]) -> Example:
    n = len(tokens)
    return Example(seq_id=0, position=n // 2, center=n // 2, act=2.0, tokens=tokens,
                   token_ids=tuple(range(n)), acts=tuple(float(i) for i in range(n)),
                   ablation=tuple([-0.5, 0.3] * (n // 2) + [0.0] * (n % 2))[:n - 1] + (math.nan,))


@pytest.mark.parametrize("mode", ["activation", "ablation"])
def test_example_windows_show_hostile_tokens_as_text(mode):
    markup = token_html.examples_html([example(HOSTILE)], mode, scale=2.0)
    assert_safe(markup, HOSTILE)
    assert markup.count('<span class="tok') == len(HOSTILE)  # one span per token, none injected


def test_logit_tables_show_hostile_tokens_as_text():
    entries = tuple(LogitEntry(token=t, token_id=i, value=1.0 - i / 10)
                    for i, t in enumerate(HOSTILE))
    assert_safe(token_html.logit_table_html(entries, scale=1.0, raises=True), HOSTILE)
    assert_safe(token_html.inline_tokens_html(HOSTILE), HOSTILE)
    assert_safe(token_html.logit_columns_html(entries, entries[::-1], 1.0), HOSTILE)


def test_escaped_once_not_twice():
    markup = token_html.token_span("&amp;", "transparent", "act 1.000")
    assert "&amp;amp;" in markup  # the corpus text "&amp;", escaped once
    assert "".join(parse(markup).text) == "&amp;"


def test_value_on_hover_and_shading():
    markup = token_html.example_html(example(("a", "b", "c")), "activation", scale=2.0)
    titles = [v for k, v in parse(markup).attrs if k == "title"]
    assert any("act 2.000" in t for t in titles)
    assert "rgba(255,127,14,1.00)" in markup  # act 2.0 at scale 2.0: full colour
    assert "no next token" in markup  # NaN ablation at the last position


def test_ablation_is_diverging():
    assert token_html.ablation_background(-0.5, 1.0).startswith("rgba(31,119,180")
    assert token_html.ablation_background(0.5, 1.0).startswith("rgba(214,39,40")
    assert token_html.ablation_background(math.nan, 1.0) == "transparent"
    assert token_html.ablation_scale([example(("a", "b", "c"))]) == pytest.approx(0.5)


def test_context_crops_around_the_centre():
    tokens = tuple(f"t{i}" for i in range(21))
    markup = token_html.example_html(example(tokens), "activation", 20.0, context=(2, 2))
    assert "".join(parse(markup).text).endswith("t8t9t10t11t12")


# Format characters (Unicode category Cf) and what each must show as: bidi overrides,
# embeddings and isolates, marks, zero-width characters, the BOM, the soft hyphen, a tag.
FORMAT = {"\u202e": "\\u202e", "\u202a": "\\u202a", "\u2066": "\\u2066", "\u2069": "\\u2069",
          "\u200f": "\\u200f", "\u061c": "\\u061c", "\u200b": "\\u200b", "\u200d": "\\u200d",
          "\ufeff": "\\ufeff", "\u00ad": "\\xad", "\U000e0041": "\\U000e0041",
          "\u2028": "\\u2028", "\u2029": "\\u2029", "\x1b": "\\x1b", "\t": "→", "\r": "␍"}


def test_every_format_character_shows_as_its_escape():
    import sys
    import unicodedata

    every_cf = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert set(FORMAT) - {"\u2028", "\u2029", "\x1b", "\t", "\r"} <= set(every_cf)
    for char in every_cf:  # derived from Unicode's tables, not from a hand list
        shown = "".join(parse(token_html.token_span(f"a{char}b", "transparent", "")).text)
        assert shown == f"a\\u{ord(char):04x}b" or shown == f"a\\x{ord(char):02x}b" or \
            shown == f"a\\U{ord(char):08x}b", (hex(ord(char)), shown)
    for char, expected in FORMAT.items():
        markup = token_html.examples_html([example(("x", f"<{char}>", "y"))], "activation", 1.0)
        assert "".join(parse(markup).text).endswith(f"x<{expected}>y")
        assert char not in markup


def test_every_token_span_is_a_bidi_isolate():
    """Inline, so it holds before the stylesheet loads; one per span holding token text."""
    entries = tuple(LogitEntry(token=t, token_id=i, value=0.5) for i, t in enumerate("abc"))
    for markup in (token_html.examples_html([example(("א", "ב", "c"))], "activation", 2.0),
                   token_html.examples_html([example(("א", "ב", "c"))], "ablation", 2.0),
                   token_html.logit_table_html(entries, 1.0, raises=False),
                   token_html.inline_tokens_html("abc")):
        spans = [dict(a) for tag, a in _starttags(markup) if "tok" in dict(a).get("class", "").split()]
        assert len(spans) == 3
        assert all(span["style"].startswith("unicode-bidi:isolate") for span in spans), spans
    assert ".tok { unicode-bidi: isolate; }" in token_html.TOKEN_CSS


def _starttags(markup: str) -> list[tuple[str, list]]:
    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Tags().feed(markup)
    return found
