"""A sparse autoencoder with a hand-written backward pass that only touches active features.

Why by hand: with L0 ≈ 30 of thousands of features, everything but the encoder's dense
`x @ W_enc^T` is sparse. Autograd (SAELens' way) computes the decoder and both backward
matmuls densely: ~10 of the 12·d_in·d_sae FLOPs per activation are multiplications by zero.
Here the decoder is a CSR @ dense product, the gradient with respect to the active codes is a
sampled dense-dense product (`torch.sparse.sampled_addmm`), and the weight gradients are
transposed-CSR @ dense products, so a step costs about one dense matmul plus a top-k.

Recipes (DESIGN.md, "Facts from the field"):
- `topk` (OpenAI 2024): keep the k largest pre-activations, ReLU them; loss = MSE + α·AuxK,
  where AuxK reconstructs the residual error from the top `aux_k` *dead* features so they get
  gradient and come back (normalised by the residual's size, as OpenAI does; one-sided by
  default: it never pushes a dead feature further down, see `_aux_grads`). Decoder rows
  unit norm (gradient projected, renormalised each step).
- `l1-unit` (Towards Monosemanticity 2023): ReLU; loss = MSE + λ·Σf; unit-norm decoder rows;
  dead features resampled (inputs drawn ∝ squared reconstruction error, Adam state reset).
- `l1` (Anthropic's 2024 update): ReLU; loss = MSE + λ·Σ f_i·‖d_i‖; decoder unconstrained,
  initial norm 0.1; gradient norm clipped.
Both L1 recipes: λ warmed up by the caller (`l1_scale`), encoder started at norm 0.1 and its
bias trained at `bias_lr_scale` = sqrt(d_in) times the learning rate (thresholds must move
sqrt(d_in) times farther than a weight; Adam moves both ~lr a step), so a run of a few
hundred steps converges; `pipelines/sae/calibration.py` can search λ for a target L0.

Inputs arrive already scaled to mean norm sqrt(d_in) (see `feature_store.sae_files`). MSE is
the per-token squared error summed over d_in, averaged over the batch.

Under torchrun (`pipelines/distributed.py`) each rank steps on its equal share of the global
batch: every gradient term is a mean over the local rows, so averaging the gradients over
ranks (one flat all-reduce, before the decoder projection, clipping and Adam) gives the
global batch's gradient; which features fired is OR-ed over ranks, so every rank agrees on
the dead ones; AuxK's normaliser (‖x − b_dec‖² and ‖e‖² sums) is summed over ranks; and a
resampling is drawn on rank 0 and broadcast. The weights then equal one process's on the
same global batch up to float rounding, except that AuxK and resampling draw their rows from
each rank's share (the first `aux_batch_fraction` of each, not of the whole batch), so with
a fraction below 1 those two see other rows than one process would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feature_store.recipes import recipe as recipe_of
from pipelines import distributed


@dataclass
class StepStats:
    mse: float
    l0: float
    aux: float
    n_dead: int


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, cols, vals, size=shape, check_invariants=False)


class SparseCodes:
    """A batch's active codes as CSR [B, d_sae] plus its transpose structure, built once per step
    and shared by the forward pass and both weight gradients."""

    def __init__(self, crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int, d_sae: int):
        self.crow, self.cols, self.vals, self.shape = crow, cols, vals, (n_rows, d_sae)
        self.csr = _csr(crow, cols, vals, self.shape)
        rows = torch.repeat_interleave(torch.arange(n_rows, device=cols.device), crow.diff())
        self.order = torch.argsort(cols.to(torch.int32), stable=True)  # int32 sorts ~1.7x faster
        self.rows_t = rows[self.order]
        self.crow_t = torch.zeros(d_sae + 1, dtype=crow.dtype, device=cols.device)
        self.crow_t[1:] = torch.bincount(cols, minlength=d_sae).cumsum(0)

    @classmethod
    def topk(cls, pre: torch.Tensor, k: int) -> "SparseCodes":
        vals, idx = pre.topk(k, dim=1, sorted=False)
        n = pre.shape[0]
        crow = torch.arange(0, n * k + 1, k, device=pre.device)
        return cls(crow, idx.reshape(-1), vals.reshape(-1).clamp_min(0), n, pre.shape[1])

    @classmethod
    def relu(cls, pre: torch.Tensor) -> "SparseCodes":
        csr = pre.clamp_min(0).to_sparse_csr()
        return cls(csr.crow_indices(), csr.col_indices(), csr.values(), pre.shape[0], pre.shape[1])

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        """codes @ dense: [B, d]. embedding_bag gathers the active rows straight into the
        output; `torch.sparse.mm` zero-fills and copies a [B, d] buffer around the product
        (4-5x slower at 512 features, where those passes cost more than the product)."""
        return torch.nn.functional.embedding_bag(self.cols, dense, offsets=self.crow[:-1],
                                                 per_sample_weights=self.vals, mode="sum")

    def transpose_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(codes with `values` in place of the activations)^T @ dense: [d_sae, d]."""
        return torch.sparse.mm(_csr(self.crow_t, self.rows_t, values[self.order], (self.shape[1], self.shape[0])),
                               dense)

    def sampled(self, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
        """(left @ right_t) at the active entries only, in CSR value order."""
        return torch.sparse.sampled_addmm(self.csr, left, right_t, beta=0.0).values()

    def per_entry(self, per_feature: torch.Tensor) -> torch.Tensor:
        """A per-feature vector read at each active entry, in CSR value order."""
        return per_feature[self.cols]

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.shape[1], dtype=values.dtype, device=values.device).index_add_(0, self.cols, values)


class DenseCodes:
    """The same interface as `SparseCodes` over a dense [B, d_sae] code matrix.

    An L1 SAE starts dense: at the tied init about half the features fire on every token
    until λ has pushed the thresholds up, and CSR products over a matrix that is half
    nonzero run slower than dense matmuls. `SparseAutoencoder.step` uses this class while
    more than `DENSE_ABOVE` of the entries are active, and CSR again once the codes thin out.
    Measured for one l1 step on 2 loaded cores (d 512, 2,048 features, batch 4,096):
    50% active, dense 1.7 s vs CSR 2.8 s; 6.7% active, dense 1.56 s vs CSR 1.12 s; at d 64,
    256 features, batch 1,024 dense won at both (0.06 vs 0.37 s, 0.007 vs 0.014 s)."""

    def __init__(self, codes: torch.Tensor):
        self.dense = codes
        self.shape = tuple(codes.shape)
        self.vals = codes.reshape(-1)
        self._cols = None

    @property
    def cols(self) -> torch.Tensor:
        if self._cols is None:
            self._cols = torch.arange(self.shape[1], device=self.dense.device).repeat(self.shape[0])
        return self._cols

    def per_entry(self, per_feature: torch.Tensor) -> torch.Tensor:
        return per_feature.expand(self.shape[0], -1).reshape(-1)

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        return self.dense @ dense

    def transpose_times(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return values.view(self.shape).T @ dense

    def sampled(self, left: torch.Tensor, right_t: torch.Tensor) -> torch.Tensor:
        return (left @ right_t).reshape(-1)

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        return values.view(self.shape).sum(0)


DENSE_ABOVE = 0.2  # share of active entries above which DenseCodes is the faster product


class SparseAutoencoder:
    def __init__(self, d_in: int, d_sae: int, recipe: str, *, k: int = 0, lr: float = 1e-3,
                 l1_coefficient: float = 0.0, aux_k: int = 256, aux_coefficient: float = 1 / 32,
                 aux_batch_fraction: float = 0.25, aux_one_sided: bool = True, dead_window: int = 200_000,
                 grad_clip: float = 1.0, b_dec_init: torch.Tensor | None = None, seed: int = 0, device: str = "cpu",
                 bias_lr_scale: float | None = None):
        self.d_in, self.d_sae, self.recipe, self.k = d_in, d_sae, recipe, k
        self.l1_coefficient, self.aux_k, self.aux_coefficient = l1_coefficient, aux_k, aux_coefficient
        self.aux_batch_fraction, self.dead_window, self.grad_clip = aux_batch_fraction, dead_window, grad_clip
        self.aux_one_sided = aux_one_sided
        self.rules = rules = recipe_of(recipe)
        self.unit_norm = rules.unit_norm_decoder
        gen = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if rules.decoder_init_norm != 1.0:
            W_dec *= rules.decoder_init_norm  # l1 (Anthropic 2024): small norms, encoder = decoder^T
        # Tied init: features start aligned. The L1 recipes start the encoder at norm 0.1
        # (Anthropic 2024; l1-unit keeps its decoder at norm 1 and scales only the encoder): codes
        # start small, so the L1 term prunes a few strong features up instead of shrinking
        # thousands of half-active ones down, which in a short run never finishes.
        self.W_enc = (W_dec * rules.encoder_init_scale).to(device).requires_grad_(True)
        self.W_dec = W_dec.to(device).requires_grad_(True)
        self.b_enc = torch.zeros(d_sae, device=device).requires_grad_(True)
        init = b_dec_init if b_dec_init is not None else torch.zeros(d_in)
        self.b_dec = init.clone().float().to(device).requires_grad_(True)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.bias_lr_scale = (bias_lr_scale if bias_lr_scale is not None
                              else d_in ** 0.5 if rules.l1 else 1.0)
        self.optimizer = torch.optim.Adam(
            [{"params": [self.W_enc, self.W_dec, self.b_dec], "lr_scale": 1.0},
             {"params": [self.b_enc], "lr_scale": self.bias_lr_scale}], lr=lr, betas=(0.9, 0.999))
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.world = distributed.world()  # a world of one outside torchrun

    # ---------------------------------------------------------------- forward
    def encode_codes(self, x: torch.Tensor, allow_dense: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, SparseCodes | DenseCodes]:
        xc = x - self.b_dec
        pre = torch.addmm(self.b_enc, xc, self.W_enc.T)
        if self.rules.top_k:
            return xc, pre, SparseCodes.topk(pre, self.k)
        if allow_dense and int((pre > 0).sum()) > DENSE_ABOVE * pre.numel():
            return xc, pre, DenseCodes(pre.clamp_min(0))
        return xc, pre, SparseCodes.relu(pre)

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_window

    # ---------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self, x: torch.Tensor, lr: float, l1_scale: float = 1.0) -> StepStats:
        """One Adam step on a batch of scaled activations x [B, d_in]."""
        batch = x.shape[0]
        W_enc, W_dec = self.W_enc, self.W_dec
        xc, pre, codes = self.encode_codes(x, allow_dense=True)
        # x_hat - x = (codes @ W_dec + b_dec) - x = codes @ W_dec - xc, in place
        err = codes.times(W_dec).sub_(xc)
        mse = float(torch.linalg.vector_norm(err)) ** 2 / batch
        c = 2.0 / batch  # d loss / d x_hat = c * err; c is applied to the small results

        g_codes = codes.sampled(err, W_dec.T).mul_(c)  # d loss / d f at active entries
        active = codes.vals > 0
        grad_dec_extra = None
        if self.rules.l1 and not self.rules.l1_times_decoder_norm:
            g_codes = g_codes + self.l1_coefficient * l1_scale / batch
        elif self.rules.l1_times_decoder_norm:
            norms = W_dec.norm(dim=1)
            g_codes = g_codes + (self.l1_coefficient * l1_scale / batch) * codes.per_entry(norms)
            coeff = codes.column_sums(codes.vals) * (self.l1_coefficient * l1_scale / batch)
            grad_dec_extra = (coeff / norms.clamp_min(1e-8)).unsqueeze(1) * W_dec
        g_pre = g_codes * active

        dW_dec = codes.transpose_times(codes.vals * c, err)
        dW_enc = codes.transpose_times(g_pre, xc)
        g_pre_sum = codes.column_sums(g_pre)
        db_enc = g_pre_sum
        db_dec = err.sum(0).mul_(c) - g_pre_sum @ W_enc
        if grad_dec_extra is not None:
            dW_dec += grad_dec_extra

        fired = torch.bincount(codes.cols[active], minlength=self.d_sae)
        self.world.sum_(fired)  # fired on any rank's share of the batch
        self.since_fired += batch * self.world.size
        self.since_fired[fired > 0] = 0

        aux = 0.0
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if self.rules.aux_k and n_dead > 0 and self.aux_coefficient > 0:
            aux = self._aux_grads(pre, xc, err, dead, n_dead, dW_enc, db_enc, dW_dec, db_dec)

        if self.world.distributed:  # the global batch's gradient, and its mean statistics
            scalars = torch.tensor([mse, float(active.sum()) / batch], device=x.device)
            self.world.mean_([dW_enc, db_enc, dW_dec, db_dec, scalars])
            mse, l0 = float(scalars[0]), float(scalars[1])
        else:
            l0 = float(active.sum()) / batch
        if self.unit_norm:  # only the component that changes direction, not length
            dW_dec -= (dW_dec * W_dec).sum(1, keepdim=True) * W_dec
        for param, grad in zip(self.params, (dW_enc, db_enc, dW_dec, db_dec)):
            param.grad = grad
        if self.rules.clips_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        if self.unit_norm:
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        return StepStats(mse=mse, l0=l0, aux=aux, n_dead=n_dead)

    def _aux_grads(self, pre, xc, err, dead, n_dead, dW_enc, db_enc, dW_dec, db_dec) -> float:
        """AuxK (OpenAI 2024): the top `aux_k` dead features reconstruct the main residual
        e = x − x̂ (on a sub-batch), so they get gradient toward what the live ones miss.

        OpenAI writes both losses as normalised MSE: the main one divided by ‖x‖², the
        auxiliary one by ‖e‖². In our units (the main loss is the plain squared error) that is
        α · ‖ê − e‖² · mean‖x − b_dec‖² / mean‖e‖², the ratio held constant. Without the ratio
        the auxiliary gradient shrinks with the residual: at FVU 0.05 it is 20× weaker, and a
        well-fit TopK SAE left ~45% of an overcomplete dictionary dead (issue 16).

        One-sided (`aux_one_sided`, the default): the auxiliary loss may raise a dead feature's
        pre-activation but never lower it. Where the residual is something no row can take (on
        planted data at k = its L0 it is the k cap's leftovers and noise), the loss is smallest
        with the dead features silent, so OpenAI's two-sided gradient pushes every dead feature
        that still fires in the aux top-k further below threshold; a feature that lost a
        top-k race for one window is then buried for good. Measured on the planted benchmark
        (1,024 directions, 2,048 rows, k 10; docs/sae-recipes.md, "Recovery of a known dictionary"): dead
        22.4% two-sided, 1.2% with no AuxK, 0.6% one-sided. The decoder still turns toward
        the residual, which is what revives a feature when there is signal left for it."""
        sub = max(1, int(pre.shape[0] * self.aux_batch_fraction))
        k_aux = min(self.aux_k, n_dead)
        codes = SparseCodes.topk(pre[:sub].masked_fill(~dead, float("-inf")), k_aux)
        residual = -err[:sub]
        sums = torch.stack([(residual * residual).sum(), (xc[:sub] * xc[:sub]).sum()]).double()
        self.world.sum_(sums)  # the normaliser over every rank's sub-batch
        res_sq, x_sq = float(sums[0]), float(sums[1])
        if res_sq <= 0:
            return 0.0
        weight = self.aux_coefficient * x_sq / res_sq
        rec = codes.times(self.W_dec)
        diff = rec - residual
        loss = float((diff * diff).sum()) / sub * weight
        g = diff * (2.0 * weight / sub)
        g_pre = codes.sampled(g, self.W_dec.T) * (codes.vals > 0)
        if self.aux_one_sided:  # descent moves pre by −g_pre: keep only the raising part
            g_pre = g_pre.clamp_max(0)
        dW_dec += codes.transpose_times(codes.vals, g)
        dW_enc += codes.transpose_times(g_pre, xc[:sub])
        g_pre_sum = codes.column_sums(g_pre)
        db_enc += g_pre_sum
        db_dec -= g_pre_sum @ self.W_enc
        return loss

    # ---------------------------------------------------------------- resampling
    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor, generator: torch.Generator) -> int:
        """`_resample_dead` (below); under torchrun drawn on rank 0 from its share of the
        batch, then its weights, Adam state and firing clocks broadcast to every rank."""
        if not self.world.distributed:
            return self._resample_dead(x, generator)
        n = self._resample_dead(x, generator) if self.world.is_main else 0
        state = [s for p in (self.W_enc, self.W_dec, self.b_enc)
                 for s in (self.optimizer.state.get(p) or {}).values()
                 if isinstance(s, torch.Tensor) and s.dim() > 0]
        self.world.broadcast_([self.W_enc, self.W_dec, self.b_enc, self.since_fired, *state])
        return self.world.broadcast(n)

    def _resample_dead(self, x: torch.Tensor, generator: torch.Generator) -> int:
        """Towards Monosemanticity's resampling, on the batch x (scaled inputs).

        Pick inputs ∝ squared reconstruction loss: what the dictionary explains worst is the
        direction it lacks. The dead decoder row becomes that input (unit norm), the encoder
        row the same direction at 0.2× the mean alive encoder norm, the bias 0, and Adam's
        moments for those rows are reset so stale momentum does not undo the new direction."""
        dead = self.dead_mask().nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        _, _, codes = self.encode_codes(x)
        x_hat = codes.times(self.W_dec) + self.b_dec
        loss = ((x_hat - x) ** 2).sum(1)
        weights = (loss ** 2).cpu().double()
        if float(weights.sum()) <= 0:
            return 0
        picks = torch.multinomial(weights, len(dead), replacement=len(dead) > len(x), generator=generator)
        directions = x[picks.to(x.device)] - self.b_dec
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = ~self.dead_mask()
        enc_norm = float(self.W_enc[alive].norm(dim=1).mean()) if alive.any() else 1.0
        self.W_dec[dead] = directions * (1.0 if self.unit_norm else float(self.W_dec[alive].norm(dim=1).mean()))
        self.W_enc[dead] = directions * (0.2 * enc_norm)
        self.b_enc[dead] = 0.0
        for param in (self.W_enc, self.W_dec, self.b_enc):
            state = self.optimizer.state.get(param)
            if state:
                state["exp_avg"][dead] = 0.0
                state["exp_avg_sq"][dead] = 0.0
        self.since_fired[dead] = 0
        return len(dead)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc.detach(), "b_enc": self.b_enc.detach(),
                "W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}
