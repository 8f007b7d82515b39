"""The naive dense TopK SAE that issue 27 times the project's trainer against, on the same
batches in the same process: encoder matmul, top-k, scatter into a dense [batch, d_sae] code
matrix, dense decoder, autograd for the backward, fused Adam, bf16 autocast on a GPU (fp32 on
CPU, where bf16 is ~100x slower). Unit-norm decoder rows, no AuxK: the shortest honest TopK
SAE, what a researcher writes first. Its speed is the bar; ours must beat it where sparsity
saves work (large dictionaries) and match it where it cannot (small ones).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class DenseTopK:
    def __init__(self, d_in: int, d_sae: int, k: int, device: str, lr: float = 1e-3, seed: int = 0,
                 b_dec_init: torch.Tensor | None = None):
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(d_sae, d_in, generator=gen)
        W /= W.norm(dim=1, keepdim=True)
        self.k = k
        self.W_enc = W.clone().to(device).requires_grad_(True)
        self.W_dec = W.clone().to(device).requires_grad_(True)
        self.b_enc = torch.zeros(d_sae, device=device, requires_grad=True)
        init = b_dec_init if b_dec_init is not None else torch.zeros(d_in)
        self.b_dec = init.clone().float().to(device).requires_grad_(True)
        on_gpu = torch.device(device).type == "cuda"
        self.optimizer = torch.optim.Adam([self.W_enc, self.b_enc, self.W_dec, self.b_dec], lr=lr,
                                          fused=on_gpu or None)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_gpu else nullcontext
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc.T + self.b_enc
        vals, idx = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, idx, vals.relu())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return (self.codes(x) @ self.W_dec + self.b_dec).float()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            codes = self.codes(x)
            x_hat = codes @ self.W_dec + self.b_dec
        loss = ((x_hat.float() - x) ** 2).sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.fired |= (codes > 0).any(0)
        return loss.detach()
