"""corpus stage: collect documents into `corpus/documents-*.parquet` (doc_id, source, text).

The embedded default is text every Python installation carries, so the pipeline needs no
download: the standard library's `.py` sources (a mix of code, docstrings and comments) and
`pydoc_data`'s help topics (English prose about the language). Test suites, `site-packages`
and vendored tools are left out: they are generated data and third-party code, not the
language's own prose and code. Documents are normalised (NFC, LF line ends, no trailing
spaces), deduplicated by content, sorted by source and then shuffled with the corpus seed, so
the same seed gives the same document order on every machine with the same Python.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import sysconfig
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import CorpusConfig
from pipelines.errors import InputError
from pipelines.run_folder import hash_strings

SHARD_CHARS = 32_000_000
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
              "ensurepip", "turtledemo", "__pycache__"}


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if any(part in _SKIP_DIRS for part in parts[:-1]):
            continue
        files.append(path)
    return sorted(files)


def _embedded_documents() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        try:
            yield f"stdlib/{path.relative_to(root)}", path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a stray non-UTF-8 file in the installation is not the user's problem
    from pydoc_data import topics  # imported here: a stdlib module, but only this stage needs it

    for name in sorted(topics.topics):
        yield f"pydoc/{name}", topics.topics[name]


def local_files(paths: tuple[str, ...]) -> list[Path]:
    """Expand files and folders into the sorted list of readable corpus files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: corpus path does not exist")
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
            if not inside:
                raise InputError(f"{path}: corpus folder has no {', '.join(LOCAL_SUFFIXES)} files")
            found.extend(inside)
        elif path.suffix in LOCAL_SUFFIXES:
            found.append(path)
        else:
            raise InputError(f"{path}: unsupported corpus file type {path.suffix!r}; "
                             f"expected one of {', '.join(LOCAL_SUFFIXES)}")
    return found


def _read_local(path: Path, column: str) -> Iterator[tuple[str, str]]:
    if path.suffix == ".txt":
        try:
            yield str(path), path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as err:
            raise InputError(f"{path}: unreadable text file ({err})") from None
    elif path.suffix == ".jsonl":
        try:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise InputError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(column), str):
                        raise InputError(f"{path}:{lineno}: record has no string field {column!r}")
                    yield f"{path}:{lineno}", record[column]
        except (UnicodeDecodeError, OSError) as err:
            raise InputError(f"{path}: unreadable JSONL file ({err})") from None
    else:
        try:
            schema = pq.read_schema(path)
            if column not in schema.names:
                raise InputError(f"{path}: Parquet file has no column {column!r} "
                                 f"(columns: {schema.names})")
            table = pq.read_table(path, columns=[column])
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable Parquet file ({err})") from None
        if not pa.types.is_string(table.schema.field(column).type) and \
                not pa.types.is_large_string(table.schema.field(column).type):
            raise InputError(f"{path}: column {column!r} is {table.schema.field(column).type}, "
                             f"not text")
        for row, text in enumerate(table.column(column).to_pylist()):
            if text is not None:
                yield f"{path}#{row}", text


def _huggingface_documents(cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """Online only: never the default and never used by tests."""
    try:
        import datasets  # lazily: heavy, and only this option needs it
    except ImportError:
        raise InputError("corpus.source=huggingface needs the `datasets` package") from None
    try:
        stream = datasets.load_dataset(cfg.hf_dataset, split=cfg.hf_split, streaming=True)
        for row, record in enumerate(stream):
            text = record.get(cfg.text_column)
            if isinstance(text, str):
                yield f"hf:{cfg.hf_dataset}#{row}", text
    except Exception as err:  # network, auth, missing dataset: all the user's to fix
        raise InputError(f"hf:{cfg.hf_dataset}: could not load ({type(err).__name__}: {err})") from None


def raw_documents(cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    if cfg.source == "embedded":
        yield from _embedded_documents()
    elif cfg.source == "files":
        for path in local_files(cfg.paths):
            yield from _read_local(path, cfg.text_column)
    else:
        yield from _huggingface_documents(cfg)


def input_fingerprint(cfg: CorpusConfig) -> str:
    """Cheap: names, sizes and mtimes, so editing a corpus file reruns the pipeline."""
    if cfg.source == "embedded":
        files = stdlib_files()
        return hash_strings(sys.version, str(len(files)), *(f"{p}:{p.stat().st_size}" for p in files))
    if cfg.source == "files":
        parts = []
        for path in local_files(cfg.paths):
            stat = path.stat()
            parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        return hash_strings(*parts)
    return hash_strings("hf", cfg.hf_dataset, cfg.hf_split)


def collect(cfg: CorpusConfig) -> list[tuple[str, str]]:
    """Normalised, deduplicated, ordered documents, capped at `max_chars`."""
    seen: set[bytes] = set()
    docs: list[tuple[str, str]] = []
    budget = cfg.max_chars if cfg.max_chars > 0 else None
    # Online sources are streamed: stop reading once well past the cap.
    stream_cap = None if cfg.source != "huggingface" or budget is None else 2 * budget
    total = 0
    for source, text in raw_documents(cfg):
        text = normalise(text)
        if len(text) < cfg.min_doc_chars:
            continue
        key = hashlib.sha1(text.encode()).digest()
        if key in seen:
            continue
        seen.add(key)
        docs.append((source, text))
        total += len(text)
        if stream_cap is not None and total >= stream_cap:
            break
    docs.sort(key=lambda d: d[0])
    random.Random(cfg.seed).shuffle(docs)
    if budget is not None:
        kept, used = [], 0
        for doc in docs:
            if used >= budget:
                break
            kept.append(doc)
            used += len(doc[1])
        docs = kept
    return docs


def run(cfg: CorpusConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    """The corpus stage reads no earlier stage: `run_dir` is unused."""
    start = time.perf_counter()
    docs = collect(cfg)
    where = {"embedded": "the embedded Python corpus", "files": ", ".join(cfg.paths),
             "huggingface": cfg.hf_dataset}[cfg.source]
    if not docs:
        raise InputError(f"{where}: corpus is empty (no document of at least "
                         f"{cfg.min_doc_chars} characters)")
    shard, shard_chars, n_shards = [], 0, 0

    def flush() -> None:
        nonlocal shard, shard_chars, n_shards
        table = pa.table({
            "doc_id": pa.array([d[0] for d in shard], pa.int32()),
            "source": pa.array([d[1] for d in shard], pa.string()),
            "text": pa.array([d[2] for d in shard], pa.large_string()),
        })
        pq.write_table(table, out / f"documents-{n_shards:05d}.parquet")
        n_shards += 1
        shard, shard_chars = [], 0

    for doc_id, (source, text) in enumerate(docs):
        shard.append((doc_id, source, text))
        shard_chars += len(text)
        if shard_chars >= SHARD_CHARS:
            flush()
    if shard:
        flush()
    n_chars = sum(len(t) for _, t in docs)
    seconds = time.perf_counter() - start
    summary = (f"corpus: {len(docs):,} documents, {n_chars / 1e6:.1f}M chars from {where}, "
               f"{seconds:.1f} s")
    return summary, {"n_documents": len(docs), "n_chars": n_chars, "n_shards": n_shards}


def read_documents(corpus_dir: Path) -> Iterator[tuple[int, str]]:
    """(doc_id, text) in corpus order, one shard in memory at a time."""
    for path in sorted(corpus_dir.glob("documents-*.parquet")):
        try:
            table = pq.read_table(path, columns=["doc_id", "text"])
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: unreadable corpus shard ({err}); rerun with "
                             f"--force corpus") from None
        yield from zip(table.column("doc_id").to_pylist(), table.column("text").to_pylist())
