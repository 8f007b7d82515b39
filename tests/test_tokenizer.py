from pipelines.config import TokenizerConfig
from pipelines.data.tokenizer import BOS, EOT, display_form, piece_bytes, train, vocab_table


def test_display_form_shows_whitespace_and_bad_bytes():
    assert display_form(b" def") == "·def"
    assert display_form(b"\n\t\r") == "↵→␍"
    assert display_form(b"\xe2\x82") == "\\xe2\\x82"  # half a UTF-8 character
    assert display_form("é".encode()) == "é"
    assert display_form(b"\x00") == "\\x00"


def test_display_form_shows_format_characters():
    """Bidi controls, zero-width characters, the BOM and the soft hyphen (category Cf) and the
    Unicode line/paragraph separators show as escapes, never raw."""
    assert display_form("Right-to-left \u202eoverride".encode()) == "Right-to-left·\\u202eoverride"
    assert display_form("a\u200bb\u200fc\u2066d\u2069".encode()) == "a\\u200bb\\u200fc\\u2066d\\u2069"
    assert display_form("\ufeffsoft\u00adhyphen".encode()) == "\\ufeffsoft\\xadhyphen"
    assert display_form("\u2028\u2029\U000e0041".encode()) == "\\u2028\\u2029\\U000e0041"
    assert display_form("שלום".encode()) == "שלום"  # letters are not format characters


def test_trained_bpe_round_trips_and_keeps_specials_first():
    texts = ["def f(x):\n\treturn x  # ok\n", "Une phrase accentuée, \u00e9t\u00e9.", "<script>&amp;"] * 50
    tok = train(texts, TokenizerConfig(vocab_size=300, min_frequency=1))
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOT) == 1
    for text in texts[:3]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert b"".join(piece_bytes(tok.id_to_token(i)) for i in ids) == text.encode()
    table = vocab_table(tok).to_pydict()
    assert table["id"] == list(range(tok.get_vocab_size()))
    assert table["display"][0] == BOS
    assert all(isinstance(d, str) and d for d in table["display"])
