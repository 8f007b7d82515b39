"""A TopK SAE's training step recorded once as a CUDA graph and replayed for every batch.

Why: on a GPU a step is some sixty small kernels (the encoder matmul, topk, the embedding-bag
products and their backward, AuxK, Adam), and below ~16k features their launches, not their
arithmetic, bound it: the trainer measured 1.76M activations/s at 512 features on an H200,
where the encoder matmul alone would allow more than 30M (issue 27). A graph replays the
recorded kernels with one launch and no Python in between.

What makes the step replayable: fixed shapes (TopK keeps k entries per row; the batch is
static, a short last batch steps eagerly), no host reads (a step on a GPU has none), and
nothing that changes between steps baked in as a Python number: the learning rate lives in a
tensor each replay reads (`SparseAutoencoder.set_lr`), and the one host-side choice, whether
AuxK runs (no feature can be dead before `dead_window` tokens), picks between two graphs.
The L1 recipes are not graphed: their ReLU codes' count is data-dependent and read back.

Recording runs the step twice eagerly first (cuBLAS workspaces, Adam's state, the allocator),
then puts back the weights, Adam's state and the firing clocks, so a graphed SAE trains as an
eager one (`tests/test_sae_graph.py` on CPU with a stand-in for the capture;
`benchmarks/gpu_check.py` compares the two on a GPU). A recording that fails (an op that cannot
be captured) leaves that SAE stepping eagerly and says why in the stage's results.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from feature_store.recipes import Recipe
from pipelines.errors import ConfigError
from pipelines.sae.autoencoder import SparseAutoencoder, StepStats

GRAPH_CHOICES = ("auto", "on", "off")


def use_graph(choice: str, device: str, recipe: Recipe, distributed: bool) -> bool:
    """`sae.graph`: auto graphs a TopK step on CUDA in one process; on insists (and says why
    it cannot); off never graphs."""
    possible = torch.device(device).type == "cuda" and recipe.top_k and not distributed
    if choice == "on" and not possible:
        why = ("needs CUDA" if torch.device(device).type != "cuda" else
               "needs a TopK recipe (ReLU codes vary in size)" if not recipe.top_k else
               "runs in one process only, not under torchrun")
        raise ConfigError(f"sae.graph = 'on' {why}; use 'auto' or 'off'", key="sae.graph")
    return choice != "off" and possible


class Capture(Protocol):
    def warm(self, fn: Callable[[], object]) -> None: ...
    def record(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]: ...


class CudaCapture:
    """torch.cuda.graph, each graph in its own memory pool (so no replay order is assumed).
    `thread_local`: the activation stream's reader threads may upload while a step records."""

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


class GraphedStep:
    """`SparseAutoencoder.step` through recorded graphs, one per AuxK on/off, recorded when
    first needed. Wrap the SAE before its first step: its optimizer is rebuilt with tensor
    learning rates (and, on CUDA, as a capturable fused Adam)."""

    def __init__(self, sae: SparseAutoencoder, rows: int, capture: Capture | None = None):
        if sae.optimizer.state:
            raise ValueError("GraphedStep: wrap the SAE before its first step")
        self.sae, self.rows = sae, rows
        self.capture = capture or CudaCapture()
        device = sae.W_enc.device
        self.x = torch.zeros(rows, sae.d_in, device=device)
        self.replays: dict[bool, Callable[[], torch.Tensor]] = {}
        self.failure = ""  # why recording failed (the SAE then steps eagerly)
        on_gpu = device.type == "cuda"
        old = sae.optimizer
        groups = [{"params": g["params"], "lr_scale": g["lr_scale"],
                   "lr": torch.tensor(float(g["lr"]), device=device)} for g in old.param_groups]
        # CPU (tests): torch's single-tensor Adam, the one CPU form that reads a tensor rate
        sae.optimizer = torch.optim.Adam(groups, lr=old.defaults["lr"], betas=old.defaults["betas"],
                                         **(dict(fused=True, capturable=True) if on_gpu else dict(foreach=False)))

    def step(self, x: torch.Tensor, lr: float, l1_scale: float = 1.0) -> StepStats:
        sae = self.sae
        if self.failure or x.shape[0] != self.rows:
            return sae.step(x, lr, l1_scale)
        sae.set_lr(lr)
        sae.tokens_seen += x.shape[0] * sae.world.size
        aux = sae.aux_ready()
        self.x.copy_(x)  # before recording: the warm-up steps on this batch, then is undone
        replay = self.replays.get(aux) or self._record(aux)
        if replay is None:
            return sae.step_body(self.x, l1_scale)
        out = replay().clone()  # the graph's output is overwritten by the next replay
        return StepStats(mse=out[0], l0=out[1], aux=out[2], n_dead=out[3])

    def _record(self, aux: bool) -> Callable[[], torch.Tensor] | None:
        saved = self._save()
        try:
            self.capture.warm(lambda: self.sae.step_body(self.x, aux=aux))
            self._restore(saved)
            self.replays[aux] = self.capture.record(lambda: self.sae.step_body(self.x, aux=aux).stacked())
            return self.replays[aux]
        except Exception as err:  # noqa: BLE001 - an op that cannot be captured: step eagerly
            self._restore(saved)
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            return None

    def _state(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, Adam's moments and step counts, firing clocks."""
        opt = self.sae.optimizer.state
        return [*self.sae.params, self.sae.since_fired,
                *(t for p in self.sae.params for t in opt.get(p, {}).values() if torch.is_tensor(t))]

    def _save(self) -> tuple[int, list[torch.Tensor]]:
        state = self._state()
        return len(state), [t.clone() for t in state]

    def _restore(self, saved: tuple[int, list[torch.Tensor]]) -> None:
        n, values = saved
        state = self._state()
        with torch.no_grad():
            for tensor, value in zip(state, values):
                tensor.copy_(value)
            for tensor in state[n:]:  # Adam's state made by the warm-up: back to its start
                tensor.zero_()
