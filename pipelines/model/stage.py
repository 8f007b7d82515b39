"""model stage: train the one-layer transformer on the token sequences.

AdamW with linear warmup and cosine decay, gradient clipping, weight decay on matrices only.
CUDA when present (bf16 autocast there), fp32 on CPU (bf16 on these CPUs is ~100x slower).
On the CPU the loss is `pipelines/model/loss.py`'s chunked unembedding + cross-entropy (the
same number as the bridge's, ~1.6x faster a step); on CUDA it is the bridge's own.
Writes `model/model.safetensors`, `model/config.json` (the exact TransformerBridgeConfig
arguments), `model/loss_curve.parquet` (train and validation loss by step) and
`model/metrics.json`, which includes the validation loss of a unigram model fitted on the
training tokens: the bar any model that learned something must clear, how many passes over
the training tokens the run made, and whether the validation curve ended above its best (the
model overfits its corpus: `overfit_note`).

Under torchrun each rank computes the loss on its contiguous share of every global batch of
`batch_size` sequences (which the world size must divide) and the gradients are averaged
before clipping and the step: the same update as one process on the whole batch, up to
float rounding. Rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from feature_store.transformer_files import WEIGHTS_FILE, build_transformer, transformer_spec
from pipelines import distributed, progress
from pipelines.config import ModelConfig
from pipelines.devices import pick_device
from pipelines.graph_capture import (ReplayedStep, optimizer_state, replayable_options, set_rate,
                                     tensor_lr_groups, use_graph_on)
from pipelines.errors import ConfigError
from pipelines.model.loss import next_token_loss
from pipelines.data.tokenizer import load as load_tokenizer
from pipelines.data.tokens import read_sequences


def unigram_loss(train: np.ndarray, val: np.ndarray, d_vocab: int) -> float:
    """Cross-entropy (nats) on validation next-token targets of add-one-smoothed train counts.

    Targets are positions 1.. of each sequence, the same tokens the model is scored on."""
    counts = np.bincount(train[:, 1:].reshape(-1), minlength=d_vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val[:, 1:].reshape(-1)].mean())


def use_model_graph(choice: str, device: str, distributed: bool) -> bool:
    """`model.graph`: auto records the step on CUDA in one process; on insists."""
    return use_graph_on(choice, device, distributed, "model.graph")


READ_EVERY = 20  # GPU: steps between reads of the training loss (each read waits for the GPU)


def lr_at(step: int, total: int, cfg: ModelConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * cosine)


OVERFIT_RISE = 0.01  # a final validation loss this far (relative) above the curve's best


def overfit_note(val_loss: list[float], tokens: list[int], passes: float) -> str:
    """Says when the validation curve (the same held-out subset at every evaluation) ended
    above its best: the model has started to learn its training text rather than the
    language, which a preset run for many passes over a small corpus does (the paper preset
    on the embedded corpus: ~70). "" when the curve ended at or near its best."""
    points = [(v, t) for v, t in zip(val_loss, tokens) if math.isfinite(v)]
    if len(points) < 2:
        return ""
    best, at = min(points)
    last = points[-1][0]
    if last <= best * (1 + OVERFIT_RISE):
        return ""
    return (f"validation loss rose from {best:.3f} at {at / 1e6:.1f}M tokens to {last:.3f}: the model "
            f"overfits its training tokens ({passes:.1f} passes; more text, or fewer model.train_tokens)")


def bridge_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens, return_type="loss")


def loss_for(device: str):
    """The training and validation loss: chunked on the CPU, where moving a step's logits
    costs as much as its matmuls; the bridge's on CUDA (the path measured there, and the one
    a recorded graph has replayed)."""
    return next_token_loss if torch.device(device).type == "cpu" else bridge_loss


@torch.no_grad()
def evaluate(model, seqs: torch.Tensor, batch_size: int, autocast, loss_fn=bridge_loss) -> float:
    """Mean next-token loss over all target tokens of `seqs`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i: i + batch_size]
        with autocast():
            loss = loss_fn(model, batch)
        n = batch.shape[0] * (batch.shape[1] - 1)
        total += float(loss) * n
        count += n
    model.train()
    return total / count


def run(cfg: ModelConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    start = time.perf_counter()
    world = distributed.world()
    if cfg.batch_size % world.size:
        raise ConfigError(f"model.batch_size {cfg.batch_size} must be a multiple of the "
                          f"{world.size} torchrun processes", key="model.batch_size")
    device = pick_device(cfg.device, "model")
    d_vocab = load_tokenizer(run_dir / "tokenizer").get_vocab_size()
    train_np = read_sequences(run_dir / "tokens" / "train.parquet")
    val_np = read_sequences(run_dir / "tokens" / "val.parquet")
    n_ctx = train_np.shape[1]
    spec = transformer_spec(d_model=cfg.d_model, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads,
                            d_head=cfg.d_head, d_vocab=d_vocab, n_ctx=n_ctx, act_fn=cfg.act_fn,
                            seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_transformer(spec, device=device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    graphed = use_model_graph(cfg.graph, device, world.distributed)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), **(replayable_options(torch.device(device)) if graphed
                                          else dict(fused=True)))  # one kernel: 3.5x on CPU too
    if graphed:  # the rate a replay reads lives in a tensor
        optimizer.param_groups[:] = tensor_lr_groups(optimizer, torch.device(device))
    # A recorded step cannot reuse autocast's cache of bf16 weights across replays.
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not graphed))
                if device == "cuda" else nullcontext)

    train = torch.from_numpy(train_np.astype(np.int64)).to(device)
    val = torch.from_numpy(val_np.astype(np.int64)).to(device)
    eval_subset = val[torch.randperm(len(val), generator=torch.Generator().manual_seed(cfg.seed))
                      [: cfg.eval_sequences].to(device)]
    tokens_per_step = cfg.batch_size * n_ctx
    total_steps = math.ceil(cfg.train_tokens / tokens_per_step)  # 0: the untrained control
    gen = torch.Generator().manual_seed(cfg.seed)
    # the sequence order lives on the device: a step's rows are a slice of it, no host copy
    order, cursor = torch.randperm(len(train), generator=gen).to(device), 0

    curve: dict[str, list] = {"step": [], "tokens": [], "lr": [], "train_loss": [], "val_loss": []}
    curve_types = {"step": pa.int64(), "tokens": pa.int64(), "lr": pa.float64(),
                   "train_loss": pa.float64(), "val_loss": pa.float64()}
    bar = progress.bar(range(total_steps), desc=f"model ({device}"
                       + (f", {world.size} ranks)" if world.distributed else ")"), unit="step",
                       disable=not world.is_main)
    params = list(model.parameters())
    loss_fn = loss_for(device)

    def train_step(batch: torch.Tensor) -> torch.Tensor:
        """One AdamW step on `batch`, device work only (a CUDA graph may record it); returns
        the loss, [1], on the device."""
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model, batch)
        loss.backward()
        loss = loss.detach().float().reshape(1)
        world.mean_([loss] + [p.grad for p in params if p.grad is not None])
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        return loss

    # On a GPU a step of this small model is hundreds of small kernels launched from Python
    # through TransformerBridge's modules: recorded once, replayed (pipelines/graph_capture.py).
    step_fn = (ReplayedStep(train_step, lambda: [*params, *optimizer_state(optimizer, params)])
               if graphed else train_step)
    # Losses stay on the device and are read in blocks: on a GPU each read waits for every
    # queued step, so reading one per step would leave the card idle between steps.
    read_every = 1 if torch.device(device).type == "cpu" else READ_EVERY
    queued: list[torch.Tensor] = []

    def read_losses(step: int) -> None:
        """Append the queued steps' losses to the curve; a NaN or Inf stops training."""
        values = torch.cat(queued).cpu().tolist()
        first = step + 1 - len(values)
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(f"model: loss became {value} at step {first + i}; "
                                         f"lower model.lr (now {cfg.lr})")
        curve["train_loss"].extend(values)
        queued.clear()

    t_train = time.perf_counter()
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=gen).to(device), 0
        rows = order[cursor: cursor + cfg.batch_size][world.slice(cfg.batch_size)]
        batch = train[rows]
        cursor += cfg.batch_size
        lr = lr_at(step, total_steps, cfg)
        set_rate(optimizer, lr)
        queued.append(step_fn(batch))
        val_loss = float("nan")
        evaluating = world.is_main and ((step + 1) % cfg.eval_every == 0 or step + 1 == total_steps)
        if evaluating:
            val_loss = evaluate(model, eval_subset, cfg.batch_size * 4, autocast, loss_fn)
        curve["step"].append(step + 1)
        curve["tokens"].append((step + 1) * tokens_per_step)
        curve["lr"].append(lr)
        curve["val_loss"].append(val_loss)
        if (step + 1) % read_every == 0 or evaluating or step + 1 == total_steps:
            read_losses(step)
            tok_s = (step + 1) * tokens_per_step / (time.perf_counter() - t_train)
            bar.set_postfix(loss=f"{curve['train_loss'][-1]:.3f}", tok_s=f"{tok_s:,.0f}", refresh=False)
    train_seconds = time.perf_counter() - t_train
    if not world.is_main:
        return "", {}

    with progress.heartbeat("model (validation loss on every held-out token)"):
        final_val = evaluate(model, val, cfg.batch_size * 4, autocast, loss_fn)
        unigram = unigram_loss(train_np, val_np, d_vocab)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / "config.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    pq.write_table(pa.table({k: pa.array(v, curve_types[k]) for k, v in curve.items()}),
                   out / "loss_curve.parquet")
    n_params = sum(p.numel() for p in model.parameters())
    passes = total_steps * tokens_per_step / max(1, train_np.size)
    overfit = overfit_note(curve["val_loss"], curve["tokens"], passes)
    metrics = {
        "act_fn": cfg.act_fn, "device": device, "n_params": n_params, "ranks": world.size,
        "steps": total_steps, "tokens_trained": total_steps * tokens_per_step,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(total_steps * tokens_per_step / max(train_seconds, 1e-9), 1),
        "val_loss": final_val, "unigram_val_loss": unigram,
        "graph": (step_fn.failure and f"eager ({step_fn.failure})" or "on") if graphed and total_steps else "off",
        "val_tokens": int(val_np.shape[0] * (n_ctx - 1)),
        "train_passes": round(passes, 2), "overfit": overfit,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - start
    on = f"{world.size} × {device}" if world.distributed else device
    trained = (f"{metrics['tokens_trained'] / 1e6:.2f}M tokens ({passes:.1f} passes) at "
               f"{metrics['tokens_per_second']:,.0f} tok/s on {on}" if total_steps
               else "untrained (model.train_tokens = 0: a control)")
    if graphed and total_steps:
        trained += ", CUDA graph" + (f" failed, stepped eagerly ({step_fn.failure})" if step_fn.failure else "")
    summary = (f"model: {cfg.act_fn}, {n_params / 1e6:.2f}M params, {trained}; validation loss "
               f"{final_val:.3f} vs unigram {unigram:.3f} nats{'; ' + overfit if overfit else ''}, "
               f"{seconds:.0f} s")
    return summary, metrics
