"""tokens stage: fixed-length sequences as Parquet, split into train and validation by document.

Splitting by document (not by sequence) keeps every validation token unseen in training, so
the validation loss, and every later held-out metric, is honest. Within a split, documents are
packed end to end with `<|endoftext|>` between them and cut into chunks of `n_ctx - 1` tokens,
each prefixed with `<|bos|>`; the last partial chunk is dropped. Position 0 of every sequence is
therefore BOS, which later stages skip when they cache activations.

Files: `tokens/train.parquet` and `tokens/val.parquet`, columns `seq_id` (int32) and `tokens`
(fixed-size list of n_ctx int32).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import TokensConfig
from pipelines.corpus import read_documents
from pipelines.errors import ConfigError, InputError
from pipelines.tokenizer import BOS, EOT, load as load_tokenizer


def is_validation(doc_id: int, cfg: TokensConfig) -> bool:
    """A seeded hash of the document id: stable, and independent of the corpus order."""
    digest = hashlib.sha256(f"{cfg.seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < cfg.val_fraction


def pack(docs: list[list[int]], n_ctx: int, bos: int, eot: int) -> np.ndarray:
    if not docs:
        return np.zeros((0, n_ctx), np.int32)
    stream = np.concatenate([np.asarray(d + [eot], np.int32) for d in docs])
    n_seq = len(stream) // (n_ctx - 1)
    body = stream[: n_seq * (n_ctx - 1)].reshape(n_seq, n_ctx - 1)
    return np.concatenate([np.full((n_seq, 1), bos, np.int32), body], axis=1)


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
    split: dict[str, list[list[int]]] = {"train": [], "val": []}
    ids, texts = zip(*read_documents(run_dir / "corpus"))
    for doc_id, enc in zip(ids, tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        split["val" if is_validation(doc_id, cfg) else "train"].append(enc.ids)
    counts = {}
    for name, docs in split.items():
        seqs = pack(docs, cfg.n_ctx, bos, eot)
        need = cfg.min_val_sequences if name == "val" else 1
        if len(seqs) < need:
            n_tokens = sum(len(d) + 1 for d in docs)
            raise ConfigError(
                f"tokens.n_ctx={cfg.n_ctx}: larger than the corpus allows: the {name} split has "
                f"{n_tokens:,} tokens, {len(seqs)} sequence(s) of {cfg.n_ctx}; need at least "
                f"{need} (lower n_ctx or val_fraction, or use a larger corpus)")
        write_sequences(out / f"{name}.parquet", seqs)
        counts[name] = (len(docs), len(seqs))
    seconds = time.perf_counter() - start
    n_train, n_val = counts["train"][1], counts["val"][1]
    summary = (f"tokens: {n_train:,} train + {n_val:,} validation sequences of {cfg.n_ctx} "
               f"({(n_train + n_val) * cfg.n_ctx / 1e6:.2f}M tokens; {counts['val'][0]} held-out "
               f"documents), {seconds:.1f} s")
    return summary, {"n_ctx": cfg.n_ctx, "train_sequences": n_train, "val_sequences": n_val,
                     "train_documents": counts["train"][0], "val_documents": counts["val"][0]}
