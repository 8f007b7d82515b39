"""The model stage's training step: its loss against the bridge's, and eager against
`torch.compile` (issue 27 asks for the model stage at the throughput its size allows).

    python benchmarks/model_step.py [--device cuda] [--batch 256] [--steps 30] [--compile]

The step is the stage's (`pipelines/model/stage.py`): fused AdamW, bf16 autocast on CUDA,
gradient clipping, on random tokens of the tiny preset's shape, with the stage's loss for the
device (`loss_for`: on the CPU the chunked one of `pipelines/model/loss.py`) timed beside
`model(tokens, return_type="loss")`, the bridge's (2 CPU cores, batch 32, 2026-12-07, probe 173
GFLOP/s: 12.6-13.1k vs 19.9-20.6k tok/s, 1.58x; the first losses agree to 4 decimals).
With `--compile` the same step runs on a compiled copy from the same initial weights: the
first losses must agree (printed), and the compile time is reported apart from the steady
rate. On 2 CPU cores the bridge's graph breaks (`weakref.proxy`, `type.__getattribute__`)
leave 1.02-1.21x for a 6-28 s compile (2026-12-06), so the stage does not compile; a GPU,
where a small step is bound by launches, is where this could change.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.transformer_files import build_transformer, transformer_spec  # noqa: E402
from pipelines.model.stage import bridge_loss, loss_for  # noqa: E402


def make(device: str, seed: int = 0):
    spec = transformer_spec(d_model=128, d_mlp=512, n_heads=4, d_head=32, d_vocab=4096, n_ctx=128,
                            act_fn="solu_ln", seed=seed)
    torch.manual_seed(seed)
    model = build_transformer(spec, device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=True)
    return model, optimizer


def run_steps(forward, loss_fn, model, optimizer, batches, device: str) -> list[float]:
    """`loss_fn(forward, tokens)`: forward is the model or its compiled copy."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    losses = []
    for batch in batches:
        with autocast:
            loss = loss_fn(forward, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.detach())
    return [float(x) for x in losses]  # one read at the end, as the stage reads in blocks


def rate(forward, loss_fn, model, optimizer, batches, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    run_steps(forward, loss_fn, model, optimizer, batches, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return sum(b.numel() for b in batches) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="sequences of 128 tokens per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 4096, (args.batch, 128), generator=g).to(args.device) for _ in range(args.steps)]
    stage_loss = loss_for(args.device)
    model, optimizer = make(args.device)
    first = run_steps(model, bridge_loss, model, optimizer, batches[:3], args.device)
    eager = rate(model, bridge_loss, model, optimizer, batches, args.device)
    print(f"eager, bridge's loss: {eager:,.0f} tok/s ({args.batch} x 128 tokens a step, {args.device})")
    if stage_loss is not bridge_loss:
        model, optimizer = make(args.device)
        first_s = run_steps(model, stage_loss, model, optimizer, batches[:3], args.device)
        staged = rate(model, stage_loss, model, optimizer, batches, args.device)
        print(f"eager, stage's loss: {staged:,.0f} tok/s ({staged / eager:.2f}x the bridge's); first "
              f"losses {', '.join(f'{x:.4f}' for x in first_s)} vs {', '.join(f'{x:.4f}' for x in first)}")
    if not args.compile:
        return
    model, optimizer = make(args.device)
    compiled = torch.compile(model)
    t = time.perf_counter()
    first_c = run_steps(compiled, bridge_loss, model, optimizer, batches[:3], args.device)
    print(f"compile + 3 steps: {time.perf_counter() - t:.1f} s; first losses eager "
          f"{', '.join(f'{x:.4f}' for x in first)} compiled {', '.join(f'{x:.4f}' for x in first_c)}")
    fast = rate(compiled, bridge_loss, model, optimizer, batches, args.device)
    print(f"compiled: {fast:,.0f} tok/s ({fast / eager:.2f}x eager, bridge's loss)")


if __name__ == "__main__":
    main()
