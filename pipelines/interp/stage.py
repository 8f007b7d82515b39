"""interp stage: an explanation and held-out scores for every unit (issue 13).

For every dictionary, neurons included: explain each unit from training-split windows
(`pipelines/interp/sets.py` builds them), score the explanation on held-out validation
windows it never saw (`pipelines/interp/scoring.py`), and score two controls beside it: each
unit scored with another unit's explanation (the shuffled floor: what an explanation earns
by luck and base rates), and each unit's best single-token explanation (how much more than
"fires on token t" the explanation says). Neurons vs features is the dictionaries side by
side. The untrained-model control is a study's (issue 12): a study runs this stage on its
untrained variant like any other run and compares the two stores' `interp_summary()`.

Explainers: `token-patterns` (offline, `pipelines/interp/explainer.py`, the default) or `llm`
(`pipelines/interp/llm.py`, only when configured). Output: `store/explanations/`, written
after the stats stage built the store (layout in `feature_store/schema.py`).
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from feature_store.explanations import write_explanations
from feature_store.records import NEURONS
from feature_store.store import FeatureStore
from pipelines import progress
from pipelines.activations.windows import WindowSpan
from pipelines.model.readout import logit_weights
from pipelines.config import InterpConfig
from pipelines.devices import pick_device
from pipelines.stats.dictionaries import load_run_units
from pipelines.errors import InputError
from pipelines.interp.blocks import BLOCK_UNITS, concat_scores, run_blocks, unit_blocks
from pipelines.interp.explainer import (Patterns, Windows, describe, fit_patterns, simulate,
                                        single_token)
from pipelines.interp.scoring import derangement, detection_cut, fire_threshold, score
from pipelines.interp.sets import check_disjoint, explain_windows, score_windows
from pipelines.data.tokens import read_sequences

EXPLAINER_NAMES = {"token-patterns": "token-patterns"}


def run(cfg: InterpConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device, "interp")
    store = FeatureStore.open(run_dir / "store")  # StoreError: the runner names it
    split = store.run_info().get("split")
    if split != "val":
        raise InputError(f"{run_dir / 'store'}: its examples come from the {split!r} split; "
                         f"interp scores on held-out examples, so it needs stats.split=val")
    units = load_run_units(run_dir, device)
    n_ctx, d_vocab, ro = units.n_ctx, int(units.model.cfg.d_vocab), units.readout
    dictionaries = units.dictionaries
    train = read_sequences(run_dir / "tokens" / "train.parquet")
    val = read_sequences(run_dir / "tokens" / "val.parquet")
    act_dir = run_dir / "activations"
    display = store.vocab()["display"].tolist()

    with torch.no_grad():
        t0 = time.perf_counter()
        store_examples = {d.name: store.example_windows(d.name) for d in dictionaries}
        span = WindowSpan.of_examples(store_examples[NEURONS].center,
                                      store_examples[NEURONS].token_ids.shape[1],
                                      str(run_dir / "store"))
        explain = explain_windows(act_dir, train, dictionaries, cfg, span, n_ctx, device)
        t_explain_set = time.perf_counter() - t0
        t0 = time.perf_counter()
        with progress.heartbeat("interp (held-out windows)"):
            held_out = score_windows(store_examples, act_dir, val, dictionaries, cfg, span,
                                     n_ctx, device)
        t_score_set = time.perf_counter() - t0
        n_compared = sum(check_disjoint(train, val, explain[d.name], held_out[d.name])
                         for d in dictionaries)
        logits = {d.name: logit_weights(d.out_dir, ro) for d in dictionaries}

    rng = np.random.default_rng([cfg.seed, 3])
    columns, t_fit, t_score = {}, 0.0, 0.0
    bar = progress.bar(total=sum(d.n for d in dictionaries), desc="interp (explain, score)",
                       unit="unit")
    # the bar moves once per dictionary; the heartbeat keeps a log file hearing from it.
    # Blocks of units run on this process's torch threads (one in a study's variant process).
    with progress.heartbeat("interp (explain, score)"), \
            ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for d in dictionaries:
            t0 = time.perf_counter()
            ex = explain[d.name]
            if cfg.explainer == "llm":  # pragma: no cover - never run by tests or by default
                from pipelines.interp.llm import explain_with_llm
                patterns, texts = explain_with_llm(cfg, d.name, ex, display, run_dir, d.n)
                single = single_token(ex, d.n, d_vocab)
            else:
                patterns, single = fit_dictionary(ex, d.n, d_vocab, cfg, pool)
                texts = describe(patterns, display)
            t_fit += time.perf_counter() - t0
            t0 = time.perf_counter()
            columns[d.name] = score_dictionary(patterns, single, texts, ex, held_out[d.name],
                                               logits[d.name], cfg, rng, display, d_vocab, pool)
            columns[d.name]["explainer"] = [EXPLAINER_NAMES.get(cfg.explainer, cfg.explainer)] * d.n
            t_score += time.perf_counter() - t0
            bar.update(d.n)
    bar.close()
    manifest = write_explanations(out, columns, {
        "explainer": cfg.explainer, "explain_split": "train", "score_split": "val",
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "sequences_compared_for_disjointness": n_compared})
    seconds = time.perf_counter() - start
    n_units = sum(d.n for d in dictionaries)
    med = manifest["dictionaries"]
    line = ", ".join(f"{name} sim {_fmt(m['medians']['sim_top_random'])} "
                     f"(shuffled {_fmt(m['controls']['shuffled']['sim_top_random'])})"
                     for name, m in med.items())
    summary = (f"interp: {n_units:,} units ({len(dictionaries) - 1} dictionaries + neurons), "
               f"{cfg.explainer}, median {line}, {seconds:.0f} s")
    return summary, {"n_units": n_units, "seconds": round(seconds, 2),
                     "explain_set_seconds": round(t_explain_set, 2),
                     "score_set_seconds": round(t_score_set, 2),
                     "fit_seconds": round(t_fit, 2), "score_seconds": round(t_score, 2),
                     "medians": {k: v["medians"] for k, v in med.items()},
                     "controls": {k: v["controls"] for k, v in med.items()},
                     "device": device}


def fit_dictionary(explain: Windows, n: int, d_vocab: int, cfg: InterpConfig,
                   pool: Executor | None = None, block: int = BLOCK_UNITS) -> tuple[Patterns, Patterns]:
    """Every unit's explanation and best single token, fitted a block of units at a time."""
    blocks = unit_blocks(explain, n, block)

    def fit(b: int, lo: int, hi: int) -> tuple[Patterns, Patterns]:
        return (fit_patterns(blocks[b], hi - lo, d_vocab, cfg.max_patterns, cfg.max_patterns,
                             cfg.min_support), single_token(blocks[b], hi - lo, d_vocab))

    parts = run_blocks(fit, n, pool, block)
    return Patterns.concat([p for p, _ in parts]), Patterns.concat([s for _, s in parts])


def score_dictionary(patterns: Patterns, single: Patterns, texts: list[str], explain: Windows,
                     held_out: Windows, weights: torch.Tensor, cfg: InterpConfig,
                     rng: np.random.Generator, display: list[str], d_vocab: int,
                     pool: Executor | None = None, block: int = BLOCK_UNITS) -> dict:
    """Every column of one dictionary's explanations table (but `explainer`). The random
    draws are the dictionary's, in one order; the scoring runs a block of units at a time."""
    n = patterns.n_units
    k = min(cfg.logit_tokens, d_vocab)
    top = weights.topk(k, dim=1).indices.cpu().numpy().astype(np.int32)
    rand = rng.integers(0, d_vocab, size=(n, cfg.random_logit_tokens)).astype(np.int32)
    has = np.flatnonzero((patterns.weight > 0).any(axis=1))
    order = np.arange(n)
    order[has] = has[derangement(has.size, rng)]
    explanations = {"own": patterns, "shuffled": patterns.permuted(order), "one": single}
    ex_blocks, ho_blocks = unit_blocks(explain, n, block), unit_blocks(held_out, n, block)

    def scored(b: int, lo: int, hi: int) -> dict[str, dict[str, np.ndarray]]:
        ex, ho = ex_blocks[b], ho_blocks[b]
        threshold = fire_threshold(ho, hi - lo, cfg.fire_fraction)
        out = {"threshold": {"threshold": threshold}}
        for name, full in explanations.items():
            p = full.rows(lo, hi)
            cut = detection_cut(p, simulate(p, ex), ex, cfg.fire_fraction)
            out[name] = score(p, simulate(p, ho), ho, threshold, top[lo:hi], rand[lo:hi], cut)
        return out

    parts = run_blocks(scored, n, pool, block)
    own, shuffled, one = (concat_scores([part[name] for part in parts])
                          for name in ("own", "shuffled", "one"))
    threshold = concat_scores([part["threshold"] for part in parts])["threshold"]
    dead = ~np.isfinite(threshold)  # never fired on held-out windows: nothing to score
    nan = lambda v: np.where(dead, np.nan, v).astype(np.float32)  # noqa: E731
    cols = {"index": np.arange(n, dtype=np.int32), "explanation": texts}
    for name in ("sim_top_random", "sim_random", "detection", "detection_neighbours", "logits"):
        cols[name] = nan(own[name])
    for name in ("n_score_windows", "n_random_windows", "n_detection_positive",
                 "n_detection_random", "n_detection_neighbour", "n_logit_tokens"):
        cols[name] = own[name].astype(np.int32)
    cols["n_explain_windows"] = np.bincount(explain.unit, minlength=n).astype(np.int32)
    cols["shuffled_sim_top_random"] = nan(shuffled["sim_top_random"])
    cols["shuffled_detection"] = nan(shuffled["detection"])
    cols["shuffled_logits"] = nan(shuffled["logits"])
    cols["single_token"] = [f'"{display[t]}"' if t >= 0 else "" for t in single.token[:, 0]]
    cols["single_token_sim_top_random"] = nan(one["sim_top_random"])
    cols["single_token_detection"] = nan(one["detection"])
    return cols


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
