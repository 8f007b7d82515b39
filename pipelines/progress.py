"""Progress that reaches a log file as well as a terminal.

tqdm with `disable=None` prints nothing when stderr is not a terminal, so `make demo >
demo.log` showed nothing for minutes while the model trained. Here a terminal gets tqdm's
live bar; anything else gets one plain line per update at most every `LOG_INTERVAL_S`
seconds (tqdm's status line, without the carriage returns that would pile every update
onto one line of the file). Steps with no loop to report on (UMAP, the store write) run
under `heartbeat`, which prints how long they have run so far.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # at most one progress line per this many seconds in a log file
# A study building variants in parallel processes names each process's lines with this
# (e.g. "[gelu] "), so interleaved progress still says whose it is.
PREFIX_ENV = "PIPELINES_PROGRESS_PREFIX"


def _prefixed(kwargs: dict[str, Any]) -> dict[str, Any]:
    prefix = os.environ.get(PREFIX_ENV, "")
    if prefix and "desc" in kwargs:
        kwargs = {**kwargs, "desc": prefix + str(kwargs["desc"])}
    return kwargs


class _Lines:
    """A file-like that turns tqdm's carriage-return refreshes into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _interactive(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable: Iterable[Any] | None = None, *, stream: TextIO | None = None,
        **kwargs: Any) -> tqdm:
    """A tqdm bar (same arguments): live on a terminal, a line every ~10 s otherwise."""
    stream = stream or sys.stderr
    kwargs = _prefixed(kwargs)
    if _interactive(stream):
        return tqdm(iterable, file=stream, **kwargs)
    # position 0: a log file has no cursor to move; tqdm would put a bar opened while another
    # is still open (or was left open by an error) on the line below with escape codes.
    kwargs.setdefault("position", 0)
    # miniters=1: tqdm would otherwise learn "print every N updates" from the first interval,
    # and a stage that slows down (an evaluation, a busy machine) would go quiet for longer.
    return tqdm(iterable, file=_Lines(stream), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, miniters=1, ascii=True, dynamic_ncols=False,
                ncols=100, **kwargs)


@contextmanager
def heartbeat(what: str, every: float = LOG_INTERVAL_S,
              stream: TextIO | None = None) -> Iterator[None]:
    """Print "<what>: running, N s" every `every` seconds until the block ends."""
    stream = stream or sys.stderr
    stop = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not stop.wait(every):
            stream.write(f"{os.environ.get(PREFIX_ENV, '')}{what}: running, "
                         f"{time.perf_counter() - t0:.0f} s\n")
            stream.flush()

    thread = threading.Thread(target=beat, name=f"heartbeat {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
