"""A run folder and its manifest: what each stage produced, from which inputs and config.

Layout: `runs/<name>/manifest.json`, `runs/<name>/config.json` (the resolved config of the
last run) and one folder per stage, `runs/<name>/<stage>/`. A stage writes into
`<stage>.incomplete/` and the folder is renamed into place only when the stage returns; the
manifest entry is written (atomically, via a temporary file) after the rename. So a crash at
any moment leaves either the previous complete output, or a folder with no manifest entry
(which the runner treats as missing and rebuilds), never a half-written table that looks
complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import InputError

MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class ManifestEntry:
    """One stage's record. `output_hash` is a content hash of its folder, so downstream stages
    rerun when an upstream output really changed, and not when it was merely rebuilt."""

    stage: str
    config: dict[str, Any]
    config_hash: str
    inputs_hash: str
    output_hash: str
    outputs: tuple[str, ...]  # paths relative to the run folder
    summary: str
    results: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ManifestEntry":
        data = dict(data)
        data["outputs"] = tuple(data.get("outputs", ()))
        return cls(**data)


class Manifest:
    """`runs/<name>/manifest.json`, rewritten whole and atomically on every change."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "manifest.json"
        self.entries: dict[str, ManifestEntry] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                schema = data.get("schema")
                if schema != MANIFEST_SCHEMA:
                    raise InputError(f"{self.path}: manifest schema {schema}, this code knows "
                                     f"{MANIFEST_SCHEMA}; use a new run folder")
                self.entries = {k: ManifestEntry.from_json(v) for k, v in data["stages"].items()}
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InputError(f"{self.path}: unreadable manifest ({err}); remove it to rebuild "
                                 f"the run") from None

    def get(self, stage: str) -> ManifestEntry | None:
        return self.entries.get(stage)

    def put(self, entry: ManifestEntry) -> None:
        self.entries[entry.stage] = entry
        self._write()

    def drop(self, stage: str) -> None:
        if self.entries.pop(stage, None) is not None:
            self._write()

    def _write(self) -> None:
        data = {"schema": MANIFEST_SCHEMA,
                "stages": {k: v.to_json() for k, v in self.entries.items()}}
        write_text_atomic(self.path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def staged_dir(final: Path, before_swap: Callable[[], None] = lambda: None) -> Iterator[Path]:
    """Yield `<final>.incomplete/`; on success swap it into place, on any error remove it.

    `before_swap` runs after the work succeeded and before the old output is replaced: the
    runner uses it to drop the stage's manifest entry, so a crash during the swap leaves an
    output with no entry (rebuilt next time), never an entry describing other bytes."""
    tmp = staging_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    before_swap()
    old = final.with_name(final.name + ".old")
    _remove(old)
    if final.is_symlink():  # a stage a study shared from another run: drop the link only
        final.unlink()
    elif final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)


def _remove(path: Path) -> None:
    """A file, a folder or a link (never what a link points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def staging_path(final: Path) -> Path:
    """Where `staged_dir` builds `final` (other ranks of a torchrun write there too)."""
    return final.with_name(final.name + ".incomplete")


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove what an interrupted run left behind; return the names removed."""
    removed = []
    if not run_dir.exists():
        return removed
    for path in sorted(run_dir.iterdir()):
        if path.name.endswith((".incomplete", ".old", ".tmp")):
            _remove(path)
            removed.append(path.name)
    return removed


def hash_folder(folder: Path) -> str:
    """Content hash of every file under `folder` (relative names and bytes), order-independent."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def hash_strings(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One writer per run folder: a second `run` on the same folder fails fast.

    The lock is taken on the folder itself, so it leaves no file behind."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{run_dir}: another pipeline run is using this folder") from None
        yield
    finally:
        os.close(fd)
