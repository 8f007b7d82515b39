"""The stats stage's joint UMAP, laid out in a second process while passes 1-3 run.

The layout needs only the dictionaries' directions, which are known before the passes read a
token, and runs on one host thread (umap-learn with a fixed seed). At the paper preset's
32,768 points it takes 30-40 s on a 2-core box, plus numba compiling its kernels on a fresh
machine; on a GPU box those seconds were spent after the passes, with the GPU idle and 15 of
16 cores too. Beside the passes they cost nothing but one core the passes leave idle.

`stats.umap_beside`: `auto` lays it out beside the passes when they leave a core idle (they
run on CUDA, or this process has more cores than torch's threads); on 2 cores, where torch
takes both, it runs after them in this process, as it always did. The layout is the same
either way: the kNN is found here, on the passes' device, and the layout from it is
single-threaded and seeded (`test_the_umap_beside_the_passes_is_the_umap_after_them`).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import torch

from pipelines.errors import PipelineError
from pipelines.stats.directions import umap_knn, umap_layout


def beside_passes(choice: str, device: str) -> bool:
    """Whether `stats.umap_beside = choice` lays the UMAP out in a second process."""
    if choice != "auto":
        return choice == "on"
    if multiprocessing.current_process().daemon:  # a daemonic process may not start children
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return device == "cuda" or cores > torch.get_num_threads()


class JointUmap:
    """One joint UMAP: started before the passes, its `result()` read after them.

    Beside the passes the layout runs in a spawned process (a CUDA context cannot be forked).
    Its inputs go through a file, not the process's arguments: spawn writes the arguments
    into a pipe whose other end the parent itself holds until the write ends, so a child that
    dies while starting (a script without an `if __name__ == "__main__":` guard re-runs itself
    there) left the stage blocked in that write for good instead of failing. The layout comes
    back through a pipe whose only writer is the child: its death reads as EOF here.
    `close()` (or leaving the `with` block) stops a process still running and removes the
    file, so a stage that fails in its passes leaves nothing behind."""

    def __init__(self, directions: list[torch.Tensor], n_neighbours: int, seed: int,
                 beside: bool) -> None:
        self._directions, self._n_neighbours, self._seed = directions, n_neighbours, seed
        self.beside = beside
        self._process: Any = None
        self._reader: Any = None
        self._folder: tempfile.TemporaryDirectory | None = None
        if beside:
            points, knn = umap_knn(directions, n_neighbours)
            self._folder = tempfile.TemporaryDirectory(prefix="stats-umap-")
            inputs = os.path.join(self._folder.name, "inputs.npz")
            np.savez(inputs, points=points, knn_indices=knn[0], knn_distances=knn[1])
            context = multiprocessing.get_context("spawn")
            self._reader, writer = context.Pipe(duplex=False)
            self._process = context.Process(target=_lay_out, args=(writer, inputs, seed),
                                            name="stats umap", daemon=True)
            self._process.start()
            writer.close()  # the child holds the only writer now

    def result(self) -> tuple[np.ndarray, float, float]:
        """The layout, the seconds it took, and the seconds this process waited for it (all
        of it when laid out here; what the passes did not cover when beside them)."""
        t0 = time.perf_counter()
        if not self.beside:
            points, knn = umap_knn(self._directions, self._n_neighbours)
            xy = umap_layout(points, knn, self._seed)
            seconds = time.perf_counter() - t0
            return xy, seconds, seconds
        try:
            message = self._reader.recv()
            self._process.join(10)  # it exits once sent: let it, rather than stop it
        except EOFError:
            self._process.join(5)
            raise PipelineError(f"the stats stage's UMAP process exited with code "
                                f"{self._process.exitcode} before it sent a layout "
                                f"(stats.umap_beside=off lays it out in the stage's own process)")
        finally:
            self.close()
        if message[0] == "error":
            raise PipelineError(f"the stats stage's UMAP process failed: {message[1]}")
        return message[1], message[2], time.perf_counter() - t0

    def close(self) -> None:
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join()
            self._reader.close()
            self._process = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> "JointUmap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lay_out(writer: Any, inputs: str, seed: int) -> None:
    """The second process: one thread for torch too (the layout needs none, the passes
    want every core)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        with np.load(inputs) as f:
            points, knn = f["points"], (f["knn_indices"], f["knn_distances"])
        xy = umap_layout(points, knn, seed)
        writer.send(("ok", xy, time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001 - handed to the stage, which raises it
        writer.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
    finally:
        writer.close()
