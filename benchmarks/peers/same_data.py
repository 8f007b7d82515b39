"""The data both sides of the SAELens head-to-head train on: same rows, same order, same scale.

Loaded by path from both virtualenvs (ours and benchmarks/peers/.venv, which has SAELens and
TransformerLens < 4), so it imports only numpy, pyarrow and torch, and pipelines/sae/planted.py by
path (that file imports only torch).

A job is a dict (JSON on the command line of the peer script):
    data     "run" (a run folder's cached activations) or "planted" (pipelines/sae/planted.py)
    run_dir  for "run"
    spec     for "planted": PlantedSpec fields
    samples  training activations (whole batches; "run" data repeats in fresh permutations
             once the cache is used up, so 2M activations of the tiny run are two epochs)
    batch    rows per step
    eval     held-out samples for "planted" ("run" uses every validation token)

Both trainers see the activations multiplied by one constant, the sae stage's rule: mean norm
sqrt(d_in) over the first 65,536 training rows. Each side times only its optimizer steps; the
time spent producing batches (reading, permuting, generating planted samples) is left out of
its act/s on both sides alike.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[2]


def _planted_module():
    spec = importlib.util.spec_from_file_location("planted_by_path", ROOT / "pipelines" / "planted.py")
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def _shard(path: Path) -> np.ndarray:
    column = pq.read_table(path, columns=["acts"]).column("acts")
    d = column.type.list_size
    return np.concatenate([c.flatten().to_numpy().reshape(-1, d) for c in column.chunks]).astype(np.float32)


def _split(run_dir: Path, split: str) -> np.ndarray:
    return np.concatenate([_shard(p) for p in sorted((Path(run_dir) / "activations").glob(f"{split}-*.parquet"))])


class SameData:
    """Scaled training batches, the held-out set and the planted truth (None for run data)."""

    def __init__(self, job: dict):
        self.job, self.batch = job, int(job["batch"])
        self.steps = int(job["samples"]) // self.batch
        self.truth = None
        if job["data"] == "run":
            self.train = _split(job["run_dir"], "train")
            self.d_in = self.train.shape[1]
            self.scale = float(np.sqrt(self.d_in) / np.linalg.norm(self.train[:65536], axis=1).mean())
        elif job["data"] == "planted":
            planted = _planted_module()
            self.planted = planted
            self.data = planted.PlantedData(planted.PlantedSpec(**job["spec"]), self.batch)
            self.d_in = self.data.spec.d
            self.scale = self.data.input_scale()
            self.truth = self.data.D
        else:
            raise ValueError(f"job data must be run or planted, got {job['data']!r}")
        self.data_seconds = 0.0  # time spent producing batches, left out of act/s

    def batches(self) -> Iterator[torch.Tensor]:
        """`steps` scaled batches [batch, d_in], float32."""
        for i in range(self.steps):
            t = time.perf_counter()
            if self.job["data"] == "run":
                n = len(self.train)
                per_epoch = n // self.batch
                epoch, j = divmod(i, per_epoch)
                if j == 0:
                    self._order = np.random.default_rng(epoch).permutation(n)
                x = torch.from_numpy(self.train[self._order[j * self.batch:(j + 1) * self.batch]] * self.scale)
            else:
                x = self.data.batch("train", i) * self.scale
            self.data_seconds += time.perf_counter() - t
            yield x

    def b_dec_init(self) -> torch.Tensor:
        """The mean of the first four scaled batches (what our trainer starts b_dec at)."""
        it = self.batches()
        first = torch.cat([next(it) for _ in range(min(4, self.steps))])
        self.data_seconds = 0.0
        return first.mean(0)

    @torch.no_grad()
    def evaluate(self, encode: Callable[[torch.Tensor], torch.Tensor], decode: Callable[[torch.Tensor], torch.Tensor],
                 W_dec: torch.Tensor) -> dict:
        """FVU and L0 on held-out rows in activation units, dead share (never fired on them) and,
        for planted data, MMCS and the share of planted directions recovered at cosine >= 0.9.
        `encode`/`decode` work on scaled inputs: codes [n, d_sae], reconstruction [n, d_in]."""
        if self.job["data"] == "run":
            chunks = torch.from_numpy(_split(self.job["run_dir"], "val")).split(8192)
        else:
            n = int(self.job.get("eval", 131072)) // self.batch
            chunks = (self.data.batch("val", i) for i in range(n))
        sq_err = l0 = sq = 0.0
        total = torch.zeros(self.d_in, dtype=torch.float64)
        fired = torch.zeros(W_dec.shape[0], dtype=torch.bool)
        count = 0
        for x in chunks:
            codes = encode(x * self.scale)
            x_hat = decode(codes) / self.scale
            sq_err += float(((x_hat - x) ** 2).sum())
            active = codes > 0
            l0 += float(active.sum())
            fired |= active.any(0)
            total += x.double().sum(0)
            sq += float((x.double() ** 2).sum())
            count += len(x)
        out = {"fvu": sq_err / (sq - float((total ** 2).sum()) / count), "l0": l0 / count,
               "dead": float((~fired).float().mean()), "eval_samples": count}
        if self.truth is not None:
            best = self.planted.direction_match(W_dec.float().cpu(), self.truth)
            out.update(mmcs=float(best.mean()), recovered=float((best >= 0.9).float().mean()))
        return out
