"""Example windows: the tokens around an example token that a reader sees with it.

The stats stage draws examples with `stats.window_before` tokens before and
`stats.window_after` after the example token (clipped to the sequence; position 0, BOS, has
no activation), writes them into the store, and the interp stage explains from windows of
the same shape, read back from the store's examples (`WindowSpan.of_examples`), so the
explain and score windows cannot drift apart. Everything about a window's layout is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.errors import InputError


@dataclass(frozen=True)
class WindowSpan:
    """`before` tokens, the example token, `after` tokens."""

    before: int
    after: int

    @classmethod
    def of(cls, cfg) -> WindowSpan:
        """From a config with `window_before` / `window_after` (StatsConfig)."""
        return cls(int(cfg.window_before), int(cfg.window_after))

    @classmethod
    def of_examples(cls, center: np.ndarray, width: int, where: str) -> WindowSpan:
        """The span the store's example windows were written with: `width` columns, the
        example token at `center` (smaller where a window was cut at the sequence start, so
        the full span's is the largest)."""
        if center.size == 0:
            raise InputError(f"{where}: the store holds no example windows; rerun with "
                             f"--force stats")
        before = int(center.max())
        if not 0 <= before < width:
            raise InputError(f"{where}: example windows {width} wide centred at {before}; "
                             f"rerun with --force stats")
        return cls(before, width - 1 - before)

    @property
    def width(self) -> int:
        return self.before + self.after + 1

    def offsets(self) -> np.ndarray:
        """Offsets of the window's columns from the example token: -before..after."""
        return np.arange(-self.before, self.after + 1)

    def offsets_on(self, device: str) -> torch.Tensor:
        return torch.arange(-self.before, self.after + 1, device=device)

    def layout(self, position: np.ndarray, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions [m, w] of each window's columns around `position` [m], and which are
        inside the sequence (1..n_ctx-1: BOS has no activation)."""
        pos = position[:, None] + self.offsets()[None, :]
        return pos, (pos >= 1) & (pos <= n_ctx - 1)
