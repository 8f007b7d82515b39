"""The statistics pass against brute force on small random cases (no run folder needed).

Codes are built here as random sparse activations and fed through an identity "encoder",
in ragged batches of whole sequences, so every streaming statistic can be recomputed with
plain numpy over the whole matrix at once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feature_store.records import N_INTERVALS
from feature_store.sae_files import SaeSpec, active_entries, encode
from feature_store.transformer_files import HOOK_POST, build_transformer, transformer_spec
from pipelines.model import readout
from pipelines.stats import ablation, sampling
from pipelines.stats import stage as stats
from pipelines.activations.shards import SequenceBatch
from pipelines.config import StatsConfig
from pipelines.stats.dictionaries import Dictionary
from pipelines.stats.directions import nearest, normalized_rows

N_CTX = 9  # 8 cached positions per sequence


def _codes(n_seq: int, n: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(n_seq * (N_CTX - 1), n)) * (rng.random((n_seq * (N_CTX - 1), n)) < density)
    return x.astype(np.float32)


def _batches(codes: np.ndarray, sizes=(3, 5, 2, 7)):
    """Ragged batches of whole sequences, seq ids = row // (N_CTX - 1)."""
    per = N_CTX - 1
    n_seq = codes.shape[0] // per

    def gen():
        lo, i = 0, 0
        while lo < n_seq:
            hi = min(n_seq, lo + sizes[i % len(sizes)])
            yield SequenceBatch(torch.arange(lo, hi), torch.from_numpy(codes[lo * per: hi * per]))
            lo, i = hi, i + 1
    return gen


def _identity(name: str, n: int, d: int = 16, seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, d, generator=g)
    return Dictionary(name, n, lambda x: x, direction, torch.randn(n, 8, generator=g))


def _run(codes, cfg, dictionaries=None, pairs=()) -> sampling.PassResult:
    dictionaries = dictionaries or [_identity("u", codes.shape[1])]
    return sampling.statistics(_batches(codes), dictionaries, cfg, N_CTX, "cpu", list(pairs))


CFG = StatsConfig(top_k=4, examples_per_interval=3, window_before=3, window_after=2,
                  act_hist_bins=7, umap=False)


@pytest.fixture(scope="module")
def case():
    codes = _codes(40, 6, 0.3, seed=1)
    codes[:, 5] = 0.0  # a dead feature
    passes = _run(codes, CFG)
    return codes, passes.stats["u"], passes.n_tokens


def test_summary_and_histogram_match_brute_force(case):
    codes, s, n_tokens = case
    assert n_tokens == codes.shape[0]
    np.testing.assert_array_equal(s.n_active.numpy(), (codes > 0).sum(0))
    np.testing.assert_allclose(s.sum_act.numpy(), codes.sum(0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(s.max_act.numpy(), codes.max(0))
    edges = s.hist_edges
    assert np.all(np.diff(np.log10(edges)) == pytest.approx(np.diff(np.log10(edges))[0]))
    counts = s.hist_counts.reshape(codes.shape[1], -1).numpy()
    for j in range(codes.shape[1]):
        fired = codes[:, j][codes[:, j] > 0].astype(np.float64)
        expected, _ = np.histogram(np.clip(fired, edges[0], edges[-1]), bins=edges)
        np.testing.assert_array_equal(counts[j], expected)


def test_interval_counts_and_shares_match_brute_force(case):
    codes, s, _ = case
    counts = s.interval_counts.reshape(codes.shape[1], N_INTERVALS).numpy()
    for j in range(codes.shape[1]):
        fired = codes[:, j][codes[:, j] > 0]
        if fired.size == 0:
            assert counts[j].sum() == 0
            continue
        expected, _ = np.histogram(fired, bins=np.linspace(0, fired.max(), N_INTERVALS + 1))
        np.testing.assert_array_equal(counts[j], expected)


def test_top_k_and_windows_match_brute_force(case):
    codes, s, _ = case
    per = N_CTX - 1
    for j in range(codes.shape[1]):
        col = codes[:, j]
        want = np.sort(col[col > 0])[::-1][: CFG.top_k]
        got = s.top_val[j].numpy()
        np.testing.assert_allclose(got[: want.size], want)
        assert np.all(got[want.size:] <= 0)
        for r in range(want.size):
            seq, pos = int(s.top_seq[j, r]), int(s.top_pos[j, r])
            assert col[seq * per + pos - 1] == pytest.approx(got[r])
            window = s.top_win[j, r].numpy()
            for o, value in zip(range(-CFG.window_before, CFG.window_after + 1), window):
                p = pos + o
                inside = 1 <= p <= per
                assert value == pytest.approx(col[seq * per + p - 1] if inside else 0.0)


def test_interval_samples_are_members_without_repeats(case):
    codes, s, _ = case
    per = N_CTX - 1
    counts = s.interval_counts.reshape(codes.shape[1], N_INTERVALS).numpy()
    for j in range(codes.shape[1]):
        col = codes[:, j]
        for i in range(N_INTERVALS):
            g = j * N_INTERVALS + i
            filled = torch.isfinite(s.res_key[g]).numpy()
            assert filled.sum() == min(CFG.examples_per_interval, counts[j, i])
            rows = (s.res_seq[g] * per + s.res_pos[g] - 1).numpy()[filled]
            assert len(set(rows.tolist())) == rows.size
            acts = col[rows]
            np.testing.assert_allclose(acts, s.res_act[g].numpy()[filled])
            lo, hi = i * col.max() / N_INTERVALS, (i + 1) * col.max() / N_INTERVALS
            assert np.all(acts > 0) and np.all(acts >= lo * (1 - 1e-6))
            assert np.all(acts < hi) or i == N_INTERVALS - 1
            assert np.all(np.diff(s.res_key[g].numpy()[filled]) > 0)  # draw order


def test_interval_sampling_is_uniform_within_the_interval():
    """Over many seeds, the sampled activations' ranks within their interval are uniform.
    Top-biased sampling (keeping the largest, or any bias by value) fails this KS test."""
    from scipy.stats import kstest

    rng = np.random.default_rng(7)
    n_seq = 50
    col = rng.uniform(0.0, 1.0, size=n_seq * (N_CTX - 1)).astype(np.float32)
    col[0] = 11.0  # max: interval 0 is (0, 1] and holds every other activation
    codes = col[:, None]
    inside = np.sort(col[(col > 0) & (col < 1.0)])
    cfg = StatsConfig(top_k=1, examples_per_interval=3, window_before=0, window_after=0,
                      act_hist_bins=4, umap=False)
    u = []
    for seed in range(120):
        passes = _run(codes, StatsConfig(**{**cfg.__dict__, "seed": seed}))
        acts = passes.stats["u"].res_act[0].numpy()
        ranks = np.searchsorted(inside, acts)
        u.extend(((ranks + 0.5) / inside.size).tolist())
    assert kstest(u, "uniform").pvalue > 1e-3
    assert abs(np.mean(u) - 0.5) < 0.05


@pytest.mark.parametrize("recipe, k", [("topk", 4), ("l1", 0)])
def test_active_entries_equal_encode(recipe, k):
    g = torch.Generator().manual_seed(0)
    spec = SaeSpec(d_in=12, d_sae=20, recipe=recipe, k=k, input_scale=1.7)
    t = {"W_enc": torch.randn(20, 12, generator=g), "b_enc": torch.randn(20, generator=g),
         "W_dec": torch.randn(20, 12, generator=g), "b_dec": torch.randn(12, generator=g)}
    x = torch.randn(50, 12, generator=g)
    got = active_entries(spec, t, x)
    codes, row, feat, val = got.dense, got.row, got.feature, got.value
    torch.testing.assert_close(codes, encode(spec, t, x))
    dense = torch.zeros_like(codes)
    dense[row, feat] = val
    torch.testing.assert_close(dense, codes)
    assert bool((val > 0).all()) and int((codes > 0).sum()) == val.numel() > 0


@pytest.fixture(scope="module")
def model():
    spec = transformer_spec(d_model=32, d_mlp=64, n_heads=2, d_head=16, d_vocab=50, n_ctx=16,
                            act_fn="solu_ln", seed=0)
    m = build_transformer(spec)
    m.eval()
    with torch.no_grad():  # a non-trivial final LayerNorm
        g = torch.Generator().manual_seed(1)
        m.ln_final.weight.copy_(1 + 0.5 * torch.randn(32, generator=g))
        m.ln_final.bias.copy_(0.2 * torch.randn(32, generator=g))
    return m


def test_fill_ablation_matches_a_real_splice(model):
    """The production pass 3: remove a·d from hook_post at one token of an example window,
    rerun the model: Δ log p(next) agrees at that token; inactive cells are 0, and the
    window's last token (no next token shown) and cells outside the sequence are NaN."""
    W_out, ro = readout.model_readout(model)
    g = torch.Generator().manual_seed(2)
    seqs = torch.randint(0, 50, (3, 16), generator=g)
    direction = torch.randn(64, generator=g) / 3  # e.g. W_dec[i] / input_scale
    d = Dictionary("d", 1, lambda x: x[:, :1], direction[None], (direction @ W_out)[None])
    cfg = StatsConfig(window_before=3, window_after=2, umap=False)
    cases = ((0, 5, 1.3), (1, 14, 0.4), (1, 2, 3.0), (2, 15, 0.7), (2, 1, 2.0))
    w = cfg.window_before + cfg.window_after + 1
    acts = np.zeros((len(cases), w), np.float32)
    acts[:, cfg.window_before] = [a for _, _, a in cases]
    ex = sampling.Examples(
        feature=np.zeros(len(cases), np.int64), kind=np.zeros(len(cases), np.int64),
        rank=np.arange(len(cases)), seq_id=np.array([b for b, _, _ in cases]),
        position=np.array([t for _, t, _ in cases]), act=acts[:, cfg.window_before].copy(),
        acts=acts)
    weights = {"d": readout.logit_weights(d.out_dir, ro)}
    n = ablation.fill_ablation(model, seqs.numpy(), [d], {"d": ex}, weights, ro, cfg, 16, "cpu")
    assert n == 4  # position 15 is the sequence's last token: nothing to predict
    with torch.no_grad():
        clean = model(seqs).log_softmax(-1)
    for r, (b, t, a) in enumerate(cases):

        def splice(value, hook, b=b, t=t, a=a):
            value = value.clone()
            value[b, t] -= a * direction
            return value

        with torch.no_grad():
            hooked = model.run_with_hooks(seqs, fwd_hooks=[(HOOK_POST, splice)]).log_softmax(-1)
        other = [p for p in range(16) if p != t]  # only the logits at t change
        torch.testing.assert_close(hooked[b, other], clean[b, other], atol=1e-5, rtol=0)
        centre = ex.ablation[r, cfg.window_before]
        if t == 15:
            assert np.isnan(centre)
            continue
        nxt = seqs[b, t + 1]
        assert float(centre) == pytest.approx(float(hooked[b, t, nxt] - clean[b, t, nxt]),
                                              abs=2e-4)
        positions = t + np.arange(-cfg.window_before, cfg.window_after + 1)
        inside = (positions >= 1) & (positions <= 15)
        last = np.flatnonzero(inside)[-1]
        for j in range(w):
            if not inside[j] or j == last:
                assert np.isnan(ex.ablation[r, j])
            elif j != cfg.window_before:
                assert ex.ablation[r, j] == 0.0


def test_logit_weights_are_the_direct_effect_at_fixed_ln_scale(model):
    """w = (v - mean v)·diag(γ)·W_U is the direct effect at LN_final's scale held fixed: adding
    ε·v to the final residual changes the logits by ε·(w − (c·v_c)·z/(d·σ²))/σ to first order
    (z = c·diag(γ)·W_U; the second term is LN's scale reacting), checked on the real model."""
    W_out, ro = readout.model_readout(model)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 50, (1, 16), generator=g)
    v = torch.randn(32, generator=g)
    w = readout.logit_weights(v[None], ro)[0]
    eps, t = 1e-3, 7
    with torch.no_grad():
        resid = ablation.final_residual(model, tokens)[0, t]
        clean = model(tokens)[0, t]

        def push(value, hook):
            value = value.clone()
            value[0, t] += eps * v
            return value

        pushed = model.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_in", push)])[0, t]
    c = resid - resid.mean()
    sigma = ((c * c).mean() + ro.eps).sqrt()
    z = c @ ro.G
    expect = eps * (w - (c @ (v - v.mean())) * z / (32 * sigma ** 2)) / sigma
    torch.testing.assert_close(pushed - clean, expect, atol=1e-2 * float(expect.abs().max()),
                               rtol=0)


def test_row_histograms_and_nearest():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 300, generator=g)
    edges, counts = stats.row_histograms(x, 9)
    for i in range(5):
        want, _ = np.histogram(x[i].numpy(), bins=edges[i].numpy().astype(np.float64))
        assert counts[i].sum() == 300
        assert np.abs(counts[i].numpy() - want).sum() <= 2  # float32 edges vs float64 bins
    a = normalized_rows(torch.randn(7, 6, generator=g))
    idx, val = nearest(a, a, 3, exclude_self=True)
    cos = (a @ a.T).numpy()
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-cos, axis=1)[:, :3])


def test_the_umap_leaves_the_processs_thread_count_alone():
    """numba's OpenMP layer resets the OpenMP thread count to every core; a study's variant
    process (one thread per variant) then trained its next SAE oversubscribed, 8x slower."""
    from pipelines.stats.directions import joint_umap

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        points = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
        xy, _ = joint_umap([points[:200], points[200:]], 10, seed=0)
        assert xy.shape == (300, 2) and np.isfinite(xy).all()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_umaps_kernels_are_cached_on_disk_in_a_fresh_process():
    """Each kernel `cache_umap_kernels` names exists in the pinned umap-learn and gets numba's
    disk cache: a rename in an upgrade fails here instead of quietly costing every stats
    stage ~8 s of compiling again."""
    import subprocess
    import sys

    from pipelines.stats.directions import UMAP_KERNELS

    code = ("from pipelines.stats.directions import cache_umap_kernels; "
            "print(cache_umap_kernels())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == len(UMAP_KERNELS)


def test_kept_sae_codes_read_back_as_the_encoding(mini_run):
    """The stats and universality passes read a topk SAE's validation codes from the sae stage
    instead of encoding the tokens again: for a batch of whole sequences, in stored order or
    any other (a Ray worker's shard, a capped read), what is read must be the encoding's."""
    from pipelines.activations.shards import count_rows, sequence_batches, sequence_rows
    from pipelines.stats.dictionaries import StoredCodes, load_run_units

    units = load_run_units(mini_run, "cpu", split="val")
    saes = [d for d in units.dictionaries if d.k]
    assert saes and all(d.stored is not None for d in saes)
    assert all(d.stored is None for d in load_run_units(mini_run, "cpu").dictionaries)  # train: none kept
    batches = list(sequence_batches(mini_run / "activations", "val", units.n_ctx, 1024, 0, "cpu"))
    per_seq = units.n_ctx - 1
    first, last = batches[0], batches[-1]
    pick = [(last, 2), (first, 4), (last, 0), (first, 1)]  # out of order, across shards
    mixed = SequenceBatch(seq_ids=torch.stack([b.seq_ids[i] for b, i in pick]),
                          x=torch.cat([b.x[i * per_seq:(i + 1) * per_seq] for b, i in pick]))
    for batch in (*batches, mixed):
        for d in saes:
            got, want = d.batch_entries(batch), d.entries(batch.x)
            torch.testing.assert_close(got.dense, want.dense, rtol=1e-5, atol=1e-5)
            assert torch.equal(got.row, want.row) or sorted(zip(got.row.tolist(), got.feature.tolist())) == \
                sorted(zip(want.row.tolist(), want.feature.tolist()))
    d = saes[0]
    folder = mini_run / "sae" / str(d.n)
    rows = sequence_rows(mini_run / "activations", "val", units.n_ctx)
    n_rows = count_rows(mini_run / "activations", "val")
    assert StoredCodes.load(folder, d.k, d.n, rows, n_rows, per_seq) is not None
    assert StoredCodes.load(folder, d.k, d.n, rows, n_rows + per_seq, per_seq) is None  # another split's size
    assert StoredCodes.load(folder, d.k + 1, d.n, rows, n_rows, per_seq) is None  # another k
    assert StoredCodes.load(folder.parent, d.k, d.n, rows, n_rows, per_seq) is None  # none kept there


def test_kept_codes_of_replaced_weights_are_not_read(mini_run, tmp_path):
    """Codes kept by the sae stage belong to the weights it trained: an SAE whose weights were
    replaced afterwards (by hand; the pipeline rebuilds downstream stages itself) is encoded."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pipelines.stats.dictionaries import load_dictionaries, load_run_units, with_stored_codes

    run = tmp_path / "run"
    for part in ("model", "sae", "activations"):
        shutil.copytree(mini_run / part, run / part)
    units = load_run_units(run, "cpu", split="val")
    assert all(d.stored is not None for d in units.dictionaries if d.k)
    weights = run / "sae" / "128" / "sae.safetensors"
    tensors = load_file(str(weights))
    tensors["W_enc"] = tensors["W_enc"].roll(1, dims=0).contiguous()  # the same rows, other features
    save_file(tensors, str(weights))
    dictionaries = with_stored_codes(run, load_dictionaries(run, units.W_out, "cpu"), units.n_ctx)
    stored = {d.name: d.stored is not None for d in dictionaries if d.k}
    assert stored == {"sae_64": True, "sae_128": False}
