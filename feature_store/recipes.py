"""SAE recipes: what each one is, in one place.

Every piece of code that treats recipes differently (encoding in `sae_files`, the trainer in
`pipelines/sae/autoencoder.py`, the sae stage, the config check) asks the recipe's record
here rather than testing its name, so a new recipe is one entry in `RECIPES` and the
places that must handle it are the flags it sets. Lives in `feature_store/` because SAEs
are encoded both by the pipelines and by the dashboard's live pages.

- `topk` (OpenAI 2024): keep the k largest pre-activations, ReLU them; AuxK keeps dead
  features alive; unit-norm decoder.
- `l1-unit` (Towards Monosemanticity 2023): ReLU, loss + λ·Σf; unit-norm decoder; dead
  features resampled; encoder started at norm 0.1.
- `l1` (Anthropic's 2024 update): ReLU, loss + λ·Σ f_i·‖d_i‖; decoder unconstrained, started
  at norm 0.1; gradient norm clipped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """The recipe's choices, each read where it matters."""

    name: str
    top_k: bool  # codes are the k largest pre-activations (a fixed L0 = k); else ReLU
    unit_norm_decoder: bool  # decoder rows projected and renormalised to norm 1 every step
    l1: bool  # the loss has an L1 penalty λ (warmed up; `sae.target_l0` can calibrate it)
    l1_times_decoder_norm: bool  # the penalty weighs f_i by ‖d_i‖ (Anthropic 2024)
    aux_k: bool  # AuxK auxiliary loss on the top dead features
    resamples: bool  # dead features resampled at `sae.resample_at`
    clips_grad: bool  # gradient norm clipped to `sae.grad_clip`
    decoder_init_norm: float  # norm of the decoder rows at initialisation
    encoder_init_scale: float  # encoder = decoder^T times this at initialisation


TOPK = Recipe("topk", top_k=True, unit_norm_decoder=True, l1=False, l1_times_decoder_norm=False,
              aux_k=True, resamples=False, clips_grad=False, decoder_init_norm=1.0,
              encoder_init_scale=1.0)
L1_UNIT = Recipe("l1-unit", top_k=False, unit_norm_decoder=True, l1=True,
                 l1_times_decoder_norm=False, aux_k=False, resamples=True, clips_grad=False,
                 decoder_init_norm=1.0, encoder_init_scale=0.1)
L1 = Recipe("l1", top_k=False, unit_norm_decoder=False, l1=True, l1_times_decoder_norm=True,
            aux_k=False, resamples=False, clips_grad=True, decoder_init_norm=0.1,
            encoder_init_scale=1.0)
RECIPES: dict[str, Recipe] = {r.name: r for r in (TOPK, L1, L1_UNIT)}


def recipe(name: str) -> Recipe:
    """The recipe called `name`; a KeyError names the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown SAE recipe {name!r}; known: {', '.join(RECIPES)}") from None
