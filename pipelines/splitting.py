"""Feature splitting between adjacent SAE sizes: which feature of the larger dictionary
refines which feature of the smaller one.

Candidates are, for every feature of either dictionary, its `split_candidates` nearest
features of the other by decoder cosine (the cheap first filter). For each candidate (a, b)
the statistics pass accumulates Σ a·b, Σ a²·[b>0], Σ b²·[a>0] over the tokens where the anchor
fires (which covers every token where a·b ≠ 0), giving the masked cosines
cos_a = Σab / sqrt(Σa² · Σ_{a>0} b²) and cos_b = Σab / sqrt(Σ_{b>0} a² · Σb²); the edge weight is
the larger. Features with density < `schema.ULTRALOW_DENSITY` (ultralow or dead) are left
out; edges above `split_threshold` go to the writer, which derives the families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from feature_store import schema
from pipelines.dictionaries import Dictionary
from pipelines.directions import normalized_rows

if TYPE_CHECKING:
    from pipelines.sampling import DictionaryStats


@dataclass
class SplitCandidates:
    """Masked-cosine accumulators for candidate pairs anchored on one dictionary's features:
    pair (anchor f, partner[f, j]) accumulates over the tokens where the anchor fires."""

    anchor: str
    other: str
    partner: torch.Tensor  # [n_anchor, c] indices into `other`
    ab: torch.Tensor  # [n_anchor, c] Σ a·b
    aa_masked: torch.Tensor  # Σ anchor² where the partner fires
    bb_masked: torch.Tensor  # Σ partner² where the anchor fires


@dataclass(frozen=True)
class SplitEdges:
    """Kept edges between two adjacent sizes: each feature of the larger dictionary with its
    best candidate parent in the smaller one (arrays aligned by edge)."""

    small: str
    large: str
    index_small: np.ndarray
    index_large: np.ndarray
    masked_cosine: np.ndarray
    decoder_cosine: np.ndarray

    def __len__(self) -> int:
        return int(self.index_small.size)


def split_candidates(anchor: Dictionary, other: Dictionary, c: int,
                     device: str) -> SplitCandidates:
    cos = normalized_rows(anchor.direction) @ normalized_rows(other.direction).T
    partner = cos.topk(min(c, other.n), dim=1).indices
    z = torch.zeros(partner.shape, dtype=torch.float64, device=device)
    return SplitCandidates(anchor.name, other.name, partner, z, z.clone(), z.clone())


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
    cand.ab.view(-1).index_add_(0, pid, (a * b).reshape(-1))
    cand.aa_masked.view(-1).index_add_(0, pid, (a * a * (b > 0)).reshape(-1))
    cand.bb_masked.view(-1).index_add_(0, pid, (b * b).reshape(-1))


def split_edges(cands: list[SplitCandidates], stats: dict[str, DictionaryStats],
                dictionaries: list[Dictionary], n_tokens: int,
                threshold: float) -> list[SplitEdges]:
    """Per adjacent pair (small, large): for each feature of the larger dictionary, its best
    candidate parent in the smaller one, when the masked cosine is above `threshold`."""
    by_name = {d.name: d for d in dictionaries}
    # (small, large) -> parts of (index in small, index in large, masked cosine)
    grouped: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for cand in cands:
        a_sumsq = stats[cand.anchor].sumsq[:, None]
        b_sumsq = stats[cand.other].sumsq[cand.partner]
        cos_a = cand.ab / (a_sumsq * cand.bb_masked).sqrt()
        cos_b = cand.ab / (cand.aa_masked * b_sumsq).sqrt()
        masked = torch.nan_to_num(torch.maximum(cos_a.nan_to_num(0.0), cos_b.nan_to_num(0.0)))
        anchor_idx = torch.arange(cand.partner.shape[0], device=cand.partner.device)[:, None]
        anchor_idx = anchor_idx.expand_as(cand.partner)
        if by_name[cand.anchor].n <= by_name[cand.other].n:
            key = (cand.anchor, cand.other)
            i_small, i_large = anchor_idx, cand.partner
        else:
            key = (cand.other, cand.anchor)
            i_small, i_large = cand.partner, anchor_idx
        grouped.setdefault(key, []).append(
            (i_small.reshape(-1), i_large.reshape(-1), masked.reshape(-1)))
    out = []
    for (small, large), parts in grouped.items():
        ia = torch.cat([p[0] for p in parts])
        ib = torch.cat([p[1] for p in parts])
        mc = torch.cat([p[2] for p in parts])
        dens_a = stats[small].n_active[ia].double() / n_tokens
        dens_b = stats[large].n_active[ib].double() / n_tokens
        low = schema.ULTRALOW_DENSITY
        keep = (dens_a >= low) & (dens_b >= low) & (mc > threshold)
        ia, ib, mc = ia[keep], ib[keep], mc[keep]
        # One parent per feature of the larger dictionary: its strongest edge. All pairs above
        # the threshold chain nearly every feature into one component (seen on tiny: 3,429 of
        # 3,584 features); best parents give a forest whose trees are the families, as in
        # Anthropic's feature-splitting figures.
        order = torch.argsort(mc, descending=True, stable=True)
        ia, ib, mc = ia[order], ib[order], mc[order]
        first = _first_occurrences(ib)
        ia, ib, mc = ia[first], ib[first], mc[first]
        dec = (normalized_rows(by_name[small].direction)[ia] *
               normalized_rows(by_name[large].direction)[ib]).sum(1)
        out.append(SplitEdges(small, large, ia.cpu().numpy(), ib.cpu().numpy(),
                              mc.float().cpu().numpy(), dec.float().cpu().numpy()))
    return out


def _first_occurrences(x: torch.Tensor) -> torch.Tensor:
    """Index of the first occurrence of each distinct value of x, in sorted-value order."""
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.numel(), device=x.device), reduce="amin")
    return first
