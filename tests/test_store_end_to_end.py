"""The mini run's store against its own inputs, through the production path end to end.

Every example a feature page shows must be what the run says it is: its tokens are the
tokens table's tokens at (seq_id, position), its activations are the dictionary's encoding of
the cached `blocks.0.mlp.hook_post` there (for `neurons_pre_ln`, the cached
`blocks.0.mlp.ln.hook_in`, which must equal the hook's own values), and its ablation effect is
what splicing `hook_post − a·d` (pre-LN: zeroing the neuron at `ln.hook_in`) into a real
forward pass does to log p(next token). Nothing here is
recomputed by the code under test: the tokens table, the activation cache, the SAE files and
the model are read independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from feature_store.records import NEURONS, NEURONS_PRE_LN
from feature_store.sae_files import encode, load_sae
from feature_store.store import FeatureStore
from feature_store.transformer_files import HOOK_POST, HOOK_PRE_LN, load_transformer
from pipelines.activations.shards import read_shard, shard_paths
from pipelines.data.tokens import read_sequences

FEATURES_PER_DICTIONARY = 6  # the busiest ones: many examples, many active window cells


@pytest.fixture(scope="module")
def run(mini_run):
    store = FeatureStore.open(mini_run / "store")
    split = store.run_info()["split"]
    seqs = read_sequences(mini_run / "tokens" / f"{split}.parquet")
    n_ctx = seqs.shape[1]
    parts = [read_shard(p, columns=("seq_id", "position", "acts", "acts_pre_ln"))
             for p in shard_paths(mini_run / "activations", split)]
    seq_id = np.concatenate([p["seq_id"] for p in parts]).astype(np.int64)
    position = np.concatenate([p["position"] for p in parts]).astype(np.int64)
    acts = np.concatenate([p["acts"] for p in parts])
    pre_ln = np.concatenate([p["acts_pre_ln"] for p in parts])
    row_of = np.full(seqs.shape[0] * n_ctx, -1, dtype=np.int64)
    row_of[seq_id * n_ctx + position] = np.arange(seq_id.size)
    model = load_transformer(mini_run / "model")
    saes = {f"sae_{p.name}": load_sae(p) for p in sorted((mini_run / "sae").iterdir())
            if p.is_dir()}
    return store, seqs, {"acts": acts, "acts_pre_ln": pre_ln}, row_of, model, saes


def _busiest(store: FeatureStore, dictionary: str) -> list[int]:
    table = store.features(dictionary).sort_values("n_active", ascending=False)
    return table["index"].head(FEATURES_PER_DICTIONARY).tolist()


def _unit(saes, dictionary: str, index: int, x: np.ndarray, d_mlp: int):
    """Activations of the unit for cached rows x [m, d_mlp] (of its own hook), and its
    direction in hook_post (None before the LayerNorm)."""
    if dictionary == NEURONS_PRE_LN:
        return x[:, index], None
    if dictionary == NEURONS:
        direction = torch.zeros(d_mlp)
        direction[index] = 1.0
        return x[:, index], direction
    spec, tensors = saes[dictionary]
    codes = encode(spec, tensors, torch.from_numpy(x))[:, index].numpy()
    return codes, tensors["W_dec"][index] / spec.input_scale


def _windows(store: FeatureStore, dictionary: str, index: int):
    record = store.feature(dictionary, index)
    examples = list(record.top_examples) + [e for i in record.intervals for e in i.examples]
    assert examples, f"{dictionary}[{index}] has no examples"
    return record, examples


def test_every_dictionary_is_checked(run):
    store, _, _, _, _, saes = run
    assert set(store.dictionaries()) == {NEURONS, NEURONS_PRE_LN, *saes} and len(saes) >= 2


def test_cached_pre_ln_values_are_the_hooks_values(run):
    """The SoLU output before the mid-MLP LayerNorm, cached beside hook_post, equals what the
    model computes at `blocks.0.mlp.ln.hook_in` (to float16 rounding), and the LayerNorm of it
    is the cached hook_post."""
    store, seqs, cache, row_of, model, _ = run
    n_ctx = seqs.shape[1]
    tokens = torch.from_numpy(seqs[:4].astype(np.int64))
    with torch.no_grad():
        _, got = model.run_with_cache(tokens, names_filter=lambda n: n in (HOOK_PRE_LN, HOOK_POST))
    rows = row_of[(np.arange(4)[:, None] * n_ctx + np.arange(1, n_ctx)).reshape(-1)]
    assert np.all(rows >= 0)
    want = got[HOOK_PRE_LN][:, 1:].reshape(-1, cache["acts"].shape[1]).numpy()
    np.testing.assert_allclose(cache["acts_pre_ln"][rows], want, rtol=2e-3, atol=2e-3)
    assert np.abs(want).max() > 0.05  # not a column of zeros
    post = got[HOOK_POST][:, 1:].reshape(-1, cache["acts"].shape[1]).numpy()
    np.testing.assert_allclose(cache["acts"][rows], post, rtol=2e-3, atol=2e-3)
    assert not np.allclose(want, post, atol=0.05)  # two different hooks


def test_pre_ln_dictionary_says_what_does_not_apply(run):
    store = run[0]
    info = store.dictionary_info(NEURONS_PRE_LN)
    assert info["kind"] == "neurons" and info["hook_name"] == HOOK_PRE_LN
    assert info["same_units_as"] == NEURONS
    assert store.dictionary_info(NEURONS)["same_units_as"] == NEURONS_PRE_LN
    assert {"logits", "neighbours", "umap"} <= info["not_applicable"].keys()
    record = store.feature(NEURONS_PRE_LN, _busiest(store, NEURONS_PRE_LN)[0])
    assert record.top_logits == () and record.neighbours == () and record.counterparts == ()
    assert record.top_examples  # but it has examples
    assert NEURONS_PRE_LN not in set(store.umap()["dictionary"])
    counterparts = dict(store.feature(NEURONS, 0).counterparts)
    assert NEURONS_PRE_LN not in counterparts and len(counterparts) >= 2


@pytest.mark.parametrize("which", ["neurons", "neurons_pre_ln", "smallest sae", "largest sae"])
def test_examples_are_the_tokens_and_cached_activations_they_claim(run, which):
    store, seqs, cache, row_of, _, saes = run
    acts = cache["acts_pre_ln" if which == "neurons_pre_ln" else "acts"]
    n_ctx, d_mlp = seqs.shape[1], acts.shape[1]
    sizes = sorted(saes, key=lambda n: int(n.split("_")[1]))
    dictionary = {"neurons": NEURONS, "neurons_pre_ln": NEURONS_PRE_LN,
                  "smallest sae": sizes[0], "largest sae": sizes[-1]}[which]
    checked = 0
    for index in _busiest(store, dictionary):
        record, examples = _windows(store, dictionary, index)
        for ex in examples:
            start = ex.position - ex.center
            positions = np.arange(start, start + len(ex.token_ids))
            assert positions[0] >= 1 and positions[-1] <= n_ctx - 1  # BOS is never shown
            np.testing.assert_array_equal(ex.token_ids, seqs[ex.seq_id, positions])
            assert list(ex.tokens) == store.token_display(ex.token_ids)
            rows = row_of[ex.seq_id * n_ctx + positions]
            assert np.all(rows >= 0)
            want, _ = _unit(saes, dictionary, index, acts[rows], d_mlp)
            np.testing.assert_allclose(ex.acts, want, rtol=1e-4, atol=1e-5)
            assert ex.act == pytest.approx(ex.acts[ex.center], rel=1e-6) and ex.act > 0
            assert ex.act <= record.max_act * (1 + 1e-6)
            checked += 1
    assert checked >= FEATURES_PER_DICTIONARY


@pytest.mark.parametrize("which", ["neurons", "neurons_pre_ln", "largest sae"])
def test_ablation_matches_a_splice_into_the_real_model(run, which):
    """For every active cell of the busiest features' examples: remove a·d from hook_post at
    that token (pre-LN: zero the neuron before the mid-MLP LayerNorm) and rerun the model;
    the store's Δ log p(next) must agree."""
    store, seqs, cache, _, model, saes = run
    d_mlp = cache["acts"].shape[1]
    dictionary = {"neurons": NEURONS, "neurons_pre_ln": NEURONS_PRE_LN}.get(
        which) or max(saes, key=lambda n: int(n.split("_")[1]))
    compared = 0
    for index in _busiest(store, dictionary)[:3]:
        _, direction = _unit(saes, dictionary, index, cache["acts"][:1], d_mlp)
        _, examples = _windows(store, dictionary, index)
        for ex in examples[:8]:
            tokens = torch.from_numpy(seqs[ex.seq_id][None].astype(np.int64))
            start = ex.position - ex.center
            with torch.no_grad():
                clean = model(tokens).log_softmax(-1)[0]
            for j, (a, effect) in enumerate(zip(ex.acts, ex.ablation)):
                t = start + j
                if j == len(ex.acts) - 1 or t == seqs.shape[1] - 1:
                    assert np.isnan(effect)  # its next token is not shown
                    continue
                if a <= 0:
                    assert effect == 0.0
                    continue

                def splice(value, hook, t=t, a=a):
                    value = value.clone()
                    value[0, t] -= a * direction
                    return value

                def zero(value, hook, t=t, a=a):
                    assert float(value[0, t, index]) == pytest.approx(a, abs=2e-3, rel=2e-3)
                    value = value.clone()
                    value[0, t, index] = 0.0
                    return value

                hook = (HOOK_PRE_LN, zero) if direction is None else (HOOK_POST, splice)
                with torch.no_grad():
                    hooked = model.run_with_hooks(tokens, fwd_hooks=[hook])
                nxt = int(tokens[0, t + 1])
                want = float(hooked.log_softmax(-1)[0, t, nxt] - clean[t, nxt])
                assert effect == pytest.approx(want, abs=2e-3, rel=1e-2), (dictionary, index, t)
                compared += 1
    assert compared >= 10
