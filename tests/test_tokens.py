import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import TokensConfig
from pipelines.errors import ConfigError
from pipelines.runner import run_pipeline
from pipelines.data.tokens import (choose_held_out, drop_seen, hash_position, is_validation, pack,
                                   read_sequences, row_hashes, split_documents)
from tests.conftest import mini_config


def test_pack_puts_bos_first_and_separates_documents():
    seqs = pack([[5, 6, 7], [8, 9]], n_ctx=4, bos=0, eot=1)
    assert seqs.tolist() == [[0, 5, 6, 7], [0, 1, 8, 9]]  # trailing EOT of doc 2 dropped


def test_split_is_by_document_and_roughly_the_requested_share():
    cfg = TokensConfig(val_fraction=0.2, seed=3)
    share = np.mean([is_validation(i, cfg) for i in range(5000)])
    assert 0.17 < share < 0.23
    assert [is_validation(i, cfg) for i in range(50)] == [is_validation(i, cfg) for i in range(50)]


def test_mini_run_sequences(mini_run):
    train = read_sequences(mini_run / "tokens" / "train.parquet")
    val = read_sequences(mini_run / "tokens" / "val.parquet")
    assert train.shape[1] == val.shape[1] == 32
    assert (train[:, 0] == 0).all() and (val[:, 0] == 0).all()
    assert not (train[:, 1:] == 0).any()
    table = pq.read_table(mini_run / "tokens" / "train.parquet")
    assert table.column_names == ["seq_id", "tokens"]


def test_context_longer_than_the_corpus_allows_is_a_config_error(tmp_path):
    cfg = mini_config(corpus={"max_chars": 20_000}, tokens={"n_ctx": 4096})
    with pytest.raises(ConfigError, match=r"tokens\.n_ctx=4096: larger than the corpus allows"):
        run_pipeline(cfg, tmp_path / "r", "my.toml", until="tokens", log=lambda s: None)
    assert not (tmp_path / "r" / "tokens").exists()


# -- how many tokens are held out (issue 17) -------------------------------------------------

def _held_ids(ids, held_out):
    return {d: k for d, k in zip(ids, held_out.cut) if k is not None}


def test_a_few_long_documents_reach_the_held_out_target():
    """Five documents of 60k tokens: the first rule holds none of them out (a corpus like this
    once got 4k held-out tokens); now one is cut to give exactly val_fraction."""
    cfg = TokensConfig(val_fraction=0.1, seed=0, n_ctx=128)
    ids, lengths = list(range(5)), [60_000] * 5
    assert not any(is_validation(d, cfg) for d in ids)  # what the old rule gave
    held_out = choose_held_out(ids, lengths, cfg)
    assert held_out.target == math.ceil(0.1 * 5 * 60_001)
    assert held_out.target <= held_out.held <= held_out.target + cfg.n_ctx and not held_out.shortfall
    assert sum(k is not None and k < n for k, n in zip(held_out.cut, lengths)) == 1  # one cut
    train, val = split_documents([[i] * n for i, n in enumerate(lengths)], held_out)
    assert sum(len(d) + 1 for d in val) == held_out.held
    assert sorted(t for d in train + val for t in d) == sorted(i for i, n in enumerate(lengths)
                                                              for _ in range(n))  # no token lost


def test_documents_are_held_out_whole_in_hash_order_until_the_target():
    cfg = TokensConfig(val_fraction=0.1, seed=2, n_ctx=16)
    ids = list(range(40))
    lengths = [(7919 * i) % 500 + 50 for i in ids]
    held_out = choose_held_out(ids, lengths, cfg)
    chosen = _held_ids(ids, held_out)
    assert held_out.held >= held_out.target and set(chosen) >= {d for d in ids
                                                                if is_validation(d, cfg)}
    by_hash = sorted(ids, key=lambda d: hash_position(d, cfg.seed))
    assert set(by_hash[:len(chosen)]) == set(chosen)  # a prefix of the hash order
    whole = [d for d, k in chosen.items() if k == lengths[d]]
    assert len(whole) >= len(chosen) - 1  # at most one document cut


def test_the_first_rule_split_is_kept_when_it_reaches_the_target():
    """Where held-out documents are long enough already, nothing changes (old runs keep their
    split)."""
    cfg = TokensConfig(val_fraction=0.2, seed=5, n_ctx=32)
    ids = list(range(300))
    lengths = [1_000 if is_validation(d, cfg) else 100 for d in ids]
    held_out = choose_held_out(ids, lengths, cfg)
    assert held_out.held >= held_out.target
    assert held_out.cut == tuple(n if is_validation(d, cfg) else None
                                 for d, n in zip(ids, lengths))


def test_the_split_depends_on_the_seed_not_on_the_corpus_order():
    cfg = TokensConfig(val_fraction=0.15, seed=1, n_ctx=64)
    ids = list(range(30))
    lengths = [(104729 * i) % 3_000 + 10 for i in ids]
    held_out = _held_ids(ids, choose_held_out(ids, lengths, cfg))
    order = np.random.default_rng(0).permutation(len(ids))
    shuffled_ids, shuffled_lengths = [ids[i] for i in order], [lengths[i] for i in order]
    assert _held_ids(shuffled_ids, choose_held_out(shuffled_ids, shuffled_lengths, cfg)) == held_out
    other = TokensConfig(val_fraction=0.15, seed=2, n_ctx=64)
    assert _held_ids(ids, choose_held_out(ids, lengths, other)) != held_out


def test_an_impossible_target_falls_short_by_what_training_needs():
    """90% of a 33-token corpus cannot be held out when training must keep a sequence of 8."""
    cfg = TokensConfig(val_fraction=0.9, seed=0, n_ctx=8, min_val_sequences=1)
    held_out = choose_held_out([0, 1, 2], [10, 10, 10], cfg)
    assert held_out.target == 30 and held_out.held == 33 - 7 and held_out.shortfall == 4


def _files_corpus(folder: Path, n_docs: int, words_per_doc: int) -> Path:
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    folder.mkdir()
    for i in range(n_docs):
        words = rng.choice(vocab, words_per_doc)
        (folder / f"{i}.txt").write_text(f"document {i}: " + " ".join(words) + "\n")
    return folder


def test_stage_holds_out_the_target_from_a_few_long_documents(tmp_path):
    corpus = _files_corpus(tmp_path / "docs", n_docs=4, words_per_doc=6_000)
    cfg = mini_config(corpus={"source": "files", "paths": [str(corpus)]})
    manifest = run_pipeline(cfg, tmp_path / "r", "my.toml", until="tokens", log=lambda s: None)
    results = manifest.get("tokens").results
    assert results["val_held_tokens"] >= results["val_target_tokens"]
    val = read_sequences(tmp_path / "r" / "tokens" / "val.parquet")
    train = read_sequences(tmp_path / "r" / "tokens" / "train.parquet")
    assert len(val) >= results["val_target_tokens"] // 31 - 1  # n_ctx 32: 31 tokens after BOS
    assert 0.13 < len(val) / (len(val) + len(train)) < 0.17  # val_fraction 0.15


def test_stage_warns_with_the_shortfall(tmp_path, capsys):
    corpus = _files_corpus(tmp_path / "docs", n_docs=3, words_per_doc=60)
    cfg = mini_config(corpus={"source": "files", "paths": [str(corpus)]},
                      tokens={"n_ctx": 64, "val_fraction": 0.9, "min_val_sequences": 1})
    manifest = run_pipeline(cfg, tmp_path / "r", "my.toml", until="tokens", log=lambda s: None)
    results = manifest.get("tokens").results
    short = results["val_target_tokens"] - results["val_held_tokens"]
    assert short > 0
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert f"held out {results['val_held_tokens']:,} tokens, {short:,} short of the " \
           f"{results['val_target_tokens']:,} tokens.val_fraction=0.9 asks for" in line


# -- validation sequences that are training sequences too ------------------------------------

def test_drop_seen_removes_exactly_the_validation_rows_that_training_holds():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 50, (200, 16), dtype=np.int32)
    val = rng.integers(0, 50, (30, 16), dtype=np.int32)
    val[[3, 17, 29]] = train[[5, 5, 199]]
    kept, n = drop_seen(val, train)
    assert n == 3 and len(kept) == 27
    assert kept.tolist() == np.delete(val, [3, 17, 29], axis=0).tolist()
    assert drop_seen(val[:3], train)[1] == 0  # nothing shared: returned as is
    moved = val[3].copy()
    moved[[0, 1]] = moved[[1, 0]]  # the same tokens in another order is another sequence
    assert moved.tolist() != val[3].tolist() and row_hashes(moved[None])[0] != row_hashes(val[3][None])[0]


def test_a_hash_match_alone_does_not_drop_a_sequence(monkeypatch):
    """Every row hashing alike (a worst-case collision): only equal rows are dropped."""
    import pipelines.data.tokens as tokens
    monkeypatch.setattr(tokens, "row_hashes", lambda seqs: np.zeros(len(seqs), np.uint64))
    train = np.arange(40, dtype=np.int32).reshape(5, 8)
    val = np.concatenate([train[2:3], train[:1] + 100])
    kept, n = tokens.drop_seen(val, train)
    assert n == 1 and kept.tolist() == (train[:1] + 100).tolist()


def test_stage_holds_out_no_sequence_that_training_holds(tmp_path):
    """A corpus that repeats one long text under different first lines (the corpus stage drops
    exact duplicates only): held out by document, some validation sequences would be training
    sequences token for token (the embedded corpus's codec files did this to the paper
    preset, whose interp stage then refused to run)."""
    folder = _files_corpus(tmp_path / "docs", n_docs=30, words_per_doc=400)
    words = " ".join(np.random.default_rng(1).choice(["red", "green", "blue", "cyan"], 300))
    for i in range(30):
        (folder / f"copy{i}.txt").write_text(f"version {i}\n{words}\n")
    cfg = mini_config(corpus={"source": "files", "paths": [str(folder)]}, tokens={"val_fraction": 0.3})
    manifest = run_pipeline(cfg, tmp_path / "r", "my.toml", until="tokens", log=lambda s: None)
    results = manifest.get("tokens").results
    train = read_sequences(tmp_path / "r" / "tokens" / "train.parquet")
    val = read_sequences(tmp_path / "r" / "tokens" / "val.parquet")
    assert results["val_sequences_dropped_as_seen"] > 0 and results["val_sequences"] == len(val) > 0
    seen = {row.tobytes() for row in train}
    assert not any(row.tobytes() in seen for row in val)
    n = results["val_sequences_dropped_as_seen"]
    assert f"{n} validation sequence{'' if n == 1 else 's'} dropped as also in training" in manifest.get("tokens").summary
