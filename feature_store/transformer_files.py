"""Rebuild the trained one-layer transformer from `runs/<name>/model/`.

`config.json` holds exactly the TransformerBridgeConfig arguments the model was built with,
and `model.safetensors` its `state_dict()`, so `load_transformer` gives back the same function
bit for bit. Lives here, not in `pipelines/`, because the dashboard's prompt explorer needs
the live model and must not import the pipelines. torch and TransformerLens are imported
inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"  # the model's state_dict, beside config.json

HOOK_POST = "blocks.0.mlp.hook_post"  # what W_out reads; for solu_ln, after the mid-MLP LayerNorm
HOOK_PRE_LN = "blocks.0.mlp.ln.hook_in"  # solu_ln only: the SoLU output, before that LayerNorm
MID_LN = "blocks.0.mlp.ln"  # the mid-MLP LayerNorm's parameters: <MID_LN>.weight, .bias


def transformer_spec(*, d_model: int, d_mlp: int, n_heads: int, d_head: int, d_vocab: int,
                     n_ctx: int, act_fn: str, seed: int) -> dict[str, Any]:
    """The JSON-able arguments of TransformerBridgeConfig for a one-layer model."""
    return {"n_layers": 1, "d_model": d_model, "d_mlp": d_mlp, "n_heads": n_heads,
            "d_head": d_head, "d_vocab": d_vocab, "n_ctx": n_ctx, "act_fn": act_fn,
            "normalization_type": "LN", "seed": seed}


def build_transformer(spec: dict[str, Any], device: str = "cpu"):
    """A freshly initialised model (seeded by `spec["seed"]`); no network."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_native(TransformerBridgeConfig(**spec, device=device))
    if device != "cpu":
        model = model.to(device)  # boot_native builds on the CPU whatever `device` says (seen on CUDA)
    return model


def load_transformer(model_dir: Path, device: str = "cpu"):
    """The trained model in eval mode; a missing, corrupt or mismatched file is a StoreError
    naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from feature_store.errors import StoreError

    hint = "retrain it with: python -m pipelines run --run-dir <run> --force model"
    config = model_dir / "config.json"
    try:
        spec = json.loads(config.read_text(encoding="utf-8"))
        model = build_transformer(spec, device=device)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise StoreError(f"{config}: unusable model config ({err}); {hint}") from None
    weights = model_dir / WEIGHTS_FILE
    try:
        model.load_state_dict(load_file(str(weights), device=device))
    except (OSError, SafetensorError, RuntimeError) as err:  # RuntimeError: missing keys, shapes
        raise StoreError(f"{weights}: unusable model weights ({str(err)[:300]}); {hint}") from None
    model.eval()
    return model


def weights_hash(model_dir: Path) -> str:
    """The model's identity: a hash of its weights file's bytes (safetensors writes a
    state_dict deterministically). Two runs with equal hashes are the same function, however
    they were built; the model stage's folder hash is not that (it covers the training log
    and timings too)."""
    import hashlib

    digest = hashlib.sha256()
    with open(model_dir / WEIGHTS_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class _Captured(Exception):
    """Raised from a hook to stop the forward pass once the MLP output is in hand."""


def capture(model, tokens, hook_name: str):
    """The value at `hook_name` for `tokens` [batch, pos], stopping the forward pass there.

    The unembedding (d_model x d_vocab per token) costs ~4x the rest of a one-layer model, and
    TransformerBridge ignores `stop_at_layer` here, so the hook raises once it has the value;
    `run_with_hooks` removes its hooks on the way out."""
    return capture_many(model, tokens, (hook_name,))[hook_name]


def capture_many(model, tokens, hook_names) -> dict:
    """The values at several hooks in one forward pass, stopped once the last has fired."""
    captured: dict = {}
    wanted = set(hook_names)

    def grab(acts, hook, name):
        captured[name] = acts
        if wanted <= captured.keys():
            raise _Captured

    try:
        model.run_with_hooks(tokens, fwd_hooks=[
            (name, lambda acts, hook, name=name: grab(acts, hook, name)) for name in wanted])
    except _Captured:
        pass
    missing = wanted - captured.keys()
    if missing:
        raise ValueError(f"the model has no hook {sorted(missing)}")
    return captured


def has_mid_ln(model) -> bool:
    """The MLP normalises its activation before W_out (solu_ln): `HOOK_PRE_LN` exists."""
    return f"{MID_LN}.weight" in model.state_dict()


def mlp_activations(model, tokens):
    """`blocks.0.mlp.hook_post` for `tokens`, without computing the logits."""
    return capture(model, tokens, HOOK_POST)
