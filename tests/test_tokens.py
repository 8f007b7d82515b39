import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import TokensConfig
from pipelines.errors import ConfigError
from pipelines.runner import run_pipeline
from pipelines.tokens import is_validation, pack, read_sequences
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
