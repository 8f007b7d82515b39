"""Passes 1 and 2 of the statistics pass: streaming summaries and example sampling.

Each pass goes over the split in batches of whole sequences (`stats.batch_tokens` tokens):
1. encode every dictionary: n_active, sum, sum of squares, max, the smallest positive
   activation, streaming top-k (merge the batch's top-k into the running top-k), and the
   accumulators of the masked activation cosine for feature-splitting candidates
   (`pipelines/splitting.py`);
2. encode again, now that each feature's max is known: the shared log10-spaced activation
   histogram, counts in the 11 equal-width intervals over (0, max], and for each interval a
   sample of `examples_per_interval` activations drawn exactly uniformly without
   replacement: every activation gets an i.i.d. uniform key and each (feature, interval)
   keeps the m smallest keys seen so far (`BottomM`, a vectorised bottom-m reservoir; an
   activation whose key is above the group's current m-th smallest can never enter, so most
   are dropped by one comparison). Window activations are read here, while the batch holding
   the window is in memory; top-k windows too.
Memory is bounded by the batch, k and the dictionary sizes.

Windows: `window_before` tokens before and `window_after` after the example token, clipped
to positions 1..n_ctx-1 of its sequence (BOS, position 0, has no cached activation and is
the same in every sequence, so it is never shown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from feature_store import schema
from feature_store.records import N_INTERVALS
from pipelines import progress
from pipelines.activation_shards import SequenceBatch
from pipelines.config import StatsConfig
from pipelines.dictionaries import Dictionary
from pipelines.errors import InputError
from pipelines.splitting import SplitCandidates, accumulate, split_candidates


@dataclass
class DictionaryStats:
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


@dataclass(frozen=True)
class PassResult:
    """What passes 1 and 2 give the driver."""

    stats: dict[str, DictionaryStats]  # by dictionary name
    split_candidates: list[SplitCandidates]
    n_tokens: int


def window_offsets(cfg: StatsConfig, device: str) -> torch.Tensor:
    """Offsets of a window's tokens from the example token: -window_before..window_after."""
    return torch.arange(-cfg.window_before, cfg.window_after + 1, device=device)


def window_activations(codes: torch.Tensor, row: torch.Tensor, feat: torch.Tensor, n_ctx: int,
                       offs: torch.Tensor) -> torch.Tensor:
    """[E, w] activations of feature feat[e] around batch row row[e] (0 outside the sequence)."""
    per_seq = n_ctx - 1
    within = (row % per_seq)[:, None] + offs[None, :]  # 0-based index of position - 1
    valid = (within >= 0) & (within < per_seq)
    rows = (row[:, None] + offs[None, :]).clamp(0, codes.shape[0] - 1)
    return torch.where(valid, codes[rows, feat[:, None]], torch.zeros((), device=codes.device))


def statistics(batches: Callable[[], Iterator[SequenceBatch]], dictionaries: list[Dictionary],
               cfg: StatsConfig, n_ctx: int, device: str,
               split_pairs: Sequence[tuple[str, str]] = (),
               progress_total: int | None = None) -> PassResult:
    """Passes 1 and 2 over `batches()` (called twice; must yield the same batches)."""
    K, m, w = cfg.top_k, cfg.examples_per_interval, cfg.window_before + cfg.window_after + 1
    offs = window_offsets(cfg, device)
    by_name = {dic.name: dic for dic in dictionaries}
    st: dict[str, DictionaryStats] = {}
    tops: dict[str, BottomM] = {}
    for dic in dictionaries:
        st[dic.name] = DictionaryStats(
            n_active=torch.zeros(dic.n, dtype=torch.int64, device=device),
            sum_act=torch.zeros(dic.n, dtype=torch.float64, device=device),
            sumsq=torch.zeros(dic.n, dtype=torch.float64, device=device),
            max_act=torch.zeros(dic.n, device=device), min_pos=float("inf"),
            top_val=torch.empty(0), top_seq=torch.empty(0), top_pos=torch.empty(0))
        tops[dic.name] = BottomM(dic.n, K, w, device)
    cands = [split_candidates(by_name[a], by_name[b], cfg.split_candidates, device)
             for small, large in split_pairs for a, b in ((small, large), (large, small))]

    # Sparse (top-k) codes of pass 1 are kept for pass 2 when they fit in `code_cache_mb`:
    # re-encoding (a dense matmul + top-k per dictionary) is most of pass 2's cost. 12 bytes
    # per active entry; above the budget, pass 2 re-encodes and memory stays batch-bounded.
    sparse_k = sum(dic.k for dic in dictionaries)
    cached = {dic.name: [] for dic in dictionaries if dic.k} \
        if (progress_total or 0) * sparse_k * 12 <= cfg.code_cache_mb * 2**20 else {}

    n_tokens = 0
    bar = progress.bar(total=progress_total, desc="stats (1/3 max, top-k)", unit="tok",
                       unit_scale=True)
    for batch in batches():
        B = batch.x.shape[0]
        n_tokens += B
        codes = {}
        for dic in dictionaries:
            s = st[dic.name]
            c, row, feat, val = dic.entries(batch.acts(dic.source))
            codes[dic.name] = c
            if dic.name in cached:
                cached[dic.name].append((row.to(torch.int32), feat.to(torch.int32), val))
            if val.numel() == 0:
                continue
            s.n_active += torch.bincount(feat, minlength=dic.n)
            v64 = val.double()
            s.sum_act += torch.bincount(feat, weights=v64, minlength=dic.n)
            s.sumsq += torch.bincount(feat, weights=v64 * v64, minlength=dic.n)
            s.max_act.scatter_reduce_(0, feat, val, reduce="amax")
            s.min_pos = min(s.min_pos, float(val.min()))
            tops[dic.name].offer(feat, -v64, row, val, batch.seq_ids, c, feat, n_ctx, offs)
        for cand in cands:
            accumulate(cand, codes[cand.anchor], codes[cand.other])
        bar.update(B)
    bar.close()
    if n_tokens == 0:
        raise InputError("no activations in the split; rerun with --force activations")
    for dic in dictionaries:
        s, t = st[dic.name], tops[dic.name]
        s.top_val = torch.where(torch.isfinite(t.key), t.act, torch.zeros_like(t.act))
        s.top_seq, s.top_pos, s.top_win = t.seq, t.pos, t.win

    # Pass 2: histogram, intervals, reservoirs, windows.
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    res: dict[str, BottomM] = {}
    for dic in dictionaries:
        s = st[dic.name]
        hi = float(s.max_act.max())
        lo = s.min_pos if np.isfinite(s.min_pos) else 1.0
        lo = max(lo, hi * 1e-6) if hi > 0 else 1e-6
        hi = max(hi, lo * 10)
        s.hist_edges = np.logspace(np.log10(lo), np.log10(hi), cfg.act_hist_bins + 1)
        s.hist_edges[0], s.hist_edges[-1] = lo, hi
        s.hist_counts = torch.zeros(dic.n * cfg.act_hist_bins, dtype=torch.int64, device=device)
        s.interval_counts = torch.zeros(dic.n * N_INTERVALS, dtype=torch.int64, device=device)
        res[dic.name] = BottomM(dic.n * N_INTERVALS, m, w, device)
    bar = progress.bar(total=n_tokens, desc="stats (2/3 intervals)", unit="tok",
                       unit_scale=True)
    for batch in batches():
        for dic in dictionaries:
            s = st[dic.name]
            if dic.name in cached:
                row, feat, val = cached[dic.name].pop(0)
                row, feat = row.long(), feat.long()
                c = torch.zeros(batch.x.shape[0], dic.n, device=device)
                c[row, feat] = val
            else:
                c, row, feat, val = dic.entries(batch.acts(dic.source))
            if val.numel() == 0:
                continue
            v64 = val.double()
            edges = torch.from_numpy(s.hist_edges[1:-1]).to(device)
            hbin = torch.searchsorted(edges, v64.clamp(min=s.hist_edges[0]), right=True)
            s.hist_counts += torch.bincount(feat * cfg.act_hist_bins + hbin,
                                            minlength=dic.n * cfg.act_hist_bins)
            g = feat * N_INTERVALS + interval_index(v64, s.max_act[feat].double())
            s.interval_counts += torch.bincount(g, minlength=dic.n * N_INTERVALS)
            key = torch.rand(val.shape[0], generator=gen, dtype=torch.float64, device=device)
            res[dic.name].offer(g, key, row, val, batch.seq_ids, c, feat, n_ctx, offs)
        bar.update(batch.x.shape[0])
    bar.close()
    for dic in dictionaries:
        s, r = st[dic.name], res[dic.name]
        s.res_key, s.res_seq, s.res_pos, s.res_act, s.res_win = r.key, r.seq, r.pos, r.act, r.win
    return PassResult(st, cands, n_tokens)


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
        self.win[touched] = merged(self.win, window_activations(codes, r, feat[new], n_ctx, offs))
        self.key[touched] = all_key[keep].reshape(T, m)


def interval_index(v: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
    """Which of the 11 equal-width intervals over (0, vmax] holds v: [lo, hi), last closed."""
    return (v / vmax * N_INTERVALS).floor().long().clamp(0, N_INTERVALS - 1)


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


def collect_examples(s: DictionaryStats) -> Examples:
    """Every filled top-k and interval slot of one dictionary as example rows."""
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
