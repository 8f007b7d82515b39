"""How a token's text is shown to a reader: the one rule for characters nobody could see.

Why: a reader must see every character a token holds, and no token may change how its
neighbours look. Whitespace gets a symbol (space `·`, newline `↵`, tab `→`, carriage return
`␍`). Every other character of Unicode category Cc (control), Cf (format: the bidi controls
U+200E/U+200F, U+202A–U+202E, U+2066–U+2069, U+061C, zero-width U+200B–U+200D, U+2060, the
BOM U+FEFF, the soft hyphen U+00AD, tag characters, ...), Zl or Zp (U+2028, U+2029, which
break the line like a newline) is written as its Python escape (`\\x00`, `\\u202e`,
`\\U000e0001`): raw, a U+202E would show the rest of the line backwards, a U+200B would be
invisible. The categories come from `unicodedata`, not from a hand list, so a character added
by a later Unicode version is covered when Python's tables are.

`pipelines.data.tokenizer` writes display forms with this rule (spaces as `·`); the dashboard applies
it again to whatever a store holds (`dashboard/token_html.py`), so a store written before the
rule, or by other code, still shows nothing raw.
"""

from __future__ import annotations

import unicodedata

SPACE = "·"
SYMBOLS = {"\n": "↵", "\t": "→", "\r": "␍"}
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def is_invisible(char: str) -> bool:
    """A control, format or line/paragraph-separator character (see the module docstring)."""
    return unicodedata.category(char) in INVISIBLE_CATEGORIES


def escaped(char: str) -> str:
    """Python's escape for one character: `\\xNN`, `\\uNNNN` or `\\UNNNNNNNN`."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str, space: str = " ") -> str:
    """`text` with whitespace as symbols and every invisible character escaped; spaces become
    `space` (the tokenizer passes `SPACE`). Printable text, nearly every token, comes back
    unchanged after one `isprintable` check."""
    if space == " " and text.isprintable():
        return text
    out = []
    for char in text:
        if char == " ":
            out.append(space)
        elif char in SYMBOLS:
            out.append(SYMBOLS[char])
        elif is_invisible(char):
            out.append(escaped(char))
        else:
            out.append(char)
    return "".join(out)
