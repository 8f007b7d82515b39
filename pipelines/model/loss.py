"""The model stage's next-token loss on the CPU, without a [batch, pos, d_vocab] logit tensor.

Through TransformerBridge (`model(tokens, return_type="loss")`) a step of the tiny model
spends more of its time moving logits than multiplying: the unembedding copies its zero
bias into a 4,096 x 4,096 output before the matmul, log-softmax reads and writes the whole
tensor forward and backward, and the backward of the gather and of the `[:, :-1]` slice
each fill a zeroed copy of it (profiled on 2 cores: ~130 ms of a 333 ms step, beside
~125 ms of matmuls). Here the unembedding and the cross-entropy are one autograd function
that walks the positions in chunks small enough to stay in cache: each chunk's logits are
made, turned into the loss and, when gradients are wanted, into the softmax-minus-one-hot
gradient in place, and multiplied straight into the hidden state's and W_U's gradients. The
matmuls are the same three; nothing the size of the logits is ever allocated.

On CUDA the stage keeps the bridge's loss: there the step is a recorded graph under bf16
autocast, where these memory passes cost microseconds, and that path is the one measured on
a GPU.
"""

from __future__ import annotations

import torch

from feature_store.transformer_files import capture

CHUNK_ROWS = 256  # 256 x 4,096 fp32 logits = 4 MiB: within a 32 MiB L3 beside the matmul's operands
UNEMBED_IN = "unembed.hook_in"  # the final LayerNorm's output, as the unembedding reads it


def unembedding_input(model, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos, d_model]: what the unembedding reads, from the bridge's own forward
    stopped there (`capture`); autograd flows through it. `tests/test_model_loss.py` holds
    it times W_U equal to the bridge's logits for SoLU and GeLU."""
    return capture(model, tokens, UNEMBED_IN)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_rows: int, with_grads: bool):
    """(mean over rows of -log softmax(hidden @ weight)[target], and when `with_grads` the
    gradients of the rows' *summed* loss for hidden and weight, else None, None).

    hidden [n, d], weight [d, V], targets [n]. Each chunk's logits become its softmax in
    place and, minus the one-hot target, are multiplied into both gradients while in cache."""
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight) if with_grads else None
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = hidden[start: start + chunk_rows]
        target = targets[start: start + chunk_rows, None]
        logits = rows @ weight
        picked = logits.gather(1, target)
        top = logits.amax(1, keepdim=True)
        probs = logits.sub_(top).exp_()            # in place: the logits are not needed again
        sums = probs.sum(1, keepdim=True)
        total += (sums.log() + top - picked).sum(dtype=torch.float64)
        if with_grads:
            probs.div_(sums).scatter_add_(1, target, torch.full_like(picked, -1.0))
            torch.mm(probs, weight.T, out=grad_hidden[start: start + chunk_rows])
            grad_weight.addmm_(rows.T, probs)
    return (total / hidden.shape[0]).to(hidden.dtype), grad_hidden, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    """`chunked_cross_entropy` for autograd: the gradients are made in the forward pass,
    chunk by chunk while its logits are in cache; the backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_rows: int) -> torch.Tensor:
        loss, grad_hidden, grad_weight = chunked_cross_entropy(hidden, weight, targets,
                                                               chunk_rows, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n = hidden.shape[0]
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (grad_hidden * scale if ctx.needs_input_grad[0] else None,
                grad_weight * scale if ctx.needs_input_grad[1] else None, None, None)


def next_token_loss(model, tokens: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """Mean next-token cross-entropy over positions 1.. of every sequence: the number
    `model(tokens, return_type="loss")` gives, up to float rounding (the bridge adds
    `b_U`, a zero buffer, and is not asked to here)."""
    hidden = unembedding_input(model, tokens)[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = tokens[:, 1:].reshape(-1)
    weight = model.unembed.W_U
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)
    return chunked_cross_entropy(hidden, weight, targets, chunk_rows, with_grads=False)[0]
