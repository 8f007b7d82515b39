"""The statistics pass in this process (`stats.engine = "local"`, the default).

It has the Ray engine's interface (`pipelines/stats/ray_engine.py`): `statistics` (passes 1
and 2 over the parts), `fill_ablation` (pass 3), `describe` and `close`, so the stage drives
either without asking which it has.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from pipelines.config import StatsConfig
from pipelines.model.readout import Readout
from pipelines.stats.ablation import fill_ablation
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.parts import ShardPart, part_batches
from pipelines.stats.sampling import Examples, PassResult, statistics


class LocalEngine:
    """Passes 1-3 over the parts in order, here."""

    def __init__(self, cfg: StatsConfig, model, seqs: np.ndarray, readout: Readout,
                 weights: dict[str, torch.Tensor], pre_ln: bool, n_ctx: int,
                 device: str) -> None:
        self.cfg, self.model, self.seqs, self.readout = cfg, model, seqs, readout
        self.weights, self.pre_ln, self.n_ctx, self.device = weights, pre_ln, n_ctx, device

    def describe(self) -> str:
        return ""

    def statistics(self, parts: list[ShardPart], dictionaries: list[Dictionary],
                   pairs: list[tuple[str, str]], total: int, device: str) -> PassResult:
        cfg = self.cfg
        return statistics([partial(part_batches, p, self.n_ctx, cfg.batch_tokens, device,
                                   self.pre_ln) for p in parts],
                          dictionaries, cfg, self.n_ctx, device, pairs, total)

    def fill_ablation(self, dictionaries: list[Dictionary], examples: dict[str, Examples],
                      n_seqs: int) -> int:
        """`n_seqs` is the Ray engine's (its driver holds no sequences); here they are held."""
        return fill_ablation(self.model, self.seqs, dictionaries, examples, self.weights,
                             self.readout, self.cfg, self.n_ctx, self.device)

    def close(self) -> None:
        """Nothing to release: the model and tensors go with the stage."""
