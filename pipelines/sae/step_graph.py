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
from pipelines.graph_capture import (Capture, ReplayedStep, optimizer_state, replayable_options,
                                     tensor_lr_groups, use_graph_on)
from pipelines.sae.autoencoder import SparseAutoencoder, StepStats

def use_graph(choice: str, device: str, recipe: Recipe, distributed: bool, codes: str = "auto") -> bool:
    """`sae.graph`: auto records a TopK step on CUDA in one process, with the embedding-bag
    codes (cuSPARSE's CSR products are left eager: `sae.codes = "csr"` is for comparison);
    on insists."""
    why_not = ("needs a TopK recipe (ReLU codes vary in size)" if not recipe.top_k else
               "needs sae.codes = bag or auto (cuSPARSE's products are not recorded)" if codes == "csr" else "")
    return use_graph_on(choice, device, distributed, "sae.graph", why_not)


class GraphedStep:
    """`SparseAutoencoder.step` through one recording (`ReplayedStep`), made at the first
    batch of `rows`. The recording runs AuxK from the start (with no dead feature it adds
    exact zeros), so the whole run replays one graph and never stops to record another; a
    batch of another size, or a failed recording, steps eagerly the same way. Wrap the SAE
    before its first step: its optimizer is rebuilt with tensor learning rates (and, on CUDA,
    as a capturable fused Adam). `static`, a [rows, d_in] buffer, lets several SAEs' recordings
    read one input (the stage writes each batch there once for every size)."""

    def __init__(self, sae: SparseAutoencoder, rows: int, capture: Capture | None = None,
                 static: torch.Tensor | None = None):
        if sae.optimizer.state:
            raise ValueError("GraphedStep: wrap the SAE before its first step")
        self.sae = sae
        sae.syncs_are_free = False  # AuxK on a masked candidate set: a recording reads nothing back
        device = sae.W_enc.device
        aux = bool(sae.rules.aux_k and sae.aux_coefficient > 0)
        self.replayed = ReplayedStep(lambda x: sae.step_body(x, aux=aux).stacked(), self._state, capture,
                                     static=torch.zeros(rows, sae.d_in, device=device) if static is None else static)
        old = sae.optimizer
        sae.optimizer = torch.optim.Adam(tensor_lr_groups(old, device), lr=old.defaults["lr"],
                                         betas=old.defaults["betas"], **replayable_options(device))

    @property
    def x(self) -> torch.Tensor:
        """The recorded input buffer (the warm-up steps on the batch copied here)."""
        return self.replayed.static

    @property
    def capture(self) -> Capture:
        return self.replayed.capture

    @property
    def failure(self) -> str:
        """Why recording failed ("" if it did not; the SAE then steps eagerly)."""
        return self.replayed.failure

    def step(self, x: torch.Tensor, lr: float, l1_scale: float = 1.0) -> StepStats:
        self.sae.set_lr(lr)
        self.sae.tokens_seen += x.shape[0] * self.sae.world.size
        out = self.replayed(x)
        return StepStats(mse=out[0], l0=out[1], aux=out[2], n_dead=out[3])

    def _state(self) -> list[torch.Tensor]:
        """Everything a step changes: weights, Adam's moments and step counts, firing clocks."""
        return [*self.sae.params, self.sae.since_fired, *optimizer_state(self.sae.optimizer, self.sae.params)]
