import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import CorpusConfig
from pipelines.data.corpus import collect, normalise
from pipelines.errors import InputError

LONG = "x" * 100


def _files_cfg(*paths, **kw) -> CorpusConfig:
    return CorpusConfig(source="files", paths=tuple(str(p) for p in paths), **kw)


def test_local_formats_and_dedup(tmp_path: Path):
    (tmp_path / "a.txt").write_text("alpha " + LONG + "\r\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"text": "beta " + LONG}) + "\n\n" + json.dumps({"text": "alpha " + LONG}) + "\n")
    pq.write_table(pa.table({"text": ["gamma " + LONG, None, "short"]}), tmp_path / "c.parquet")
    docs = collect(_files_cfg(tmp_path))
    texts = sorted(t for _, t in docs)
    assert texts == sorted(["alpha " + LONG, "beta " + LONG, "gamma " + LONG])  # dedup + min length


def test_order_is_fixed_by_seed(tmp_path: Path):
    for i in range(20):
        (tmp_path / f"{i}.txt").write_text(f"doc {i} " + LONG)
    a = collect(_files_cfg(tmp_path, seed=1))
    assert a == collect(_files_cfg(tmp_path, seed=1))
    assert a != collect(_files_cfg(tmp_path, seed=2))


def test_max_chars_caps_the_corpus(tmp_path: Path):
    for i in range(20):
        (tmp_path / f"{i}.txt").write_text(f"doc {i} " + LONG)
    assert len(collect(_files_cfg(tmp_path, max_chars=250))) == 3


def test_embedded_corpus_is_code_and_prose():
    docs = collect(CorpusConfig(max_chars=2_000_000))
    sources = [s for s, _ in docs]
    assert any(s.startswith("stdlib/") for s in sources)
    text = "\n".join(t for _, t in docs)
    assert "def " in text and "the " in text
    assert not any("/test/" in s or "site-packages" in s for s in sources)


def test_normalise():
    assert normalise("a  \r\nb\t \r\n\n") == "a\nb"


@pytest.mark.parametrize("name, content, fragment", [
    (None, None, "has no .txt, .jsonl, .parquet files"),
    ("bad.parquet", b"PAR1 not really", "unreadable Parquet file"),
    ("bad.jsonl", b"{not json\n", "bad.jsonl:1: not valid JSON"),
    ("nocol.jsonl", b'{"body": "x"}\n', "no string field 'text'"),
    ("t.txt", b"tiny", "corpus is empty"),
    ("missing", None, "does not exist"),
])
def test_bad_corpus_is_a_clear_error(tmp_path: Path, name, content, fragment):
    from pipelines.data.corpus import run

    path = tmp_path if name is None else tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as err:
        run(_files_cfg(path), tmp_path, out)
    assert fragment in str(err.value)
