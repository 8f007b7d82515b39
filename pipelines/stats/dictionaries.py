"""The dictionaries the statistics pass summarises: every SAE of the run, and the neurons.

A dictionary is a set of units with an activation and an output direction in activation
space. SAE feature i has activation f_i(x) (`feature_store.sae_files.encode`) and direction
W_dec[i] / input_scale: the SAE works on inputs scaled by input_scale, so this is its
contribution per unit activation to the *unscaled* hook_post. `neurons` is the identity
dictionary: activation = the raw hook_post value, direction = the basis vector. "Active"
means > 0 throughout (for GeLU neurons negative values are inactive, as in `records`).

`neurons_pre_ln` (SoLU models, when the validation shards hold `acts_pre_ln`): the same
neurons read before the mid-MLP LayerNorm. It has activations but no direction: the
LayerNorm divides by a norm over all neurons at each token, so one unit of this value has
no fixed effect on W_out's input, the residual stream or the logits. What needs a direction
(logit weights, neighbours, counterparts, UMAP) does not apply, and the store says so
(`NOT_APPLICABLE`, in the manifest); its ablation effect is exact all the same
(`pipelines/stats/ablation.py` recomputes the LayerNorm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feature_store import schema
from feature_store.records import NEURONS, NEURONS_PRE_LN
from feature_store.sae_files import (ActiveCodes, active_entries, decoder_directions, encode,
                                     load_sae)
from feature_store.transformer_files import HOOK_POST, HOOK_PRE_LN, load_transformer
from pipelines.activations.shards import SequenceBatch, count_rows, head_rows, sequence_rows
from pipelines.errors import InputError
from pipelines.model.readout import Readout, model_readout
from pipelines.sae.metrics import VAL_CODE_IDX, VAL_CODE_VALS

# (x [B, d_mlp], a [B, n] matrix to write the dense codes into, or None) -> dense codes and
# the active entries
Entries = Callable[[torch.Tensor, torch.Tensor | None], ActiveCodes]


STORED_SPLIT = "val"  # the split whose codes the sae stage keeps (`reconstruction_metrics`)
CHECK_ROWS = 64  # rows encoded to check kept codes against their SAE (`StoredCodes.agrees`)


@dataclass(frozen=True)
class StoredCodes:
    """A topk SAE's codes of every validation token as the sae stage kept them (memory-mapped,
    [rows, k], the shards' row order): the stats and universality passes read them instead
    of encoding the same tokens again (a dense matmul and a top-k per token and dictionary,
    ~12 s of the tiny preset's stats stage on 2 cores)."""

    idx: np.ndarray  # [rows, k] int32 feature ids
    vals: np.ndarray  # [rows, k] float32, ReLU'd
    first_row: np.ndarray  # seq_id -> its first row (`sequence_rows`)
    per_seq: int  # rows per sequence (n_ctx - 1)
    d_sae: int

    @classmethod
    def load(cls, folder: Path, k: int, d_sae: int, first_row: np.ndarray, n_rows: int,
             per_seq: int) -> StoredCodes | None:
        """None when the sae stage kept none in `folder`, or they do not cover this split's
        rows with this k (a run built before they were kept, or by another configuration):
        the caller encodes then."""
        if not ((folder / VAL_CODE_IDX).is_file() and (folder / VAL_CODE_VALS).is_file()):
            return None
        try:
            idx = np.load(folder / VAL_CODE_IDX, mmap_mode="r")
            vals = np.load(folder / VAL_CODE_VALS, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if idx.shape != (n_rows, k) or vals.shape != (n_rows, k):
            return None
        return cls(idx, vals, first_row, per_seq, d_sae)

    def agrees(self, d: Dictionary, head: torch.Tensor) -> bool:
        """Whether the first rows' kept codes are what encoding them with `d` gives (`head`:
        those rows' activations). A top-k tie broken the other way fails too: then the
        caller encodes, slower and never wrong."""
        n = head.shape[0]
        if n == 0:
            return True
        device = d.direction.device
        kept = ActiveCodes.of_topk(torch.from_numpy(np.array(self.vals[:n])).to(device),
                                   torch.from_numpy(np.array(self.idx[:n])).to(device).long(), self.d_sae)
        return bool(torch.allclose(kept.dense, d.entries(head.to(device)).dense, rtol=1e-4, atol=1e-5))

    def of_batch(self, batch: SequenceBatch, out: torch.Tensor | None = None) -> ActiveCodes:
        """The batch's codes, read: its sequences' rows, in the batch's row order (the dense
        codes written into `out` when given)."""
        starts = self.first_row[batch.seq_ids.cpu().numpy()]
        if (starts < 0).any():
            raise InputError("a batch holds a sequence the kept SAE codes do not cover")
        rows = (starts[:, None] + np.arange(self.per_seq)).reshape(-1)
        if rows[-1] - rows[0] == len(rows) - 1:  # consecutive sequences: one slice, no gather
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        device = batch.x.device
        idx = torch.from_numpy(np.array(self.idx[rows])).to(device).long()
        vals = torch.from_numpy(np.array(self.vals[rows])).to(device)
        return ActiveCodes.of_topk(vals, idx, self.d_sae, out=out)


@dataclass(frozen=True)
class Dictionary:
    """One dictionary being summarised: how its activations come from hook_post, and where
    its units point."""

    name: str
    n: int
    encode: Callable[[torch.Tensor], torch.Tensor]  # [B, d_mlp] -> [B, n]
    direction: torch.Tensor | None  # [n, d_mlp]: contribution to hook_post per unit activation
    out_dir: torch.Tensor | None  # [n, d_model] = direction · W_out
    info: dict[str, Any] = field(default_factory=dict)  # manifest facts (recipe, k, hook_name)
    sparse_entries: Entries | None = None  # the active entries without a dense scan (topk)
    source: str = "acts"  # the activation shards' column it encodes (`acts_pre_ln`: pre-LN)
    kind: str = "sae"  # the store's dictionary kind; "neurons" for both identity dictionaries
    stored: StoredCodes | None = None  # the validation split's codes, kept by the sae stage

    def entries(self, x: torch.Tensor, out: torch.Tensor | None = None) -> ActiveCodes:
        """Dense codes [B, n] and the active (> 0) entries; a topk SAE writes its dense codes
        into `out` when given (other dictionaries ignore it)."""
        if self.sparse_entries is not None:
            return self.sparse_entries(x, out)
        return ActiveCodes.of_dense(self.encode(x))

    def batch_entries(self, batch: SequenceBatch, out: torch.Tensor | None = None) -> ActiveCodes:
        """`entries` of a batch of whole sequences: read from the kept codes when this
        dictionary has them (`with_stored_codes`; their dense codes into `out` when given),
        else encoded."""
        if self.stored is not None:
            return self.stored.of_batch(batch, out=out)
        return self.entries(batch.acts(self.source), out=out)

    @property
    def has_direction(self) -> bool:
        """False for `neurons_pre_ln`: see the module docstring."""
        return self.direction is not None

    @property
    def k(self) -> int:
        """Active units per token when fixed (topk SAEs), else 0."""
        return int(self.info.get("k") or 0) if self.sparse_entries is not None else 0


def neuron_dictionary(W_out: torch.Tensor) -> Dictionary:
    d_mlp = W_out.shape[0]
    return Dictionary(NEURONS, d_mlp, lambda x: x, torch.eye(d_mlp, device=W_out.device),
                      W_out.clone(), {"hook_name": HOOK_POST}, kind="neurons")


NO_DIRECTION = ("the mid-MLP LayerNorm lies between this value and W_out and divides by a "
                "norm taken over all neurons at each token, so a unit of it has no fixed "
                "direction")
NOT_APPLICABLE = {  # statistic -> why it does not apply to neurons_pre_ln (the manifest's words)
    "logits": f"No direct logit weights: {NO_DIRECTION} and no fixed effect on the logits. "
              "Its ablation effects on the examples are exact (the LayerNorm is recomputed "
              "without it); the same neuron after the LayerNorm has logit weights.",
    "neighbours": f"No nearest units by direction: {NO_DIRECTION}. See the same neuron after "
                  "the LayerNorm for its neighbours by output.",
    "umap": f"Not in the UMAP: {NO_DIRECTION} to embed.",
    "explanations": "No automated explanation: the interp stage fits explanations on "
                    "training-split activations, and only the validation split caches the "
                    "values before the LayerNorm. The same neuron after the LayerNorm has one.",
}


def pre_ln_dictionary(d_mlp: int) -> Dictionary:
    """The neurons before the mid-MLP LayerNorm: identity over the `acts_pre_ln` column."""
    return Dictionary(NEURONS_PRE_LN, d_mlp, lambda x: x, None, None,
                      {"hook_name": HOOK_PRE_LN, "same_units_as": NEURONS,
                       "not_applicable": NOT_APPLICABLE}, source="acts_pre_ln", kind="neurons")


def load_dictionaries(run_dir: Path, W_out: torch.Tensor, device: str,
                      pre_ln: bool = False) -> list[Dictionary]:
    """neurons (and with `pre_ln`, neurons_pre_ln), then every SAE under sae/, in the store's
    dictionary order."""
    d_mlp = W_out.shape[0]
    sae_dir = run_dir / "sae"
    sizes = sorted(int(p.name) for p in sae_dir.iterdir()
                   if p.is_dir() and p.name.isdigit() and (p / "sae.safetensors").exists()) \
        if sae_dir.is_dir() else []
    if not sizes:
        raise InputError(f"{sae_dir}: no trained SAE; rerun with --force sae")
    out = [neuron_dictionary(W_out)]
    if pre_ln:
        out[0].info["same_units_as"] = NEURONS_PRE_LN
        out.append(pre_ln_dictionary(d_mlp))
    for size in sizes:
        folder = sae_dir / str(size)
        spec, tensors = load_sae(folder, device=device)
        if spec.d_in != d_mlp:
            raise InputError(f"{folder}: d_in {spec.d_in} != d_mlp {d_mlp}")
        direction = decoder_directions(spec, tensors)
        out.append(Dictionary(
            schema.dictionary_name(spec.d_sae), spec.d_sae,
            lambda x, spec=spec, t=tensors: encode(spec, t, x),
            direction, direction @ W_out,
            {"recipe": spec.recipe, "k": spec.k, "d_in": spec.d_in,
             "input_scale": spec.input_scale, "hook_name": spec.hook_name},
            (lambda x, out=None, spec=spec, t=tensors: active_entries(spec, t, x, out=out))
            if spec.recipe_spec.top_k else None))
    return sorted(out, key=lambda d: schema.dictionary_sort_key(d.name, d.kind, d.n))


@dataclass(frozen=True)
class RunUnits:
    """A run's model with everything its units are read through: the stats stage, its Ray
    workers, interp and universality all start from this, so they load one way."""

    model: Any  # the TransformerBridge, in eval mode on `device`
    n_ctx: int
    W_out: torch.Tensor  # [d_mlp, d_model]
    readout: Readout
    dictionaries: list[Dictionary]  # in the store's dictionary order


def load_run_units(run_dir: Path, device: str, pre_ln: bool = False,
                   split: str | None = None) -> RunUnits:
    """The model under run_dir/model and every dictionary (`load_dictionaries`); a caller
    that will read `split` in whole sequences gets the sae stage's kept codes of it where
    there are any (`with_stored_codes`)."""
    model = load_transformer(run_dir / "model", device=device)  # StoreError: the runner says
    W_out, readout = model_readout(model)
    n_ctx = int(model.cfg.n_ctx)
    dictionaries = load_dictionaries(run_dir, W_out, device, pre_ln=pre_ln)
    if split == STORED_SPLIT:
        dictionaries = with_stored_codes(run_dir, dictionaries, n_ctx)
    return RunUnits(model, n_ctx, W_out, readout, dictionaries)


def with_stored_codes(run_dir: Path, dictionaries: list[Dictionary], n_ctx: int) -> list[Dictionary]:
    """Each topk SAE with the validation codes the sae stage kept under sae/<size>/ (those
    that have none, or none that fit, are encoded as before). Kept codes must be this SAE's:
    the split's first rows are encoded and compared, so weights replaced after the sae stage
    ran (by hand, not by the pipeline, whose stages rebuild downstream) fall back to encoding."""
    act_dir = run_dir / "activations"
    if not any(d.k for d in dictionaries):
        return dictionaries
    first_row = sequence_rows(act_dir, STORED_SPLIT, n_ctx)
    n_rows = count_rows(act_dir, STORED_SPLIT)
    head = torch.from_numpy(head_rows(act_dir, STORED_SPLIT, CHECK_ROWS))
    out = []
    for d in dictionaries:
        stored = (StoredCodes.load(run_dir / "sae" / str(d.n), d.k, d.n, first_row, n_rows, n_ctx - 1)
                  if d.k else None)
        if stored is not None and not stored.agrees(d, head):
            stored = None
        out.append(dataclasses.replace(d, stored=stored) if stored is not None else d)
    return out
