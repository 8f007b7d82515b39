"""Data-parallel runs under `torchrun`: who this process is, and the few collectives the
stages need.

`torchrun --nproc_per_node N -m pipelines run ...` starts N copies of the pipeline with
RANK / WORLD_SIZE / MASTER_ADDR in the environment; `world()` joins them into one process
group (NCCL when each rank has a GPU, gloo on CPUs) the first time it is asked. Without those
variables it is a world of one and every helper here is a no-op, so a plain
`python -m pipelines run` never touches torch.distributed.

How the stages use it (see the runner for who decides and who writes):
- model, sae: each rank trains on its own slice of every global batch; gradients are
  averaged over ranks before the (identical) optimiser step, so the weights equal a single
  process's on the same global batch up to float rounding;
- activations: rank r caches shards r, r+N, ... into the stage's one staging folder;
- everything else (corpus, tokenizer, tokens, stats, interp) runs on rank 0 while the other
  ranks wait.
Rank 0 alone decides what is stale, writes the manifest and swaps staging folders into
place; the run folder must be on a file system every rank sees (one machine, or a shared
mount across nodes).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def slice(self, n: int) -> slice:
        """This rank's contiguous share of n rows (n must divide evenly: the callers check)."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value, on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of the tensors, in place on every rank."""
        if self.distributed:
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average the tensors over ranks, in place, in one flat all-reduce."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        flat /= self.size
        at = 0
        for t in tensors:
            t.copy_(flat[at: at + t.numel()].view_as(t))
            at += t.numel()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (counts, flags)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor


def launched() -> bool:
    """This process was started by torchrun (or anything that sets its variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@lru_cache(maxsize=1)
def world() -> World:
    """This process's place in the run; joins the process group on first use."""
    if not launched():
        return World(0, 1)
    if not torch.distributed.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "gloo"
        if torch.cuda.is_available() and torch.cuda.device_count() > local:
            torch.cuda.set_device(local)
            backend = "nccl"
        torch.distributed.init_process_group(
            backend, timeout=datetime.timedelta(minutes=int(os.environ.get(
                "PIPELINES_DIST_TIMEOUT_MIN", "30"))))
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size())


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    world.cache_clear()
