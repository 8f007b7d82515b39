"""stats stage: every number a feature page shows, for every SAE dictionary and the raw neurons.

Reads the cached `blocks.0.mlp.hook_post` activations of one split (`stats.split`, default
the held-out `val` documents), the token sequences for context, the model and the SAEs, and
writes `runs/<name>/store/` through `feature_store.writer.StoreWriter` (never directly).

Units. A "dictionary" is a set of units with an activation and an output direction in
activation space: SAE feature i has activation f_i(x) (`feature_store.sae_files.encode`) and
direction W_dec[i] / input_scale (the SAE works on inputs scaled by input_scale, so this is
its contribution per unit activation to the *unscaled* hook_post); `neurons` is the identity
dictionary: activation = the raw hook_post value, direction = the basis vector. "Active"
means > 0 throughout (for GeLU neurons negative values are inactive, as in `records`).

Passes, each over the split in batches of whole sequences (`stats.batch_tokens` tokens):
1. encode every dictionary: n_active, sum, sum of squares, max, the smallest positive
   activation, streaming top-k (merge the batch's top-k into the running top-k), and the
   accumulators of the masked activation cosine for feature-splitting candidates;
2. encode again, now that each feature's max is known: the shared log10-spaced activation
   histogram, counts in the 11 equal-width intervals over (0, max], and for each interval a
   sample of `examples_per_interval` activations drawn exactly uniformly without
   replacement: every activation gets an i.i.d. uniform key and each (feature, interval)
   keeps the m smallest keys seen so far (a vectorised bottom-m reservoir; an activation
   whose key is above the group's current m-th smallest can never enter, so most are
   dropped by one comparison). Window activations are read here, while the batch holding
   the window is in memory; top-k windows too;
3. run the model over the sequences holding examples, for the ablation effect (below).
Memory is bounded by the batch, k and the dictionary sizes; the tokens of the split
([n_seq, n_ctx] int32, 1/d_mlp of the activations) are read whole for the windows.

Windows: `window_before` tokens before and `window_after` after the example token, clipped
to positions 1..n_ctx-1 of its sequence (BOS, position 0, has no cached activation and is
the same in every sequence, so it is never shown).

Ablation effect (Towards Monosemanticity): Δ log p(token[t+1]) at token t when the unit's
contribution a·v (v = direction · W_out, in the residual stream) is removed. In a one-layer
model the MLP writes straight into the final residual, so only the logits at t change:
logits' = LN_final(r_t − a·v)·W_U + b_U, with LN_final's real normalisation recomputed on the
modified residual. Computed without a new forward pass per pair: with c = r − mean(r),
G = diag(γ)·W_U, z = c·G and w = (v − mean(v))·G (the logit weights),
logits' = (z − a·w) / σ' + β·W_U + b_U, σ' = sqrt(mean((c − a·v_c)²) + ε): exact, and only
d_vocab work per (unit, token) instead of d_model·d_vocab. 0 where the unit is inactive; NaN
at the window's last token (its next token is not shown).

Logit weights: w_i = (v_i − mean(v_i))·diag(γ)·W_U: the direct effect on the logits per unit
of activation with LN_final's centring and γ folded in. LN's data-dependent scale 1/σ is NOT
folded in (it depends on the token), so the values rank tokens and compare features at one
scale, not the change in logit at a given token (the ablation effect gives that).

Neighbours: within a dictionary, nearest by decoder cosine (for neurons, whose basis vectors
are orthogonal, by the cosine of their W_out output directions, as the schema says);
counterparts in every other dictionary by decoder cosine in activation space (neurons: their
basis vectors, so the cosine to SAE feature i is W_dec[i, j] / |W_dec[i]|); aligned neurons of
an SAE feature: largest |cosine| between W_out·d_i and each neuron's W_out row (signed value
stored).

Feature splitting between adjacent SAE sizes: candidates are, for every feature of either
dictionary, its `split_candidates` nearest features of the other by decoder cosine; for each
candidate (a, b) pass 1 accumulates Σ a·b, Σ a²·[b>0], Σ b²·[a>0] over the tokens where the
anchor fires (which covers every token where a·b ≠ 0), giving the masked cosines
cos_a = Σab / sqrt(Σa² · Σ_{a>0} b²) and cos_b = Σab / sqrt(Σ_{b>0} a² · Σb²); the edge weight is
the larger. Features with density < 1e-5 (ultralow or dead) are left out; edges above
`split_threshold` go to the writer, which derives the families.

UMAP: one joint 2-D embedding (cosine metric) of the unit decoder directions of every SAE
dictionary plus the neurons' basis vectors. umap-learn compiles with numba on first use in a
fresh environment (~45 s on 2 cores; numba caches the compiled code on disk, later runs pay
~2-5 s); `stats.umap = false` skips it and the store's UMAP table is empty (never a silent
substitute).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from feature_store import schema
from feature_store.records import N_INTERVALS, NEURONS
from feature_store.sae_files import SaeSpec, encode, load_sae
from feature_store.transformer_files import capture, load_transformer
from feature_store.writer import StoreWriter
from pipelines.activations import shard_paths
from pipelines.config import StatsConfig
from pipelines.errors import InputError
from pipelines.model_training import pick_device
from pipelines.tokens import read_sequences

RESID_HOOK = "ln_final.hook_in"  # the final residual stream, what LN_final reads (TL 4.3 bridge)
ULTRALOW = schema.ULTRALOW_DENSITY


# -- the units being measured -----------------------------------------------------------------

@dataclass
class Unit:
    """One dictionary: how to get activations from hook_post, and its directions.

    `direction` [n, d_mlp]: contribution to hook_post per unit activation (None = identity,
    the neurons); `out_dir` [n, d_model] = direction · W_out."""

    name: str
    n: int
    encode: Callable[[torch.Tensor], torch.Tensor]  # [B, d_mlp] -> [B, n]
    direction: torch.Tensor | None
    out_dir: torch.Tensor
    info: dict = field(default_factory=dict)
    sparse: Callable | None = None  # x -> (codes, row, feat, val) without a dense scan

    def entries(self, x: torch.Tensor):
        """Dense codes [B, n] and the active (> 0) entries as (row, feature, value)."""
        if self.sparse is not None:
            return self.sparse(x)
        codes = self.encode(x)
        row, feat = (codes > 0).nonzero(as_tuple=True)
        return codes, row, feat, codes[row, feat]


def topk_entries(spec: SaeSpec, t: dict, x: torch.Tensor):
    """`sae_files.encode` for topk SAEs, also returning the active entries it scattered."""
    pre = (x * spec.input_scale - t["b_dec"]) @ t["W_enc"].T + t["b_enc"]
    vals, idx = pre.topk(spec.k, dim=-1)
    vals = vals.relu()
    codes = torch.zeros_like(pre).scatter_(-1, idx, vals)
    active = vals > 0
    row = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(idx)[active]
    return codes, row, idx[active], vals[active]


@dataclass
class Batch:
    seq_ids: torch.Tensor  # [S] int64, rows of tokens/<split>.parquet
    x: torch.Tensor  # [S * (n_ctx - 1), d_mlp] float32, positions 1..n_ctx-1 of each sequence


def activation_batches(act_dir: Path, split: str, n_ctx: int, batch_tokens: int,
                       max_tokens: int, device: str) -> Iterator[Batch]:
    """Whole sequences in shard order, `batch_tokens // (n_ctx-1)` sequences at a time,
    stopping after `max_tokens` tokens (whole sequences; 0 = all)."""
    per_seq = n_ctx - 1
    seqs_per_batch = max(1, batch_tokens // per_seq)
    max_seqs = max(1, max_tokens // per_seq) if max_tokens > 0 else None
    done = 0
    for path in shard_paths(act_dir, split):
        try:
            pf = pq.ParquetFile(path)
            pending: list = []
            for rb in pf.iter_batches(batch_size=seqs_per_batch * per_seq,
                                      columns=["seq_id", "position", "acts"]):
                pending.append(rb)
                rows = sum(b.num_rows for b in pending)
                if rows < seqs_per_batch * per_seq:
                    continue
                yield from _emit(pending, path, per_seq, device, max_seqs, done)
                done += rows // per_seq
                pending = []
                if max_seqs is not None and done >= max_seqs:
                    return
            if pending:
                rows = sum(b.num_rows for b in pending)
                yield from _emit(pending, path, per_seq, device, max_seqs, done)
                done += rows // per_seq
                if max_seqs is not None and done >= max_seqs:
                    return
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable activation shard ({err}); rerun with "
                             f"--force activations") from None


def _emit(pending, path: Path, per_seq: int, device: str, max_seqs: int | None,
          done: int) -> Iterator[Batch]:
    seq_id = np.concatenate([b.column("seq_id").to_numpy() for b in pending]).astype(np.int64)
    position = np.concatenate([b.column("position").to_numpy() for b in pending])
    d = pending[0].column("acts").type.list_size
    acts = np.concatenate([b.column("acts").flatten().to_numpy().reshape(-1, d)
                           for b in pending])
    if seq_id.size % per_seq or not (
            np.all(seq_id.reshape(-1, per_seq) == seq_id[::per_seq, None])
            and np.all(position.reshape(-1, per_seq) == np.arange(1, per_seq + 1))):
        raise InputError(f"{path}: rows are not whole sequences of positions 1..{per_seq}; "
                         f"rerun with --force activations")
    seq_ids = seq_id[::per_seq]
    if max_seqs is not None:
        keep = max(0, min(len(seq_ids), max_seqs - done))
        seq_ids, acts = seq_ids[:keep], acts[: keep * per_seq]
    if len(seq_ids):
        x = torch.from_numpy(acts.astype(np.float32)).to(device)
        if not torch.isfinite(x).all():
            raise InputError(f"{path}: activation is NaN or Inf; rerun with --force activations")
        yield Batch(torch.from_numpy(seq_ids).to(device), x)


# -- passes 1 and 2 ---------------------------------------------------------------------------

@dataclass
class UnitStats:
    """Everything passes 1 and 2 produce for one dictionary (torch tensors, on `device`)."""

    n_active: torch.Tensor
    sum_act: torch.Tensor
    sumsq: torch.Tensor
    max_act: torch.Tensor
    min_pos: float
    top_val: torch.Tensor  # [n, K]; <= 0 means no example
    top_seq: torch.Tensor
    top_pos: torch.Tensor
    top_win: torch.Tensor | None = None  # [n, K, w]
    hist_edges: np.ndarray | None = None
    hist_counts: torch.Tensor | None = None
    interval_counts: torch.Tensor | None = None
    res_key: torch.Tensor | None = None  # [n * 11, m]; inf = empty slot
    res_seq: torch.Tensor | None = None
    res_pos: torch.Tensor | None = None
    res_act: torch.Tensor | None = None
    res_win: torch.Tensor | None = None  # [n * 11, m, w]


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


def window_offsets(cfg: StatsConfig, device: str) -> torch.Tensor:
    return torch.arange(-cfg.window_before, cfg.window_after + 1, device=device)


def _windows(codes: torch.Tensor, row: torch.Tensor, feat: torch.Tensor, n_ctx: int,
             offs: torch.Tensor) -> torch.Tensor:
    """[E, w] activations of feature feat[e] around batch row row[e] (0 outside the sequence)."""
    per_seq = n_ctx - 1
    within = (row % per_seq)[:, None] + offs[None, :]  # 0-based index of position - 1
    valid = (within >= 0) & (within < per_seq)
    rows = (row[:, None] + offs[None, :]).clamp(0, codes.shape[0] - 1)
    return torch.where(valid, codes[rows, feat[:, None]], torch.zeros((), device=codes.device))


def statistics(batches: Callable[[], Iterator[Batch]], units: list[Unit], cfg: StatsConfig,
               n_ctx: int, device: str, split_pairs: list[tuple[str, str]] = (),
               progress_total: int | None = None) -> tuple[dict[str, UnitStats],
                                                           list[SplitCandidates], int]:
    """Passes 1 and 2 over `batches()` (called twice; must yield the same batches)."""
    K, m, w = cfg.top_k, cfg.examples_per_interval, cfg.window_before + cfg.window_after + 1
    offs = window_offsets(cfg, device)
    by_name = {u.name: u for u in units}
    st: dict[str, UnitStats] = {}
    tops: dict[str, BottomM] = {}
    for u in units:
        st[u.name] = UnitStats(
            n_active=torch.zeros(u.n, dtype=torch.int64, device=device),
            sum_act=torch.zeros(u.n, dtype=torch.float64, device=device),
            sumsq=torch.zeros(u.n, dtype=torch.float64, device=device),
            max_act=torch.zeros(u.n, device=device), min_pos=float("inf"),
            top_val=torch.empty(0), top_seq=torch.empty(0), top_pos=torch.empty(0))
        tops[u.name] = BottomM(u.n, K, w, device)
    cands = [_split_candidates(by_name[a], by_name[b], cfg.split_candidates, device)
             for small, large in split_pairs for a, b in ((small, large), (large, small))]

    # Sparse (top-k) codes of pass 1 are kept for pass 2 when they fit in `code_cache_mb`:
    # re-encoding (a dense matmul + top-k per dictionary) is most of pass 2's cost. 12 bytes
    # per active entry; above the budget, pass 2 re-encodes and memory stays batch-bounded.
    sparse_k = sum(int(u.info.get("k", 0)) for u in units if u.sparse is not None)
    cached = {u.name: [] for u in units if u.sparse is not None} \
        if (progress_total or 0) * sparse_k * 12 <= cfg.code_cache_mb * 2**20 else {}

    n_tokens = 0
    bar = tqdm(total=progress_total, desc="stats (1/3 max, top-k)", unit="tok", unit_scale=True,
               disable=None)
    for batch in batches():
        B = batch.x.shape[0]
        n_tokens += B
        codes = {}
        for u in units:
            s = st[u.name]
            c, row, feat, val = u.entries(batch.x)
            codes[u.name] = c
            if u.name in cached:
                cached[u.name].append((row.to(torch.int32), feat.to(torch.int32), val))
            if val.numel() == 0:
                continue
            s.n_active += torch.bincount(feat, minlength=u.n)
            v64 = val.double()
            s.sum_act += torch.bincount(feat, weights=v64, minlength=u.n)
            s.sumsq += torch.bincount(feat, weights=v64 * v64, minlength=u.n)
            s.max_act.scatter_reduce_(0, feat, val, reduce="amax")
            s.min_pos = min(s.min_pos, float(val.min()))
            tops[u.name].offer(feat, -v64, row, val, batch.seq_ids, c, feat, n_ctx, offs)
        for cand in cands:
            _accumulate_split(cand, codes[cand.anchor], codes[cand.other])
        bar.update(B)
    bar.close()
    if n_tokens == 0:
        raise InputError("no activations in the split; rerun with --force activations")
    for u in units:
        s, t = st[u.name], tops[u.name]
        s.top_val = torch.where(torch.isfinite(t.key), t.act, torch.zeros_like(t.act))
        s.top_seq, s.top_pos, s.top_win = t.seq, t.pos, t.win

    # Pass 2: histogram, intervals, reservoirs, windows.
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    res: dict[str, BottomM] = {}
    for u in units:
        s = st[u.name]
        hi = float(s.max_act.max())
        lo = s.min_pos if np.isfinite(s.min_pos) else 1.0
        lo = max(lo, hi * 1e-6) if hi > 0 else 1e-6
        hi = max(hi, lo * 10)
        s.hist_edges = np.logspace(np.log10(lo), np.log10(hi), cfg.act_hist_bins + 1)
        s.hist_edges[0], s.hist_edges[-1] = lo, hi
        s.hist_counts = torch.zeros(u.n * cfg.act_hist_bins, dtype=torch.int64, device=device)
        s.interval_counts = torch.zeros(u.n * N_INTERVALS, dtype=torch.int64, device=device)
        res[u.name] = BottomM(u.n * N_INTERVALS, m, w, device)
    bar = tqdm(total=n_tokens, desc="stats (2/3 intervals)", unit="tok", unit_scale=True,
               disable=None)
    for batch in batches():
        for u in units:
            s = st[u.name]
            if u.name in cached:
                row, feat, val = cached[u.name].pop(0)
                row, feat = row.long(), feat.long()
                c = torch.zeros(batch.x.shape[0], u.n, device=device)
                c[row, feat] = val
            else:
                c, row, feat, val = u.entries(batch.x)
            if val.numel() == 0:
                continue
            v64 = val.double()
            edges = torch.from_numpy(s.hist_edges[1:-1]).to(device)
            hbin = torch.searchsorted(edges, v64.clamp(min=s.hist_edges[0]), right=True)
            s.hist_counts += torch.bincount(feat * cfg.act_hist_bins + hbin,
                                            minlength=u.n * cfg.act_hist_bins)
            g = feat * N_INTERVALS + interval_index(v64, s.max_act[feat].double())
            s.interval_counts += torch.bincount(g, minlength=u.n * N_INTERVALS)
            key = torch.rand(val.shape[0], generator=gen, dtype=torch.float64, device=device)
            res[u.name].offer(g, key, row, val, batch.seq_ids, c, feat, n_ctx, offs)
        bar.update(batch.x.shape[0])
    bar.close()
    for u in units:
        s, r = st[u.name], res[u.name]
        s.res_key, s.res_seq, s.res_pos, s.res_act, s.res_win = r.key, r.seq, r.pos, r.act, r.win
    return st, cands, n_tokens


class BottomM:
    """Per group, the m entries with the smallest keys seen so far, sorted by key, with
    payload (sequence, position, activation, window). key = −activation gives a streaming
    top-m; key = i.i.d. uniform gives a uniform sample without replacement (the m smallest
    of i.i.d. keys are a uniformly random m-subset). Only entries whose key beats the
    group's current m-th smallest are merged, and only the groups they touch are re-sorted."""

    def __init__(self, groups: int, m: int, w: int, device: str) -> None:
        self.m = m
        self.key = torch.full((groups, m), float("inf"), dtype=torch.float64, device=device)
        self.seq = torch.full((groups, m), -1, dtype=torch.int64, device=device)
        self.pos = torch.full((groups, m), -1, dtype=torch.int64, device=device)
        self.act = torch.zeros((groups, m), device=device)
        self.win = torch.zeros((groups, m, w), device=device)

    def offer(self, g, key, row, act, seq_ids, codes, feat, n_ctx, offs) -> None:
        enter = key < self.key[:, -1][g]
        if not enter.any():
            return
        g, key, row, act, feat = g[enter], key[enter], row[enter], act[enter], feat[enter]
        m = self.m
        touched, local = torch.unique(g, return_inverse=True)
        T = touched.numel()
        old_key = self.key[touched].reshape(-1)
        all_g = torch.cat([torch.arange(T, device=g.device).repeat_interleave(m), local])
        all_key = torch.cat([old_key, key])
        o1 = torch.argsort(all_key, stable=True)
        order = o1[torch.argsort(all_g[o1], stable=True)]
        gs = all_g[order]
        rank = torch.arange(gs.numel(), device=g.device) - torch.searchsorted(gs, gs)
        keep = order[rank < m]  # exactly m per touched group, smallest key first
        is_new = keep >= T * m
        new = keep[is_new] - T * m
        per_seq = n_ctx - 1

        def merged(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            flat_old = old[touched].reshape(T * m, *old.shape[2:])
            out = flat_old[keep.clamp(max=T * m - 1)]
            out[is_new] = fresh
            return out.reshape(T, m, *old.shape[2:])

        r = row[new]
        self.seq[touched] = merged(self.seq, seq_ids[r // per_seq])
        self.pos[touched] = merged(self.pos, r % per_seq + 1)
        self.act[touched] = merged(self.act, act[new])
        self.win[touched] = merged(self.win, _windows(codes, r, feat[new], n_ctx, offs))
        self.key[touched] = all_key[keep].reshape(T, m)


def interval_index(v: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
    """Which of the 11 equal-width intervals over (0, vmax] holds v: [lo, hi), last closed."""
    return (v / vmax * N_INTERVALS).floor().long().clamp(0, N_INTERVALS - 1)


def _split_candidates(anchor: Unit, other: Unit, c: int, device: str) -> SplitCandidates:
    cos = unit_rows(anchor.direction) @ unit_rows(other.direction).T
    partner = cos.topk(min(c, other.n), dim=1).indices
    z = torch.zeros(partner.shape, dtype=torch.float64, device=device)
    return SplitCandidates(anchor.name, other.name, partner, z, z.clone(), z.clone())


def _accumulate_split(cand: SplitCandidates, a_codes: torch.Tensor, b_codes: torch.Tensor) -> None:
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


def split_edges(cands: list[SplitCandidates], st: dict[str, UnitStats], units: list[Unit],
                n_tokens: int, threshold: float) -> list[tuple]:
    """Per adjacent pair (small, large): (small, large, index_small, index_large, masked cosine,
    decoder cosine): for each feature of the larger dictionary, its best candidate parent in
    the smaller one, when above `threshold`."""
    by_name = {u.name: u for u in units}
    grouped: dict[tuple[str, str], list] = {}
    for cand in cands:
        a_sumsq = st[cand.anchor].sumsq[:, None]
        b_sumsq = st[cand.other].sumsq[cand.partner]
        cos_a = cand.ab / (a_sumsq * cand.bb_masked).sqrt()
        cos_b = cand.ab / (cand.aa_masked * b_sumsq).sqrt()
        masked = torch.nan_to_num(torch.maximum(cos_a.nan_to_num(0.0), cos_b.nan_to_num(0.0)))
        anchor_idx = torch.arange(cand.partner.shape[0], device=cand.partner.device)[:, None]
        anchor_idx = anchor_idx.expand_as(cand.partner)
        na, nb = by_name[cand.anchor].n, by_name[cand.other].n
        if na <= nb:
            key = (cand.anchor, cand.other)
            ia, ib = anchor_idx, cand.partner
        else:
            key = (cand.other, cand.anchor)
            ia, ib = cand.partner, anchor_idx
        grouped.setdefault(key, []).append((ia.reshape(-1), ib.reshape(-1), masked.reshape(-1)))
    out = []
    for (small, large), parts in grouped.items():
        ia = torch.cat([p[0] for p in parts])
        ib = torch.cat([p[1] for p in parts])
        mc = torch.cat([p[2] for p in parts])
        dens_a = st[small].n_active[ia].double() / n_tokens
        dens_b = st[large].n_active[ib].double() / n_tokens
        keep = (dens_a >= ULTRALOW) & (dens_b >= ULTRALOW) & (mc > threshold)
        ia, ib, mc = ia[keep], ib[keep], mc[keep]
        # One parent per feature of the larger dictionary: its strongest edge. All pairs above
        # the threshold chain nearly every feature into one component (seen on tiny: 3,429 of
        # 3,584 features); best parents give a forest whose trees are the families, as in
        # Anthropic's feature-splitting figures.
        order = torch.argsort(mc, descending=True, stable=True)
        ia, ib, mc = ia[order], ib[order], mc[order]
        uniq, first = _unique_first(ib)
        ia, ib, mc = ia[first], ib[first], mc[first]
        dec = (unit_rows(by_name[small].direction)[ia] *
               unit_rows(by_name[large].direction)[ib]).sum(1)
        out.append((small, large, ia.cpu().numpy(), ib.cpu().numpy(),
                    mc.float().cpu().numpy(), dec.float().cpu().numpy()))
    return out


def _unique_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((uniq.numel(),), x.numel(), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(x.numel(), device=x.device), reduce="amin")
    return uniq, first


def unit_rows(direction: torch.Tensor) -> torch.Tensor:
    return direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)


# -- pass 3: ablation effects ------------------------------------------------------------------

@dataclass
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


def logit_weights(out_dir: torch.Tensor, ro: Readout) -> torch.Tensor:
    """[n, d_vocab]: (v − mean v)·diag(γ)·W_U; see the module docstring."""
    return (out_dir - out_dir.mean(1, keepdim=True)) @ ro.G


def ablation_effects(resid: torch.Tensor, next_tok: torch.Tensor, act: torch.Tensor,
                     out_dir: torch.Tensor, weights: torch.Tensor, ro: Readout) -> torch.Tensor:
    """Δ log p(next) per pair: resid [P, d_model] final residual at the token, next_tok [P],
    act [P], out_dir [P, d_model] (v), weights [P, d_vocab] (the logit weights of v)."""
    c = resid - resid.mean(1, keepdim=True)
    z = c @ ro.G
    sigma = ((c * c).mean(1, keepdim=True) + ro.eps).sqrt()
    base = z / sigma + ro.bias
    lp_base = base.gather(1, next_tok[:, None])[:, 0] - torch.logsumexp(base, 1)
    return _delta_logp(z, c, lp_base, next_tok, act, out_dir, weights, ro)


def _delta_logp(z, c, lp_base, next_tok, act, out_dir, weights, ro: Readout,
                chunk: int = 128, tok: torch.Tensor | None = None,
                fi: torch.Tensor | None = None) -> torch.Tensor:
    """The per-pair part: only O(d_vocab) work per pair (z = c·G precomputed per token).

    With `tok`/`fi`, z, c, lp_base, next_tok are per-token tables and out_dir, weights
    per-unit tables, gathered here a small chunk at a time: materialising [pairs, d_vocab]
    copies up front cost more memory traffic than the arithmetic (and 128-row chunks stay in
    cache)."""
    n = act.shape[0]
    out = torch.empty(n, device=act.device)
    bias = ro.bias
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        t = tok[sl] if tok is not None else sl
        f = fi[sl] if fi is not None else sl
        a = act[sl][:, None]
        od = out_dir[f]
        v = od - od.mean(1, keepdim=True)
        c2 = c[t] - a * v
        inv = 1.0 / ((c2 * c2).mean(1, keepdim=True) + ro.eps).sqrt()
        new = torch.addcmul(z[t], a, weights[f], value=-1.0).mul_(inv).add_(bias)
        picked = new.gather(1, next_tok[t][:, None])[:, 0]
        out[sl] = picked - torch.logsumexp(new, 1) - lp_base[t]
    return out


# -- the stage ---------------------------------------------------------------------------------

def load_units(run_dir: Path, W_out: torch.Tensor, device: str) -> list[Unit]:
    """neurons first, then every SAE under sae/ by size."""
    d_mlp = W_out.shape[0]
    units = [Unit(NEURONS, d_mlp, lambda x: x, torch.eye(d_mlp, device=device), W_out.clone(),
                  {"hook_name": "blocks.0.mlp.hook_post"})]
    sizes = sorted(int(p.name) for p in (run_dir / "sae").iterdir()
                   if p.is_dir() and p.name.isdigit() and (p / "sae.safetensors").exists())
    if not sizes:
        raise InputError(f"{run_dir / 'sae'}: no trained SAE; rerun with --force sae")
    for size in sizes:
        spec, tensors = load_sae(run_dir / "sae" / str(size), device=device)
        if spec.d_in != d_mlp:
            raise InputError(f"{run_dir / 'sae' / str(size)}: d_in {spec.d_in} != d_mlp {d_mlp}")
        direction = tensors["W_dec"] / spec.input_scale
        units.append(Unit(schema.dictionary_name(spec.d_sae), spec.d_sae,
                          (lambda x, spec=spec, t=tensors: encode(spec, t, x)),
                          direction, direction @ W_out,
                          {"recipe": spec.recipe, "k": spec.k, "d_in": spec.d_in,
                           "input_scale": spec.input_scale, "hook_name": spec.hook_name},
                          (lambda x, spec=spec, t=tensors: topk_entries(spec, t, x))
                          if spec.recipe == "topk" else None))
    return units


def model_readout(model) -> tuple[torch.Tensor, Readout]:
    """W_out [d_mlp, d_model] and the readout, from the bridge's state dict."""
    sd = model.state_dict()
    W_out = sd["blocks.0.mlp.out.weight"].T.float().contiguous()
    ro = Readout(gamma=sd["ln_final.weight"].float(), beta=sd["ln_final.bias"].float(),
                 W_U=sd["unembed.weight"].T.float().contiguous(),
                 b_U=sd["unembed.bias"].float(), eps=float(model.cfg.eps))
    return W_out, ro


@torch.no_grad()
def final_residual(model, tokens: torch.Tensor) -> torch.Tensor:
    """[S, n_ctx, d_model] input of LN_final."""
    return capture(model, tokens, RESID_HOOK).float()  # stops before the unembedding


def run(cfg: StatsConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = load_transformer(run_dir / "model", device=device)
    n_ctx = int(model.cfg.n_ctx)
    W_out, ro = model_readout(model)
    units = load_units(run_dir, W_out, device)
    seqs = read_sequences(run_dir / "tokens" / f"{cfg.split}.parquet")
    if seqs.shape[1] != n_ctx:
        raise InputError(f"{run_dir / 'tokens'}: n_ctx {seqs.shape[1]} != model n_ctx {n_ctx}")
    act_dir = run_dir / "activations"
    total = seqs.shape[0] * (n_ctx - 1)
    if cfg.max_tokens:
        total = min(total, max(1, cfg.max_tokens // (n_ctx - 1)) * (n_ctx - 1))

    def batches() -> Iterator[Batch]:
        return activation_batches(act_dir, cfg.split, n_ctx, cfg.batch_tokens, cfg.max_tokens,
                                  device)

    sae_names = [u.name for u in units if u.name != NEURONS]
    with torch.no_grad():
        st, cands, n_tokens = statistics(batches, units, cfg, n_ctx, device,
                                         list(zip(sae_names, sae_names[1:])), total)
        examples = {u.name: collect_examples(st[u.name], cfg) for u in units}
        weights = {u.name: logit_weights(u.out_dir, ro) for u in units}
        t_abl = time.perf_counter()
        n_pairs = fill_ablation(model, seqs, units, examples, weights, ro, cfg, n_ctx, device)
        t_abl = time.perf_counter() - t_abl
        edges = split_edges(cands, st, units, n_tokens, cfg.split_threshold)
    umap_xy, umap_s = (joint_umap(units, cfg) if cfg.umap else (None, 0.0))

    vocab = pq.read_table(run_dir / "tokenizer" / "vocab.parquet").to_pandas()
    display = vocab.sort_values("id")["display"].tolist()
    model_metrics = _read_json(run_dir / "model" / "metrics.json")
    sae_metrics = pq.read_table(run_dir / "sae" / "metrics.parquet").to_pylist()
    run_info = {k: model_metrics.get(k) for k in ("act_fn", "n_params", "val_loss",
                                                   "unigram_val_loss", "val_tokens")}
    run_info.update({"d_model": int(model.cfg.d_model), "d_mlp": int(model.cfg.d_mlp),
                     "d_vocab": int(model.cfg.d_vocab), "n_ctx": n_ctx, "split": cfg.split,
                     "stats_tokens": n_tokens})
    writer = StoreWriter(out, n_tokens=n_tokens, run_info=run_info)
    with writer:
        for u in units:
            writer.add_dictionary(u.name, u.n, **u.info)
        writer.set_vocab(display)
        for u in units:
            write_unit(writer, u, st[u.name], examples[u.name], weights[u.name], seqs, cfg,
                       n_ctx, units)
            writer.add_metrics(u.name, unit_metrics(u, st[u.name], n_tokens, sae_metrics))
        for small, large, ia, ib, mc, dc in edges:
            writer.add_split_edges(small, ia, large, ib, mc, dc)
        if umap_xy is not None:
            at = 0
            for u in units:
                writer.add_umap(u.name, umap_xy[at: at + u.n, 0], umap_xy[at: at + u.n, 1])
                at += u.n
    seconds = time.perf_counter() - start
    n_edges = sum(len(e[2]) for e in edges)
    summary = (f"stats: {len(sae_names)} dictionaries + neurons, {_short(n_tokens)} tokens, "
               f"{n_tokens / seconds:,.0f} tok/s, {seconds:.0f} s (ablation {n_pairs:,} "
               f"pairs {t_abl:.0f} s, umap {'off' if not cfg.umap else f'{umap_s:.0f} s'}, "
               f"{n_edges} split edges)")
    return summary, {"n_tokens": n_tokens, "dictionaries": [u.name for u in units],
                     "seconds": round(seconds, 2), "tokens_per_second": round(n_tokens / seconds, 1),
                     "ablation_pairs": n_pairs, "ablation_seconds": round(t_abl, 2),
                     "umap_seconds": round(umap_s, 2), "split_edges": n_edges, "device": device}


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err}); rerun with --force model") from None


@dataclass
class Examples:
    """All example rows of one dictionary, columnar (numpy), before token ids and ablation."""

    feature: np.ndarray
    kind: np.ndarray
    rank: np.ndarray
    seq_id: np.ndarray
    position: np.ndarray
    act: np.ndarray
    acts: np.ndarray  # [m, w]
    ablation: np.ndarray | None = None  # [m, w]


def collect_examples(s: UnitStats, cfg: StatsConfig) -> Examples:
    n, K = s.top_val.shape
    w = s.top_win.shape[-1]
    top = s.top_val > 0
    f_top, r_top = top.nonzero(as_tuple=True)
    filled = torch.isfinite(s.res_key)
    g, r_int = filled.nonzero(as_tuple=True)
    cat = lambda a, b: torch.cat([a, b]).cpu().numpy()  # noqa: E731
    return Examples(
        feature=cat(f_top, g // N_INTERVALS),
        kind=cat(torch.full_like(f_top, schema.KIND_TOP), g % N_INTERVALS),
        rank=cat(r_top, r_int),
        seq_id=cat(s.top_seq[f_top, r_top], s.res_seq[g, r_int]),
        position=cat(s.top_pos[f_top, r_top], s.res_pos[g, r_int]),
        act=cat(s.top_val[f_top, r_top], s.res_act[g, r_int]),
        acts=torch.cat([s.top_win[f_top, r_top].reshape(-1, w),
                        s.res_win[g, r_int].reshape(-1, w)]).cpu().numpy())


def window_layout(ex: Examples, cfg: StatsConfig, n_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions [m, w] of each window column, and which are inside the sequence."""
    offs = np.arange(-cfg.window_before, cfg.window_after + 1)
    pos = ex.position[:, None] + offs[None, :]
    return pos, (pos >= 1) & (pos <= n_ctx - 1)


@torch.no_grad()
def fill_ablation(model, seqs: np.ndarray, units: list[Unit], examples: dict[str, Examples],
                  weights: dict[str, torch.Tensor], ro: Readout, cfg: StatsConfig, n_ctx: int,
                  device: str) -> int:
    """Pass 3: Δ log p(next token) for every active, non-final window token of every example.
    Each distinct (unit, sequence, position) is computed once."""
    parts = []
    for ui, u in enumerate(units):
        ex = examples[u.name]
        pos, valid = window_layout(ex, cfg, n_ctx)
        last = valid & ~np.roll(valid, -1, axis=1)
        last[:, -1] = valid[:, -1]
        ex.ablation = np.where(valid, 0.0, np.nan).astype(np.float32)
        ex.ablation[last] = np.nan
        need = valid & ~last & (ex.acts > 0)
        r, j = np.nonzero(need)
        parts.append((ui, r, j, ex.feature[r], ex.seq_id[r], pos[r, j], ex.acts[r, j]))
    if not any(p[1].size for p in parts):
        return 0
    ui = np.concatenate([np.full(p[1].size, p[0]) for p in parts])
    feat = np.concatenate([p[3] for p in parts])
    seq = np.concatenate([p[4] for p in parts])
    pos = np.concatenate([p[5] for p in parts])
    act = np.concatenate([p[6] for p in parts]).astype(np.float32)
    offsets = np.cumsum([0] + [u.n for u in units])
    gfeat = offsets[ui] + feat
    key = (gfeat * seqs.shape[0] + seq) * n_ctx + pos
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    u_feat, u_seq, u_pos, u_act = gfeat[first], seq[first], pos[first], act[first]
    out_dir = torch.cat([u.out_dir for u in units])
    all_w = torch.cat([weights[u.name] for u in units])
    result = np.empty(uniq.size, dtype=np.float32)
    order = np.argsort(u_seq, kind="stable")
    seq_list = np.unique(u_seq)
    per_batch = max(1, min(32, cfg.batch_tokens // n_ctx))  # z is [tokens, d_vocab]
    bar = tqdm(total=uniq.size, desc="stats (3/3 ablation)", unit="pair", unit_scale=True,
               disable=None)
    sorted_seq = u_seq[order]
    G, bias = ro.G, ro.bias
    for lo in range(0, seq_list.size, per_batch):
        chunk = seq_list[lo: lo + per_batch]
        a = np.searchsorted(sorted_seq, chunk[0], side="left")
        b = np.searchsorted(sorted_seq, chunk[-1], side="right")
        idx = order[a:b]
        tokens = torch.from_numpy(seqs[chunk].astype(np.int64)).to(device)
        resid = final_residual(model, tokens).reshape(-1, G.shape[0])
        c = resid - resid.mean(1, keepdim=True)
        z = c @ G  # [S * n_ctx, d_vocab]
        base = z / ((c * c).mean(1, keepdim=True) + ro.eps).sqrt() + bias
        nxt_all = torch.roll(tokens, -1, dims=1).reshape(-1)  # the last position is never asked
        lp_base = base.gather(1, nxt_all[:, None])[:, 0] - torch.logsumexp(base, 1)
        del base
        tok = torch.from_numpy(np.searchsorted(chunk, u_seq[idx]) * n_ctx + u_pos[idx]).to(device)
        fi = torch.from_numpy(u_feat[idx]).to(device)
        delta = _delta_logp(z, c, lp_base, nxt_all, torch.from_numpy(u_act[idx]).to(device),
                            out_dir, all_w, ro, tok=tok, fi=fi)
        result[idx] = delta.cpu().numpy()
        bar.update(idx.size)
    bar.close()
    values = result[inverse]
    at = 0
    for p in parts:
        ex = examples[units[p[0]].name]
        n = p[1].size
        ex.ablation[p[1], p[2]] = values[at: at + n]
        at += n
    return int(uniq.size)


def write_unit(writer: StoreWriter, u: Unit, s: UnitStats, ex: Examples, weights: torch.Tensor,
               seqs: np.ndarray, cfg: StatsConfig, n_ctx: int, units: list[Unit]) -> None:
    writer.add_feature_summary(
        u.name, n_active=s.n_active.cpu().numpy(), max_act=s.max_act.cpu().numpy(),
        sum_act=s.sum_act.cpu().numpy(), act_hist_edges=s.hist_edges,
        act_hist_counts=s.hist_counts.reshape(u.n, -1).cpu().numpy())
    writer.add_interval_counts(u.name, s.interval_counts.reshape(u.n, N_INTERVALS).cpu().numpy())
    pos, valid = window_layout(ex, cfg, n_ctx)
    token_ids = np.where(valid, seqs[ex.seq_id[:, None], np.clip(pos, 0, n_ctx - 1)], -1)
    writer.add_examples(u.name, feature=ex.feature, kind=ex.kind, rank=ex.rank,
                        seq_id=ex.seq_id, position=ex.position,
                        center=np.full(ex.feature.size, cfg.window_before),
                        act=ex.act, token_ids=token_ids, acts=np.where(valid, ex.acts, 0.0),
                        ablation=ex.ablation)
    k = min(cfg.n_logits, weights.shape[1])
    top = weights.topk(k, dim=1)
    bottom = weights.topk(k, dim=1, largest=False)
    edges, counts = row_histograms(weights, cfg.logit_hist_bins)
    writer.add_logits(u.name, top_ids=top.indices.cpu().numpy(),
                      top_values=top.values.cpu().numpy(),
                      bottom_ids=bottom.indices.cpu().numpy(),
                      bottom_values=bottom.values.cpu().numpy(),
                      hist_edges=edges.cpu().numpy(), hist_counts=counts.cpu().numpy())
    neurons = next(x for x in units if x.name == NEURONS)
    if u.name == NEURONS:
        own = unit_rows(u.out_dir)  # basis vectors are orthogonal: compare W_out rows
    else:
        own = unit_rows(u.direction)
        cos = unit_rows(u.out_dir) @ unit_rows(neurons.out_dir).T
        k = min(cfg.n_aligned_neurons, neurons.n)
        idx = cos.abs().topk(k, dim=1).indices
        writer.add_aligned_neurons(u.name, idx.cpu().numpy(), cos.gather(1, idx).cpu().numpy())
    idx, val = nearest(own, own, cfg.n_neighbours, exclude_self=True)
    writer.add_neighbours(u.name, idx, val)
    for other in units:
        if other.name == u.name:
            continue
        idx, val = nearest(unit_rows(u.direction), unit_rows(other.direction), cfg.n_neighbours)
        writer.add_counterparts(u.name, other.name, idx, val)


def nearest(a: torch.Tensor, b: torch.Tensor, k: int, exclude_self: bool = False,
            chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a, the k rows of b with the largest cosine (rows already unit)."""
    k = min(k, b.shape[0] - (1 if exclude_self else 0))
    if k <= 0:
        return np.full((a.shape[0], 1), -1), np.zeros((a.shape[0], 1), np.float32)
    idx, val = [], []
    for lo in range(0, a.shape[0], chunk):
        cos = a[lo: lo + chunk] @ b.T
        if exclude_self:
            rows = torch.arange(cos.shape[0], device=cos.device)
            cos[rows, rows + lo] = -float("inf")
        top = cos.topk(k, dim=1)
        idx.append(top.indices)
        val.append(top.values)
    return torch.cat(idx).cpu().numpy(), torch.cat(val).cpu().numpy()


def row_histograms(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row equal-width histogram over [min, max] of the row: edges [n, b+1], counts [n, b]."""
    lo, hi = x.min(1).values, x.max(1).values
    width = (hi - lo).clamp(min=1e-12)
    steps = torch.linspace(0, 1, bins + 1, device=x.device)
    edges = lo[:, None] + width[:, None] * steps[None, :]
    b = ((x - lo[:, None]) / width[:, None] * bins).floor().long().clamp(0, bins - 1)
    n = x.shape[0]
    counts = torch.bincount((torch.arange(n, device=x.device)[:, None] * bins + b).reshape(-1),
                            minlength=n * bins).reshape(n, bins)
    return edges, counts


def unit_metrics(u: Unit, s: UnitStats, n_tokens: int, sae_rows: list[dict]) -> dict:
    """SAE rows come from the sae stage's held-out metrics; neurons by definition."""
    if u.name == NEURONS:
        return {"l0": float(s.n_active.sum()) / n_tokens, "mse": 0.0, "fvu": 0.0,
                "ce_loss_recovered": 1.0, "ce_loss_recovered_mean_ablation": 1.0,
                "kl_div": 0.0, "recipe": "identity"}
    row = next((r for r in sae_rows if int(r["n_features"]) == u.n), None)
    if row is None:
        return {"l0": float(s.n_active.sum()) / n_tokens}
    keep = ("l0", "mse", "fvu", "ce_loss_recovered", "ce_loss_recovered_mean_ablation", "kl_div",
            "recipe", "ce_clean", "ce_with_sae", "ce_zero_ablation", "ce_mean_ablation",
            "ce_eval_tokens")
    out = {k: row[k] for k in keep if k in row and row[k] is not None}
    out["l0_stats_tokens"] = float(s.n_active.sum()) / n_tokens
    return out


def joint_umap(units: list[Unit], cfg: StatsConfig) -> tuple[np.ndarray, float]:
    """2-D UMAP (cosine) of every unit's decoder direction, rows in `units` order."""
    t0 = time.perf_counter()
    import umap  # numba JIT on first use; see the module docstring

    points = torch.cat([unit_rows(u.direction) for u in units])
    k = min(cfg.umap_neighbours, points.shape[0] - 1)
    # Exact cosine kNN by one matmul per block: skips pynndescent and its numba JIT (~30 s).
    knn_i, knn_d = [], []
    for lo in range(0, points.shape[0], 4096):
        top = (points[lo: lo + 4096] @ points.T).topk(k, dim=1)
        knn_i.append(top.indices)
        knn_d.append((1.0 - top.values).clamp(min=0.0))
    knn = (torch.cat(knn_i).cpu().numpy(), torch.cat(knn_d).cpu().numpy(), None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no NNDescent index", "n_jobs": expected
        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=k, random_state=cfg.seed,
                            precomputed_knn=knn, n_epochs=200)  # default 500: 2.5x the time, same families
        xy = reducer.fit_transform(points.cpu().numpy()).astype(np.float32)
    return xy, time.perf_counter() - t0
