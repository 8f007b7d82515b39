"""tokens stage: fixed-length sequences as Parquet, split into train and validation by document.

Splitting by document (not by sequence) keeps validation text unseen in training, so the
validation loss, and every later held-out metric, is honest. Within a split, documents are
packed end to end with `<|endoftext|>` between them and cut into chunks of `n_ctx - 1` tokens,
each prefixed with `<|bos|>`; the last partial chunk is dropped. Position 0 of every sequence is
therefore BOS, which later stages skip when they cache activations.

Which documents are held out (`choose_held_out`): the target is `tokens.val_fraction` of the
corpus's tokens. Each document gets a seeded hash of its id, a number in [0, 1) that does not
depend on the corpus order. Documents whose number is below `val_fraction` are held out, as
they always were; when they hold enough tokens, that is the split. A corpus of a few long
documents can fall far short that way (a 40-document corpus held out 4k tokens), so then more
documents follow in the order of their numbers until the target is reached. A document that
would overshoot it by more than one sequence is cut instead: its first part, just enough to
reach the target, is held out and the rest trains, so at most one document is on both sides.
Training always keeps at least one sequence; when that leaves validation short of the target,
the stage prints a warning naming the shortfall.

Held out by document is not yet unseen: a corpus repeats itself (licence headers, generated
tables, vendored copies; the embedded Python corpus's `encodings/cp*.py` codecs share whole
screens of code), and where two documents' packing happens to line up, a validation sequence is
token for token a training sequence (19 of 1,181 in the paper preset's split, 1 of 2,247 in
tiny's). Such sequences are dropped from validation (`drop_seen`), so every held-out metric and
the interp stage's explain/score separation hold; the summary says how many.

Files: `tokens/train.parquet` and `tokens/val.parquet`, columns `seq_id` (int32) and `tokens`
(fixed-size list of n_ctx int32).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import TokensConfig
from pipelines.data.corpus import read_documents
from pipelines.errors import ConfigError, InputError
from pipelines.data.tokenizer import BOS, EOT, load as load_tokenizer


def hash_position(doc_id: int, seed: int) -> float:
    """A seeded hash of the document id in [0, 1): stable, and independent of the corpus order."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def is_validation(doc_id: int, cfg: TokensConfig) -> bool:
    """Held out by the first rule alone (documents below `val_fraction`); see the docstring."""
    return hash_position(doc_id, cfg.seed) < cfg.val_fraction


@dataclass(frozen=True)
class HeldOut:
    """The validation split. Token counts include the `<|endoftext|>` each piece is packed with."""

    cut: tuple[int | None, ...]  # per document: None trains it all; k holds out its first k tokens
    target: int  # held-out tokens asked for: val_fraction of the corpus
    held: int  # held-out tokens chosen

    @property
    def shortfall(self) -> int:
        return max(self.target - self.held, 0)


def choose_held_out(doc_ids: Sequence[int], lengths: Sequence[int],
                    cfg: TokensConfig) -> HeldOut:
    """Documents in the order of their hash, whole while they fit, cut once if one would
    overshoot; where the first rule already reaches the target its split is kept as it was."""
    total = sum(n + 1 for n in lengths)
    target = math.ceil(cfg.val_fraction * total)
    ceiling = total - (cfg.n_ctx - 1)  # training keeps at least one sequence
    goal = min(target, ceiling)
    ranked = sorted(((hash_position(d, cfg.seed), i) for i, d in enumerate(doc_ids)))
    cut: list[int | None] = [None] * len(lengths)
    held = 0
    for position, i in ranked:
        first_rule = position < cfg.val_fraction
        if not first_rule and held >= goal:
            break
        whole = lengths[i] + 1
        if first_rule or (whole <= goal - held + cfg.n_ctx - 1 and held + whole <= ceiling):
            cut[i], held = lengths[i], held + whole
            continue
        piece = max(goal - held - 1, 1)  # plus its EOT: just reaches the goal
        if piece < lengths[i] and held + piece + 1 <= ceiling:
            cut[i], held = piece, held + piece + 1
    return HeldOut(tuple(cut), target, held)


def split_documents(docs: Sequence[list[int]], held_out: HeldOut
                    ) -> tuple[list[list[int]], list[list[int]]]:
    """(train, val) token lists, each in corpus order; a cut document is on both sides."""
    train, val = [], []
    for doc, k in zip(docs, held_out.cut):
        if k is None:
            train.append(doc)
            continue
        val.append(doc[:k])
        if k < len(doc):
            train.append(doc[k:])
    return train, val


def pack(docs: list[list[int]], n_ctx: int, bos: int, eot: int) -> np.ndarray:
    if not docs:
        return np.zeros((0, n_ctx), np.int32)
    stream = np.concatenate([np.asarray(d + [eot], np.int32) for d in docs])
    n_seq = len(stream) // (n_ctx - 1)
    body = stream[: n_seq * (n_ctx - 1)].reshape(n_seq, n_ctx - 1)
    return np.concatenate([np.full((n_seq, 1), bos, np.int32), body], axis=1)


def row_hashes(seqs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """A 64-bit hash per row (a seeded multiply-add, wrapping): equal rows hash equal, and a
    corpus of a billion tokens needs 64 bits a sequence, not its bytes, to be compared."""
    mult = np.random.default_rng(0).integers(1, 2**63, size=seqs.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(seqs), np.uint64)
    for i in range(0, len(seqs), chunk):
        out[i:i + chunk] = (seqs[i:i + chunk].astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    return out


def drop_seen(val: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, int]:
    """Validation without the sequences that are also training sequences (token for token; a
    hash match is confirmed row against row) and how many were dropped."""
    val_h, train_h = row_hashes(val), row_hashes(train)
    candidates = np.flatnonzero(np.isin(val_h, train_h))
    if not candidates.size:
        return val, 0
    where: dict[int, list[int]] = {}
    wanted = set(val_h[candidates].tolist())
    for row, h in enumerate(train_h.tolist()):
        if h in wanted:
            where.setdefault(h, []).append(row)
    seen = [i for i in candidates.tolist()
            if any(np.array_equal(val[i], train[j]) for j in where[int(val_h[i])])]
    return np.delete(val, seen, axis=0), len(seen)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def write_sequences(path: Path, seqs: np.ndarray) -> None:
    n_seq, n_ctx = seqs.shape
    flat = pa.array(seqs.reshape(-1), pa.int32())
    table = pa.table({
        "seq_id": pa.array(np.arange(n_seq, dtype=np.int32)),
        "tokens": pa.FixedSizeListArray.from_arrays(flat, n_ctx),
    })
    pq.write_table(table, path, row_group_size=4096)


def read_sequences(path: Path) -> np.ndarray:
    """[n_seq, n_ctx] int32."""
    try:
        table = pq.read_table(path, columns=["tokens"])
    except (OSError, pa.ArrowException, KeyError) as err:
        raise InputError(f"{path}: unreadable token sequences ({err}); rerun with "
                         f"--force tokens") from None
    column = table.column("tokens").combine_chunks()
    n_ctx = column.type.list_size
    return column.flatten().to_numpy().astype(np.int32, copy=False).reshape(-1, n_ctx)


def run(cfg: TokensConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    bos, eot = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOT)
    ids, texts = zip(*read_documents(run_dir / "corpus"))
    docs = [enc.ids for enc in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    held_out = choose_held_out(ids, [len(d) for d in docs], cfg)
    if held_out.shortfall:
        print(f"warning: tokens: held out {held_out.held:,} tokens, {held_out.shortfall:,} short "
              f"of the {held_out.target:,} tokens.val_fraction={cfg.val_fraction} asks for: the "
              f"corpus has {sum(len(d) + 1 for d in docs):,} tokens and training keeps at least "
              f"one sequence of n_ctx={cfg.n_ctx} (lower val_fraction or n_ctx, or use a larger "
              f"corpus)", file=sys.stderr)
    split = dict(zip(("train", "val"), split_documents(docs, held_out)))
    packed = {name: pack(pieces, cfg.n_ctx, bos, eot) for name, pieces in split.items()}
    packed["val"], n_seen = drop_seen(packed["val"], packed["train"])
    counts = {}
    for name, pieces in split.items():
        seqs = packed[name]
        need = cfg.min_val_sequences if name == "val" else 1
        if len(seqs) < need:
            n_tokens = sum(len(d) + 1 for d in pieces)
            seen = (f" ({n_seen} more {'was a training sequence' if n_seen == 1 else 'were training sequences'}"
                    f" too)" if name == "val" and n_seen else "")
            raise ConfigError(
                f"tokens.n_ctx={cfg.n_ctx}: larger than the corpus allows: the {name} split has "
                f"{n_tokens:,} tokens, {len(seqs)} sequence(s) of {cfg.n_ctx}{seen}; need at least "
                f"{need} (lower n_ctx or val_fraction, or use a larger corpus)")
        counts[name] = (len(pieces), len(seqs))
    for name, seqs in packed.items():  # written only once both splits pass: nothing half-written
        write_sequences(out / f"{name}.parquet", seqs)
    seconds = time.perf_counter() - start
    n_train, n_val = counts["train"][1], counts["val"][1]
    n_cut = sum(k is not None and k < len(d) for d, k in zip(docs, held_out.cut))
    summary = (f"tokens: {n_train:,} train + {n_val:,} validation sequences of {cfg.n_ctx} "
               f"({(n_train + n_val) * cfg.n_ctx / 1e6:.2f}M tokens; {counts['val'][0]} held-out "
               f"documents{f' ({n_cut} cut)' if n_cut else ''}, {held_out.held:,} tokens for a "
               f"target of {held_out.target:,}"
               f"{f'; {n_seen} validation sequence{_s(n_seen)} dropped as also in training' if n_seen else ''}"
               f"), {seconds:.1f} s")
    return summary, {"n_ctx": cfg.n_ctx, "train_sequences": n_train, "val_sequences": n_val,
                     "train_documents": counts["train"][0],
                     "val_documents": counts["val"][0], "cut_documents": n_cut,
                     "val_target_tokens": held_out.target, "val_held_tokens": held_out.held,
                     "val_sequences_dropped_as_seen": n_seen}
