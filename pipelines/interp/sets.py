"""The two sets of windows behind every explanation: explain (training) and score (held out).

Disjoint by construction: the tokens stage splits by *document* into tokens/train.parquet
and tokens/val.parquet, and the activations stage caches each split into its own shards
(`activations/train-*`, `activations/val-*`). The explain set is read only from the train
shards and the train sequences; the score set only from the store's examples (which the
stats stage draws from `stats.split`, required to be `val` here) and the val shards. Each
set carries its split in `Windows.split`; fitting refuses anything but "train" and scoring
anything but "val" (`explainer.fit_patterns`, `scoring.score`), and
`check_disjoint` compares the two sets' documents' token sequences as a last guard.

Explain set, per dictionary: for each unit its `top_k` highest-activating training windows
and `examples_per_interval` windows drawn uniformly from each of the 11 equal-width
activation intervals (the stats stage's passes 1-2, `pipelines/stats/sampling.py`, run over the
train shards), plus `random_windows` random training windows shared by every unit (its
base rates: what it does on ordinary text).
Score set, per dictionary: each unit's held-out top and interval windows from the store
(what its feature page shows), `random_windows` random validation windows, and the top
windows of its `neighbours` nearest units (decoder cosine; neurons by W_out cosine) with its
own activations on them: detection's hard negatives where it stays silent.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from feature_store import schema
from feature_store.explanations import ExampleWindows
from feature_store.records import NEURONS
from pipelines.activations.shards import (SequenceBatch, capped_tokens, count_rows,
                                          sequence_batches, shard_paths)
from pipelines.activations.windows import WindowSpan
from pipelines.config import InterpConfig, StatsConfig
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.directions import nearest, normalized_rows
from pipelines.errors import InputError
from pipelines.interp.explainer import NEIGHBOUR, RANDOM, Windows
from pipelines.stats.sampling import collect_examples, statistics, window_layout

_REBUILD = "rerun with --force activations"


def _before(seqs: np.ndarray, seq_id: np.ndarray, first_pos: np.ndarray) -> np.ndarray:
    """The token before each window's first column (−1 before position 0)."""
    p = first_pos - 1
    return np.where(p >= 0, seqs[seq_id, np.clip(p, 0, seqs.shape[1] - 1)], -1).astype(np.int32)


def explain_windows(act_dir: Path, seqs: np.ndarray, dictionaries: list[Dictionary],
                    cfg: InterpConfig, span: WindowSpan, n_ctx: int, device: str
                    ) -> dict[str, Windows]:
    """Top and interval windows of every unit from the train shards, plus random ones, in
    `span`: the shape of the store's (held-out) example windows."""
    stats_cfg = StatsConfig(split="train", max_tokens=cfg.explain_tokens,
                            batch_tokens=cfg.batch_tokens, top_k=cfg.top_k,
                            examples_per_interval=cfg.examples_per_interval,
                            window_before=span.before, window_after=span.after,
                            umap=False, device=device, seed=cfg.seed)

    def batches() -> Iterator[SequenceBatch]:
        return sequence_batches(act_dir, "train", n_ctx, cfg.batch_tokens, cfg.explain_tokens,
                                device)

    total = capped_tokens(count_rows(act_dir, "train"), n_ctx, cfg.explain_tokens)
    print("interp: explain set from the train shards (the stats passes 1-2 below)",
          file=sys.stderr, flush=True)
    passes = statistics(batches, dictionaries, stats_cfg, n_ctx, device, (), total,
                        label="interp (sampling 1/2", label2="interp (sampling 2/2")
    rng = np.random.default_rng([cfg.seed, 1])
    random = random_windows(ShardIndex(act_dir, "train", n_ctx), seqs, dictionaries, cfg, span,
                            n_ctx, device, rng)
    out = {}
    for d in dictionaries:
        ex = collect_examples(passes.stats[d.name])
        pos, valid = window_layout(ex, stats_cfg, n_ctx)
        tokens = np.where(valid, seqs[ex.seq_id[:, None], np.clip(pos, 0, n_ctx - 1)], -1)
        own = Windows(unit=ex.feature.astype(np.int64), tokens=tokens.astype(np.int32),
                      acts=np.where(valid, ex.acts, 0.0).astype(np.float32),
                      kind=ex.kind.astype(np.int8), seq_id=ex.seq_id.astype(np.int64),
                      position=ex.position.astype(np.int64), split="train",
                      before=_before(seqs, ex.seq_id, pos[:, 0]))
        out[d.name] = Windows.concat([own, random[d.name]])
    return out


def score_windows(store_examples: dict[str, ExampleWindows], act_dir: Path, seqs: np.ndarray,
                  dictionaries: list[Dictionary], cfg: InterpConfig, span: WindowSpan,
                  n_ctx: int, device: str) -> dict[str, Windows]:
    """Held-out windows of every unit: the store's examples, random and neighbour windows."""
    rng = np.random.default_rng([cfg.seed, 2])
    index = ShardIndex(act_dir, "val", n_ctx)
    random = random_windows(index, seqs, dictionaries, cfg, span, n_ctx, device, rng,
                            whole_split=True)
    out = {}
    for d in dictionaries:
        ex = store_examples[d.name]
        first = ex.position.astype(np.int64) - ex.center.astype(np.int64)
        own = Windows(unit=ex.feature.astype(np.int64), tokens=ex.token_ids.astype(np.int32),
                      acts=ex.acts.astype(np.float32), kind=ex.kind.astype(np.int8),
                      seq_id=ex.seq_id.astype(np.int64), position=ex.position.astype(np.int64),
                      split="val", before=_before(seqs, ex.seq_id, first))
        nb = neighbour_windows(ex, d, index, seqs, cfg, n_ctx, device)
        out[d.name] = Windows.concat([own, random[d.name], nb])
    return out


def random_windows(index: ShardIndex, seqs: np.ndarray, dictionaries: list[Dictionary],
                   cfg: InterpConfig, span: WindowSpan, n_ctx: int, device: str,
                   rng: np.random.Generator, whole_split: bool = False) -> dict[str, Windows]:
    """`cfg.random_windows` windows at random positions of cached sequences, with every
    unit's activation on them; one copy per unit (row `unit`). From the first shard, where the
    cache is already a random subset (training: the other shards are then never read), or
    with `whole_split` from every shard: the validation split is cached whole, in document
    order, so its first shard would be its first documents alone (and which those are would
    depend on `activations.shard_tokens`)."""
    split = index.split
    cached = index.sequences(None if whole_split else 0)
    w = span.width
    R = cfg.random_windows
    seq_id = rng.choice(cached, size=R, replace=len(cached) < R).astype(np.int64)
    centre = rng.integers(1, n_ctx, size=R)
    pos, valid = span.layout(centre, n_ctx)
    x = index.gather(seq_id, pos, valid)  # [R * w, d_mlp]
    tokens = np.where(valid, seqs[seq_id[:, None], np.clip(pos, 0, n_ctx - 1)], -1)
    before = _before(seqs, seq_id, pos[:, 0])
    out = {}
    for d in dictionaries:
        with torch.no_grad():
            codes = d.encode(torch.from_numpy(x).to(device)).cpu().numpy().reshape(R, w, d.n)
        codes = np.where(valid[:, :, None], codes, 0.0)
        unit = np.repeat(np.arange(d.n), R)
        out[d.name] = Windows(
            unit=unit, tokens=np.tile(tokens, (d.n, 1)).astype(np.int32),
            acts=codes.transpose(2, 0, 1).reshape(d.n * R, w).astype(np.float32),
            kind=np.full(d.n * R, RANDOM, np.int8), seq_id=np.tile(seq_id, d.n),
            position=np.tile(centre, d.n).astype(np.int64), split=split,
            before=np.tile(before, d.n))
    return out


def neighbour_windows(ex: ExampleWindows, d: Dictionary, index: ShardIndex, seqs: np.ndarray,
                      cfg: InterpConfig, n_ctx: int, device: str, chunk: int = 4096) -> Windows:
    """For each unit, the top held-out windows of its nearest units, with its own
    activations on them.

    Re-encoded from the val shards one *token* at a time, not one window at a time: a wide
    dictionary's top windows overlap (16,384 features x 4 windows x 17 tokens is 1.1M cells
    over a 148k-token validation split), so each distinct (sequence, position) is encoded once,
    `chunk` at a time, and every request reads its unit's activation from that row."""
    own = normalized_rows(d.out_dir if d.name == NEURONS else d.direction)
    nb_idx, _ = nearest(own, own, cfg.neighbours, exclude_self=True)
    top = (ex.kind == schema.KIND_TOP) & (ex.rank < cfg.neighbour_windows)
    rows = np.flatnonzero(top)
    by_unit = [[] for _ in range(d.n)]
    for r, f in zip(rows.tolist(), ex.feature[rows].tolist()):
        by_unit[f].append(r)
    req_unit, req_row = [], []
    for i in range(d.n):
        for j in nb_idx[i].tolist():
            if 0 <= j < d.n:
                req_row.extend(by_unit[j])
                req_unit.extend([i] * len(by_unit[j]))
    req_unit = np.asarray(req_unit, np.int64)
    req_row = np.asarray(req_row, np.int64)
    w = ex.token_ids.shape[1]
    first = ex.position.astype(np.int64) - ex.center.astype(np.int64)
    pos = first[req_row, None] + np.arange(w)[None, :]  # [requests, w]
    valid = (pos >= 1) & (pos <= n_ctx - 1) & (ex.token_ids[req_row] >= 0)
    q, j = np.nonzero(valid)  # every cell a request reads
    keys = ex.seq_id[req_row[q]].astype(np.int64) * n_ctx + pos[q, j]
    cells, cell = np.unique(keys, return_inverse=True)  # distinct tokens; cell: each read's one
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(0, cells.size + chunk, chunk))
    acts = np.zeros((req_row.size, w), np.float32)
    for c, lo in enumerate(range(0, cells.size, chunk)):
        part = cells[lo: lo + chunk]
        x = index.gather(part // n_ctx, (part % n_ctx)[:, None], np.ones((part.size, 1), bool))
        with torch.no_grad():
            codes = d.encode(torch.from_numpy(x).to(device))  # [part, n]
        reads = order[bounds[c]: bounds[c + 1]]
        got = codes[torch.from_numpy(cell[reads] - lo), torch.from_numpy(req_unit[q[reads]])]
        acts[q[reads], j[reads]] = got.float().cpu().numpy()
    return Windows(unit=req_unit, tokens=ex.token_ids[req_row].astype(np.int32), acts=acts,
                   kind=np.full(req_row.size, NEIGHBOUR, np.int8),
                   seq_id=ex.seq_id[req_row].astype(np.int64),
                   position=ex.position[req_row].astype(np.int64), split="val",
                   before=_before(seqs, ex.seq_id[req_row], first[req_row]))


class ShardIndex:
    """Where each (seq_id, position) row of a split's shards is, and the shards' activations
    once read (kept in their stored float16: the whole validation split of the tiny preset is
    ~290 MB; a training split is only read for the shards random windows fall in)."""

    def __init__(self, act_dir: Path, split: str, n_ctx: int) -> None:
        self.act_dir, self.split, self.n_ctx = act_dir, split, n_ctx
        self.paths = shard_paths(act_dir, split)
        self._acts: dict[int, np.ndarray] = {}
        keys, shard, row = [], [], []
        for s, path in enumerate(self.paths):
            try:
                t = pq.read_table(path, columns=["seq_id", "position"])
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: unreadable activation shard ({err}); {_REBUILD}") from None
            k = t.column("seq_id").to_numpy().astype(np.int64) * n_ctx + t.column(
                "position").to_numpy().astype(np.int64)
            keys.append(k)
            shard.append(np.full(k.size, s, np.int32))
            row.append(np.arange(k.size, dtype=np.int64))
        keys_all = np.concatenate(keys)
        order = np.argsort(keys_all, kind="stable")
        self.keys, self.shard = keys_all[order], np.concatenate(shard)[order]
        self.row = np.concatenate(row)[order]
        self.d_mlp = pq.read_schema(self.paths[0]).field("acts").type.list_size

    def sequences(self, shard: int | None = 0) -> np.ndarray:
        """The sequence ids cached in one shard (None: in every shard)."""
        keys = self.keys if shard is None else self.keys[self.shard == shard]
        return np.unique(keys // self.n_ctx)

    def acts(self, shard: int) -> np.ndarray:
        if shard not in self._acts:
            path = self.paths[shard]
            try:
                column = pq.read_table(path, columns=["acts"]).column("acts").combine_chunks()
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: unreadable activation shard ({err}); "
                                 f"{_REBUILD}") from None
            self._acts[shard] = column.flatten().to_numpy().reshape(-1, self.d_mlp)
        return self._acts[shard]

    def gather(self, seq_id: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """hook_post at (seq_id[i], pos[i, j]) for every valid cell, float32 [m * w, d_mlp]
        (zeros elsewhere). A cell that is valid but not cached is an InputError."""
        n_ctx = self.n_ctx
        want = (seq_id[:, None].astype(np.int64) * n_ctx + pos.astype(np.int64)).reshape(-1)
        ok = valid.reshape(-1)
        at = np.searchsorted(self.keys, want).clip(0, max(self.keys.size - 1, 0))
        found = ok & (self.keys[at] == want)
        if (ok & ~found).any():
            bad = int(np.flatnonzero(ok & ~found)[0])
            raise InputError(f"{self.act_dir}: no cached {self.split} activation for sequence "
                             f"{int(want[bad] // n_ctx)}, position {int(want[bad] % n_ctx)}; "
                             f"{_REBUILD}")
        out = np.zeros((want.size, self.d_mlp), np.float32)
        for s in np.unique(self.shard[at[found]]).tolist():
            cells = np.flatnonzero(found & (self.shard[at] == s))
            out[cells] = self.acts(s)[self.row[at[cells]]]
        if not np.isfinite(out).all():
            raise InputError(f"{self.act_dir}: a {self.split} activation is NaN or Inf; "
                             f"{_REBUILD}")
        return out


def check_disjoint(train_seqs: np.ndarray, val_seqs: np.ndarray, explain: Windows,
                   score: Windows) -> int:
    """The last guard: no held-out window's sequence is a training sequence (compared by
    content, so it holds whatever the row numbers say). Returns the sequences compared."""
    if explain.split != "train" or score.split != "val":
        raise InputError(f"explain set is {explain.split!r}, score set {score.split!r}: "
                         f"need train and val")
    a = {train_seqs[s].tobytes() for s in np.unique(explain.seq_id).tolist()}
    b = {val_seqs[s].tobytes() for s in np.unique(score.seq_id).tolist()}
    shared = a & b
    if shared:
        raise InputError(f"{len(shared)} sequences appear in both the explain (train) and "
                         f"the score (val) windows; rerun with --force tokens (the tokens stage now "
                         f"drops such validation sequences)")
    return len(a) + len(b)
