"""A sparse autoencoder with a hand-written backward pass that only touches active features.

Why by hand: with L0 ≈ 30 of thousands of features, everything but the encoder's dense
`x @ W_enc^T` is sparse. Autograd (SAELens' way) computes the decoder and both backward
matmuls densely: ~10 of the 12·d_in·d_sae FLOPs per activation are multiplications by zero.
Here the decoder, the gradient with respect to the active codes and both weight gradients
are products over the active entries alone (`pipelines/sae/codes.py`: embedding-bag kernels,
or CSR ones), so a step costs about one dense matmul plus a top-k. On a GPU that matmul may
run in bf16 to propose candidates that fp32 then decides among (`sae.precision`), and a step
never waits for the host (`step`).

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
from pipelines.config import SAE_PRECISIONS as PRECISIONS
from pipelines.graph_capture import set_rate
from pipelines.sae import codes as code_layouts
from pipelines.sae.codes import BagCodes, Codes, DenseCodes


@dataclass
class StepStats:
    """A step's figures as 0-d tensors on the SAE's device: reading one (`float(...)`) waits
    for the step, so the training loop reads them in blocks (`host`) every few steps."""

    mse: torch.Tensor
    l0: torch.Tensor
    aux: torch.Tensor
    n_dead: torch.Tensor

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.mse.float(), self.l0.float(), self.aux.float(), self.n_dead.float()])


class SparseAutoencoder:
    def __init__(self, d_in: int, d_sae: int, recipe: str, *, k: int = 0, lr: float = 1e-3,
                 l1_coefficient: float = 0.0, aux_k: int = 256, aux_coefficient: float = 1 / 32,
                 aux_batch_fraction: float = 0.25, aux_one_sided: bool = True, dead_window: int = 200_000,
                 grad_clip: float = 1.0, b_dec_init: torch.Tensor | None = None, seed: int = 0, device: str = "cpu",
                 bias_lr_scale: float | None = None, codes: str = "auto", precision: str = "auto"):
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
        on_gpu = torch.device(device).type == "cuda"
        self.optimizer = torch.optim.Adam(
            [{"params": [self.W_enc, self.W_dec, self.b_dec], "lr_scale": 1.0},
             {"params": [self.b_enc], "lr_scale": self.bias_lr_scale}], lr=lr, betas=(0.9, 0.999),
            fused=True)  # one kernel for every parameter: on 2 CPU cores 4-6x the default's speed
        self._lr: float | None = None  # the rate last written into the optimizer
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.tokens_seen = 0  # on the host: no feature can be dead before dead_window tokens
        self.world = distributed.world()  # a world of one outside torchrun
        # CPU: MKL's CSR products measured 1.0-1.5x faster than the embedding-bag ones (512-4,096
        # features, benchmarks/sae_throughput.py --codes); a GPU: bag, no cuSPARSE.
        self.layout = code_layouts.layout(codes if codes != "auto" else "bag" if on_gpu else "csr")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
        # bf16 for the encoder's dense matmul only: it selects the active features; their
        # values, every sparse product, the weights and Adam's state stay fp32. Never on CPU
        # by default: bf16 matmuls there are ~100x slower than fp32.
        self.select_dtype = (torch.bfloat16 if precision == "bf16" or (precision == "auto" and on_gpu)
                             else torch.float32)
        self.syncs_are_free = not on_gpu  # reading a value on the CPU costs nothing

    # ---------------------------------------------------------------- forward
    def encode_codes(self, x: torch.Tensor, allow_dense: bool = False) -> tuple[torch.Tensor, torch.Tensor, Codes]:
        """(x − b_dec, pre-activations, active codes). With bf16 selection `pre` is bf16, and
        the codes are what fp32 would pick (`_topk` and `_relu` below)."""
        xc = x - self.b_dec
        pre = self._pre_activations(xc)
        if self.rules.top_k:
            return xc, pre, self._topk(pre, xc, self.k)
        if allow_dense and int((pre > 0).sum()) > code_layouts.DENSE_ABOVE * pre.numel():
            if pre.dtype != torch.float32:  # dense codes use every value: compute them exactly
                pre = torch.addmm(self.b_enc, xc, self.W_enc.T)
            return xc, pre, DenseCodes(pre.clamp_min(0))
        return xc, pre, self._relu(pre, xc)

    def _pre_activations(self, xc: torch.Tensor) -> torch.Tensor:
        if self.select_dtype == torch.float32:
            return torch.addmm(self.b_enc, xc, self.W_enc.T)
        low = self.select_dtype
        return torch.addmm(self.b_enc.to(low), xc.to(low), self.W_enc.to(low).T)

    # bf16 proposes, fp32 decides: bf16 rounds a pre-activation by up to ~2^-8 of |x|·|w|, enough
    # to swap features near the k-th place or near 0 (measured: 10-25% of a trained SAE's
    # gradient). So bf16 picks candidates with room to spare, their fp32 values are computed
    # for those entries alone (one gather each), and the fp32 rule chooses among them.
    EXTRA_CANDIDATES = 1.0  # topk: bf16 proposes k + this·k candidates

    def _exact(self, codes: BagCodes, xc: torch.Tensor) -> torch.Tensor:
        return codes.sampled_rows(xc, self.W_enc) + codes.per_entry(self.b_enc)

    def _topk(self, pre: torch.Tensor, xc: torch.Tensor, k: int, live: torch.Tensor | None = None) -> BagCodes:
        """The k largest pre-activations per row, ReLU'd; with `live`, those features are
        excluded (AuxK's choice among the dead ones)."""
        if live is not None:
            pre = pre.masked_fill(live, float("-inf"))
        if pre.dtype == torch.float32:
            return self.layout.topk(pre, k)
        n_cand = min(pre.shape[1], k + int(self.EXTRA_CANDIDATES * k))
        cand = BagCodes.topk(pre, n_cand)
        exact = self._exact(cand, xc)
        if live is not None:
            exact = exact.masked_fill(cand.per_entry(live), float("-inf"))
        vals, pick = exact.view(-1, n_cand).topk(k, dim=1, sorted=False)
        return self.layout.from_rows(cand.cols.view(-1, n_cand).gather(1, pick), vals.clamp_min(0),
                                     pre.shape[1])

    def _relu(self, pre: torch.Tensor, xc: torch.Tensor) -> BagCodes:
        if pre.dtype == torch.float32:
            return self.layout.relu(pre)
        margin = 2.0 ** -6 * (xc.norm(dim=1, keepdim=True) * self.W_enc.norm(dim=1).max()
                              + self.b_enc.abs().max())
        cand = self.layout.relu(torch.where(pre.float() > -margin, 1.0, 0.0))  # entries only
        cand.set_values(self._exact(cand, xc).clamp_min(0))  # those fp32 rounds to <= 0 stay 0: inactive
        return cand

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_window

    # ---------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self, x: torch.Tensor, lr: float, l1_scale: float = 1.0) -> StepStats:
        """One Adam step on a batch of scaled activations x [B, d_in]. Nothing here reads a
        value back to the host (on a GPU the step is queued, not waited for), except the L1
        recipes' count of active codes, whose sparsity is data-dependent."""
        self.set_lr(lr)
        self.tokens_seen += x.shape[0] * self.world.size
        return self.step_body(x, l1_scale)

    def set_lr(self, lr: float) -> None:
        """Each group's rate (times its `lr_scale`); a rate that is a tensor (a CUDA graph
        reads it at every replay, `pipelines/sae/step_graph.py`) gets the value written in."""
        if lr == self._lr:
            return  # constant until the decay: no write (on a GPU, no launch)
        self._lr = lr
        set_rate(self.optimizer, lr)

    def aux_ready(self) -> bool:
        """Whether AuxK can have work: the recipe has it and `dead_window` tokens have passed
        (before that no feature can be dead)."""
        return bool(self.rules.aux_k and self.aux_coefficient > 0 and self.tokens_seen >= self.dead_window)

    @torch.no_grad()
    def step_body(self, x: torch.Tensor, l1_scale: float = 1.0, aux: bool | None = None) -> StepStats:
        """`step` after its host bookkeeping (the rate, the token count): the device work
        alone, which a CUDA graph can record. `aux`: run AuxK (None: decide here, reading the
        dead count on a CPU). AuxK with no dead feature adds exact zeros (its weight is 0), so
        a recording may run it from the first step and never need another."""
        batch = x.shape[0]
        W_enc, W_dec = self.W_enc, self.W_dec
        xc, pre, codes = self.encode_codes(x, allow_dense=True)
        # x_hat - x = (codes @ W_dec + b_dec) - x = codes @ W_dec - xc
        err = codes.decode(W_dec) - xc
        mse = (err * err).sum() / batch
        c = 2.0 / batch  # d loss / d x_hat = c * err
        dW_dec, g_codes = codes.decode_grads(err * c)  # d loss / d W_dec, d loss / d f at active entries
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

        dW_enc = codes.transpose_times(g_pre, xc)
        g_pre_sum = codes.column_sums(g_pre)
        db_enc = g_pre_sum
        db_dec = err.sum(0).mul_(c) - g_pre_sum @ W_enc
        if grad_dec_extra is not None:
            dW_dec += grad_dec_extra

        fired = codes.fired()
        self.world.sum_(fired)  # fired on any rank's share of the batch
        self.since_fired += batch * self.world.size
        self.since_fired.masked_fill_(fired > 0, 0)

        aux_loss = torch.zeros((), device=x.device)
        dead = self.dead_mask()
        n_dead = dead.sum()
        if (self.aux_ready() and self._may_have_dead(n_dead)) if aux is None else aux:
            aux_loss = self._aux_grads(pre, xc, err, dead, n_dead, dW_enc, db_enc, dW_dec, db_dec)

        l0 = codes.l0()
        if self.world.distributed:  # the global batch's gradient, and its mean statistics
            scalars = torch.stack([mse, l0.float()])
            self.world.mean_([dW_enc, db_enc, dW_dec, db_dec, scalars])
            mse, l0 = scalars[0], scalars[1]
        if self.unit_norm:  # only the component that changes direction, not length
            dW_dec -= (dW_dec * W_dec).sum(1, keepdim=True) * W_dec
        for param, grad in zip(self.params, (dW_enc, db_enc, dW_dec, db_dec)):
            param.grad = grad
        if self.rules.clips_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        if self.unit_norm:
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        return StepStats(mse=mse, l0=l0, aux=aux_loss, n_dead=n_dead)

    def _may_have_dead(self, n_dead: torch.Tensor) -> bool:
        """Whether AuxK has work once `aux_ready`: a CPU reads the count, and a GPU runs AuxK
        every step rather than wait for it (with no dead feature its gradient is exactly zero)."""
        return bool(n_dead > 0) if self.syncs_are_free else True

    def _aux_grads(self, pre, xc, err, dead, n_dead, dW_enc, db_enc, dW_dec, db_dec) -> torch.Tensor:
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
        # The top aux_k dead features. A GPU does not know how many are dead without waiting,
        # so it takes aux_k candidates with the live ones masked to −inf: those get value 0
        # and add nothing, exactly as if k had been min(aux_k, n_dead).
        k_aux = max(1, min(self.aux_k, int(n_dead) if self.syncs_are_free else self.d_sae))
        codes = self._topk(pre[:sub], xc[:sub], k_aux, live=~dead)
        residual = -err[:sub]
        sums = torch.stack([(residual * residual).sum(), (xc[:sub] * xc[:sub]).sum()]).double()
        self.world.sum_(sums)  # the normaliser over every rank's sub-batch
        res_sq, x_sq = sums[0], sums[1]
        # no residual or no dead feature: weight 0, so loss and gradients are 0
        weight = (torch.where(res_sq > 0, self.aux_coefficient * x_sq / res_sq.clamp_min(1e-300), 0.0)
                  * (n_dead > 0)).float()
        rec = codes.decode(self.W_dec)
        diff = rec - residual
        loss = (diff * diff).sum() / sub * weight
        g = diff * (2.0 * weight / sub)
        d_dec, g_vals = codes.decode_grads(g)
        g_pre = g_vals * (codes.vals > 0)
        if self.aux_one_sided:  # descent moves pre by −g_pre: keep only the raising part
            g_pre = g_pre.clamp_max(0)
        dW_dec += d_dec
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
