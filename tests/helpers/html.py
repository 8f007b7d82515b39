"""Untrusted text in dashboard HTML: the hostile strings the tests feed it, and the check
that they reach the page as text (no element, attribute or handler of theirs). Shared by
test_token_html.py, test_light_plotly.py and test_blind_scale.py."""

from __future__ import annotations

from html.parser import HTMLParser

HOSTILE = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"', "'", "&amp;", "<",
           "a\nb", '" onmouseover="alert(1)')
ALLOWED_TAGS = {"div", "span", "table", "tr", "td", "b"}
ALLOWED_ATTRS = {"class", "style", "title"}


class Collect(HTMLParser):
    """Tags, attributes and the text as a browser would show it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> Collect:
    """`markup` as a browser's parser reads it."""
    parser = Collect()
    parser.feed(markup)
    parser.close()
    return parser


def assert_safe(markup: str, expected_text: tuple[str, ...]) -> None:
    """Only the tags and attributes token HTML uses, no handler, and every expected string
    shown as text (a newline as ↵)."""
    parsed = parse(markup)
    assert set(parsed.tags) <= ALLOWED_TAGS, parsed.tags
    names = {name for name, _ in parsed.attrs}
    assert names <= ALLOWED_ATTRS, names
    assert not any(name.startswith("on") for name in names)
    for _, value in parsed.attrs:
        assert "alert" not in (value or "")
    shown = "".join(parsed.text)
    for token in expected_text:
        assert token.replace("\n", "↵") in shown
