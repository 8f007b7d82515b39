"""Feature splitting between adjacent SAE sizes: which feature of the larger dictionary
refines which feature of the smaller one.

Feature splitting (Towards Monosemanticity, "Feature Splitting") means a feature of a small
dictionary is replaced, in a larger one, by several features that each cover part of what
it did: a child's activity is a refinement of its parent's (it fires mostly where the parent
fires, and its activation tracks the parent's there) and its direction stays close to the
parent's. An edge parent → child is drawn when all three hold (`SplitCriterion`):

- decoder cosine between the two directions ≥ `min_decoder_cosine`;
- containment ≥ `min_containment`: the share of the child's activation energy (Σ c²) that
  falls on tokens where the parent fires, Σ_{p>0} c² / Σ c²;
- activation cosine over the child's firing tokens ≥ `min_activation_cosine`:
  Σ p·c / sqrt(Σ_{c>0} p² · Σ c²).

Every measure is oriented from the child's side. An earlier rule took the larger of the
activation cosines over the two masks, which let a sparse feature "match" any feature that
happens to fire wherever it fires, whatever its direction: on the tiny run most SAE features
ended in a family, joined by edges of decoder cosine 0.2–0.3. A sparse unrelated child nested
in a dense parent's support still has high containment and activation cosine (two positive
vectors), so the decoder cosine is the gate that rules it out; containment rules out a child
that is merely near the parent's direction but fires elsewhere.

Candidates are, for every feature of either dictionary, its `split_candidates` nearest
features of the other by decoder cosine (the cheap first filter). For each candidate (a, b)
the statistics pass accumulates Σ a·b, Σ a²·[b>0], Σ b²·[a>0] over the tokens where the anchor
fires (which covers every token where a·b ≠ 0); with the per-feature Σ a² of pass 1 these
give every measure above whichever side anchored. Features with density <
`schema.ULTRALOW_DENSITY` (ultralow or dead) are left out. Each child keeps its best parent
(highest decoder cosine), so families are trees.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from feature_store import schema
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.directions import normalized_rows

if TYPE_CHECKING:
    from pipelines.config import StatsConfig


@dataclass(frozen=True, kw_only=True)
class SplitCriterion:
    """When a candidate pair is a splitting edge (the module docstring says why each).

    No defaults here: the thresholds' one home is `StatsConfig` (`stats.split_min_*`), read
    by `from_config`, and keyword-only fields mean no caller can pass them in the wrong
    order."""

    min_activation_cosine: float
    min_decoder_cosine: float
    min_containment: float

    @classmethod
    def from_config(cls, cfg: StatsConfig) -> SplitCriterion:
        return cls(min_activation_cosine=cfg.split_min_activation_cosine,
                   min_decoder_cosine=cfg.split_min_decoder_cosine,
                   min_containment=cfg.split_min_containment)


@dataclass(frozen=True)
class PairSums:
    """The sums one candidate set accumulates ([n_anchor, c] float64 each), over the tokens
    where the anchor fires. Float sums depend on the order they are added in: engines add
    parts in part order (`pipelines/stats/sampling.py`, `add_sums`)."""

    ab: torch.Tensor  # Σ a·b
    aa_masked: torch.Tensor  # Σ anchor² where the partner fires
    bb_masked: torch.Tensor  # Σ partner² where the anchor fires

    @classmethod
    def zeros(cls, partner: torch.Tensor) -> PairSums:
        z = torch.zeros(partner.shape, dtype=torch.float64, device=partner.device)
        return cls(z, z.clone(), z.clone())

    def to(self, device: str) -> PairSums:
        return PairSums(self.ab.to(device), self.aa_masked.to(device), self.bb_masked.to(device))

    def add_(self, other: PairSums) -> None:
        self.ab.add_(other.ab)
        self.aa_masked.add_(other.aa_masked)
        self.bb_masked.add_(other.bb_masked)


@dataclass(frozen=True)
class SplitCandidates:
    """Masked-cosine accumulators for candidate pairs anchored on one dictionary's features:
    pair (anchor f, partner[f, j]) accumulates over the tokens where the anchor fires."""

    anchor: str
    other: str
    partner: torch.Tensor  # [n_anchor, c] indices into `other`
    sums: PairSums

    def fresh(self) -> SplitCandidates:
        """The same pairs with zero sums (one per part)."""
        return SplitCandidates(self.anchor, self.other, self.partner,
                               PairSums.zeros(self.partner))

    def to(self, device: str) -> SplitCandidates:
        return SplitCandidates(self.anchor, self.other, self.partner.to(device),
                               self.sums.to(device))

    def with_sums(self, sums: PairSums) -> SplitCandidates:
        return SplitCandidates(self.anchor, self.other, self.partner, sums)


@dataclass(frozen=True)
class SplitEdges:
    """Kept edges between two adjacent sizes: each feature of the larger dictionary with its
    best parent in the smaller one (arrays aligned by edge)."""

    small: str
    large: str
    index_small: np.ndarray
    index_large: np.ndarray
    masked_cosine: np.ndarray  # activation cosine over the child's firing tokens
    decoder_cosine: np.ndarray
    containment: np.ndarray  # share of the child's Σ c² on tokens where the parent fires

    def __len__(self) -> int:
        return int(self.index_small.size)


@dataclass(frozen=True)
class _Measures:
    """Every candidate pair of one (small, large) dictionary pair, flattened."""

    parent: torch.Tensor  # index in the smaller dictionary
    child: torch.Tensor  # index in the larger dictionary
    activation_cosine: torch.Tensor
    containment: torch.Tensor


def split_candidates(anchor: Dictionary, other: Dictionary, c: int,
                     device: str) -> SplitCandidates:
    cos = normalized_rows(anchor.direction) @ normalized_rows(other.direction).T
    partner = cos.topk(min(c, other.n), dim=1).indices.to(device)
    return SplitCandidates(anchor.name, other.name, partner, PairSums.zeros(partner))


def accumulate(cand: SplitCandidates, a_codes: torch.Tensor, b_codes: torch.Tensor) -> None:
    """Add one batch's sums (dense codes [B, n] of the anchor and the other dictionary)."""
    row, feat = (a_codes > 0).nonzero(as_tuple=True)
    if row.numel() == 0:
        return
    a = a_codes[row, feat].double()[:, None]  # [E, 1]
    partners = cand.partner[feat]  # [E, c]
    b = b_codes[row[:, None], partners].clamp(min=0).double()  # [E, c]
    n_c = partners.shape[1]
    pid = (feat[:, None] * n_c + torch.arange(n_c, device=row.device)).reshape(-1)
    s = cand.sums
    s.ab.view(-1).index_add_(0, pid, (a * b).reshape(-1))
    s.aa_masked.view(-1).index_add_(0, pid, (a * a * (b > 0)).reshape(-1))
    s.bb_masked.view(-1).index_add_(0, pid, (b * b).reshape(-1))


def measures(cand: SplitCandidates, anchor_sumsq: torch.Tensor, other_sumsq: torch.Tensor,
             anchor_is_parent: bool) -> _Measures:
    """The child-side measures of every candidate pair, whichever side anchored.

    With the parent anchoring, Σ_{p>0} c² is `bb_masked` and Σ_{c>0} p² is `aa_masked`; with
    the child anchoring they swap. Σ c² is the child's total from pass 1."""
    anchor_idx = torch.arange(cand.partner.shape[0], device=cand.partner.device)[:, None]
    anchor_idx = anchor_idx.expand_as(cand.partner)
    if anchor_is_parent:
        parent, child = anchor_idx, cand.partner
        child_sumsq = other_sumsq[cand.partner]
        child_in_parent, parent_in_child = cand.sums.bb_masked, cand.sums.aa_masked
    else:
        parent, child = cand.partner, anchor_idx
        child_sumsq = anchor_sumsq[:, None].expand_as(cand.partner)
        child_in_parent, parent_in_child = cand.sums.aa_masked, cand.sums.bb_masked
    act_cos = torch.nan_to_num(cand.sums.ab / (parent_in_child * child_sumsq).sqrt(), nan=0.0)
    containment = torch.nan_to_num(child_in_parent / child_sumsq, nan=0.0)
    return _Measures(parent.reshape(-1), child.reshape(-1), act_cos.reshape(-1),
                     containment.reshape(-1))


def split_edges(cands: list[SplitCandidates], sumsq: Mapping[str, torch.Tensor],
                n_active: Mapping[str, torch.Tensor], dictionaries: list[Dictionary],
                n_tokens: int, criterion: SplitCriterion) -> list[SplitEdges]:
    """Per adjacent pair (small, large): for each feature of the larger dictionary, its best
    parent in the smaller one among the candidates that meet `criterion`.

    `sumsq` (Σ a² per feature) and `n_active` (tokens where it fired) come from pass 1, by
    dictionary name: the only two summaries the measures need."""
    by_name = {d.name: d for d in dictionaries}
    grouped: dict[tuple[str, str], list[_Measures]] = {}
    for cand in cands:
        parent_side = by_name[cand.anchor].n <= by_name[cand.other].n
        key = (cand.anchor, cand.other) if parent_side else (cand.other, cand.anchor)
        grouped.setdefault(key, []).append(measures(
            cand, sumsq[cand.anchor], sumsq[cand.other], parent_side))
    out = []
    for (small, large), parts in grouped.items():
        ia = torch.cat([p.parent for p in parts])
        ib = torch.cat([p.child for p in parts])
        act = torch.cat([p.activation_cosine for p in parts])
        cont = torch.cat([p.containment for p in parts])
        # The same pair may come from both anchors, with identical measures: keep one.
        pair = ia * by_name[large].n + ib
        first = _first_occurrences(pair)
        ia, ib, act, cont = ia[first], ib[first], act[first], cont[first]
        dec = (normalized_rows(by_name[small].direction)[ia] *
               normalized_rows(by_name[large].direction)[ib]).sum(1).double()
        dens_a = n_active[small][ia].double() / n_tokens
        dens_b = n_active[large][ib].double() / n_tokens
        low = schema.ULTRALOW_DENSITY
        keep = ((dens_a >= low) & (dens_b >= low) & (dec >= criterion.min_decoder_cosine) &
                (cont >= criterion.min_containment) &
                (act >= criterion.min_activation_cosine))
        ia, ib, act, cont, dec = ia[keep], ib[keep], act[keep], cont[keep], dec[keep]
        # One parent per child: the closest direction among those kept.
        order = torch.argsort(dec, descending=True, stable=True)
        ia, ib, act, cont, dec = ia[order], ib[order], act[order], cont[order], dec[order]
        first = _first_occurrences(ib)
        out.append(SplitEdges(small, large, ia[first].cpu().numpy(), ib[first].cpu().numpy(),
                              act[first].float().cpu().numpy(),
                              dec[first].float().cpu().numpy(),
                              cont[first].float().cpu().numpy()))
    return out


def _first_occurrences(x: torch.Tensor) -> torch.Tensor:
    """Index of the first occurrence of each distinct value of x, in sorted-value order."""
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.numel(), device=x.device), reduce="amin")
    return first
