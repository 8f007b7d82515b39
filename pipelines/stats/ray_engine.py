"""The statistics pass on Ray (`stats.engine = "ray"`): passes 1-3 split over Ray workers,
merged into exactly the store the local engine writes (every table, row for row).

Work is cut where the local engine's work is already cut, so each piece is computed by the
same code on the same inputs and only the merge is new:
- passes 1 and 2 (`pipelines/stats/sampling.py`): the parts are the activation shards
  (`pipelines/stats/parts.py`), handed round-robin to `stats.ray_workers` actors. Each actor
  loads the model and the dictionaries once, runs `PassOne.part` on each of its shards and
  returns every shard's `PartSums` (counts, float64 sums, max, min, splitting sums) and its
  running top-k. The driver adds the sums in shard order (`add_sums`, as the local engine
  does), merges the top-k (`BottomM.merge`: a total order, (activation desc, seq_id,
  position), so the first k are the same whoever saw which entry), computes the histogram
  edges, and sends every unit's max back for pass 2. Pass 2's counts are integers and its
  interval samples are the m smallest keys of `uniform_keys`, a hash of (seed, dictionary,
  seq_id, position, unit): the same key for an entry in any process, so the reservoirs
  merge exactly too. Pass 1 completes and is merged before pass 2 starts.
- pass 3 (`pipelines/stats/ablation.py`): the driver plans the (unit, sequence, position) pairs
  and their chunks of sequences (`ablation_plan`); actors compute whole chunks
  (`ablation_chunks`: one forward pass per chunk, the same chunk as the local engine) and
  the driver writes the values back (`apply_ablation`).
The driver does once what does not split: collecting examples, splitting edges from the
merged sums, logit weights, neighbours, the joint UMAP, families, and writing the store.

Workers read the run folder by path: on a multi-node cluster it must be on a filesystem
every node mounts at the same path. Equality is bit for bit when the workers and the driver
compute on the same kind of device and CPU with the same torch intra-op thread count: some
CPU kernels round differently by thread count (on the mini run, one pre-LN ablation value in
4,159 examples moved in the 6th digit with 1 thread instead of 2), so each worker runs with
the driver's `torch.get_num_threads()` (oversubscribing its one Ray CPU: exactness first),
and float results are not reproducible across BLAS builds and instruction sets anyway. Ray is imported only when this module is (engine "ray").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from pipelines import progress
from pipelines.model.readout import logit_weights
from pipelines.stats.ablation import ablation_chunks, ablation_plan, apply_ablation
from pipelines.config import StatsConfig
from pipelines.devices import pick_device
from pipelines.stats.dictionaries import Dictionary, load_run_units
from pipelines.stats.sampling import (BottomM, Examples, PartSums, PassOne, PassResult, PassTwo,
                                      PassTwoCounts, add_sums, candidate_pairs,
                                      filled_candidates, finish, pass_two_inputs, summarize)
from pipelines.stats.splitting import SplitCandidates
from pipelines.stats.parts import ShardPart, part_batches
from pipelines.data.tokens import read_sequences


@dataclass(frozen=True)
class WorkerPassOne:
    """One worker's pass 1: each of its shards' sums (by shard index, so the driver adds
    them in shard order) and the running top-k over all of them."""

    shard_sums: dict[int, PartSums]
    tops: dict[str, BottomM]


@ray.remote(num_cpus=1)
class StatsWorker:
    """One worker: the model and the dictionaries, loaded once, and its shards' state
    between passes (the sparse codes pass 2 reuses)."""

    def __init__(self, run_dir: str, cfg: StatsConfig, pre_ln: bool, n_ctx: int,
                 threads: int) -> None:
        torch.set_num_threads(threads)  # the driver's: some CPU kernels round by thread count
        self.run_dir, self.cfg, self.pre_ln, self.n_ctx = Path(run_dir), cfg, pre_ln, n_ctx
        self.device = pick_device(cfg.device, "stats")
        units = load_run_units(self.run_dir, self.device, pre_ln=pre_ln, split=cfg.split)
        self.model, self.ro, self.dictionaries = units.model, units.readout, units.dictionaries
        self.one: PassOne | None = None

    def _batches(self, part: ShardPart):
        return part_batches(part, self.n_ctx, self.cfg.batch_tokens, self.device, self.pre_ln)

    @torch.no_grad()
    def pass_one(self, parts: list[ShardPart], cands: list[SplitCandidates],
                 expected_tokens: int) -> WorkerPassOne:
        """Every shard's PartSums and the top-k over all of them."""
        cands = [c.to(self.device) for c in cands]
        self.one = PassOne(self.dictionaries, self.cfg, self.n_ctx, self.device, cands,
                           expected_tokens)
        sums = {p.index: self.one.part(self._batches(p)).to("cpu") for p in parts}
        return WorkerPassOne(sums, {name: t.to("cpu") for name, t in self.one.tops.items()})

    @torch.no_grad()
    def pass_two(self, parts: list[ShardPart], inputs: dict) -> PassTwoCounts:
        two = PassTwo(self.dictionaries, self.cfg, self.n_ctx, self.device, inputs,
                      self.one.cached)
        for p in parts:
            two.part(self._batches(p))
        return two.results().to("cpu")

    @torch.no_grad()
    def ablation(self, plan, chunk_ids: list[int]):
        seqs = read_sequences(self.run_dir / "tokens" / f"{self.cfg.split}.parquet")
        weights = {d.name: logit_weights(d.out_dir, self.ro)
                   for d in self.dictionaries if d.has_direction}
        return list(ablation_chunks(self.model, seqs, self.dictionaries, weights, self.ro, plan,
                                    chunk_ids, self.device))


class RayEngine:
    """Connects to (or starts) Ray and drives the workers; `close` ends what it started."""

    def __init__(self, cfg: StatsConfig, run_dir: Path, pre_ln: bool, n_ctx: int) -> None:
        self.cfg, self.run_dir, self.pre_ln, self.n_ctx = cfg, run_dir, pre_ln, n_ctx
        self.started = False
        if not ray.is_initialized():
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=cfg.ray_workers or os.cpu_count() or 1,
                         include_dashboard=False, log_to_driver=False)
                self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.n_workers = max(1, cfg.ray_workers or cpus)
        self.workers: list = []
        self.used = 0

    def describe(self) -> str:
        return f", ray: {self.used} workers"

    def statistics(self, parts: list[ShardPart], dictionaries: list[Dictionary],
                   pairs: list[tuple[str, str]], total: int, device: str) -> PassResult:
        """Passes 1 and 2 over the shards on the workers, merged (module docstring)."""
        W = self.used = min(self.n_workers, len(parts))
        cfg, n_ctx = self.cfg, self.n_ctx
        with progress.heartbeat(f"stats (ray: starting {W} workers)"):
            self.workers = [StatsWorker.remote(str(self.run_dir), cfg, self.pre_ln, n_ctx,
                                               torch.get_num_threads()) for _ in range(W)]
        assign = [parts[i::W] for i in range(W)]  # round-robin over the shards
        cands = candidate_pairs(dictionaries, cfg, pairs, device)
        sent = [c.to("cpu") for c in cands]
        with progress.heartbeat(f"stats (1/3 max, top-k; {len(parts)} shards on {W} workers)"):
            got: list[WorkerPassOne] = ray.get(
                [w.pass_one.remote(a, sent, total * len(a) // len(parts) + 1)
                 for w, a in zip(self.workers, assign)])
        by_shard = {i: s for g in got for i, s in g.shard_sums.items()}
        sums = None
        for i in sorted(by_shard):  # in shard order: the same float64 sums as the local engine
            sums = add_sums(sums, by_shard[i].to(device))
        tops: dict[str, BottomM] = {k: v.to(device) for k, v in got[0].tops.items()}
        for g in got[1:]:
            for name, t in g.tops.items():
                tops[name].merge(t)
        st = summarize(dictionaries, cfg, sums, tops)
        inputs = ray.put({name: (mx.cpu(), edges)
                          for name, (mx, edges) in pass_two_inputs(st).items()})
        with progress.heartbeat("stats (2/3 intervals on the workers)"):
            got2 = ray.get([w.pass_two.remote(a, inputs) for w, a in zip(self.workers, assign)])
        two = PassTwo(dictionaries, cfg, n_ctx, device, pass_two_inputs(st), {})
        for counts in got2:
            two.merge(counts)
        finish(st, two)
        return PassResult(st, filled_candidates(cands, sums), sums.n_tokens)

    def fill_ablation(self, dictionaries: list[Dictionary], examples: dict[str, Examples],
                      n_seqs: int) -> int:
        """Pass 3: the driver plans, the workers compute whole chunks, the driver writes back."""
        plan = ablation_plan(dictionaries, examples, self.cfg, self.n_ctx, n_seqs)
        if plan is None:
            return 0
        ref = ray.put(plan)
        ids = list(range(len(plan.chunks)))
        W = len(self.workers)
        with progress.heartbeat(f"stats (3/3 ablation, {len(ids)} chunks on {W} workers)"):
            got = ray.get([w.ablation.remote(ref, ids[i::W])
                           for i, w in enumerate(self.workers)])
        result = np.empty(plan.u_feat.size, dtype=np.float32)
        for chunks in got:
            for idx, values in chunks:
                result[idx] = values
        apply_ablation(plan, examples, dictionaries, result)
        return int(plan.u_feat.size)

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.started:
            ray.shutdown()
            self.started = False
