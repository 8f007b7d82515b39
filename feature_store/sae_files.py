"""An SAE on disk: `sae/<d_sae>/sae.safetensors` + `sae/<d_sae>/config.json`.

Tensors (float32): `W_enc` [d_sae, d_in], `b_enc` [d_sae], `W_dec` [d_sae, d_in] (row i is
feature i's decoder direction d_i), `b_dec` [d_in]. The SAE works on inputs scaled by
`input_scale` (chosen so the training activations have mean norm sqrt(d_in), Anthropic's 2024
convention, so one learning rate and one λ suit any model); the reconstruction of an unscaled
activation x is `decode(encode(x)) / input_scale`.

    f = act(W_enc (s·x − b_dec) + b_enc),   s·x̂ = W_dec^T f + b_dec

with act = ReLU (`l1`, `l1-unit`) or "keep the k largest, then ReLU" (`topk`). Lives in
`feature_store/` because the stats stage and the dashboard's prompt explorer both load SAEs
and neither may import the other's package. torch is imported inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from feature_store.errors import StoreError
from feature_store.recipes import Recipe, recipe
from feature_store.transformer_files import HOOK_POST

TENSOR_SHAPES = {"W_enc": ("d_sae", "d_in"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"),
                 "b_dec": ("d_in",)}


@dataclass(frozen=True)
class SaeSpec:
    d_in: int
    d_sae: int
    recipe: str  # topk | l1 | l1-unit
    k: int  # active features per token for topk; 0 otherwise
    input_scale: float
    hook_name: str = HOOK_POST

    @property
    def recipe_spec(self) -> Recipe:
        return recipe(self.recipe)


def save_sae(folder: Path, spec: SaeSpec, tensors: dict[str, Any], extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").float().contiguous() for k, v in tensors.items()},
              str(folder / "sae.safetensors"))
    (folder / "config.json").write_text(json.dumps({**asdict(spec), **(extra or {})}, indent=2) + "\n",
                                        encoding="utf-8")


def load_sae(folder: Path, device: str = "cpu") -> tuple[SaeSpec, dict[str, Any]]:
    """The spec and tensors; a missing, corrupt or inconsistent file is a StoreError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hint = "retrain it with: python -m pipelines run --run-dir <run> --force sae"
    config = folder / "config.json"
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
        spec = SaeSpec(**{f.name: raw[f.name] for f in fields(SaeSpec) if f.name in raw})
        recipe(spec.recipe)  # an unknown recipe is a bad file: said here, as a StoreError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
        raise StoreError(f"{config}: unreadable SAE config ({err}); {hint}") from None
    weights = folder / "sae.safetensors"
    try:
        tensors = load_file(str(weights), device=device)
    except (OSError, SafetensorError) as err:
        raise StoreError(f"{weights}: unreadable SAE weights ({err}); {hint}") from None
    dims = {"d_sae": spec.d_sae, "d_in": spec.d_in}
    for name, shape in TENSOR_SHAPES.items():
        want = tuple(dims[d] for d in shape)
        got = tuple(tensors[name].shape) if name in tensors else None
        if got != want:
            raise StoreError(f"{weights}: {name} has shape {got}, {config.name} says {want}; "
                             f"{hint}")
    return spec, tensors


def pre_activation(spec: SaeSpec, tensors: dict[str, Any], x, out=None):
    """W_enc (s·x − b_dec) + b_enc for unscaled activations x [..., d_in]: the one place the
    encoder's affine map is written; every encoding below starts here. The bias goes in
    through `addmm`, not as a second pass over the [rows, d_sae] product (~20% of the
    encoding on a CPU: that pass reads and writes the largest tensor here once more). `out`:
    a caller's reused [rows, d_sae] matrix (a fresh one over glibc's 32 MB mmap threshold
    comes as new pages to fault in and zero, every batch)."""
    import torch

    xc = x * spec.input_scale - tensors["b_dec"]
    flat = torch.addmm(tensors["b_enc"], xc.reshape(-1, xc.shape[-1]), tensors["W_enc"].T, out=out)
    return flat.reshape(*xc.shape[:-1], flat.shape[-1])


def encode(spec: SaeSpec, tensors: dict[str, Any], x):
    """Feature activations [..., d_sae] for unscaled activations x [..., d_in] (dense tensor)."""
    import torch

    pre = pre_activation(spec, tensors, x)
    if spec.recipe_spec.top_k:
        vals, idx = pre.topk(spec.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
    return pre.relu()


def topk_codes(spec: SaeSpec, tensors: dict[str, Any], x, out=None):
    """A topk SAE's codes as (values [..., k], feature ids [..., k]), in no particular order;
    values are already ReLU'd (a kept pre-activation below zero codes 0). `out`: as for
    `pre_activation` (x 2-D)."""
    vals, idx = pre_activation(spec, tensors, x, out=out).topk(spec.k, dim=-1, sorted=False)
    return vals.relu(), idx


@dataclass(frozen=True)
class ActiveCodes:
    """A batch's codes: dense [B, d_sae], and the active (> 0) entries listed, aligned."""

    dense: Any  # torch.Tensor [B, d_sae]
    row: Any  # [E] int64: the entry's row in the batch
    feature: Any  # [E] int64
    value: Any  # [E] float32, > 0

    @classmethod
    def of_dense(cls, codes) -> ActiveCodes:
        """List the active entries of dense codes (a scan of the whole matrix)."""
        row, feat = (codes > 0).nonzero(as_tuple=True)
        return cls(codes, row, feat, codes[row, feat])

    @classmethod
    def of_topk(cls, vals, idx, d_sae: int, out=None) -> ActiveCodes:
        """From a top-k's (ReLU'd values, feature ids), [B, k] each: the dense codes by one
        scatter (into `out`, [B, d_sae], when given) and the entries by a mask of the k
        columns, no scan of [B, d_sae]."""
        import torch

        if out is None:
            out = torch.empty(idx.shape[0], d_sae, dtype=vals.dtype, device=vals.device)
        codes = out.zero_().scatter_(1, idx, vals)
        active = vals > 0
        row = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)[active]
        return cls(codes, row, idx[active], vals[active])


def active_entries(spec: SaeSpec, tensors: dict[str, Any], x, out=None) -> ActiveCodes:
    """`encode` for x [B, d_in] plus its active (> 0) entries.

    For topk the entries come from the top-k itself, with no scan of the dense [B, d_sae]
    codes (a scan costs as much as the encoding on wide dictionaries), and the dense codes
    are written into `out` when given (a caller's reused matrix; ReLU SAEs ignore it)."""
    if not spec.recipe_spec.top_k:
        return ActiveCodes.of_dense(encode(spec, tensors, x))
    vals, idx = pre_activation(spec, tensors, x).topk(spec.k, dim=-1)
    return ActiveCodes.of_topk(vals.relu(), idx, spec.d_sae, out=out)


def decode_topk(spec: SaeSpec, tensors: dict[str, Any], vals, idx):
    """The reconstruction from `topk_codes`: only k decoder rows per token are gathered
    (embedding_bag), ~d_sae/k times cheaper than multiplying the zeros."""
    import torch

    shape = idx.shape
    out = torch.nn.functional.embedding_bag(idx.reshape(-1, spec.k), tensors["W_dec"],
                                            per_sample_weights=vals.reshape(-1, spec.k),
                                            mode="sum")
    return ((out + tensors["b_dec"]) / spec.input_scale).reshape(*shape[:-1], -1)


def reconstruct(spec: SaeSpec, tensors: dict[str, Any], x):
    """decode(encode(x)), sparse for topk."""
    if not spec.recipe_spec.top_k:
        return decode(spec, tensors, encode(spec, tensors, x))
    return decode_topk(spec, tensors, *topk_codes(spec, tensors, x))


def decoder_directions(spec: SaeSpec, tensors: dict[str, Any], rows: Any = slice(None)):
    """Decoder rows in the unscaled activation space, W_dec[rows] / input_scale: a feature's
    contribution to hook_post per unit of its activation (the SAE reconstructs s·x, so one
    unit of f_i adds d_i / s to x)."""
    return tensors["W_dec"][rows] / spec.input_scale


def decode(spec: SaeSpec, tensors: dict[str, Any], f):
    """The reconstruction in the original (unscaled) activation space."""
    return (f @ tensors["W_dec"] + tensors["b_dec"]) / spec.input_scale
