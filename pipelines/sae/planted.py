"""Activations with a known dictionary, to check that an SAE recipe finds features that are there.

    x = Σ_i c_i · d_i + ε,    d_i unit-norm random directions in R^d (the planted dictionary),
                              c_i ≥ 0 nonzero with probability p_i, ε Gaussian noise

- Feature i is active in a sample with probability p_i; the p_i average `mean_active / n_features`
  so a sample has `mean_active` active features on average (Bernoulli, so the count varies from
  sample to sample as it does in real activations). `zipf = 0` gives every feature the same
  frequency; `zipf = a > 0` gives p_i ∝ (i + 1)^-a (a few common features, a long tail of rare
  ones), each capped at 0.5.
- An active feature's coefficient is uniform on [`coef_low`, `coef_high`] (non-negative, bounded
  away from 0 so every occurrence is above the noise).
- ε has standard deviation `noise` × the signal's per-dimension RMS, so `noise` is a
  noise-to-signal amplitude ratio whatever d is.
- A hierarchy (`families` > 0), the shape feature splitting needs: the first
  `families × children` features form families of `children` siblings, each sibling at cosine
  `child_cosine` to its family's (unplanted) parent direction. A family is active with the
  summed probability of its children and then exactly one child is (siblings never co-occur),
  so a dictionary too small to hold every sibling gains most by spending one feature near the
  parent, and a large enough one splits it (the truth `tests/test_planted_study.py` checks the
  stats stage's splitting rule against).

Batches are a pure function of (spec, split, batch index): any process with the same torch
version regenerates the same stream (the SAELens head-to-head in benchmarks/peers/ imports this
file), nothing of size n × d is ever held, and the train and validation splits never share a
sample. This module imports only torch, so a peer virtualenv can load it by path.

Scores (`score`): MMCS, the mean over planted directions of the best cosine with any learned
decoder row; the share of planted directions recovered at cosine ≥ 0.9; FVU, L0 and the dead
share (never fired) on held-out samples, as `pipelines/sae/metrics.py` measures them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

_SPLIT_SEED = {"train": 1, "val": 2}


@dataclass(frozen=True)
class PlantedSpec:
    d: int = 512
    n_features: int = 1024
    mean_active: float = 10.0  # expected active features per sample (the planted L0)
    zipf: float = 0.0  # 0: equal frequencies; a > 0: p_i ∝ (i + 1)^-a
    coef_low: float = 0.5
    coef_high: float = 1.5
    noise: float = 0.05  # Gaussian noise std / signal per-dimension RMS
    seed: int = 0
    families: int = 0  # families of mutually exclusive siblings (the first families × children features)
    children: int = 2  # siblings per family
    child_cosine: float = 0.75  # cosine of each sibling to its family's parent direction
    family_rate: float = 0.5  # a family's firing probability / an ordinary feature's

    def __post_init__(self) -> None:
        if self.families * self.children > self.n_features:
            raise ValueError(f"planted: {self.families} families of {self.children} need "
                             f"{self.families * self.children} features, there are {self.n_features}")
        if self.families and not (0 < self.child_cosine < 1 and self.children >= 2):
            raise ValueError("planted: child_cosine must be in (0, 1) and children >= 2")

    @property
    def n_children(self) -> int:
        return self.families * self.children

    def parent_of(self) -> torch.Tensor:
        """[n_features] int64: each feature's family, -1 outside the hierarchy."""
        parent = torch.full((self.n_features,), -1, dtype=torch.int64)
        parent[: self.n_children] = torch.arange(self.n_children) // self.children
        return parent

    def parent_directions(self) -> torch.Tensor:
        """[families, d] unit-norm: the direction each family's siblings lean towards."""
        g = torch.Generator().manual_seed(self.seed + 7_777_777)
        P = torch.randn(self.families, self.d, generator=g)
        return P / P.norm(dim=1, keepdim=True)

    def directions(self) -> torch.Tensor:
        """The planted dictionary [n_features, d], unit-norm rows."""
        g = torch.Generator().manual_seed(self.seed)
        D = torch.randn(self.n_features, self.d, generator=g)
        D = D / D.norm(dim=1, keepdim=True)
        if self.families:  # sibling = cos·parent + sin·(its own direction ⟂ parent)
            P = self.parent_directions()[self.parent_of()[: self.n_children]]
            own = D[: self.n_children]
            own = own - (own * P).sum(1, keepdim=True) * P
            own = own / own.norm(dim=1, keepdim=True)
            sin = (1 - self.child_cosine ** 2) ** 0.5
            D[: self.n_children] = self.child_cosine * P + sin * own
        return D

    def frequencies(self) -> torch.Tensor:
        """p_i, each feature's probability of being active in a sample (a sibling's share of
        its family's)."""
        ranks = torch.arange(1, self.n_features + 1, dtype=torch.float64)
        weights = ranks ** -self.zipf
        p = weights / weights.sum() * self.mean_active
        for _ in range(50):  # cap at 0.5 and hand the excess to the others, keeping the mean
            over = p > 0.5
            if not over.any():
                break
            excess = float((p[over] - 0.5).sum())
            p[over] = 0.5
            p[~over] += excess * p[~over] / p[~over].sum()
        if self.families:  # siblings share their family's rate; the mean stays mean_active
            p[: self.n_children] *= self.family_rate / self.children
            p *= self.mean_active / p.sum()
        return p.float()

    def noise_std(self) -> float:
        mean_sq = (self.coef_low ** 2 + self.coef_low * self.coef_high + self.coef_high ** 2) / 3
        return self.noise * (self.mean_active * mean_sq / self.d) ** 0.5


class PlantedData:
    """Batches of planted activations; `batch(split, i)` is deterministic."""

    def __init__(self, spec: PlantedSpec, batch_size: int = 4096):
        self.spec, self.batch_size = spec, batch_size
        self.D = spec.directions()
        self.p = spec.frequencies()
        self.sigma = spec.noise_std()

    def batch(self, split: str, index: int) -> torch.Tensor:
        """[batch_size, d] float32."""
        return self._draw(split, index)[0]

    def codes(self, split: str, index: int) -> torch.Tensor:
        """[batch_size, n_features]: the coefficients behind `batch(split, index)`."""
        return self._draw(split, index)[1]

    def _draw(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + _SPLIT_SEED[split] * 7_919 + index * 104_729 + 13)
        active = torch.rand(self.batch_size, s.n_features, generator=g) < self.p
        if s.families:  # a family fires with its children's summed probability, then one child
            fam_p = self.p[: s.n_children].view(s.families, s.children).sum(1)
            on = torch.rand(self.batch_size, s.families, generator=g) < fam_p
            pick = torch.randint(s.children, (self.batch_size, s.families), generator=g)
            child = torch.zeros(self.batch_size, s.families, s.children, dtype=torch.bool)
            child.scatter_(2, pick.unsqueeze(2), on.unsqueeze(2))
            active[:, : s.n_children] = child.view(self.batch_size, s.n_children)
        rows, cols = active.nonzero(as_tuple=True)
        coefs = s.coef_low + (s.coef_high - s.coef_low) * torch.rand(len(rows), generator=g)
        x = torch.randn(self.batch_size, s.d, generator=g).mul_(self.sigma)
        x.index_add_(0, rows, coefs.unsqueeze(1) * self.D[cols])
        codes = torch.zeros(self.batch_size, s.n_features)
        codes[rows, cols] = coefs
        return x, codes

    def batches(self, split: str, n: int, start: int = 0) -> Iterator[torch.Tensor]:
        for i in range(start, start + n):
            yield self.batch(split, i)

    def input_scale(self) -> float:
        """The sae stage's rule: mean ‖s·x‖ = sqrt(d) over the first 65,536 training samples."""
        norms = torch.cat([x.norm(dim=1) for x in self.batches("train", max(1, 65536 // self.batch_size))])
        return float(self.spec.d ** 0.5 / norms.mean())


@dataclass(frozen=True)
class PlantedScore:
    mmcs: float  # mean over planted directions of the best cosine with a learned decoder row
    recovered: float  # share of planted directions with best cosine ≥ 0.9
    fvu: float
    l0: float
    dead: float  # share of learned features that never fired on the evaluation samples
    eval_samples: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@torch.no_grad()
def direction_match(W_dec: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Best cosine of each planted direction with any learned decoder row: [n_features]."""
    W = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (D @ W.T).max(1).values


@torch.no_grad()
def score(data: PlantedData, W_dec: torch.Tensor, reconstruct: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
          eval_batches: int = 32) -> PlantedScore:
    """`reconstruct(x)` maps raw (unscaled) samples to (x̂, codes [B, d_sae]) — or to (x̂,
    (row, feature) index pair of the active entries) — in raw units. FVU = Σ‖x − x̂‖² /
    Σ‖x − mean‖² over `eval_batches` validation batches."""
    best = direction_match(W_dec.float().cpu(), data.D)
    sq_err = l0 = 0.0
    fired = torch.zeros(W_dec.shape[0], dtype=torch.bool)
    xs_sum, xs_sq, n = torch.zeros(data.spec.d, dtype=torch.float64), 0.0, 0
    for x in data.batches("val", eval_batches):
        x_hat, codes = reconstruct(x)
        sq_err += float(((x_hat.cpu() - x) ** 2).sum())
        if isinstance(codes, tuple):
            _, feats = codes
            l0 += len(feats)
            fired[feats.cpu()] = True
        else:
            active = codes.cpu() > 0
            l0 += float(active.sum())
            fired |= active.any(0)
        xs_sum += x.double().sum(0)
        xs_sq += float((x.double() ** 2).sum())
        n += len(x)
    var_sum = xs_sq - float((xs_sum ** 2).sum()) / n
    return PlantedScore(mmcs=float(best.mean()), recovered=float((best >= 0.9).float().mean()),
                        fvu=sq_err / var_sum, l0=l0 / n, dead=float((~fired).float().mean()), eval_samples=n)
