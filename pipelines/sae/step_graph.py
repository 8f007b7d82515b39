"""A TopK SAE's training step recorded once as a CUDA graph and replayed for every batch.

Why: on a GPU a step is some sixty small kernels (the encoder matmul, topk, the embedding-bag
products and their backward, AuxK, Adam), and below ~16k features their launches, not their
arithmetic, bound it: the trainer measured 1.76M activations/s at 512 features on an H200,
where the encoder matmul alone would allow more than 30M (issue 27). A graph replays the
recorded kernels with one launch and no Python in between.

What makes the step replayable: fixed shapes (TopK keeps k entries per row; the batch is
static, a short last batch steps eagerly), no host reads (a step on a GPU has none), and
nothing that changes between steps baked in as a Python number: the learning rate lives in a
tensor each replay reads (`SparseAutoencoder.set_lr`), and AuxK, which an eager step skips
until `dead_window` tokens have passed, runs in the recording from the first step (with no
dead feature it adds exact zeros), so one recording serves the whole run.
The L1 recipes are not graphed: their ReLU codes' count is data-dependent and read back.

Recording runs the step twice eagerly first (cuBLAS workspaces, Adam's state, the allocator),
then puts back the weights, Adam's state and the firing clocks, so a graphed SAE trains as an
eager one (`tests/test_sae_graph.py` on CPU with a stand-in for the capture;
`benchmarks/gpu_check.py` compares the two on a GPU). A recording that fails (an op that cannot
be captured) leaves that SAE stepping eagerly and says why in the stage's results.
"""

from __future__ import annotations

from typing import Callable

import torch

from feature_store.recipes import Recipe
from pipelines.graph_capture import (Capture, CudaCapture, failure_text, optimizer_state, record_step,
                                     replayable_options, tensor_lr_groups, use_graph_on)
from pipelines.sae.autoencoder import SparseAutoencoder, StepStats

def use_graph(choice: str, device: str, recipe: Recipe, distributed: bool, codes: str = "auto") -> bool:
    """`sae.graph`: auto records a TopK step on CUDA in one process, with the embedding-bag
    codes (cuSPARSE's CSR products are left eager: `sae.codes = "csr"` is for comparison);
    on insists."""
    why_not = ("needs a TopK recipe (ReLU codes vary in size)" if not recipe.top_k else
               "needs sae.codes = bag or auto (cuSPARSE's products are not recorded)" if codes == "csr" else "")
    return use_graph_on(choice, device, distributed, "sae.graph", why_not)


class GraphedStep:
    """`SparseAutoencoder.step` through one recording, made at the first full batch. The
    recording runs AuxK from the start (with no dead feature it adds exact zeros), so the
    whole run replays one graph and never stops to record another. Wrap the SAE before its
    first step: its optimizer is rebuilt with tensor learning rates (and, on CUDA, as a
    capturable fused Adam)."""

    def __init__(self, sae: SparseAutoencoder, rows: int, capture: Capture | None = None):
        if sae.optimizer.state:
            raise ValueError("GraphedStep: wrap the SAE before its first step")
        self.sae, self.rows = sae, rows
        self.capture = capture or CudaCapture()
        device = sae.W_enc.device
        self.x = torch.zeros(rows, sae.d_in, device=device)
        self.aux = bool(sae.rules.aux_k and sae.aux_coefficient > 0)
        self.replay: Callable[[], torch.Tensor] | None = None
        self.failure = ""  # why recording failed (the SAE then steps eagerly)
        old = sae.optimizer
        sae.optimizer = torch.optim.Adam(tensor_lr_groups(old, device), lr=old.defaults["lr"],
                                         betas=old.defaults["betas"], **replayable_options(device))

    def step(self, x: torch.Tensor, lr: float, l1_scale: float = 1.0) -> StepStats:
        sae = self.sae
        if self.failure or x.shape[0] != self.rows:
            return sae.step(x, lr, l1_scale)
        sae.set_lr(lr)
        sae.tokens_seen += x.shape[0] * sae.world.size
        self.x.copy_(x)  # before recording: the warm-up steps on this batch, then is undone
        if self.replay is None:
            try:
                self.replay = record_step(self.capture, lambda: sae.step_body(self.x, aux=self.aux).stacked(),
                                          self._state)
            except Exception as err:  # noqa: BLE001 - an op that cannot be captured: step eagerly
                self.failure = failure_text(err)
                return sae.step_body(self.x, l1_scale)
        out = self.replay().clone()  # the graph's output is overwritten by the next replay
        return StepStats(mse=out[0], l0=out[1], aux=out[2], n_dead=out[3])

    def _state(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, Adam's moments and step counts, firing clocks."""
        return [*self.sae.params, self.sae.since_fired, *optimizer_state(self.sae.optimizer, self.sae.params)]
