"""Format characters and right-to-left text in tokens, in a real browser (Debian's chromium
driven by Playwright; the session's `page` and `synthetic_server`) on the synthetic store,
whose feature 0 shows every hostile token in a row (`feature_store.synthetic.HOSTILE_TOKENS`).

What only a browser can check: each token's text as displayed (`innerText`) is its display
form, with every format character as an escape, and on screen the tokens stand left to right
in the order they were written: no token (a raw U+202E, or a right-to-left word running into
the next token's) reorders its neighbours.
"""

from __future__ import annotations

import unicodedata

from feature_store.synthetic import FORMAT_TOKENS, MARKUP_TOKENS
from tests.helpers.browser import requires_chromium, shows

pytestmark = requires_chromium

# What a reader must see for feature 0's hostile run, written out by hand (not computed by
# the code under test): markup as text, format characters as Python escapes.
SHOWN = MARKUP_TOKENS + ("\\u202e·override", "zero\\u200bwidth\\ufeff", "\\u2067שלום", "עולם\\xad")

# Each example window holding the run: its token spans' text and where each is drawn.
WINDOWS = """() => [...document.querySelectorAll('.tokens .ex')]
  .filter(row => row.innerText.includes('override'))
  .map(row => [...row.querySelectorAll('span.tok')].map(s => {
    const r = s.getBoundingClientRect();
    return {text: s.innerText, left: r.left, right: r.right, top: r.top};
  }))"""


def _holds_run(texts: list[str]) -> bool:
    return any(texts[i:i + len(SHOWN)] == list(SHOWN) for i in range(len(texts)))


def test_format_characters_show_as_escapes_and_keep_token_order(synthetic_server, page,
                                                                tmp_path):
    assert len(SHOWN) == len(MARKUP_TOKENS) + len(FORMAT_TOKENS)
    page.goto(f"{synthetic_server}/feature?dictionary=sae_64&feature=0")
    shows(page, "text=Interval 1", "Interval 1", 60_000)
    shows(page, ".tokens .ex >> text=override", "override")
    windows = page.evaluate(WINDOWS)
    page.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
    assert len(windows) > 10  # top examples and interval samples
    # displayed text, in order (the first window has the drawn token replaced)
    assert sum(_holds_run([s["text"] for s in spans]) for spans in windows) >= len(windows) - 1
    every_token = page.evaluate("[...document.querySelectorAll('span.tok')].map(s => s.innerText)")
    raw = [t for t in every_token if any(unicodedata.category(c) == "Cf" for c in t)]
    assert raw == []  # logit tables and every interval too
    # On screen: each token wholly right of the one before (one line: windows do not wrap).
    for spans in windows:
        for before, after in zip(spans, spans[1:]):
            assert abs(before["top"] - after["top"]) < 1
            assert after["left"] >= before["right"] - 0.5, (before, after)
