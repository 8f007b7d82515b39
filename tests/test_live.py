"""The live model behind a store: the prompt explorer's interventions against hand-made splices."""

import math

import numpy as np
import pytest
import torch

from feature_store.errors import FeatureNotFound, StoreError
from feature_store.live import LiveRun
from feature_store.sae_files import encode
from feature_store.transformer_files import HOOK_POST

TEXT = "def main(argv):\n    return parse(argv) if argv else None  # the usual"


@pytest.fixture(scope="module")
def live(mini_run):
    return LiveRun.open(mini_run / "store")


def test_dictionaries_and_tokens(live):
    assert live.dictionaries() == ["neurons", "sae_64", "sae_128"]
    acts = live.activations(TEXT, "sae_64")
    assert acts.token_ids[0] == 0 and len(acts.tokens) == len(acts.token_ids)
    assert acts.acts.shape == (len(acts.token_ids), 64)
    assert (acts.acts[0] == 0).all()  # BOS code blanked
    assert ((acts.acts[1:] > 0).sum(1) <= 4).all()  # topk k=4


def test_ablation_equals_a_manual_splice(live):
    acts = live.activations(TEXT, "sae_128")
    feature = int(acts.acts.sum(0).argmax())
    changes = live.intervene(TEXT, "sae_128", feature, mode="ablate")
    spec, tensors = live.saes["sae_128"]
    ids = torch.tensor([live.tokenize(TEXT)])

    def manual(mlp, hook):
        f = encode(spec, tensors, mlp)[..., feature]
        out = mlp - f.unsqueeze(-1) * tensors["W_dec"][feature] / spec.input_scale
        out[:, 0] = mlp[:, 0]
        return out

    with torch.no_grad():
        want = live.model.run_with_hooks(ids, fwd_hooks=[(HOOK_POST, manual)]).softmax(-1)[0]
        base = live.model(ids).softmax(-1)[0]
    for change in changes:
        p_after = dict(change.top_after)
        top_token = change.top_after[0][0]
        idx = live.display.index(top_token)
        assert p_after[top_token] == pytest.approx(float(want[change.position, idx]), rel=1e-4)
        moved = [abs(dp) for _, dp, _ in change.biggest_changes]
        assert moved == sorted(moved, reverse=True)  # ranked by probability moved
        token, dp, dlogp = change.biggest_changes[0]
        idx = live.display.index(token)
        assert dp == pytest.approx(float(want[change.position, idx] - base[change.position, idx]),
                                   abs=1e-5)
        assert abs(dp) == pytest.approx(float((want - base)[change.position].abs().max()), abs=1e-5)
        assert math.isfinite(dlogp) and (dp > 0) == (dlogp > 0)
    active = acts.acts[:, feature] > 0
    kl = np.array([c.kl for c in changes])
    assert (kl[~active] < 1e-6).all() and (kl[active] > 0).any()  # one-layer: only where it fires


def test_clamping_a_neuron_changes_the_distribution(live):
    changes = live.intervene(TEXT, "neurons", 3, mode="clamp", value=10.0, everywhere=True)
    assert all(c.kl > 0 for c in changes[1:])
    assert changes[0].kl == pytest.approx(0.0, abs=1e-6)  # BOS untouched


def test_bad_input_is_a_clear_error(live, tmp_path):
    with pytest.raises(FeatureNotFound):
        live.intervene(TEXT, "sae_64", 64)
    with pytest.raises(FeatureNotFound):
        live.activations(TEXT, "sae_999")
    with pytest.raises(StoreError, match="needs its run folder"):
        LiveRun.open(tmp_path / "store")
