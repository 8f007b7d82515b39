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

from pipelines.errors import ConfigError


def use_graph_on(choice: str, device: str, distributed: bool, key: str, why_not: str = "") -> bool:
    """A stage's `graph` choice: auto records on CUDA in one process; on insists (and an
    error says why it cannot, `why_not` naming a stage's own reason); off never records."""
    cuda = torch.device(device).type == "cuda"
    possible = cuda and not distributed and not why_not
    if choice == "on" and not possible:
        why = ("needs CUDA" if not cuda else why_not if why_not else "runs in one process only, not under torchrun")
        raise ConfigError(f"{key} = 'on' {why}; use 'auto' or 'off'", key=key)
    return choice != "off" and possible


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
        try:
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
        finally:  # a warm-up that failed midway must finish before its changes are undone
            torch.cuda.current_stream().wait_stream(side)

    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn()
        finally:  # a capture that fails at its end leaves the capture stream current; the
            torch.cuda.set_stream(stream)  # eager steps that follow belong on the usual one

        def replay() -> torch.Tensor:
            graph.replay()
            return out
        return replay


def optimizer_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The optimizer's per-parameter tensors (Adam's moments and step counts), in a fixed order."""
    return [t for p in params for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t)]


def tensor_lr_groups(optimizer: torch.optim.Optimizer, device: torch.device) -> list[dict]:
    """The optimizer's parameter groups made replayable: each rate a tensor on `device` (set
    it with `fill_`, not assignment) and `replayable_options` in every group, since a group's
    own `capturable`/`fused`/`foreach` win over the optimizer's defaults."""
    return [{**g, **replayable_options(device), "lr": torch.tensor(float(g["lr"]), device=device)}
            for g in optimizer.param_groups]


def replayable_options(device: torch.device) -> dict:
    """Adam/AdamW options for a step that is recorded: fused and capturable on CUDA; on CPU
    (the tests' stand-in capture) the single-tensor form, the one that reads a tensor rate."""
    return dict(fused=True, capturable=True) if device.type == "cuda" else dict(foreach=False)


def set_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's rate, times its `lr_scale` if it has one: written into the tensor a
    replay reads, or assigned."""
    for group in optimizer.param_groups:
        value = lr * group.get("lr_scale", 1.0)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


class ReplayedStep:
    """`body(batch)` recorded once on a static copy of the batch and replayed for every later
    batch of its shape; another shape, or a failed recording, runs `body` eagerly (`failure`
    says why). `state` lists what a step changes (`record_step`); `static`, the input buffer
    (its shape the one recorded; recordings may share it), is otherwise a copy of the first
    batch."""

    def __init__(self, body: Callable[[torch.Tensor], torch.Tensor], state: Callable[[], list[torch.Tensor]],
                 capture: Capture | None = None, static: torch.Tensor | None = None):
        self.body, self.state = body, state
        self.capture = capture or CudaCapture()
        self.static = static
        self.replay: Callable[[], torch.Tensor] | None = None
        self.failure = ""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.failure or (self.static is not None and batch.shape != self.static.shape):
            return self.body(batch)
        if self.static is None:
            self.static = batch.clone()
        elif batch is not self.static:  # a caller may write the batch into the buffer itself
            self.static.copy_(batch)
        if self.replay is None:
            try:
                self.replay = record_step(self.capture, lambda: self.body(self.static), self.state)
            except Exception as err:  # noqa: BLE001 - an op that cannot be captured: step eagerly
                self.failure = failure_text(err)
                return self.body(self.static)
        return self.replay().clone()  # the graph's output is overwritten by the next replay


def record_step(capture: Capture, body: Callable[[], torch.Tensor],
                state: Callable[[], list[torch.Tensor]]) -> Callable[[], torch.Tensor]:
    """Warm up, undo the warm-up, record `body`; returns its replay. `state()` lists every
    tensor a step changes (weights, optimizer state, counters), each put back by identity;
    tensors that only the warm-up created (the optimizer's first state) go back to zero,
    their value before any step."""
    saved = [(t, t.clone()) for t in state()]

    def undo() -> None:
        known = {id(t) for t, _ in saved}
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)
            for tensor in state():
                if id(tensor) not in known:
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
