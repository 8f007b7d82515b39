"""The model stage's chunked CPU loss (pipelines/model/loss.py) is the bridge's loss: same
value, same gradients for every parameter, for both activation functions and for chunk
sizes that do and do not divide the positions."""

import pytest
import torch
import torch.nn.functional as F

from feature_store.transformer_files import build_transformer, transformer_spec
from pipelines.model.loss import chunked_cross_entropy, unembedding_input, next_token_loss


def small_model(act_fn: str):
    spec = transformer_spec(d_model=32, d_mlp=64, n_heads=2, d_head=16, d_vocab=300, n_ctx=24,
                            act_fn=act_fn, seed=3)
    model = build_transformer(spec)
    model.train()
    return model


@pytest.mark.parametrize("act_fn", ["solu_ln", "gelu"])
def test_unembedding_input_is_what_the_bridge_unembeds(act_fn):
    model = small_model(act_fn)
    tokens = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unembedding_input(model, tokens) @ model.unembed.W_U, model(tokens),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("act_fn,chunk_rows", [("solu_ln", 7), ("gelu", 64), ("solu_ln", 10_000)])
def test_chunked_loss_and_gradients_equal_the_bridge(act_fn, chunk_rows):
    model = small_model(act_fn)
    tokens = torch.randint(0, 300, (5, 24), generator=torch.Generator().manual_seed(1))
    reference = model(tokens, return_type="loss")
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = next_token_loss(model, tokens, chunk_rows=chunk_rows)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    scale = max(g.abs().max() for g in expected.values())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=1e-5 * float(scale), msg=name)


def test_without_gradients_the_loss_is_the_same_and_builds_no_graph():
    model = small_model("solu_ln")
    tokens = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = next_token_loss(model, tokens, chunk_rows=9)
        reference = model(tokens, return_type="loss")
    assert not loss.requires_grad
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


def test_chunked_cross_entropy_gradients_are_the_summed_loss_gradients():
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(50, 8, generator=gen, requires_grad=True)
    weight = torch.randn(8, 40, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (50,), generator=gen)
    F.cross_entropy(hidden @ weight, targets, reduction="sum").backward()
    loss, grad_hidden, grad_weight = chunked_cross_entropy(hidden.detach(), weight.detach(),
                                                           targets, 16, with_grads=True)
    assert loss.item() == pytest.approx(F.cross_entropy(hidden @ weight, targets).item(), rel=1e-6)
    torch.testing.assert_close(grad_hidden, hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_weight, weight.grad, rtol=1e-5, atol=1e-6)
