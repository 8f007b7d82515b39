"""A stand-in for CUDA graph capture on a machine without CUDA (tests, gpu_check's CPU dry run).

`warm` runs the step as CUDA's warm-up does (really changing the weights, which recording
must put back); `record` hands the step back to be run again at each replay. So it proves
the recording's bookkeeping, not that CUDA captures every op, and not that no Python value
was baked in: a replay here re-runs the Python.

What it can prove of capture: every replay runs under `NoHostReads`, which fails the ops
that stop a CUDA capture because they wait for the device (a value read back to the host:
`.item()`, `bool(t)`, `int(t)`, `float(t)`) or make a shape from data (`nonzero`, boolean
indexing, `masked_select`, `unique`, `repeat_interleave` without `output_size`). Those are
the usual reasons a step that runs eagerly cannot be recorded, and here they show on CPU.
"""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that wait for the device on CUDA, by their schema name
_READS_HOST = frozenset({"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique",
                         "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"})


class HostReadError(RuntimeError):
    """An op in a recorded step that a CUDA capture refuses (it would wait for the device)."""


class NoHostReads(TorchDispatchMode):
    """Raises `HostReadError` at an op that reads from the device or sizes a result by its
    data. The optimizer's own code is exempt: on CPU its single-tensor form reads its step
    count with `.item()`, while a CUDA recording runs the fused capturable kernels, which
    read nothing back."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _reads_host(func, args, kwargs)
        if why and not _inside_optimizer():
            raise HostReadError(f"{func._schema.name}: {why}; a CUDA graph cannot record it "
                                "(operation not permitted when stream is capturing)")
        return func(*args, **kwargs)


def _reads_host(func, args, kwargs) -> str:
    name = func._schema.name.split("::", 1)[-1]
    if name in _READS_HOST:
        return "reads a value or a data-dependent size back to the host"
    if name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") \
            and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size reads the total back to the host"
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and len(args) > 1:
        if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1]):
            return "a boolean mask index sizes its result by the data"
    return ""


def _inside_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/optim/" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


class StandInCapture:
    """Counts warm-ups and recordings; replays by running the recorded step again, under
    `NoHostReads` (CUDA's warm-up may read the host; the recording may not)."""

    def __init__(self, fail: bool = False):
        self.warmed, self.recorded, self.fail = 0, 0, fail

    def warm(self, fn) -> None:
        for _ in range(2):
            fn()
            self.warmed += 1

    def record(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.recorded += 1

        def replay():
            with NoHostReads():
                return fn()
        return replay
