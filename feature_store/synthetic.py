"""A realistic-looking feature store made of random numbers, written through StoreWriter only.

Why: the dashboard, its tests and `benchmarks/store_read.py` need a store with the shapes and
distributions of a real one (dead, ultralow, normal and dense features; heavy-tailed
activations; eleven intervals with examples; families across sizes) without training a
model. Going through `StoreWriter` keeps this honest: whatever the dashboard reads here, a
real run can produce.

With `hostile_tokens=True` (the default) the vocab contains markup and quote characters, raw
format characters (a right-to-left override, zero-width characters, a BOM, a soft hyphen, an
unclosed right-to-left isolate, as a store written by other code might hold them) and two
adjacent Hebrew tokens, and feature 0 of every dictionary shows them, in that order, in its
examples and top logits: a page that forgets to escape token text fails the dashboard's XSS
test, and one that lets a token reorder its neighbours fails the browser's bidi test.

`write_synthetic_explanations` adds the interp stage's explanations table to such a store (or
any other), random too, unit 0 of each dictionary explained with the hostile tokens.

    python -m feature_store.synthetic OUT_DIR [--sizes 512,1024,2048] [--d-mlp 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from feature_store import explanations, schema
from feature_store.records import N_INTERVALS, NEURONS
from feature_store.store import FeatureStore
from feature_store.writer import StoreWriter

MARKUP_TOKENS = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"', "'",
                 "&amp;", "<")
# Raw Cf characters: U+202E reverses what follows, U+200B / U+FEFF / U+00AD are invisible,
# U+2067 opens a right-to-left isolate it never closes. The Hebrew words (shalom, olam) end
# one token and start the next: strong right-to-left text that, unless each token is a bidi
# isolate, the browser shows as one run, the second token's word left of the first's.
FORMAT_TOKENS = ("\u202e·override", "zero\u200bwidth\ufeff", "\u2067\u05e9\u05dc\u05d5\u05dd",
                 "\u05e2\u05d5\u05dc\u05dd\u00ad")
HOSTILE_TOKENS = MARKUP_TOKENS + FORMAT_TOKENS
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pe", "an", "or", "ing",
              "ed", "er", "th", "st", "qu", "is", "on")
_CODE = ("def", "self", "return", "import", "(", ")", "):", "[", "]", "{", "}", ":", ",", ".",
         "=", "==", "__", "None", "True", "if", "else", "for", "in", "#", "0", "1", "2", "\\n")
_TOP_K = 20  # top examples per feature, the stats stage's default
_PER_INTERVAL = 5  # uniform samples shown per interval
_WINDOW = 24  # tokens per example window
_BEFORE = 16  # of which before the centre token
_SEQ_LEN = 128
_ACT_EDGES = np.logspace(-3, 2, 41)  # log10-spaced, shared by every feature of a dictionary
_CHUNK = 2048  # features per add_examples call: bounds memory, exercises streaming writes


def build_synthetic_store(path: str | Path, n_features: Sequence[int] = (512, 1024, 2048),
                          d_mlp: int = 512, n_tokens: int = 2_000_000, seed: int = 0,
                          hostile_tokens: bool = True, d_vocab: int = 4096) -> Path:
    """Write a store with `neurons` (d_mlp) and one SAE per size to `path`; return `path`.

    Repeated sizes get distinct names (`sae_16384`, `sae_16384_2`, ...), so a benchmark can
    ask for four dictionaries of one size."""
    if d_vocab < 64 or d_mlp < 2 or min(n_features, default=2) < 2:
        raise ValueError(f"need d_vocab >= 64, d_mlp >= 2 and sizes >= 2; got {d_vocab}, "
                         f"{d_mlp}, {tuple(n_features)}")
    rng = np.random.default_rng(seed)
    vocab = _vocab(d_vocab, hostile_tokens, rng)
    hostile_ids = np.arange(1, 1 + len(HOSTILE_TOKENS)) if hostile_tokens else None
    sizes = [(NEURONS, d_mlp)] + _sae_names(n_features)
    with StoreWriter(path, n_tokens=n_tokens, run_info={
            "synthetic": True, "seed": seed, "act_fn": "solu_ln", "n_params": 1_180_000,
            "d_model": 128, "d_mlp": d_mlp, "d_vocab": d_vocab, "val_loss": 3.92,
            "unigram_val_loss": 6.05}) as writer:
        writer.set_vocab(vocab)
        for name, n in sizes:
            writer.add_dictionary(name, n, recipe=None if name == NEURONS else "l1",
                                  d_in=d_mlp)
        densities = {}
        for name, n in sizes:
            densities[name] = _write_dictionary(writer, name, n, n_tokens, d_vocab, d_mlp,
                                                hostile_ids, rng)
        for name, n in sizes:
            for other, n_other in sizes:
                if other != name:
                    idx, cos = _near(n, n_other, 5, rng)
                    writer.add_counterparts(name, other, idx, cos)
        _write_splits(writer, sizes[1:], densities, rng)
        centres = rng.normal(scale=6.0, size=(40, 2))
        for name, n in sizes:
            cluster = np.arange(n) * len(centres) // n
            xy = centres[cluster] + rng.normal(scale=0.8, size=(n, 2))
            writer.add_umap(name, xy[:, 0], xy[:, 1])
    return Path(path)


def _sae_names(n_features: Sequence[int]) -> list[tuple[str, int]]:
    out, seen = [], {}
    for n in n_features:
        base = schema.dictionary_name(int(n))
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}_{seen[base]}", int(n)))
    return out


def _vocab(d_vocab: int, hostile: bool, rng: np.random.Generator) -> list[str]:
    """Display forms as the tokenizer writes them: `·` for a leading space, `↵` for newline."""
    words = ["<|endoftext|>"] + (list(HOSTILE_TOKENS) if hostile else [])
    words += list(_CODE) + ["↵", "↵↵", "·", "··", "····"]
    # As many random words as before FORMAT_TOKENS existed (the surplus is cut below), so the
    # random stream, and every number drawn after the vocab, is what it was.
    while len(words) < d_vocab + (len(FORMAT_TOKENS) if hostile else 0):
        n_syl = rng.integers(1, 4)
        word = "".join(rng.choice(_SYLLABLES, n_syl))
        lead = rng.random()
        words.append(("·" + word) if lead < 0.6 else (word.capitalize() if lead < 0.7 else word))
    return words[:d_vocab]


def _write_dictionary(writer: StoreWriter, name: str, n: int, n_tokens: int, d_vocab: int,
                      d_mlp: int, hostile_ids: np.ndarray | None,
                      rng: np.random.Generator) -> np.ndarray:
    neurons = name == NEURONS
    # Densities: SoLU neurons fire often; SAE features are sparse, with a dead and an
    # ultralow-density cluster that grow with the dictionary, and a few dense ones.
    if neurons:
        log_density = np.clip(rng.normal(-1.3, 0.4, n), -4, -0.2)
    else:
        log_density = np.clip(rng.normal(-2.9, 0.7, n), -5, -0.2)
        ultralow = rng.random(n) < 0.04 + 0.02 * np.log2(n / 512 + 1)
        log_density[ultralow] = rng.uniform(-6.3, -5.2, ultralow.sum())
        log_density[rng.random(n) < 0.015] = rng.uniform(-0.95, -0.3)
    n_active = np.round(10.0 ** log_density * n_tokens).astype(np.int64)
    if not neurons:
        n_active[rng.random(n) < 0.02 + 0.01 * np.log2(n / 512 + 1)] = 0
    n_active[0] = max(int(n_active[0]), n_tokens // 500)  # feature 0 is alive: XSS test
    alive = n_active > 0
    max_act = np.where(alive, rng.lognormal(1.0, 0.5, n), 0.0).astype(np.float32)
    mean_act = (max_act * rng.uniform(0.12, 0.35, n)).astype(np.float32)

    centre = np.log10(np.maximum(mean_act, 1e-3))[:, None]
    mids = np.log10(_ACT_EDGES)
    cdf = _normal_cdf((np.minimum(mids[None, :], np.log10(np.maximum(max_act, 1e-3))[:, None] +
                       1e-6) - centre) / 0.35)
    p = np.diff(cdf, axis=1)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    act_hist = np.round(p * n_active[:, None]).astype(np.int64)
    writer.add_feature_summary(name, n_active=n_active, max_act=max_act, mean_act=mean_act,
                               act_hist_edges=_ACT_EDGES, act_hist_counts=act_hist)

    decay = rng.uniform(0.15, 0.8, n)[:, None]
    shares = np.exp(-decay * np.arange(N_INTERVALS))
    shares /= shares.sum(axis=1, keepdims=True)
    intervals = rng.multinomial(n_active, shares)
    last = alive & (intervals[:, -1] == 0)
    intervals[last, np.argmax(intervals[last], axis=1)] -= 1  # the max lives in the last bin
    intervals[last, -1] += 1
    writer.add_interval_counts(name, intervals)

    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        writer.add_examples(name, **_examples(lo, hi, n_active, intervals, max_act, d_vocab,
                                              hostile_ids, rng))
    writer.add_logits(name, **_logits(n, d_vocab, hostile_ids, rng))
    idx, cos = _near(n, n, 10, rng, exclude_self=True)
    writer.add_neighbours(name, idx, cos)
    if not neurons:
        idx, cos = _near(n, d_mlp, 5, rng)
        writer.add_aligned_neurons(name, idx, cos)
    density = n_active / n_tokens
    fvu = 0.0 if neurons else 0.28 * (512 / n) ** 0.35
    writer.add_metrics(name, recipe=None if neurons else "l1", l0=float(density.sum()), mse=fvu * 0.02, fvu=fvu,
                       ce_loss_recovered=1.0 if neurons else min(0.97, 0.79 + 0.05 *
                                                                 np.log2(n / 512)),
                       ce_loss_recovered_mean_ablation=1.0 if neurons else 0.7,
                       kl_div=0.0 if neurons else 0.05 * (512 / n) ** 0.3)
    return density


def _examples(lo: int, hi: int, n_active: np.ndarray, intervals: np.ndarray,
              max_act: np.ndarray, d_vocab: int, hostile_ids: np.ndarray | None,
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Columnar example windows for features lo..hi-1: top-k, then per-interval samples."""
    per = np.concatenate([np.minimum(n_active[lo:hi], _TOP_K)[:, None],
                          np.minimum(intervals[lo:hi], _PER_INTERVAL)], axis=1)  # (f, 12)
    flat = per.ravel()
    m = int(flat.sum())
    feature = np.repeat(np.repeat(np.arange(lo, hi), per.shape[1]), flat)
    kind = np.repeat(np.tile(np.arange(-1, N_INTERVALS), hi - lo), flat)
    starts = np.concatenate([[0], np.cumsum(flat)[:-1]])
    rank = np.arange(m) - np.repeat(starts, flat)
    top = kind == schema.KIND_TOP
    peak = max_act[feature]
    act = np.where(top, peak * (1 - 0.3 * rank / _TOP_K),
                   peak * (np.maximum(kind, 0) + rng.random(m)) / N_INTERVALS)
    act = np.maximum(act, 1e-3 * peak).astype(np.float32)

    position = rng.integers(0, _SEQ_LEN, m)
    offsets = np.arange(_WINDOW) - _BEFORE
    where = position[:, None] + offsets[None, :]
    token_ids = (d_vocab * rng.random((m, _WINDOW)) ** 2.5).astype(np.int32)  # Zipf-like
    token_ids[(where < 0) | (where >= _SEQ_LEN)] = -1
    acts = np.where(rng.random((m, _WINDOW)) < 0.15,
                    rng.random((m, _WINDOW), dtype=np.float32) * act[:, None], 0.0)
    acts = acts.astype(np.float32)
    acts[:, _BEFORE] = act
    acts[token_ids < 0] = 0.0
    ablation = np.where(acts > 0, -acts * rng.uniform(0.0, 0.4, (m, 1)), 0.0).astype(np.float32)
    ablation[:, -1] = np.nan
    if hostile_ids is not None and lo == 0:  # feature 0: hostile text in every example
        rows = np.flatnonzero(feature == 0)
        span = np.arange(len(hostile_ids))
        token_ids[np.ix_(rows, _BEFORE - 3 + span)] = hostile_ids
        token_ids[rows[0], _BEFORE] = hostile_ids[0]
    # A window clipped at the end of a sequence keeps its NaN at the last *stored* token.
    last = _WINDOW - 1 - np.argmax((token_ids >= 0)[:, ::-1], axis=1)
    ablation[np.arange(m), last] = np.nan
    return {"feature": feature, "kind": kind, "rank": rank, "seq_id": rng.integers(0, 50_000, m),
            "position": position, "center": np.full(m, _BEFORE), "act": act,
            "token_ids": token_ids, "acts": acts, "ablation": ablation}


def _logits(n: int, d_vocab: int, hostile_ids: np.ndarray | None,
            rng: np.random.Generator, k: int = 10, bins: int = 30) -> dict[str, np.ndarray]:
    """Top/bottom k distinct token ids per feature, values sorted, and a bell histogram."""
    step = rng.integers(1, max(2, d_vocab // (2 * k + 1)), n)[:, None]
    ids = (rng.integers(0, d_vocab, n)[:, None] + step * np.arange(2 * k)) % d_vocab
    if hostile_ids is not None:
        ids[0] = np.concatenate([hostile_ids, [i for i in range(d_vocab)
                                               if i not in set(hostile_ids.tolist())]
                                 [:2 * k - len(hostile_ids)]])
    scale = rng.uniform(0.2, 1.2, n)[:, None]
    top = -np.sort(-rng.exponential(scale, (n, k)) - scale, axis=1)
    bottom = np.sort(-rng.exponential(scale, (n, k)) - scale, axis=1)
    edges = np.linspace(bottom[:, :1] * 1.05, top[:, :1] * 1.05, bins + 1, axis=1)[:, :, 0]
    cdf = _normal_cdf(edges / (scale * 0.5))
    counts = np.round(np.diff(cdf, axis=1) * d_vocab).astype(np.int64)
    return {"top_ids": ids[:, :k], "top_values": top.astype(np.float32),
            "bottom_ids": ids[:, k:], "bottom_values": bottom.astype(np.float32),
            "hist_edges": edges.astype(np.float32), "hist_counts": counts}


def _near(n: int, n_other: int, k: int, rng: np.random.Generator,
          exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k distinct indices of the other dictionary near i·n_other/n, cosines descending."""
    k = min(k, n_other - (1 if exclude_self else 0))
    gaps = rng.integers(1, max(2, n_other // (k + 1)), (n, k))
    base = np.arange(n) * n_other // n
    idx = (base[:, None] + np.cumsum(gaps, axis=1) - (0 if exclude_self else gaps[:, :1])) \
        % n_other
    cos = -np.sort(-rng.uniform(0.15, 0.9, (n, k)), axis=1)
    return idx, cos.astype(np.float32)


def _write_splits(writer: StoreWriter, saes: list[tuple[str, int]],
                  densities: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """A few families: features of the smallest SAE split in two at each next size."""
    saes = sorted(saes, key=lambda s: s[1])
    if len(saes) < 2:
        return
    normal = {name: (d >= schema.ULTRALOW_DENSITY) for name, d in densities.items()}
    parents = np.flatnonzero(normal[saes[0][0]])[:12]
    for (a, n_a), (b, n_b) in zip(saes[:-1], saes[1:]):
        ratio = max(1, n_b // n_a)
        children = (parents[:, None] * ratio + np.arange(2)[None, :]) % n_b
        index_a = np.repeat(parents, 2)
        index_b = children.ravel()
        keep = normal[b][index_b]
        writer.add_split_edges(a, index_a[keep], b, index_b[keep],
                               rng.uniform(0.4, 0.95, keep.sum()),
                               rng.uniform(0.5, 0.97, keep.sum()),
                               rng.uniform(0.7, 1.0, keep.sum()))
        parents = np.unique(index_b[keep])


# -- explanations for a store: the interp stage's table, made of random numbers --------------

def write_synthetic_explanations(store: Path, seed: int = 0) -> Path:
    """Random explanations and scores for every unit of the store at `store`, written through
    `write_explanations`. Unit 0 of each dictionary is explained with the store's first vocab
    tokens after the BOS (the synthetic store's hostile ones: markup, format characters), so a
    page that forgets to escape explanation text fails its XSS test."""
    fs = FeatureStore.open(store)
    display = fs.vocab()["display"].tolist()
    rng = np.random.default_rng(seed)
    columns = {}
    for name in fs.dictionaries():
        n = fs.n_features(name)
        toks = rng.integers(1, len(display), size=(n, 2))
        toks[0] = (1, 2)
        text = [f'"{display[a]}" 1.00 · after "{display[b]}" 0.{rng.integers(10, 99)}'
                for a, b in toks]
        sim = np.clip(rng.normal(0.3 if schema.is_neurons(name) else 0.45, 0.2, n), -0.2, 1)
        cols: dict[str, Any] = {"index": np.arange(n, dtype=np.int32),
                                "explainer": ["token-patterns"] * n, "explanation": text,
                                "sim_top_random": sim, "sim_random": sim - 0.2,
                                "detection": np.clip(0.5 + sim / 2, 0, 1),
                                "detection_neighbours": np.clip(0.45 + sim / 2, 0, 1),
                                "logits": rng.uniform(0.4, 0.8, n),
                                "shuffled_sim_top_random": rng.normal(0, 0.05, n),
                                "shuffled_detection": rng.normal(0.5, 0.03, n),
                                "shuffled_logits": rng.normal(0.5, 0.03, n),
                                "single_token": [f'"{display[a]}"' for a, _ in toks],
                                "single_token_sim_top_random": sim * 0.7,
                                "single_token_detection": np.clip(0.5 + sim / 3, 0, 1)}
        for c, v in zip(schema.EXPLANATION_COUNTS, (75, 75, 128, 70, 120, 9, 10)):
            cols[c] = np.full(n, v, np.int32)
        for c in explanations.FLOAT_COLUMNS:
            cols[c] = np.asarray(cols[c], np.float32)
        columns[name] = cols
    out = explanations.folder(store)
    explanations.write_explanations(out, columns, {"explainer": "token-patterns",
                                                   "explain_split": "train", "score_split": "val",
                                                   "synthetic": True})
    return out


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Φ(x) by the tanh approximation (error < 2e-4): numpy has no erf, scipy is not a dep."""
    return 0.5 * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feature_store.synthetic",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="where the store goes (replaced if it exists)")
    parser.add_argument("--sizes", default="512,1024,2048", help="SAE sizes, comma-separated")
    parser.add_argument("--d-mlp", type=int, default=512, help="neurons in the MLP")
    parser.add_argument("--n-tokens", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hostile", action="store_true", help="leave out markup tokens")
    args = parser.parse_args(argv)
    try:
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
        if not sizes or min(sizes) < 2 or args.d_mlp < 2:
            raise ValueError
    except ValueError:
        print(f"synthetic: --sizes and --d-mlp must be integers >= 2, got {args.sizes!r}",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = build_synthetic_store(args.out_dir, sizes, d_mlp=args.d_mlp, n_tokens=args.n_tokens,
                                seed=args.seed, hostile_tokens=not args.no_hostile)
    print(f"synthetic: neurons + {len(sizes)} dictionaries ({args.sizes}), "
          f"{time.perf_counter() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
