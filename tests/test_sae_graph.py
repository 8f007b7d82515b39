"""A graphed SAE step (pipelines/sae/step_graph.py) trains as the eager one.

CUDA graphs need a GPU, so the capture is stood in for: `warm` runs the step as CUDA's
warm-up does (really changing the weights, which recording must put back) and `record`
hands back the step for each replay. What this proves on CPU: the warm-up leaves no trace,
the learning rate reaches the step through its tensor, the AuxK switch picks the right
recording, a short batch and a failed recording fall back to eager steps. What it cannot:
that CUDA captures every op (benchmarks/gpu_check.py compares graphed and eager on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from feature_store.recipes import recipe
from pipelines.config import SaeConfig
from pipelines.errors import ConfigError
from pipelines.sae.autoencoder import SparseAutoencoder
from pipelines.graph_capture import optimizer_state, record_step
from pipelines.sae.step_graph import GraphedStep, use_graph
from tests.stand_in_capture import (BakedValueError, DeviceCopyError, HostReadError, NoHostReads,
                                    StandInCapture)


def _sae(dead_window: int = 10**9, codes: str = "auto", precision: str = "auto") -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 128, "topk", k=4, dead_window=dead_window, aux_k=16,
                            b_dec_init=torch.zeros(32), seed=3, codes=codes, precision=precision)
    sae.syncs_are_free = False  # as on a GPU: AuxK runs on a masked candidate set, no count read
    return sae


def _batches(n: int, rows: int = 64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(rows, 32, generator=gen) for _ in range(n)]


def _lr(step: int) -> float:
    return 1e-2 * (1 - step / 20)  # changes every step: a rate baked into a recording would show


def _train(stepper, batches) -> list[float]:
    return [float(stepper.step(x, _lr(i)).mse) for i, x in enumerate(batches)]


@pytest.mark.parametrize("dead_window", [10**9, 64 * 6])  # no AuxK; AuxK from step 6 on
@pytest.mark.parametrize("layout", [("auto", "auto"), ("bag", "bf16")])  # CPU's; a GPU's (codes, precision)
def test_graphed_training_equals_eager(dead_window, layout):
    """Replays run under the stand-in's `NoHostReads`: the step a GPU records (embedding-bag
    codes, bf16 selection, masked AuxK) reads nothing back from the device."""
    batches = _batches(12)
    eager, graphed_sae = _sae(dead_window, *layout), _sae(dead_window, *layout)
    capture = StandInCapture()
    graphed = GraphedStep(graphed_sae, rows=64, capture=capture)
    eager_mse, graphed_mse = _train(eager, batches), _train(graphed, batches)
    assert graphed.failure == ""
    # one recording for the whole run: it runs AuxK from the start, which adds exact zeros
    # until a feature is dead, where the eager step skips AuxK until the dead window has passed
    assert capture.recorded == 1 and capture.warmed == 2
    assert graphed_mse == pytest.approx(eager_mse, rel=1e-5)
    for a, b in zip(eager.params, graphed_sae.params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert torch.equal(eager.since_fired, graphed_sae.since_fired)
    assert graphed_sae.tokens_seen == eager.tokens_seen


def test_warm_up_leaves_no_trace():
    """Recording's two warm-up steps really ran; the weights and Adam's state are as before."""
    sae = _sae()
    graphed = GraphedStep(sae, rows=64, capture=StandInCapture())
    sae.set_lr(1e-2)
    graphed.x.copy_(_batches(1)[0])  # a real batch: on zeros a step moves nothing
    before = [p.clone() for p in sae.params]
    record_step(graphed.capture, lambda: sae.step_body(graphed.x, aux=True).stacked(), graphed._state)
    for a, b in zip(before, sae.params):
        assert torch.equal(a, b)
    assert sae.optimizer.state  # the warm-up made Adam's state; undoing it zeroed it
    assert all(torch.count_nonzero(t) == 0 for s in sae.optimizer.state.values() for t in s.values())


def test_undo_puts_each_tensor_back_by_identity():
    """State the warm-up creates for a parameter listed before one that already had state
    must not receive that one's saved values (undo by identity, not by position)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([a, b], lr=0.1, foreach=False)
    a.grad = torch.full((3,), 2.0)
    opt.step()  # `a` has Adam state, `b` none yet
    saved_a, saved_state = a.detach().clone(), {k: v.clone() for k, v in opt.state[a].items()}

    def body() -> torch.Tensor:
        a.grad, b.grad = torch.ones(3), torch.ones(3)
        opt.step()
        return a.sum()
    record_step(StandInCapture(), body, lambda: [b, a, *optimizer_state(opt, [b, a])])
    assert torch.equal(a.detach(), saved_a) and torch.equal(b.detach(), torch.ones(3))
    for key, value in saved_state.items():
        assert torch.equal(opt.state[a][key], value), key
    assert all(torch.count_nonzero(t) == 0 for t in opt.state[b].values())


def test_failed_recording_steps_eagerly_and_says_why():
    batches = _batches(5)
    eager, sae = _sae(), _sae()
    graphed = GraphedStep(sae, rows=64, capture=StandInCapture(fail=True))
    assert _train(graphed, batches) == pytest.approx(_train(eager, batches), rel=1e-5)
    assert "not permitted when stream is capturing" in graphed.failure
    for a, b in zip(eager.params, sae.params):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_a_short_batch_steps_eagerly():
    capture = StandInCapture()
    graphed = GraphedStep(_sae(), rows=64, capture=capture)
    graphed.step(_batches(1, rows=40)[0], 1e-2)
    assert capture.recorded == 0 and graphed.failure == ""


def test_every_group_of_the_rebuilt_optimizer_is_replayable(monkeypatch):
    """A group's own capturable/fused/foreach win over the optimizer's defaults: each group
    must carry the replayable options (on CUDA a non-capturable group fails every capture)."""
    from pipelines import graph_capture

    sae = _sae()
    GraphedStep(sae, rows=64, capture=StandInCapture())
    want = graph_capture.replayable_options(torch.device("cpu"))
    for group in sae.optimizer.param_groups:
        assert isinstance(group["lr"], torch.Tensor)
        assert all(group[key] == value for key, value in want.items()), group
    cuda = dict(fused=True, capturable=True)
    monkeypatch.setattr(graph_capture, "replayable_options", lambda device: cuda)
    groups = graph_capture.tensor_lr_groups(_sae().optimizer, torch.device("cpu"))
    assert all(g["fused"] and g["capturable"] for g in groups)


def test_wrap_before_the_first_step():
    sae = _sae()
    sae.step(_batches(1)[0], 1e-2)
    with pytest.raises(ValueError, match="before its first step"):
        GraphedStep(sae, rows=64)


def test_when_a_step_is_graphed():
    topk, l1 = recipe("topk"), recipe("l1")
    assert not use_graph("auto", "cpu", topk, False)  # auto: CUDA only
    assert not use_graph("off", "cpu", topk, False)
    with pytest.raises(ConfigError, match="needs CUDA"):
        use_graph("on", "cpu", topk, False)
    with pytest.raises(ValueError, match="sae.graph"):
        SaeConfig(graph="on", codes="csr")
    if torch.cuda.is_available():
        assert use_graph("auto", "cuda", topk, False)
        assert not use_graph("auto", "cuda", topk, False, codes="csr")
        assert not use_graph("auto", "cuda", l1, False)
        assert not use_graph("auto", "cuda", topk, True)
    with pytest.raises(ValueError, match="sae.graph"):
        SaeConfig(recipe="l1", graph="on", k=0)
    with pytest.raises(ValueError, match="sae.graph"):
        SaeConfig(graph="sometimes")


def test_the_stage_trains_every_size_graphed_as_eager(monkeypatch):
    """`train_saes` with its graphed path (the stand-in capture): every size's recording reads
    the one input buffer the stage scales each batch into, the figures are read in blocks, a
    short last batch steps eagerly; the SAEs and the curves are the eager stage's."""
    from pipelines import graph_capture
    from pipelines.sae import stage

    monkeypatch.setattr(graph_capture, "CudaCapture", StandInCapture)
    cfg = SaeConfig(dict_sizes=(64, 128), k=4, batch_size=64, aux_k=16, dead_window=64 * 6, lr=1e-2)
    batches = _batches(11) + _batches(1, rows=40)  # the short one: eager, in either run
    recordings = []

    def train(graph: bool):
        monkeypatch.setattr(stage, "use_graph", lambda *args: graph)
        made = []
        real = stage.GraphedStep

        def spy(sae, rows, **kw):
            made.append(real(sae, rows, **kw))
            return made[-1]
        monkeypatch.setattr(stage, "GraphedStep", spy)
        saes, info = stage.train_saes(cfg, 32, lambda epoch: iter(batches if epoch == 0 else []), len(batches),
                                      0.5, torch.zeros(32), "cpu")
        recordings.append(made)
        return saes, info

    eager, eager_info = train(False)
    graphed, info = train(True)
    made = recordings[1]
    assert len(made) == 2 and made[0].x is made[1].x  # one buffer for both sizes
    assert all(m.capture.recorded == 1 and m.failure == "" for m in made)
    assert info["graph"] == "on" and eager_info["graph"] == "off"
    for key in ("size", "step", "tokens", "n_dead"):
        assert info["curves"][key] == eager_info["curves"][key], key
    assert info["curves"]["mse"] == pytest.approx(eager_info["curves"]["mse"], rel=1e-4)
    for size in cfg.dict_sizes:
        for a, b in zip(eager[size].params, graphed[size].params):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_the_stand_in_refuses_what_a_cuda_capture_refuses():
    """The guard behind every stand-in replay: each op that waits for the device fails, the
    same work written without a host read passes, and the optimizer's CPU path is exempt."""
    a = torch.randn(6)
    reads = [lambda: a.sum().item(), lambda: bool(a.sum() > 0), lambda: int(a.argmax()),
             lambda: a[a > 0], lambda: a.nonzero(), lambda: torch.masked_select(a, a > 0),
             lambda: torch.unique(a), lambda: torch.repeat_interleave(torch.tensor([1, 2]))]
    for read in reads:
        with pytest.raises(HostReadError), NoHostReads():
            read()
    with NoHostReads():
        torch.where(a > 0, a, 0.0).sum()
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        torch.optim.Adam([p], lr=0.1, foreach=False).step()  # reads its step count: exempt
    replay = StandInCapture().record(lambda: a.max().item())
    with pytest.raises(HostReadError, match="_local_scalar_dense"):
        replay()


def test_the_stand_in_refuses_a_step_that_bakes_in_a_value():
    """The second guard: a replay re-runs the Python, so each later replay must run what the
    first (standing for the recording) ran, as a CUDA graph would. Each step below trains
    right eagerly and wrong when recorded; each is refused, and the same step written for a
    recording passes."""
    w = torch.ones(4)
    rate, state, steps = [0.1], {"clock": torch.zeros(4)}, [0]

    def float_rate():  # a learning rate passed as a Python number
        rate[0] *= 0.5
        return w.mul(1 - rate[0])

    def replaced_state():  # a new tensor each step instead of one written in place
        state["clock"] = state["clock"] + 1
        return state["clock"]

    def branch():  # Python deciding from a count that changes
        steps[0] += 1
        return w * 2 if steps[0] > 1 else w + 2

    batches = iter([torch.randn(4) for _ in range(2)])

    def batch_outside():  # reads each batch where it lies, not from the recorded input buffer
        return w + next(batches)

    for step, why in [(float_rate, "argument 1"), (replaced_state, "tensor held"),
                      (branch, "where the recording ran"), (batch_outside, "tensor held")]:
        replay = StandInCapture().record(step)
        replay()
        with pytest.raises(BakedValueError, match=why):
            replay()
    with pytest.raises(BakedValueError, match="lift_fresh"):
        StandInCapture().record(lambda: w * torch.tensor(2.0))()

    rate_t, clock = torch.tensor(0.1), torch.zeros(4)

    def recordable():
        clock.add_(1)
        return w.mul(1 - rate_t)
    replay = StandInCapture().record(recordable)
    for value in (0.1, 0.05, 0.025):
        rate_t.fill_(value)  # outside the step, as set_rate does
        torch.testing.assert_close(replay(), w * (1 - value))


def test_the_stand_in_refuses_a_host_copy_inside_the_step():
    """On CPU a copy between host and device is a no-op that reaches no aten op, so only the
    Python call shows it: a factory that names no device (host memory on a GPU machine,
    copied over when used) and a read back to the host are refused; the same step with its
    tensors made on the device, and a `.to()` of a tensor already there, pass."""
    w = torch.arange(4.0)
    for step, why in [(lambda: w[torch.arange(2)], r"torch.arange\(\) without a device"),
                      (lambda: w * torch.ones(4), r"torch.ones\(\) without a device"),
                      (lambda: w.sum().cpu(), r"Tensor.cpu\(\)"),
                      (lambda: w.tolist(), r"Tensor.tolist\(\)"),
                      (lambda: w.numpy(), r"Tensor.numpy\(\)")]:
        with pytest.raises(DeviceCopyError, match=why):
            StandInCapture().record(step)()
    replay = StandInCapture().record(
        lambda: w[torch.arange(2, device=w.device)].to(w.device) * torch.ones_like(w[:2]))
    for _ in range(2):
        torch.testing.assert_close(replay(), torch.tensor([0.0, 1.0]))
