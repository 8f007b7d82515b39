"""Planted activations: a known answer for the stages that read the activation cache.

With `activations.source = "planted"` the activations stage writes, in place of each token's
`blocks.0.mlp.hook_post`, a sample of a planted sparse dictionary (`pipelines/sae/planted.py`:
sparse non-negative coefficients over unit directions plus noise, optionally families of
mutually exclusive siblings) seen through a random rotation of R^d_mlp:

    acts = (Σ_i c_i · d_i + ε) · Q,    Q orthogonal, drawn from `planted_basis_seed`.

Everything else is as for a real model: the same shards, sequence ids, positions and token
ids, so the sae, stats, interp and universality stages run unchanged. Two variants with the
same `planted_seed` and different `planted_basis_seed` are two "models" that hold the same
features (the same coefficients on the same tokens) in different neuron bases: universality
must match their features (≈ 1) and not their neurons (each neuron mixes many features), and
the splitting rule must find the planted families. The truth is stored beside the shards,
`planted.safetensors`: `directions` [n, d] (rotated), `parent` [n] (family, −1 none) and
`parent_directions` [families, d] (rotated).

The coefficients of a shard's rows are a pure function of (planted_seed, split, shard index),
so two variants with the same tokens and shard layout see the same coefficients row for row.
The model the run trains is still built (its tokens, the CE evaluations and the dashboard's
logit panels read it) but it explains nothing here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.config import ActivationsConfig
from pipelines.sae.planted import PlantedData, PlantedSpec

TRUTH_FILE = "planted.safetensors"
_BATCH = 4096  # rows generated at a time (bounds the [rows, n_features] draw)


def rotation(d: int, seed: int) -> torch.Tensor:
    """A uniformly random orthogonal [d, d] matrix (QR of a Gaussian, signs fixed)."""
    g = torch.Generator().manual_seed(1_000_003 * seed + 17)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@dataclass(frozen=True)
class PlantedSource:
    spec: PlantedSpec
    basis_seed: int

    @classmethod
    def from_config(cls, cfg: ActivationsConfig, d: int) -> PlantedSource:
        return cls(PlantedSpec(d=d, n_features=cfg.planted_features,
                               mean_active=cfg.planted_active, families=cfg.planted_families,
                               seed=cfg.planted_seed), cfg.planted_basis_seed)

    def rows(self, split: str, shard: int, n_rows: int, full_rows: int) -> np.ndarray:
        """[n_rows, d] float32 for shard `shard` of `split` (`full_rows`: a whole shard's size,
        which fixes where each shard's samples start in the planted stream)."""
        data = PlantedData(self.spec, batch_size=_BATCH)
        stride = math.ceil(full_rows / _BATCH)
        first = shard * stride
        x = torch.cat([data.batch(split, first + j) for j in range(math.ceil(n_rows / _BATCH))])
        return (x[:n_rows] @ rotation(self.spec.d, self.basis_seed)).numpy()

    def write_truth(self, path: Path) -> None:
        from safetensors.torch import save_file

        q = rotation(self.spec.d, self.basis_seed)
        tensors = {"directions": (self.spec.directions() @ q).contiguous(),
                   "parent": self.spec.parent_of()}
        if self.spec.families:
            tensors["parent_directions"] = (self.spec.parent_directions() @ q).contiguous()
        meta = {"spec": json.dumps(self.spec.__dict__), "basis_seed": str(self.basis_seed)}
        save_file(tensors, str(path), metadata=meta)


def read_truth(act_dir: Path) -> dict[str, torch.Tensor] | None:
    """The planted truth of a run's activations, or None for a model's activations."""
    path = act_dir / TRUTH_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))


@dataclass(frozen=True)
class SplitRecovery:
    """How the split edges between two dictionaries (small → large) recover the planted
    families, one dictionary pair of one run.

    A family is *displayed* by the pair when the large dictionary holds each sibling as its own
    feature (best-matching it at cosine ≥ `match_cosine`) and the small one holds a feature of
    the family (its best match among the planted directions and the family parents is the
    parent or a sibling) but not every sibling separately: the pair shows the split, and the
    rule should find it. A *found* split is a small feature with ≥ 2 edges; it is right when
    its feature is of family f and its children are distinct siblings of f."""

    planted: int  # families planted
    displayed: int  # families the two dictionaries show split
    found: int  # small features with >= 2 children
    right: int  # found splits that are a planted family's
    recovered: int  # displayed families found as a right split

    @property
    def precision(self) -> float:
        return self.right / self.found if self.found else 0.0

    @property
    def recall(self) -> float:
        """Of the splits the two dictionaries display."""
        return self.recovered / self.displayed if self.displayed else 0.0


def split_recovery(truth: dict[str, torch.Tensor], small: torch.Tensor, large: torch.Tensor,
                   edges: list[tuple[int, int]], match_cosine: float = 0.9) -> SplitRecovery:
    """`small`, `large`: the two dictionaries' decoder directions [n, d] in the activation
    space; `edges`: (small index, large index) split edges between them."""
    unit = torch.nn.functional.normalize
    D, parent = unit(truth["directions"].float(), dim=1), truth["parent"]
    P = unit(truth["parent_directions"].float(), dim=1)
    n, families = len(D), len(P)
    large_cos, large_best = (unit(large.float(), dim=1) @ D.T).max(1)
    small_dirs = unit(small.float(), dim=1)
    small_best = (small_dirs @ torch.cat([D, P]).T).argmax(1)
    small_family = torch.where(small_best >= n, small_best - n,
                               parent[small_best.clamp(max=n - 1)])
    small_cos, small_match = (small_dirs @ D.T).max(1)
    children: dict[int, list[int]] = {}
    for a, b in edges:
        children.setdefault(a, []).append(b)
    found = {a: kids for a, kids in children.items() if len(kids) >= 2}
    right = set()
    for a, kids in found.items():
        f, feats = int(small_family[a]), [int(large_best[b]) for b in kids]
        if (f >= 0 and len(set(feats)) == len(feats)
                and all(int(parent[k]) == f and float(large_cos[b]) >= match_cosine
                        for k, b in zip(feats, kids))):
            right.add(a)
    displayed = set()
    for f in range(families):
        siblings = (parent == f).nonzero().flatten().tolist()
        in_large = all(bool(((large_best == k) & (large_cos >= match_cosine)).any())
                       for k in siblings)
        in_small = all(bool(((small_match == k) & (small_cos >= match_cosine)).any())
                       for k in siblings)
        if in_large and not in_small and bool((small_family == f).any()):
            displayed.add(f)
    recovered = {int(small_family[a]) for a in right} & displayed
    return SplitRecovery(planted=families, displayed=len(displayed), found=len(found),
                         right=len(right), recovered=len(recovered))
