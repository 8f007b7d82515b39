"""A batch's active SAE codes, and the products a training step needs from them.

A step touches the codes through five products (`SparseAutoencoder.step`):
- `decode(W)`: codes @ W, the reconstruction (W: [d_sae, d]);
- `decode_grads(grad_out)`: for that decode, d/dW (= codes^T @ grad_out) and d/d(active code)
  (= grad_out[b] · W[j] at each active entry (b, j));
- `sampled_rows(left, W)`: left[b] · W[j] at each active entry (the encoder's exact values);
- `transpose_times(values, dense)`: Σ_b values[b, j] · dense[b] into row j, [d_sae, d] (the
  encoder's weight gradient);
- `fired()`, `column_sums`, `per_entry`: per-feature sums and reads.

Three layouts implement them, because the fastest one differs by device and by how many
entries are active:
- `BagCodes` (the default on a GPU): flat (column, value) lists with bag offsets, every product through
  `F.embedding_bag` and its backward, which gather and segment-reduce the active rows with no
  [batch, d_sae] matrix and no cuSPARSE. EleutherAI's `sparsify` decodes the same way. The
  same kernels exist on CPU and CUDA, so what the CPU tests prove is what a GPU runs.
- `CsrCodes` (the default on CPU): the same lists as CSR, products through `torch.sparse.mm`
  and `torch.sparse.sampled_addmm` (MKL on CPU, cuSPARSE on CUDA): the project's first sparse
  trainer. On 2 CPU cores MKL's products are 1.0-1.5x faster than the bag ones (k 16-32,
  512-4,096 features; `benchmarks/sae_throughput.py --codes bag|csr`); on a GPU they are
  cuSPARSE's, which the bag layout avoids.
- `DenseCodes`: a dense [batch, d_sae] matrix, for an L1 SAE's first steps, when half the
  entries are active and dense matmuls beat any sparse product (`DENSE_ABOVE`).

No product reads a value back to the host, so on a GPU a step queues without waiting;
the only host reads are the ReLU codes' nonzero count (their sparsity is data-dependent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DENSE_ABOVE = 0.2  # share of active entries above which DenseCodes is the faster product


class BagCodes:
    """Active entries as flat `cols` / `vals` lists, row b's entries at
    `offsets[b]:offsets[b+1]` (k each for TopK codes)."""

    def __init__(self, cols: torch.Tensor, vals: torch.Tensor, offsets: torch.Tensor, n_rows: int,
                 d_sae: int):
        self.cols, self.vals, self.offsets, self.shape = cols, vals, offsets, (n_rows, d_sae)
        self._decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def topk(cls, pre: torch.Tensor, k: int) -> "BagCodes":
        vals, idx = pre.topk(k, dim=1, sorted=False)
        return cls.from_rows(idx, vals.float().clamp_min(0), pre.shape[1])

    @classmethod
    def from_rows(cls, idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> "BagCodes":
        """Row b's active features `idx[b]` with values `vals[b]` ([n, k] each, any order)."""
        n, k = idx.shape
        offsets = torch.arange(0, n * k, k, device=idx.device)
        return cls(idx.reshape(-1), vals.reshape(-1), offsets, n, d_sae)

    @classmethod
    def relu(cls, pre: torch.Tensor) -> "BagCodes":
        csr = pre.clamp_min(0).to_sparse_csr()
        return cls(csr.col_indices(), csr.values().float(), csr.crow_indices()[:-1], pre.shape[0],
                   pre.shape[1])

    @property
    def crow(self) -> torch.Tensor:
        """Row b's entries are crow[b]:crow[b+1] (CSR's row pointer)."""
        return torch.cat([self.offsets, self.offsets.new_full((1,), len(self.cols))])  # no host copy

    def rows(self) -> torch.Tensor:
        """Each entry's row."""
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.cols.device),
                                       self.crow.diff(), output_size=len(self.cols))

    def to_dense(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.vals.dtype, device=self.vals.device).index_put_(
            (self.rows(), self.cols), self.vals)

    def set_values(self, vals: torch.Tensor) -> None:
        """Replace the active entries' values (same entries, same order)."""
        self.vals = vals

    def _bag(self, W: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(self.cols, W, self.offsets, mode="sum", per_sample_weights=weights)

    def times(self, W: torch.Tensor) -> torch.Tensor:
        return self._bag(W, self.vals)

    def decode(self, W: torch.Tensor) -> torch.Tensor:
        """codes @ W, remembering the product so `decode_grads` is its backward alone."""
        W_leaf = W.detach().requires_grad_(True)
        vals = self.vals.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._bag(W_leaf, vals)
        self._decoded = (out, W_leaf, vals)
        return out.detach()

    def decode_grads(self, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, W_leaf, vals = self._decoded
        self._decoded = None
        dW, g_vals = torch.autograd.grad(out, (W_leaf, vals), grad_out)
        return dW, g_vals

    def sampled_rows(self, left: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """left[b] · W[j] at each active entry: the gradient of Σ_b left[b]·(bag b of W) with
        respect to the per-entry weights, which embedding_bag's backward computes without
        gathering the rows into a [entries, d] tensor."""
        weights = torch.zeros_like(self.vals, requires_grad=True)  # the gradient does not read them
        with torch.enable_grad():
            out = self._bag(W.detach(), weights)
        (g,) = torch.autograd.grad(out, weights, left)
        return g

    def transpose_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Σ_b values[b, j] · dense[b] into row j: the weight gradient of a bag product with
        these per-entry weights (its forward reads a zero matrix and is discarded)."""
        W_leaf = torch.zeros(self.shape[1], dense.shape[1], dtype=dense.dtype, device=dense.device,
                             requires_grad=True)
        with torch.enable_grad():
            out = self._bag(W_leaf, values.detach())
        (g,) = torch.autograd.grad(out, W_leaf, dense)
        return g

    def per_entry(self, per_feature: torch.Tensor) -> torch.Tensor:
        return per_feature[self.cols]

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.shape[1], dtype=values.dtype, device=values.device).index_add_(0, self.cols, values)

    def fired(self) -> torch.Tensor:
        """Per feature, how many rows it was active on (float)."""
        return self.column_sums((self.vals > 0).float())

    def l0(self) -> torch.Tensor:
        return (self.vals > 0).sum() / self.shape[0]


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, cols, vals, size=shape, check_invariants=False)


class CsrCodes(BagCodes):
    """BagCodes' lists as CSR [B, d_sae] plus its transpose's structure, built once per step and
    shared by both weight gradients; the products are MKL's (CPU) or cuSPARSE's (CUDA)."""

    def __init__(self, cols: torch.Tensor, vals: torch.Tensor, offsets: torch.Tensor, n_rows: int,
                 d_sae: int):
        super().__init__(cols, vals, offsets, n_rows, d_sae)
        self._crow = super().crow
        self.csr = _csr(self._crow, cols, vals, self.shape)
        self.order = torch.argsort(cols.to(torch.int32), stable=True)  # int32 sorts ~1.7x faster
        self.rows_t = self.rows()[self.order]
        self.crow_t = torch.zeros(d_sae + 1, dtype=self._crow.dtype, device=cols.device)
        self.crow_t[1:] = self.column_sums(torch.ones_like(vals)).to(self._crow.dtype).cumsum(0)

    # cuSPARSE assumes the column indices ascend within each row (its CSR is "sorted by row
    # indices and then within the same row by column indices"); torch.topk returns them in no
    # order, and `sampled_addmm` over an unsorted row may pair a value with the wrong feature.
    # MKL and torch's CPU kernels read any order, so CPU keeps topk's order unless asked.
    sort_rows: bool | None = None  # None: sort on CUDA only

    @classmethod
    def from_rows(cls, idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> "CsrCodes":
        if cls.sort_rows or (cls.sort_rows is None and idx.is_cuda):
            idx, order = idx.sort(dim=1)
            vals = vals.gather(1, order)
        return super().from_rows(idx, vals, d_sae)

    @property
    def crow(self) -> torch.Tensor:
        return self._crow

    def set_values(self, vals: torch.Tensor) -> None:
        self.vals = vals
        self.csr = _csr(self._crow, self.cols, vals, self.shape)

    def decode(self, W: torch.Tensor) -> torch.Tensor:
        self._decoded = (W,)
        return self.times(W)

    def decode_grads(self, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (W,) = self._decoded
        self._decoded = None
        return self.transpose_times(self.vals, grad_out), self.sampled_rows(grad_out, W)

    def transpose_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(_csr(self.crow_t, self.rows_t, values[self.order], (self.shape[1], self.shape[0])),
                               dense)

    def sampled_rows(self, left: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return torch.sparse.sampled_addmm(self.csr, left, W.T, beta=0.0).values()


class DenseCodes:
    """The same interface over a dense [B, d_sae] code matrix.

    An L1 SAE starts dense: at the tied init about half the features fire on every token
    until λ has pushed the thresholds up, and sparse products over a matrix that is half
    nonzero run slower than dense matmuls. `SparseAutoencoder.step` uses this class while
    more than `DENSE_ABOVE` of the entries are active, and sparse codes again once they thin
    out. Measured for one l1 step on 2 loaded cores (d 512, 2,048 features, batch 4,096):
    50% active, dense 1.7 s vs CSR 2.8 s; 6.7% active, dense 1.56 s vs CSR 1.12 s; at d 64,
    256 features, batch 1,024 dense won at both (0.06 vs 0.37 s, 0.007 vs 0.014 s)."""

    def __init__(self, codes: torch.Tensor):
        self.dense = codes
        self.shape = tuple(codes.shape)
        self.vals = codes.reshape(-1)
        self._decoded = None

    @property
    def cols(self) -> torch.Tensor:
        return torch.arange(self.shape[1], device=self.dense.device).repeat(self.shape[0])

    def per_entry(self, per_feature: torch.Tensor) -> torch.Tensor:
        return per_feature.expand(self.shape[0], -1).reshape(-1)

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        return self.dense @ dense

    def decode(self, W: torch.Tensor) -> torch.Tensor:
        self._decoded = W
        return self.dense @ W

    def decode_grads(self, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        W, self._decoded = self._decoded, None
        return self.dense.T @ grad_out, self.sampled_rows(grad_out, W)

    def transpose_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return values.view(self.shape).T @ dense

    def sampled_rows(self, left: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return (left @ W.T).reshape(-1)

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        return values.view(self.shape).sum(0)

    def fired(self) -> torch.Tensor:
        return (self.dense > 0).sum(0).float()

    def l0(self) -> torch.Tensor:
        return (self.dense > 0).sum() / self.shape[0]


Codes = BagCodes | CsrCodes | DenseCodes


def layout(name: str) -> type[BagCodes]:
    """The sparse layout `sae.codes` names."""
    return {"bag": BagCodes, "csr": CsrCodes}[name]
