"""stats stage: every number a feature page shows, for every SAE dictionary and the raw neurons.

Reads the cached `blocks.0.mlp.hook_post` activations of one split (`stats.split`, default
the held-out `val` documents), the token sequences for context, the model and the SAEs, and
writes `runs/<name>/store/` through `feature_store.writer.StoreWriter` (never directly).

The work, by module:
- `pipelines/stats/dictionaries.py`: what is summarised (each SAE, and the neurons as the identity
  dictionary; for SoLU also the neurons before the mid-MLP LayerNorm, `neurons_pre_ln`, when
  the validation shards hold them), its activations (a topk SAE's read from the codes the
  sae stage kept for the validation split, `StoredCodes`) and directions;
- `pipelines/activations/shards.py`: whole sequences of cached activations, in stored order;
- `pipelines/stats/sampling.py`: passes 1 and 2 over the split: counts, histograms, top-k and
  examples sampled uniformly from 11 equal-width intervals, each with its window;
- `pipelines/stats/ablation.py`: logit weights and pass 3, the ablation effect of every example
  token (reruns the model only over the sequences that hold examples);
- `pipelines/stats/splitting.py`: feature-splitting edges between adjacent SAE sizes;
- `pipelines/stats/directions.py`: neighbours, counterparts, aligned neurons and the joint UMAP.
This module runs them in order and hands every result to the writer. Passes 1-3 run here
(`stats.engine = "local"`, the default) or on Ray workers (`"ray"`, `pipelines/stats/ray_engine.py`,
imported only then); both read the split as the same parts, one per activation shard
(`pipelines/stats/parts.py`), and write the same store. Memory is bounded by
the batch, k and the dictionary sizes; the tokens of the split ([n_seq, n_ctx] int32,
1/d_mlp of the activations) are read whole for the windows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feature_store.records import N_INTERVALS, NEURONS
from feature_store.writer import StoreWriter
from pipelines import progress
from pipelines.activations.planted import TRUTH_FILE
from pipelines.activations.shards import capped_tokens, has_pre_ln
from pipelines.config import StatsConfig
from pipelines.devices import pick_device
from pipelines.errors import InputError
from pipelines.model.readout import logit_weights
from pipelines.stats.dictionaries import Dictionary, load_run_units
from pipelines.stats.directions import nearest, normalized_rows
from pipelines.stats.local_engine import LocalEngine
from pipelines.stats.parts import split_parts
from pipelines.stats.sampling import DictionaryStats, Examples, collect_examples, window_layout
from pipelines.stats.splitting import SplitCriterion, split_edges
from pipelines.stats.umap_beside import JointUmap, beside_passes
from pipelines.data.tokens import read_sequences


def run(cfg: StatsConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device, "stats")
    act_dir = run_dir / "activations"
    pre_ln = has_pre_ln(act_dir, cfg.split)  # SoLU: the neurons before the LayerNorm too
    units = load_run_units(run_dir, device, pre_ln=pre_ln, split=cfg.split)  # StoreError: see the runner
    model, n_ctx, dictionaries = units.model, units.n_ctx, units.dictionaries
    seqs = read_sequences(run_dir / "tokens" / f"{cfg.split}.parquet")
    if seqs.shape[1] != n_ctx:
        raise InputError(f"{run_dir / 'tokens'}: n_ctx {seqs.shape[1]} != model n_ctx {n_ctx}")
    total = capped_tokens(seqs.shape[0] * (n_ctx - 1), n_ctx, cfg.max_tokens)

    parts = split_parts(act_dir, cfg.split, n_ctx, cfg.max_tokens)  # one per shard
    sae_names = [d.name for d in dictionaries if d.kind == "sae"]
    pairs = list(zip(sae_names, sae_names[1:]))
    directed = [d for d in dictionaries if d.has_direction]
    weights = {d.name: logit_weights(d.out_dir, units.readout) for d in directed}
    if cfg.engine == "ray":  # imported only here: a local run never loads Ray
        from pipelines.stats.ray_engine import RayEngine
        engine = RayEngine(cfg, run_dir, pre_ln, n_ctx)
    else:
        engine = LocalEngine(cfg, model, seqs, units.readout, weights, pre_ln, n_ctx, device)
    umap = None
    try:
        try:
            if cfg.umap:  # beside the passes where they leave a core idle (umap_beside.py)
                umap = JointUmap([d.direction for d in directed], cfg.umap_neighbours, cfg.seed,
                                 beside=beside_passes(cfg.umap_beside, device))
            with torch.no_grad():
                passes = engine.statistics(parts, dictionaries, pairs, total, device)
                st, n_tokens = passes.stats, passes.n_tokens
                examples = {d.name: collect_examples(st[d.name]) for d in dictionaries}
                t_abl = time.perf_counter()
                n_pairs = engine.fill_ablation(dictionaries, examples, seqs.shape[0])
                t_abl = time.perf_counter() - t_abl
        finally:
            engine.close()  # Ray's workers go before the families and the layout, as ever
        with torch.no_grad():
            edges = split_edges(passes.split_candidates, {k: s.sumsq for k, s in st.items()},
                                {k: s.n_active for k, s in st.items()}, dictionaries, n_tokens,
                                SplitCriterion.from_config(cfg))
        with progress.heartbeat("stats (umap)"):
            umap_xy, umap_s, umap_wait = umap.result() if umap else (None, 0.0, 0.0)
    finally:
        if umap:
            umap.close()

    vocab = _read_table(run_dir / "tokenizer" / "vocab.parquet", "tokenizer").to_pandas()
    display = vocab.sort_values("id")["display"].tolist()
    model_metrics = _read_json(run_dir / "model" / "metrics.json")
    sae_metrics = _read_table(run_dir / "sae" / "metrics.parquet", "sae").to_pylist()
    run_info = {k: model_metrics.get(k) for k in ("act_fn", "n_params", "val_loss",
                                                   "unigram_val_loss", "val_tokens",
                                                   "tokens_trained", "train_passes", "overfit")}
    run_info.update({"d_model": int(model.cfg.d_model), "d_mlp": int(model.cfg.d_mlp),
                     "d_vocab": int(model.cfg.d_vocab), "n_ctx": n_ctx, "split": cfg.split,
                     "stats_tokens": n_tokens,
                     # planted activations explain nothing about the model: pages say so
                     "activations": ("planted" if (run_dir / "activations" / TRUTH_FILE).is_file()
                                     else "model")})
    writer = StoreWriter(out, n_tokens=n_tokens, run_info=run_info)
    with progress.heartbeat("stats (writing the store)"), writer:
        for d in dictionaries:
            writer.add_dictionary(d.name, d.n, kind=d.kind, **d.info)
        writer.set_vocab(display)
        for d in dictionaries:
            write_dictionary(writer, d, st[d.name], examples[d.name], weights.get(d.name), seqs,
                             cfg, n_ctx, directed)
            writer.add_metrics(d.name, dictionary_metrics(d, st[d.name], n_tokens, sae_metrics))
        for e in edges:
            writer.add_split_edges(e.small, e.index_small, e.large, e.index_large,
                                   e.masked_cosine, e.decoder_cosine, e.containment)
        if umap_xy is not None:
            at = 0
            for d in directed:
                writer.add_umap(d.name, umap_xy[at: at + d.n, 0], umap_xy[at: at + d.n, 1])
                at += d.n
    seconds = time.perf_counter() - start
    n_edges = sum(len(e) for e in edges)
    summary = (f"stats: {len(sae_names)} dictionaries + neurons"
               f"{' (after and before the LayerNorm)' if pre_ln else ''}, {_short(n_tokens)} tokens, "
               f"{n_tokens / seconds:,.0f} tok/s, {seconds:.0f} s (ablation {n_pairs:,} "
               f"pairs {t_abl:.0f} s, umap {_umap_note(umap, umap_s, umap_wait)}, "
               f"{n_edges} split edges{engine.describe()})")
    return summary, {"n_tokens": n_tokens, "dictionaries": [d.name for d in dictionaries],
                     "seconds": round(seconds, 2), "tokens_per_second": round(n_tokens / seconds, 1),
                     "ablation_pairs": n_pairs, "ablation_seconds": round(t_abl, 2),
                     "umap_seconds": round(umap_s, 2), "umap_wait_seconds": round(umap_wait, 2),
                     "umap_beside": bool(umap and umap.beside), "split_edges": n_edges, "device": device}


def _umap_note(umap: JointUmap | None, seconds: float, waited: float) -> str:
    if umap is None:
        return "off"
    return f"{seconds:.0f} s beside the passes, {waited:.0f} s waited" if umap.beside else f"{seconds:.0f} s"


def write_dictionary(writer: StoreWriter, d: Dictionary, s: DictionaryStats, ex: Examples,
                     weights: torch.Tensor | None, seqs: np.ndarray, cfg: StatsConfig,
                     n_ctx: int, directed: list[Dictionary]) -> None:
    """Everything per feature of one dictionary: summary, intervals, examples (token ids read
    from the split's sequences), logits, and its neighbours in every dictionary `directed`
    (those with a direction). A dictionary without a direction (neurons_pre_ln) has no
    logits and no neighbours; its manifest entry says why (`dictionaries.NOT_APPLICABLE`)."""
    writer.add_feature_summary(
        d.name, n_active=s.n_active.cpu().numpy(), max_act=s.max_act.cpu().numpy(),
        sum_act=s.sum_act.cpu().numpy(), act_hist_edges=s.hist_edges,
        act_hist_counts=s.hist_counts.reshape(d.n, -1).cpu().numpy())
    writer.add_interval_counts(d.name, s.interval_counts.reshape(d.n, N_INTERVALS).cpu().numpy())
    pos, valid = window_layout(ex, cfg, n_ctx)
    token_ids = np.where(valid, seqs[ex.seq_id[:, None], np.clip(pos, 0, n_ctx - 1)], -1)
    writer.add_examples(d.name, feature=ex.feature, kind=ex.kind, rank=ex.rank,
                        seq_id=ex.seq_id, position=ex.position,
                        center=np.full(ex.feature.size, cfg.window_before),
                        act=ex.act, token_ids=token_ids, acts=np.where(valid, ex.acts, 0.0),
                        ablation=ex.ablation)
    if weights is None:
        return
    k = min(cfg.n_logits, weights.shape[1])
    top = weights.topk(k, dim=1)
    bottom = weights.topk(k, dim=1, largest=False)
    edges, counts = row_histograms(weights, cfg.logit_hist_bins)
    writer.add_logits(d.name, top_ids=top.indices.cpu().numpy(),
                      top_values=top.values.cpu().numpy(),
                      bottom_ids=bottom.indices.cpu().numpy(),
                      bottom_values=bottom.values.cpu().numpy(),
                      hist_edges=edges.cpu().numpy(), hist_counts=counts.cpu().numpy())
    neurons = next(x for x in directed if x.name == NEURONS)
    if d.name == NEURONS:
        own = normalized_rows(d.out_dir)  # basis vectors are orthogonal: compare W_out rows
    else:
        own = normalized_rows(d.direction)
        cos = normalized_rows(d.out_dir) @ normalized_rows(neurons.out_dir).T
        k = min(cfg.n_aligned_neurons, neurons.n)
        idx = cos.abs().topk(k, dim=1).indices
        writer.add_aligned_neurons(d.name, idx.cpu().numpy(), cos.gather(1, idx).cpu().numpy())
    idx, val = nearest(own, own, cfg.n_neighbours, exclude_self=True)
    writer.add_neighbours(d.name, idx, val)
    for other in directed:
        if other.name == d.name:
            continue
        idx, val = nearest(normalized_rows(d.direction), normalized_rows(other.direction),
                           cfg.n_neighbours)
        writer.add_counterparts(d.name, other.name, idx, val)


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


def dictionary_metrics(d: Dictionary, s: DictionaryStats, n_tokens: int,
                       sae_rows: list[dict]) -> dict:
    """SAE rows come from the sae stage's held-out metrics; neurons by definition."""
    if d.kind == "neurons":  # both identity dictionaries reconstruct their own hook exactly
        return {"l0": float(s.n_active.sum()) / n_tokens, "mse": 0.0, "fvu": 0.0,
                "ce_loss_recovered": 1.0, "ce_loss_recovered_mean_ablation": 1.0,
                "kl_div": 0.0, "recipe": "identity"}
    row = next((r for r in sae_rows if int(r["n_features"]) == d.n), None)
    if row is None:
        return {"l0": float(s.n_active.sum()) / n_tokens}
    keep = ("l0", "mse", "fvu", "ce_loss_recovered", "ce_loss_recovered_mean_ablation", "kl_div",
            "recipe", "ce_clean", "ce_with_sae", "ce_zero_ablation", "ce_mean_ablation",
            "ce_eval_tokens")
    # NaN: not measured (planted activations have no CE): null in the store
    out = {k: row[k] for k in keep if k in row and row[k] is not None and row[k] == row[k]}
    out["l0_stats_tokens"] = float(s.n_active.sum()) / n_tokens
    return out


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err}); rerun with --force model") from None


def _read_table(path: Path, stage: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{path}: unreadable ({err}); rerun with --force {stage}") from None
