"""Progress that reaches a log file as well as a terminal.

tqdm with `disable=None` prints nothing when stderr is not a terminal, so `make demo >
demo.log` showed nothing for minutes while the model trained. Here a terminal gets tqdm's
live bar; anything else gets one plain line per update at most every `LOG_INTERVAL_S`
seconds (tqdm's status line, without the carriage returns that would pile every update
onto one line of the file). Steps with no loop to report on (UMAP, the store write) run
under `heartbeat`, which prints how long they have run so far.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # at most one progress line per this many seconds in a log file


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
    if _interactive(stream):
        return tqdm(iterable, file=stream, **kwargs)
    return tqdm(iterable, file=_Lines(stream), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, ascii=True, dynamic_ncols=False, ncols=100,
                **kwargs)


@contextmanager
def heartbeat(what: str, every: float = LOG_INTERVAL_S,
              stream: TextIO | None = None) -> Iterator[None]:
    """Print "<what>: running, N s" every `every` seconds until the block ends."""
    stream = stream or sys.stderr
    stop = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not stop.wait(every):
            stream.write(f"{what}: running, {time.perf_counter() - t0:.0f} s\n")
            stream.flush()

    thread = threading.Thread(target=beat, name=f"heartbeat {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
