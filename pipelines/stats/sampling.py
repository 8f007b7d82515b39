"""Passes 1 and 2 of the statistics pass: streaming summaries and example sampling.

Each pass goes over the split in parts (one per activation shard, `pipelines/stats/parts.py`),
each part in batches of whole sequences (`stats.batch_tokens` tokens):
1. encode every dictionary: n_active, sum, sum of squares, max, the smallest positive
   activation, streaming top-k (merge the batch's top-k into the running top-k), and the
   accumulators of the masked activation cosine for feature-splitting candidates
   (`pipelines/stats/splitting.py`);
2. encode again, now that each feature's max is known: the shared log10-spaced activation
   histogram, counts in the 11 equal-width intervals over (0, max], and for each interval a
   sample of `examples_per_interval` activations drawn uniformly without replacement:
   every activation gets a uniform key, a hash of (seed, dictionary, seq_id, position,
   unit) (`uniform_keys`), and each (feature, interval) keeps the m smallest keys seen so
   far (`BottomM`, a vectorised bottom-m reservoir; an activation whose key is above the
   group's current m-th smallest can never enter, so most are dropped by one comparison).
   Window activations are read here, while the batch holding the window is in memory;
   top-k windows too.
Everything merges exactly across parts read by different processes (`pipelines/stats/ray_engine.py`):
counts, max and min in any order; float64 sums are added within a part in batch order and
across parts in part order (`PartSums`, `add_sums`), by both engines; top-k and interval
samples are the first m in a total order, (key, seq_id, position), so they do not depend on
who saw which entry: top-k ties (equal activations: neurons are cached in float16) go to the
lower (seq_id, position), and a sample key is the same whichever process draws it.
Memory is bounded by the batch, k and the dictionary sizes.

Windows: `window_before` tokens before and `window_after` after the example token, clipped
to positions 1..n_ctx-1 of its sequence (BOS, position 0, has no cached activation and is
the same in every sequence, so it is never shown).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from feature_store import schema
from feature_store.records import N_INTERVALS
from pipelines import progress
from pipelines.activations.shards import SequenceBatch
from pipelines.activations.windows import WindowSpan
from pipelines.config import StatsConfig
from pipelines.stats.dictionaries import Dictionary
from pipelines.errors import InputError
from pipelines.stats.splitting import PairSums, SplitCandidates, accumulate, split_candidates


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


# A part of the split: a callable giving its batches (one activation shard, or, for callers
# that pass a single callable, the whole split). Every pass iterates the parts in one order.
Part = Callable[[], Iterator[SequenceBatch]]


def window_activations(codes: torch.Tensor, row: torch.Tensor, feat: torch.Tensor, n_ctx: int,
                       offs: torch.Tensor) -> torch.Tensor:
    """[E, w] activations of feature feat[e] around batch row row[e] (0 outside the sequence)."""
    per_seq = n_ctx - 1
    within = (row % per_seq)[:, None] + offs[None, :]  # 0-based index of position - 1
    valid = (within >= 0) & (within < per_seq)
    rows = (row[:, None] + offs[None, :]).clamp(0, codes.shape[0] - 1)
    return torch.where(valid, codes[rows, feat[:, None]], torch.zeros((), device=codes.device))


def statistics(batches: Part | Sequence[Part], dictionaries: list[Dictionary],
               cfg: StatsConfig, n_ctx: int, device: str,
               split_pairs: Sequence[tuple[str, str]] = (),
               progress_total: int | None = None, label: str = "stats (1/3", label2: str = "stats (2/3"
               ) -> PassResult:
    """Passes 1 and 2 in this process over `batches`: one part (a callable) or the parts in
    order (one per activation shard). Each part is read twice and must yield the same
    batches. `pipelines/stats/ray_engine.py` runs the same parts on Ray workers and merges them with
    the same functions, so both give the same bits."""
    parts = [batches] if callable(batches) else list(batches)
    cands = candidate_pairs(dictionaries, cfg, split_pairs, device)
    one = PassOne(dictionaries, cfg, n_ctx, device, cands, progress_total or 0)
    bar = progress.bar(total=progress_total, desc=f"{label} max, top-k)", unit="tok",
                       unit_scale=True)
    total = None
    for part in parts:
        total = add_sums(total, one.part(part(), bar))
    bar.close()
    st = summarize(dictionaries, cfg, total, one.tops)
    two = PassTwo(dictionaries, cfg, n_ctx, device, pass_two_inputs(st), one.cached)
    bar = progress.bar(total=total.n_tokens, desc=f"{label2} intervals)", unit="tok",
                       unit_scale=True)
    for part in parts:
        two.part(part(), bar)
    bar.close()
    finish(st, two)
    return PassResult(st, filled_candidates(cands, total), total.n_tokens)


def candidate_pairs(dictionaries: list[Dictionary], cfg: StatsConfig,
                    split_pairs: Sequence[tuple[str, str]], device: str) -> list[SplitCandidates]:
    """Splitting candidates anchored on each side of every adjacent (small, large) pair."""
    by_name = {dic.name: dic for dic in dictionaries}
    return [split_candidates(by_name[a], by_name[b], cfg.split_candidates, device)
            for small, large in split_pairs for a, b in ((small, large), (large, small))]


@dataclass
class PartSums:
    """Pass 1's summaries of one part (by dictionary name). Float sums depend on the order
    they are added in, so every engine sums within a part in batch order and adds parts in
    part order (`add_sums`): the same parts give the same bits whichever process read them.
    Counts, max and min are exact in any order."""

    n_tokens: int
    n_active: dict[str, torch.Tensor]
    sum_act: dict[str, torch.Tensor]  # float64
    sumsq: dict[str, torch.Tensor]
    max_act: dict[str, torch.Tensor]
    min_pos: dict[str, float]
    split: list[PairSums]  # per splitting candidate set, in `candidate_pairs` order

    def to(self, device: str) -> PartSums:
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return PartSums(n_tokens=self.n_tokens, n_active=mv(self.n_active),
                        sum_act=mv(self.sum_act), sumsq=mv(self.sumsq),
                        max_act=mv(self.max_act), min_pos=dict(self.min_pos),
                        split=[s.to(device) for s in self.split])


def add_sums(total: PartSums | None, part: PartSums) -> PartSums:
    """total + part (in place on total); parts must come in part order."""
    if total is None:
        return part
    total.n_tokens += part.n_tokens
    for name in total.n_active:
        total.n_active[name] += part.n_active[name]
        total.sum_act[name] += part.sum_act[name]
        total.sumsq[name] += part.sumsq[name]
        torch.maximum(total.max_act[name], part.max_act[name], out=total.max_act[name])
        total.min_pos[name] = min(total.min_pos[name], part.min_pos[name])
    for acc, add in zip(total.split, part.split):
        acc.add_(add)
    return total


class CodeBuffers:
    """One reusable [rows, n] matrix per dictionary for a batch's dense codes. A fresh one per
    batch costs more than filling it: glibc hands blocks over 32 MB back to the kernel when
    freed, and the next comes as fresh pages to fault in and zero (26-33 ms for [8,128 x
    2,048] float32 on 2 cores, against 3-5 ms to zero a reused one). A batch's codes are
    only read while that batch is processed (windows and sums copy what they keep)."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def zeros(self, name: str, rows: int, n: int, device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[name] = torch.empty(rows, n, device=device)
        return buf[:rows].zero_()


class PassOne:
    """Pass 1 over parts: `part` returns the part's `PartSums`; `tops` is the running top-k of
    every part seen (order-free: see `BottomM`); `cached` keeps the topk dictionaries' sparse
    codes for pass 2 when they fit in `code_cache_mb` (re-encoding, a dense matmul + top-k
    per dictionary, is most of pass 2's cost; 12 bytes per active entry; above the budget
    pass 2 re-encodes and memory stays batch-bounded)."""

    def __init__(self, dictionaries: list[Dictionary], cfg: StatsConfig, n_ctx: int,
                 device: str, cands: list[SplitCandidates], expected_tokens: int) -> None:
        self.dictionaries, self.cfg, self.n_ctx, self.device = dictionaries, cfg, n_ctx, device
        self.cands = cands
        span = WindowSpan.of(cfg)
        w, self.offs = span.width, span.offsets_on(device)
        self.tops = {dic.name: BottomM(dic.n, cfg.top_k, w, device) for dic in dictionaries}
        self.dense = CodeBuffers()
        sparse_k = sum(dic.k for dic in dictionaries)
        self.cached: dict[str, list] = (
            {dic.name: [] for dic in dictionaries if dic.k}
            if expected_tokens * sparse_k * 12 <= cfg.code_cache_mb * 2**20 else {})

    def part(self, batches: Iterator[SequenceBatch], bar=None) -> PartSums:
        dev = self.device
        z = lambda n, dt: torch.zeros(n, dtype=dt, device=dev)  # noqa: E731
        names = [dic.name for dic in self.dictionaries]
        sums = PartSums(
            n_tokens=0, n_active={d.name: z(d.n, torch.int64) for d in self.dictionaries},
            sum_act={d.name: z(d.n, torch.float64) for d in self.dictionaries},
            sumsq={d.name: z(d.n, torch.float64) for d in self.dictionaries},
            max_act={d.name: z(d.n, torch.float32) for d in self.dictionaries},
            min_pos=dict.fromkeys(names, float("inf")), split=[])
        cands = [c.fresh() for c in self.cands]
        for batch in batches:
            B = batch.x.shape[0]
            sums.n_tokens += B
            codes = {}
            for dic in self.dictionaries:
                out = self.dense.zeros(dic.name, B, dic.n, dev) if dic.k else None  # topk: reused
                got = dic.batch_entries(batch, out=out)
                c, row, feat, val = got.dense, got.row, got.feature, got.value
                codes[dic.name] = c
                if dic.name in self.cached:
                    self.cached[dic.name].append((row.to(torch.int32), feat.to(torch.int32), val))
                if val.numel() == 0:
                    continue
                name = dic.name
                sums.n_active[name] += torch.bincount(feat, minlength=dic.n)
                v64 = val.double()
                sums.sum_act[name] += torch.bincount(feat, weights=v64, minlength=dic.n)
                sums.sumsq[name] += torch.bincount(feat, weights=v64 * v64, minlength=dic.n)
                sums.max_act[name].scatter_reduce_(0, feat, val, reduce="amax")
                sums.min_pos[name] = min(sums.min_pos[name], float(val.min()))
                self.tops[name].offer_batch(feat, -v64, row, val, batch.seq_ids, c, feat,
                                            self.n_ctx, self.offs)
            for cand in cands:
                accumulate(cand, codes[cand.anchor], codes[cand.other])
            if bar is not None:
                bar.update(B)
        sums.split = [c.sums for c in cands]
        return sums


def summarize(dictionaries: list[Dictionary], cfg: StatsConfig, total: PartSums | None,
              tops: dict[str, BottomM]) -> dict[str, DictionaryStats]:
    """Pass 1's merged results as `DictionaryStats`, with each dictionary's shared histogram
    edges (which pass 2 needs, with each unit's max)."""
    if total is None or total.n_tokens == 0:
        raise InputError("no activations in the split; rerun with --force activations")
    st = {}
    for dic in dictionaries:
        t, name = tops[dic.name], dic.name
        s = st[name] = DictionaryStats(
            n_active=total.n_active[name], sum_act=total.sum_act[name],
            sumsq=total.sumsq[name], max_act=total.max_act[name], min_pos=total.min_pos[name],
            top_val=torch.where(torch.isfinite(t.key), t.act, torch.zeros_like(t.act)),
            top_seq=t.seq, top_pos=t.pos, top_win=t.win)
        hi = float(s.max_act.max())
        lo = s.min_pos if np.isfinite(s.min_pos) else 1.0
        lo = max(lo, hi * 1e-6) if hi > 0 else 1e-6
        hi = max(hi, lo * 10)
        s.hist_edges = np.logspace(np.log10(lo), np.log10(hi), cfg.act_hist_bins + 1)
        s.hist_edges[0], s.hist_edges[-1] = lo, hi
    return st


def filled_candidates(cands: list[SplitCandidates], total: PartSums) -> list[SplitCandidates]:
    return [c.with_sums(sums) for c, sums in zip(cands, total.split)]


@dataclass(frozen=True)
class PassTwoCounts:
    """Pass 2's state of one process, by dictionary name: integer counts and the interval
    reservoirs, all of which merge exactly in any order."""

    hist_counts: dict[str, torch.Tensor]  # [n * act_hist_bins] int64
    interval_counts: dict[str, torch.Tensor]  # [n * 11] int64
    reservoirs: dict[str, BottomM]  # [n * 11, examples_per_interval]

    def to(self, device: str) -> PassTwoCounts:
        return PassTwoCounts({k: v.to(device) for k, v in self.hist_counts.items()},
                             {k: v.to(device) for k, v in self.interval_counts.items()},
                             {k: v.to(device) for k, v in self.reservoirs.items()})


class PassTwo:
    """Pass 2 over parts, given pass 1's merged max and histogram edges (`st`): histogram and
    interval counts (integers) and the interval reservoirs (order-free: see `BottomM`). Keys
    are `uniform_keys` of each entry, so a sample does not depend on which process saw which
    part; `merge` adds another process's counts and reservoirs."""

    def __init__(self, dictionaries: list[Dictionary], cfg: StatsConfig, n_ctx: int,
                 device: str, inputs: dict[str, tuple[torch.Tensor, np.ndarray]],
                 cached: dict[str, list]) -> None:
        self.dictionaries, self.cfg, self.n_ctx, self.device = dictionaries, cfg, n_ctx, device
        self.cached = cached
        span = WindowSpan.of(cfg)
        w, self.offs = span.width, span.offsets_on(device)
        self.max_act = {name: mx.to(device) for name, (mx, _) in inputs.items()}
        self.edges = {name: torch.from_numpy(e).to(device) for name, (_, e) in inputs.items()}
        self.hist_counts = {d.name: torch.zeros(d.n * cfg.act_hist_bins, dtype=torch.int64,
                                                device=device) for d in dictionaries}
        self.interval_counts = {d.name: torch.zeros(d.n * N_INTERVALS, dtype=torch.int64,
                                                    device=device) for d in dictionaries}
        self.res = {d.name: BottomM(d.n * N_INTERVALS, cfg.examples_per_interval, w, device)
                    for d in dictionaries}
        self.salt = {d.name: key_salt(cfg.seed, d.name) for d in dictionaries}
        self.dense = CodeBuffers()

    def part(self, batches: Iterator[SequenceBatch], bar=None) -> None:
        bins, per_seq, dev = self.cfg.act_hist_bins, self.n_ctx - 1, self.device
        for batch in batches:
            # each row's (sequence, position), hashed per dictionary below (`token_hashes`)
            seqs = batch.seq_ids.repeat_interleave(per_seq)
            positions = torch.arange(1, per_seq + 1, device=dev).repeat(len(batch.seq_ids))
            for dic in self.dictionaries:
                name = dic.name
                if name in self.cached:
                    row, feat, val = self.cached[name].pop(0)
                    row, feat = row.long(), feat.long()
                    c = self.dense.zeros(name, batch.x.shape[0], dic.n, dev)
                    c[row, feat] = val
                else:
                    out = self.dense.zeros(name, batch.x.shape[0], dic.n, dev) if dic.k else None
                    got = dic.batch_entries(batch, out=out)
                    c, row, feat, val = got.dense, got.row, got.feature, got.value
                if val.numel() == 0:
                    continue
                v64 = val.double()
                edges = self.edges[name]
                hbin = torch.searchsorted(edges[1:-1], v64.clamp(min=float(edges[0])),
                                          right=True)
                self.hist_counts[name] += torch.bincount(feat * bins + hbin,
                                                         minlength=dic.n * bins)
                g = feat * N_INTERVALS + interval_index(v64, self.max_act[name][feat].double())
                self.interval_counts[name] += torch.bincount(g, minlength=dic.n * N_INTERVALS)
                key = unit_keys(token_hashes(self.salt[name], seqs, positions)[row], feat)
                self.res[name].offer_batch(g, key, row, val, batch.seq_ids, c, feat,
                                           self.n_ctx, self.offs)
            if bar is not None:
                bar.update(batch.x.shape[0])

    def results(self) -> PassTwoCounts:
        """What another process's `merge` adds, by dictionary name."""
        return PassTwoCounts(self.hist_counts, self.interval_counts, self.res)

    def merge(self, other: PassTwoCounts) -> None:
        """Add another process's `results()` (integer counts; order-free reservoirs)."""
        for name in self.res:
            self.hist_counts[name] += other.hist_counts[name].to(self.device)
            self.interval_counts[name] += other.interval_counts[name].to(self.device)
            self.res[name].merge(other.reservoirs[name])


def pass_two_inputs(st: dict[str, DictionaryStats]) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """What pass 2 needs from pass 1, by dictionary: each unit's max and the histogram edges."""
    return {name: (s.max_act, s.hist_edges) for name, s in st.items()}


def finish(st: dict[str, DictionaryStats], two: PassTwo) -> None:
    """Pass 2's merged results into `st`."""
    for name, s in st.items():
        r = two.res[name]
        s.hist_counts, s.interval_counts = two.hist_counts[name], two.interval_counts[name]
        s.res_key, s.res_seq, s.res_pos, s.res_act, s.res_win = r.key, r.seq, r.pos, r.act, r.win


# splitmix64's finaliser on int64 tensors (two's-complement wrap-around), for sample keys.
def _signed(x: int) -> int:
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                               0x94D049BB133111EB))


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = z + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def key_salt(seed: int, dictionary: str) -> int:
    """The per-(seed, dictionary) start of every key's hash: dictionaries sample independently."""
    z = _mix(torch.tensor(_signed(seed), dtype=torch.int64))
    return int(_mix(z ^ zlib.crc32(dictionary.encode())))


def uniform_keys(salt: int, seq: torch.Tensor, pos: torch.Tensor,
                 unit: torch.Tensor) -> torch.Tensor:
    """A float64 key in [0, 1) per entry, a hash of (seed, dictionary, seq_id, position, unit):
    the same entry gets the same key in any process and any batch order, and distinct entries
    get independent-looking uniform keys (splitmix64), so the m smallest keys of a group are a
    uniform, seeded sample without replacement."""
    return unit_keys(token_hashes(salt, seq, pos), unit)


def token_hashes(salt: int, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The (seed, dictionary, seq_id, position) part of `uniform_keys`: one per token, so a
    batch hashes its tokens once instead of once per active unit (hundreds per token for
    dense neurons)."""
    return _mix(_mix(seq.long() ^ salt) ^ pos.long())


def unit_keys(token_hash: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """`uniform_keys` from each entry's token hash (`token_hashes`) and unit."""
    return _shr(_mix(token_hash ^ unit.long()), 11).double() * 2.0**-53


_NO_TIE = 2**62  # tie-break of an empty slot: after every real entry


class BottomM:
    """Per group, the m entries that come first in the order (key, tie) — tie = seq_id·n_ctx +
    position — with payload (sequence, position, activation, window), sorted in that order.
    key = −activation gives a streaming top-m (ties by sequence, then position); key = a
    uniform hash (`uniform_keys`) gives a uniform sample without replacement (the m smallest
    of i.i.d. keys are a uniformly random m-subset). Because the order is total, the result
    is the first m of every entry ever offered whatever the order they came in: parts read by
    different processes merge exactly (`merge`). Only entries that beat the group's current
    m-th are merged, and only the groups they touch are re-sorted."""

    def __init__(self, groups: int, m: int, w: int, device: str) -> None:
        self.m = m
        self.key = torch.full((groups, m), float("inf"), dtype=torch.float64, device=device)
        self.tie = torch.full((groups, m), _NO_TIE, dtype=torch.int64, device=device)
        self.seq = torch.full((groups, m), -1, dtype=torch.int64, device=device)
        self.pos = torch.full((groups, m), -1, dtype=torch.int64, device=device)
        self.act = torch.zeros((groups, m), device=device)
        self.win = torch.zeros((groups, m, w), device=device)

    def to(self, device: str) -> BottomM:
        """Move every tensor (in place; returns self)."""
        for k in ("key", "tie", "seq", "pos", "act", "win"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def offer_batch(self, g, key, row, act, seq_ids, codes, feat, n_ctx, offs) -> None:
        """Entries of one batch: group g, key, batch row, activation, feature (for windows)."""
        per_seq = n_ctx - 1

        def tie(i):
            return seq_ids[row[i] // per_seq] * n_ctx + row[i] % per_seq + 1

        def payload(i):
            r = row[i]
            return (seq_ids[r // per_seq], r % per_seq + 1, act[i],
                    window_activations(codes, r, feat[i], n_ctx, offs))
        self.offer(g, key, tie, payload)

    def merge(self, other: BottomM) -> None:
        """Offer every filled slot of another BottomM (another process's parts)."""
        gi, si = torch.isfinite(other.key).nonzero(as_tuple=True)
        gi, si = gi.to(self.key.device), si.to(self.key.device)
        o = {k: getattr(other, k).to(self.key.device) for k in ("key", "tie", "seq", "pos",
                                                                 "act", "win")}
        self.offer(gi, o["key"][gi, si], lambda i: o["tie"][gi[i], si[i]],
                   lambda i: (o["seq"][gi[i], si[i]], o["pos"][gi[i], si[i]],
                              o["act"][gi[i], si[i]], o["win"][gi[i], si[i]]))

    def offer(self, g, key, tie_of, payload_of) -> None:
        """Entries (group g, key); tie_of(i) and payload_of(i) give the tie-break and the
        payload of the entries at indices i, asked only for the few that may enter."""
        thr = self.key[:, -1][g]
        maybe = (key <= thr).nonzero(as_tuple=True)[0]
        if maybe.numel() == 0:
            return
        tie = tie_of(maybe)
        enter = (key[maybe] < thr[maybe]) | (tie < self.tie[:, -1][g[maybe]])
        idx, tie = maybe[enter], tie[enter]
        if idx.numel() == 0:
            return
        g, key = g[idx], key[idx]
        m = self.m
        touched, local = torch.unique(g, return_inverse=True)
        T = touched.numel()
        dev = g.device
        all_g = torch.cat([torch.arange(T, device=dev).repeat_interleave(m), local])
        all_key = torch.cat([self.key[touched].reshape(-1), key])
        all_tie = torch.cat([self.tie[touched].reshape(-1), tie])
        order = torch.argsort(all_tie, stable=True)
        order = order[torch.argsort(all_key[order], stable=True)]
        order = order[torch.argsort(all_g[order], stable=True)]
        gs = all_g[order]
        rank = torch.arange(gs.numel(), device=dev) - torch.searchsorted(gs, gs)
        keep = order[rank < m]  # exactly m per touched group, first in (key, tie) order
        is_new = keep >= T * m
        new = keep[is_new] - T * m
        seq, pos, act, win = payload_of(idx[new])

        def merged(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            flat_old = old[touched].reshape(T * m, *old.shape[2:])
            out = flat_old[keep.clamp(max=T * m - 1)]
            out[is_new] = fresh.to(out.dtype)
            return out.reshape(T, m, *old.shape[2:])

        self.seq[touched] = merged(self.seq, seq)
        self.pos[touched] = merged(self.pos, pos)
        self.act[touched] = merged(self.act, act)
        self.win[touched] = merged(self.win, win)
        self.key[touched] = all_key[keep].reshape(T, m)
        self.tie[touched] = all_tie[keep].reshape(T, m)


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
    """Positions [m, w] of each example's window columns, and which are inside the sequence."""
    return WindowSpan.of(cfg).layout(ex.position, n_ctx)
