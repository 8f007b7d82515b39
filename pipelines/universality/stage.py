"""universality (study stage): each unit's best match in every other variant.

For every unordered pair of variants and every dictionary both have (neurons, sae_<n>, and
neurons_pre_ln when both are SoLU models: their neurons before the mid-MLP LayerNorm), the
exact Pearson correlation of every unit of one with every unit of the other, over the same
held-out validation tokens (Towards Monosemanticity's universality measure), accumulated in
one streamed pass:

    cross[i, j] = Σ_t (a_ti − s_i)(b_tj − r_j),  plus Σ and Σ² of each side,

so corr = cov / (σ_a σ_b) with cov and σ from the shifted sums. The shifts s, r are the first
batch's means for neurons (dense, and GeLU neurons have large means: shifting keeps the
float64 sums far from cancellation) and 0 for SAE codes, whose sparsity the product uses: a
TopK code has k of d_sae entries per token, so cross += Aᵀ·B costs nnz(A)·n_b instead of
tokens·n_a·n_b. Neither variant's activations are ever dense in memory beyond one batch.
When a pair's [n_a, n_b] float64 matrices exceed `max_matrix_mb`, the columns are split into
blocks and the tokens read once per block.

Per matched pair the stage also gives the correlation of the two units' logit weights (over
the shared vocabulary: the only space two different models' outputs share) and, only when
both variants have the same model (same weights: e.g. variants that differ in the SAE alone),
the cosine of the two decoder directions; for two different models the MLP bases differ and
the store says so instead of a number.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch

from feature_store import study_store
from feature_store.records import NEURONS_PRE_LN
from feature_store.sae_files import ActiveCodes
from feature_store.transformer_files import weights_hash
from pipelines import progress
from pipelines.model.readout import logit_weights
from pipelines.activations.shards import (SequenceBatch, capped_tokens, count_rows, has_pre_ln,
                                          rebatched, sequence_batches)
from pipelines.devices import pick_device
from pipelines.stats.dictionaries import Dictionary, load_run_units
from pipelines.errors import InputError
from pipelines.run_folder import Manifest, ManifestEntry, hash_folder, staged_dir
from pipelines.study.config import UniversalityConfig

STORE_FOLDER = "store"
SPLIT = "val"
# The run stages this stage reads in every variant (their output hashes are its inputs), and
# those that must be built too though it reads nothing of them (the pages need each
# variant's own store).
READS = ("tokens", "model", "activations", "sae")
REQUIRES = (*READS, "stats")


@dataclass
class _Side:
    """Running Σ and Σ² of one variant's dictionary (shifted), shared by all its pairs."""

    shift: torch.Tensor | None  # [n] float32, or None for sparse codes (shift 0)
    total: torch.Tensor  # [n] float64
    squares: torch.Tensor
    n_active: torch.Tensor  # [n] int64, tokens with activation > 0


@dataclass(frozen=True)
class _Job:
    a: str  # variant names, a < b in study order
    b: str
    kind: str  # dictionary name
    lo: int  # column block of b's units
    hi: int


def pearson_matrix(cross: torch.Tensor, a: _Side, b: _Side, n: int,
                   lo: int = 0, hi: int | None = None) -> torch.Tensor:
    """[n_a, hi-lo] correlations from the shifted sums; NaN where a unit never varies."""
    hi = b.total.shape[0] if hi is None else hi
    mean_a, mean_b = a.total / n, b.total[lo:hi] / n
    var_a = (a.squares / n - mean_a**2).clamp(min=0)
    var_b = (b.squares[lo:hi] / n - mean_b**2).clamp(min=0)
    cov = cross / n - mean_a[:, None] * mean_b[None, :]
    denom = (var_a[:, None] * var_b[None, :]).sqrt()
    # a unit whose variance is zero up to float32 rounding has no correlation at all
    tiny_a = var_a <= 1e-12 * (a.squares / n).clamp(min=1e-30)
    tiny_b = var_b <= 1e-12 * (b.squares[lo:hi] / n).clamp(min=1e-30)
    corr = cov / denom
    corr[tiny_a] = float("nan")
    corr[:, tiny_b] = float("nan")
    return corr.clamp(-1.0, 1.0)


def best_two(corr: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: best and second-best column and value; -1 / NaN where nothing is defined."""
    filled = torch.nan_to_num(corr, nan=-math.inf)
    k = min(2, corr.shape[1])
    vals, idx = filled.topk(k, dim=1)
    if k < 2:
        vals = torch.cat([vals, torch.full_like(vals, -math.inf)], 1)
        idx = torch.cat([idx, torch.full_like(idx, -1)], 1)
    vals, idx = vals.cpu().numpy(), idx.cpu().numpy()
    undefined = ~np.isfinite(vals)
    idx = np.where(undefined, -1, idx)
    vals = np.where(undefined, np.nan, vals)
    return idx[:, 0], vals[:, 0], idx[:, 1], vals[:, 1]


def row_pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correlation of x[i] with y[i] for each row (both [n, d])."""
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    den = (x.norm(dim=1) * y.norm(dim=1)).clamp(min=1e-30)
    return (x * y).sum(1) / den


class _Variant:
    """One variant's model, dictionaries and validation activations."""

    def __init__(self, name: str, run_dir: Path, device: str) -> None:
        self.name, self.run_dir = name, run_dir
        self.pre_ln = has_pre_ln(run_dir / "activations", SPLIT)  # SoLU: neurons_pre_ln too
        # topk SAEs read the validation codes the sae stage kept (the same encoding, read
        # instead of recomputed) where it kept them (`with_stored_codes`)
        units = load_run_units(run_dir, device, pre_ln=self.pre_ln, split=SPLIT)
        self.model, self.n_ctx, self.readout = units.model, units.n_ctx, units.readout
        self.dictionaries = {d.name: d for d in units.dictionaries}
        self.weights = weights_hash(run_dir / "model")
        # Two variants are "the same model" (the SAE-seed control: neurons 1 by construction)
        # iff they share the weights *and* the cached activations: a planted study's variants
        # share a model but not their activations (pipelines/activations/planted.py).
        acts = Manifest(run_dir).get("activations")
        self.activations = acts.output_hash if acts is not None else None
        self.device = device

    def codes(self, d: Dictionary, batch: SequenceBatch) -> tuple[torch.Tensor, ActiveCodes | None]:
        """(dense codes, their active entries or None for a dense dictionary) of a batch of
        the validation split."""
        if d.kind == "neurons":  # neurons, neurons_pre_ln: the cached values themselves
            return batch.acts(d.source), None
        got = d.batch_entries(batch)
        return got.dense, got


def check_same_tokens(runs: dict[str, Path]) -> None:
    """Universality compares units token by token: refuse variants whose tokens differ."""
    hashes = {}
    for name, vdir in runs.items():
        entry = Manifest(vdir).get("tokens")
        if entry is None:
            raise InputError(f"{vdir}: no tokens stage; rerun the study")
        hashes[name] = entry.output_hash
    if len(set(hashes.values())) > 1:
        first = next(iter(hashes))
        other = next(n for n, h in hashes.items() if h != hashes[first])
        raise InputError(f"universality: variants {first} and {other} hold different tokens "
                         f"({runs[first] / 'tokens'} vs {runs[other] / 'tokens'}); units can "
                         f"only be matched over the same tokens: build them in one study")


def _plan(variants: list[_Variant], budget_bytes: int) -> list[list[_Job]]:
    """Every (pair, shared dictionary) as column blocks, grouped into passes whose float64
    cross matrices fit the budget together."""
    jobs = []
    for i, va in enumerate(variants):
        for vb in variants[i + 1:]:
            for kind in va.dictionaries:
                if kind not in vb.dictionaries:
                    continue
                n_a, n_b = va.dictionaries[kind].n, vb.dictionaries[kind].n
                width = max(1, min(n_b, budget_bytes // (8 * n_a)))
                for lo in range(0, n_b, width):
                    jobs.append(_Job(va.name, vb.name, kind, lo, min(n_b, lo + width)))
    passes, current, used = [], [], 0
    for job in jobs:
        size = 8 * variants_by(variants, job.a).dictionaries[job.kind].n * (job.hi - job.lo)
        if current and used + size > budget_bytes:
            passes.append(current)
            current, used = [], 0
        current.append(job)
        used += size
    if current:
        passes.append(current)
    return passes


def correlate(variants: list[_Variant], cfg: UniversalityConfig, device: str):
    """({(a, b, kind): corr [n_a, n_b] float32} for every pair a < b in study order,
    {(variant, kind): its sums}, the token count)."""
    n_ctx = variants[0].n_ctx
    for v in variants[1:]:
        if v.n_ctx != n_ctx:
            raise InputError(f"universality: {v.name} has n_ctx {v.n_ctx}, {variants[0].name} "
                             f"{n_ctx}; units can only be matched over the same tokens")
    passes = _plan(variants, cfg.max_matrix_mb * 2**20)
    total = capped_tokens(count_rows(variants[0].run_dir / "activations", SPLIT), n_ctx,
                          cfg.max_tokens)
    sides: dict[tuple[str, str], _Side] = {}
    corr: dict[tuple[str, str, str], torch.Tensor] = {}
    bar = progress.bar(total=total * len(passes), desc="universality", unit="tok",
                       unit_scale=True)
    n_tokens = 0
    for p, jobs in enumerate(passes):
        cross = {job: torch.zeros(variants_by(variants, job.a).dictionaries[job.kind].n,
                                  job.hi - job.lo, dtype=torch.float64, device=device)
                 for job in jobs}
        needed = {(j.a, j.kind) for j in jobs} | {(j.b, j.kind) for j in jobs}
        # cut again across shard boundaries: two runs' shards need not be cut alike
        streams = [rebatched(sequence_batches(v.run_dir / "activations", SPLIT, n_ctx,
                                              cfg.batch_tokens, cfg.max_tokens, device,
                                              pre_ln=any(k == NEURONS_PRE_LN for n, k in needed
                                                         if n == v.name)),
                             n_ctx, cfg.batch_tokens) for v in variants]
        n_pass = 0
        for batches in zip_longest(*streams):
            first = batches[0]
            for v, b in zip(variants[1:], batches[1:]):
                if (first is None or b is None or b.seq_ids.shape != first.seq_ids.shape
                        or not torch.equal(b.seq_ids, first.seq_ids)):
                    raise InputError(f"universality: {v.run_dir / 'activations'} holds other "
                                     f"validation sequences than {variants[0].run_dir / 'activations'};"
                                     f" rebuild the study's activations (--force activations)")
            codes = {}
            for v, b in zip(variants, batches):
                for kind in {k for name, k in needed if name == v.name}:
                    codes[(v.name, kind)] = v.codes(v.dictionaries[kind], b)
            n_pass += batches[0].x.shape[0]
            if p == 0:
                for key, (dense, sparse) in codes.items():
                    _accumulate_side(sides, key, dense, sparse)
            for job in jobs:
                _accumulate_cross(cross[job], job, codes, sides)
            bar.update(batches[0].x.shape[0])
        if n_tokens and n_pass != n_tokens:
            raise InputError("universality: the validation activations changed between passes")
        n_tokens = n_pass
        for job in jobs:
            a, b = sides[(job.a, job.kind)], sides[(job.b, job.kind)]
            block = pearson_matrix(cross[job], a, b, n_tokens, job.lo, job.hi).float()
            key = (job.a, job.b, job.kind)
            corr[key] = block if key not in corr else torch.cat([corr[key], block], 1)
    bar.close()
    if n_tokens == 0:
        raise InputError(f"universality: no validation activations in "
                         f"{variants[0].run_dir / 'activations'}")
    return corr, sides, n_tokens


def variants_by(variants: list[_Variant], name: str) -> _Variant:
    return next(v for v in variants if v.name == name)


def _accumulate_side(sides, key, dense: torch.Tensor, sparse: ActiveCodes | None) -> None:
    if key not in sides:
        n = dense.shape[1]
        shift = dense.mean(0) if sparse is None else None
        z = torch.zeros(n, dtype=torch.float64, device=dense.device)
        sides[key] = _Side(shift, z.clone(), z.clone(), torch.zeros(n, dtype=torch.int64,
                                                                     device=dense.device))
    s = sides[key]
    if sparse is None:
        centred = dense - s.shift
        s.total += centred.sum(0, dtype=torch.float64)
        s.squares += (centred * centred).sum(0, dtype=torch.float64)
        s.n_active += (dense > 0).sum(0)
    else:
        feat, val = sparse.feature, sparse.value
        s.total.index_add_(0, feat, val.double())
        s.squares.index_add_(0, feat, (val * val).double())
        s.n_active += torch.bincount(feat, minlength=s.n_active.shape[0])


def _accumulate_cross(cross: torch.Tensor, job: _Job, codes, sides) -> None:
    dense_a, sparse_a = codes[(job.a, job.kind)]
    dense_b, _ = codes[(job.b, job.kind)]
    if sparse_a is None:  # neurons: dense, shifted
        a = dense_a - sides[(job.a, job.kind)].shift
        b = dense_b[:, job.lo: job.hi] - sides[(job.b, job.kind)].shift[job.lo: job.hi]
        cross += (a.T @ b).double()
        return
    row, feat, val = sparse_a.row, sparse_a.feature, sparse_a.value
    at = torch.sparse_coo_tensor(torch.stack([feat, row]), val,
                                 (dense_a.shape[1], dense_a.shape[0]),
                                 check_invariants=False).coalesce()
    # CSR multiplies about 2x faster than COO on CPU (measured: 2048 x 8128 by 8128 x 2048)
    if at.device.type == "cpu":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            at = at.to_sparse_csr()
    cross += (at @ dense_b[:, job.lo: job.hi].contiguous()).double()


def match_rows(variants: list[_Variant], corr: dict, sides: dict, n_tokens: int) -> list[dict]:
    """One record per (variant, other, dictionary): arrays for the store's universality table."""
    out = []
    for (a, b, kind), c in corr.items():
        va, vb = variants_by(variants, a), variants_by(variants, b)
        for this, other, matrix in ((va, vb, c), (vb, va, c.T)):
            best, best_corr, second, second_corr = best_two(matrix)
            d_this, d_other = this.dictionaries[kind], other.dictionaries[kind]
            directed = d_this.has_direction and d_other.has_direction  # not neurons_pre_ln
            has = best >= 0
            logit = np.full(best.shape, np.nan, dtype=np.float32)
            if directed and has.any():
                w_this = logit_weights(d_this.out_dir, this.readout)
                w_other = logit_weights(d_other.out_dir, other.readout)
                rows = torch.from_numpy(np.flatnonzero(has)).to(w_this.device)
                cols = torch.from_numpy(best[has]).to(w_this.device)
                logit[has] = row_pearson(w_this[rows], w_other[cols]).cpu().numpy()
            same_model = (this.weights == other.weights
                          and this.activations == other.activations)
            comparable = same_model and directed
            cosine = np.full(best.shape, np.nan, dtype=np.float32)
            if comparable and has.any():
                x = torch.nn.functional.normalize(d_this.direction[rows], dim=1)
                y = torch.nn.functional.normalize(d_other.direction[cols], dim=1)
                cosine[has] = (x * y).sum(1).cpu().numpy()
            out.append({
                "variant": this.name, "other": other.name, "dictionary": kind,
                "n_active": sides[(this.name, kind)].n_active.cpu().numpy(),
                "best_match": best, "best_corr": best_corr,
                "second_match": second, "second_corr": second_corr,
                "logit_corr": logit, "decoder_cosine": cosine,
                "directions_comparable": comparable, "same_model": same_model,
                "n_tokens": n_tokens,
            })
    return out


def run_stage(cfg: UniversalityConfig, runs: dict[str, Path], study_dir: Path,
              manifest: Manifest, inputs_hash: str, config_hash: str,
              log: Callable[[str], None]) -> None:
    """Compute, write `<study>/store/` through the study-store writer, record the stage."""
    start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    check_same_tokens(runs)
    device = pick_device(cfg.device, "universality")
    variants = [_Variant(name, vdir, device) for name, vdir in runs.items()]
    final = study_dir / STORE_FOLDER
    with torch.no_grad():
        if len(variants) > 1:
            corr, sides, n_tokens = correlate(variants, cfg, device)
            records = match_rows(variants, corr, sides, n_tokens)
        else:
            corr, n_tokens, records = {}, 0, []
    with staged_dir(final, before_swap=lambda: manifest.drop("universality")) as out:
        summary_rows = study_store.write_study_store(
            out, variants=[{"name": n, "store": f"../{runs[n].relative_to(study_dir)}/store"}
                           for n in runs],
            records=records, n_tokens=n_tokens)
    seconds = time.perf_counter() - start
    n_pairs = sum(int(c.numel()) for c in corr.values())
    rate = n_tokens * n_pairs / seconds if seconds else 0.0
    names = list(runs)
    medians = ", ".join(f"{r['variant']}→{r['other']} {r['dictionary']} "
                        f"{r['median_best_corr']:.2f}" for r in summary_rows
                        if names.index(r["variant"]) < names.index(r["other"])
                        and r["median_best_corr"] is not None)
    summary = (f"universality: {len(variants)} variants, {len(corr)} pair×dictionary matrices, "
               f"{n_tokens:,} tokens, {rate:.2e} token·unit-pairs/s, {seconds:.0f} s"
               + (f"; median best-match correlation {medians}" if medians else
                  "; one variant: nothing to match"))
    manifest.put(ManifestEntry(
        stage="universality", config=cfg.__dict__.copy(), config_hash=config_hash,
        inputs_hash=inputs_hash, output_hash=hash_folder(final),
        outputs=tuple(sorted(str(p.relative_to(study_dir)) for p in final.rglob("*")
                             if p.is_file())),
        summary=f"{summary} -> {final}",
        results={"n_tokens": n_tokens, "seconds": round(seconds, 2),
                 "token_unit_pairs_per_second": round(rate, 1),
                 "summary": summary_rows},
        started_at=started, duration_s=round(seconds, 2)))
    log(f"{summary} -> {final}")
