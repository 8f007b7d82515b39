"""Recording a training step as a CUDA graph, for the stages whose steps are launch-bound on
a GPU (`pipelines/sae/step_graph.py`, the model stage).

A step of a small network is many small kernels; on a GPU their launches from Python, not
their arithmetic, bound it. A CUDA graph replays the recorded kernels with one launch. What
every user of this module must give the recording: fixed shapes, no host reads inside the
step, and every value that changes between steps held in a tensor the replay reads (the
learning rate), never a Python number baked in at recording.

`record_step` runs the step twice eagerly first, as CUDA asks (cuBLAS workspaces, the
optimizer's state, the allocator), then puts back everything the step changes, so a graphed
run trains as an eager one; a recording that fails puts it back too and raises, and the
caller steps eagerly.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch


class Capture(Protocol):
    def warm(self, fn: Callable[[], object]) -> None: ...
    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]: ...


class CudaCapture:
    """torch.cuda.graph, each graph in its own memory pool (so no replay order is assumed).
    `thread_local`: other threads (the activation stream's readers) may upload while a step
    records."""

    def warm(self, fn: Callable[[], object]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()

        def replay() -> torch.Tensor:
            graph.replay()
            return out
        return replay


def optimizer_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The optimizer's per-parameter tensors (Adam's moments and step counts), in a fixed order."""
    return [t for p in params for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t)]


def tensor_lr_groups(optimizer: torch.optim.Optimizer, device: torch.device) -> list[dict]:
    """The optimizer's parameter groups with each rate as a tensor on `device`, for an
    optimizer that a replay reads its rate from (set it with `fill_`, not assignment)."""
    return [{**{k: v for k, v in g.items() if k != "lr"}, "lr": torch.tensor(float(g["lr"]), device=device)}
            for g in optimizer.param_groups]


def replayable_options(device: torch.device) -> dict:
    """Adam/AdamW options for a step that is recorded: fused and capturable on CUDA; on CPU
    (the tests' stand-in capture) the single-tensor form, the one that reads a tensor rate."""
    return dict(fused=True, capturable=True) if device.type == "cuda" else dict(foreach=False)


def record_step(capture: Capture, body: Callable[[], torch.Tensor],
                state: Callable[[], list[torch.Tensor]]) -> Callable[[], torch.Tensor]:
    """Warm up, undo the warm-up, record `body`; returns its replay. `state()` lists every
    tensor a step changes (weights, optimizer state, counters); tensors that only the warm-up
    created (the optimizer's first state) go back to zero, their value before any step."""
    before = state()
    saved = [t.clone() for t in before]

    def undo() -> None:
        now = state()
        with torch.no_grad():
            for tensor, value in zip(now, saved):
                tensor.copy_(value)
            for tensor in now[len(saved):]:
                tensor.zero_()

    try:
        capture.warm(body)
        undo()
        return capture.record(body)
    except Exception:
        undo()
        raise


def failure_text(err: Exception) -> str:
    """One line on why a recording failed, for a stage's summary."""
    first = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {first}"
