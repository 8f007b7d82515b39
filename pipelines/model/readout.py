"""What a unit's output does downstream of the MLP in a one-layer model: W_out, the final
LayerNorm and the unembedding (and, for SoLU, the mid-MLP LayerNorm before W_out).

The stats stage (logit weights, exact ablation effects), interp (the logit test) and
universality (logit-weight agreement) all read the model through these records, so the
folding of LN_final's centring and γ into the logit weights is written once. The store's
reader has its own copy for the live pages (`feature_store/live.py`), which may not import
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feature_store.transformer_files import MID_LN


@dataclass(frozen=True)
class Readout:
    """LN_final and the unembedding, for logit weights and exact ablation effects."""

    gamma: torch.Tensor  # [d_model]
    beta: torch.Tensor
    W_U: torch.Tensor  # [d_model, d_vocab]
    b_U: torch.Tensor  # [d_vocab]
    eps: float

    @property
    def G(self) -> torch.Tensor:
        return self.gamma[:, None] * self.W_U

    @property
    def bias(self) -> torch.Tensor:
        return self.beta @ self.W_U + self.b_U


@dataclass(frozen=True)
class MidLN:
    """The mid-MLP LayerNorm of a SoLU model and W_out, for pre-LN ablations."""

    gamma: torch.Tensor  # [d_mlp]
    beta: torch.Tensor
    eps: float
    W_out: torch.Tensor  # [d_mlp, d_model]

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(u, u.shape[-1:], self.gamma, self.beta, self.eps)


def mid_ln(model) -> MidLN | None:
    """The model's mid-MLP LayerNorm, or None when it has none (GeLU)."""
    sd = model.state_dict()
    if f"{MID_LN}.weight" not in sd:
        return None
    W_out = sd["blocks.0.mlp.out.weight"].T.float().contiguous()
    return MidLN(sd[f"{MID_LN}.weight"].float(), sd[f"{MID_LN}.bias"].float(),
                 float(model.cfg.eps), W_out)


def model_readout(model) -> tuple[torch.Tensor, Readout]:
    """W_out [d_mlp, d_model] and the readout, from the bridge's state dict."""
    sd = model.state_dict()
    W_out = sd["blocks.0.mlp.out.weight"].T.float().contiguous()
    ro = Readout(gamma=sd["ln_final.weight"].float(), beta=sd["ln_final.bias"].float(),
                 W_U=sd["unembed.weight"].T.float().contiguous(),
                 b_U=sd["unembed.bias"].float(), eps=float(model.cfg.eps))
    return W_out, ro


def logit_weights(out_dir: torch.Tensor, ro: Readout) -> torch.Tensor:
    """[n, d_vocab]: (v − mean v)·diag(γ)·W_U; see the module docstring."""
    return (out_dir - out_dir.mean(1, keepdim=True)) @ ro.G
