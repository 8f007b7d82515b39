"""Explaining and scoring a dictionary in blocks of units, on threads.

Every step of fitting an explanation (`explainer.fit_patterns`, `single_token`) and of scoring
it (`scoring.detection_cut`, `score`, `fire_threshold`) is per unit: a unit's result reads
only its own windows. So a dictionary splits into blocks of consecutive units, each block
the same computation on fewer rows, and the blocks run at once on a thread pool (numpy
releases the GIL in its large array operations). Rows keep their order within each unit
(a stable sort by unit), so every per-unit sum adds the same numbers in the same order and
the blocked result is bit for bit the unblocked one (`tests/test_interp_blocks.py`). A
16,384-feature dictionary's explain set is ~56M cells; in blocks its temporaries are a
block's, not the dictionary's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import numpy as np

from pipelines.interp.explainer import Windows

T = TypeVar("T")

BLOCK_UNITS = 1024


def unit_blocks(windows: Windows, n_units: int, size: int = BLOCK_UNITS) -> list[Windows]:
    """The windows of units [lo, lo + size) for each block, units renumbered from 0 and rows
    in their original order within each unit."""
    order = np.argsort(windows.unit, kind="stable")
    ranges = block_ranges(n_units, size)
    edges = np.searchsorted(windows.unit[order], [lo for lo, _ in ranges] + [n_units])
    blocks = []
    for b, (lo, _) in enumerate(ranges):
        part = windows.select(order[edges[b]: edges[b + 1]])
        blocks.append(Windows(unit=part.unit - lo, tokens=part.tokens, acts=part.acts,
                              kind=part.kind, seq_id=part.seq_id, position=part.position,
                              split=part.split, before=part.before))
    return blocks


def block_ranges(n_units: int, size: int = BLOCK_UNITS) -> list[tuple[int, int]]:
    """[lo, hi) of each block (one empty block for no units)."""
    return [(lo, min(lo + size, n_units)) for lo in range(0, n_units, size)] or [(0, 0)]


def run_blocks(fn: Callable[[int, int, int], T], n_units: int, pool: Executor | None,
               size: int = BLOCK_UNITS) -> list[T]:
    """fn(block, lo, hi) for every block, in block order (on the pool when given)."""
    ranges = block_ranges(n_units, size)
    if pool is None or len(ranges) == 1:
        return [fn(b, lo, hi) for b, (lo, hi) in enumerate(ranges)]
    return list(pool.map(lambda b: fn(b, *ranges[b]), range(len(ranges))))


def concat_scores(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-unit score arrays of consecutive blocks, joined."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
