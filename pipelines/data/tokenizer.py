"""tokenizer stage: a byte-level BPE trained on the corpus, plus a display form of every token.

Byte-level BPE (GPT-2's scheme) can encode any byte string, so untrusted corpus text never
becomes <unk>. Two special tokens come first: `<|bos|>` (id 0) starts every sequence and
`<|endoftext|>` (id 1) separates packed documents.

The display form is what the dashboard prints for a token: spaces as `·`, newlines as `↵`,
tabs as `→`, carriage returns as `␍`, other control characters and bytes that are not
complete UTF-8 on their own as `\\xNN`, format characters (bidi controls, zero-width
characters, the BOM, the soft hyphen: Unicode category Cf) and line/paragraph separators as
`\\uNNNN` (`feature_store.token_display` holds the rule). So a reader sees whitespace tokens,
which dominate code, and never mistakes one for another, and no token can turn the text
around it backwards. A literal `·` in the corpus shows as itself.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from feature_store import token_display
from pipelines.config import TokenizerConfig
from pipelines.data.corpus import read_documents

BOS = "<|bos|>"
EOT = "<|endoftext|>"
SPECIAL_TOKENS = (BOS, EOT)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as the ByteLevel model uses it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


_UNICODE_TO_BYTE = {char: byte for byte, char in _bytes_to_unicode().items()}


def piece_bytes(piece: str) -> bytes:
    """The raw bytes a byte-level BPE piece stands for."""
    return bytes(_UNICODE_TO_BYTE[c] for c in piece)


def display_form(raw: bytes) -> str:
    """What people see for a token's bytes (the rules are in the module docstring)."""
    return token_display.visible(raw.decode("utf-8", errors="backslashreplace"),
                                 space=token_display.SPACE)


def train(texts, cfg: TokenizerConfig) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def vocab_table(tokenizer: Tokenizer) -> pa.Table:
    """id, piece (the BPE string), display (for people) — one row per id, in id order."""
    size = tokenizer.get_vocab_size()
    pieces = [tokenizer.id_to_token(i) for i in range(size)]
    display = [p if p in SPECIAL_TOKENS else display_form(piece_bytes(p)) for p in pieces]
    return pa.table({"id": pa.array(range(size), pa.int32()), "piece": pieces, "display": display})


def run(cfg: TokenizerConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    tokenizer = train((text for _, text in read_documents(run_dir / "corpus")), cfg)
    tokenizer.save(str(out / "tokenizer.json"))
    pq.write_table(vocab_table(tokenizer), out / "vocab.parquet")
    size = tokenizer.get_vocab_size()
    seconds = time.perf_counter() - start
    summary = f"tokenizer: byte-level BPE, {size:,} tokens, {seconds:.1f} s"
    return summary, {"vocab_size": size, "bos_id": tokenizer.token_to_id(BOS),
                     "eot_id": tokenizer.token_to_id(EOT)}


def load(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
