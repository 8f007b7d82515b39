"""sae stage: train every dictionary size from one shuffled pass, then measure each on held-out data.

Each batch is read once and fed to every size in turn, so sizes differ by size alone (same
data, same order, same seed). Inputs are scaled by one factor s so that the training
activations have mean norm sqrt(d_mlp); s is stored with each SAE (`input_scale`).

Writes `sae/<d_sae>/sae.safetensors` + `config.json` (spec, training config, metrics),
`sae/curves.parquet` (long format: size, step, tokens, mse, l0, aux, n_dead) and
`sae/metrics.parquet` (one row per size; see `pipelines/sae/metrics.py`).

Under torchrun every rank reads the same shuffled stream and steps on its share of each
global batch (`pipelines/sae/autoencoder.py` averages the gradients), so the global batches are
one process's; rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from feature_store.sae_files import SaeSpec, load_sae, save_sae
from feature_store.transformer_files import load_transformer
from pipelines import distributed, progress
from pipelines.activations.device_stream import DeviceActivationStream
from pipelines.activations.planted import TRUTH_FILE
from pipelines.activations.shards import ActivationStream, acts_width, count_rows, head_rows
from pipelines.config import SaeConfig
from pipelines.devices import pick_device
from pipelines.errors import ConfigError
from pipelines.sae.calibration import search_for
from pipelines.sae.metrics import LOSS_KEYS, loss_metrics, reconstruction_metrics
from pipelines.sae.autoencoder import SparseAutoencoder
from pipelines.sae.step_graph import GraphedStep, use_graph


READ_EVERY = 20  # GPU: steps between reads of the step figures (each read waits for the GPU)


def input_scale(act_dir: Path, d_in: int) -> tuple[float, np.ndarray]:
    """s with mean ‖s·x‖ = sqrt(d_in), and the mean scaled activation (the b_dec init)."""
    x = head_rows(act_dir, "train", 65536)  # the first shard's first rows, not the whole shard
    scale = float(np.sqrt(d_in) / np.linalg.norm(x, axis=1).mean())
    return scale, (x * scale).mean(0)


def lr_at(step: int, total: int, cfg: SaeConfig) -> float:
    decay_start = int(total * (1 - cfg.lr_decay_fraction))
    if step < decay_start:
        return cfg.lr
    return cfg.lr * max(0.0, (total - step) / max(1, total - decay_start))


def make_sae(cfg: SaeConfig, d_in: int, size: int, index: int, b_dec_init: torch.Tensor, device: str,
             l1_coefficient: float | None = None) -> SparseAutoencoder:
    return SparseAutoencoder(
        d_in, size, cfg.recipe, k=cfg.k, lr=cfg.lr,
        l1_coefficient=cfg.l1_coefficient if l1_coefficient is None else l1_coefficient,
        aux_k=cfg.aux_k, aux_coefficient=cfg.aux_coefficient, aux_one_sided=cfg.aux_one_sided,
        dead_window=cfg.dead_window, grad_clip=cfg.grad_clip, b_dec_init=b_dec_init,
        seed=cfg.seed + index, device=device, codes=cfg.codes, precision=cfg.precision)


def train_saes(cfg: SaeConfig, d_in: int, epoch_batches: Callable[[int], Iterable], total: int, scale: float,
               b_dec_init: torch.Tensor, device: str, sizes: tuple[int, ...] | None = None,
               l1_coefficients: dict[int, float] | None = None, desc: str = "sae",
               ) -> tuple[dict[int, SparseAutoencoder], dict]:
    """Train one SAE per size for `total` steps on `epoch_batches(epoch)` (raw activations,
    [batch, d_in], numpy or torch; multiplied by `scale` here), every size on the same batch.

    The data source is a function so the same loop trains on the activation cache (the
    stage), on planted data (benchmarks/planted.py) and on short probes (λ calibration)."""
    sizes = tuple(sizes or cfg.dict_sizes)
    l1 = l1_coefficients or {}
    saes = {size: make_sae(cfg, d_in, size, cfg.dict_sizes.index(size) if size in cfg.dict_sizes else i,
                           b_dec_init, device, l1.get(size)) for i, size in enumerate(sizes)}
    # Resampling is Towards Monosemanticity's cure (l1-unit); Anthropic's 2024 init and
    # TopK's AuxK keep features alive without it.
    resample_steps = ({int(f * total) for f in cfg.resample_at} if cfg.recipe_spec.resamples
                      else set())
    searches = {size: search_for(cfg, total, d_in) for size in saes}
    for size, search in searches.items():
        if search is not None:
            saes[size].l1_coefficient = search.initial
    gen = torch.Generator().manual_seed(cfg.seed)
    curves: dict[str, list] = {k: [] for k in ("size", "step", "tokens", "mse", "l0", "aux", "n_dead")}
    pending: list[tuple[int, int, int, torch.Tensor]] = []  # (size, step, rows, stats on the device)

    def read_pending() -> dict[int, list[float]]:
        """Copy the queued steps' figures to the host in one transfer (one wait for the GPU
        every `READ_EVERY` steps, not one per figure); returns each size's latest."""
        if not pending:
            return {}
        values = torch.stack([stats for *_, stats in pending]).cpu().tolist()
        latest = {}
        for (size, step_no, rows, _), (mse, l0, aux, n_dead) in zip(pending, values):
            for key, value in (("size", size), ("step", step_no), ("tokens", step_no * rows),
                               ("mse", mse), ("l0", l0), ("aux", aux), ("n_dead", int(n_dead))):
                curves[key].append(value)
            latest[size] = [mse, l0, n_dead]
        pending.clear()
        return latest

    world = distributed.world()
    # On a GPU each size's TopK step is recorded once as a CUDA graph and replayed
    # (pipelines/sae/step_graph.py): the same step without sixty kernel launches from Python.
    graphed = use_graph(cfg.graph, device, cfg.recipe_spec, world.distributed, cfg.codes)
    # Every size's recording reads one input buffer: each batch is scaled into it once.
    shared = torch.zeros(cfg.batch_size // world.size, d_in, device=device) if graphed else None
    steppers = {size: GraphedStep(sae, cfg.batch_size // world.size, static=shared) if graphed else sae
                for size, sae in saes.items()}
    bar = progress.bar(total=total, desc=f"{desc} ({device}"
                       + (f", {world.size} ranks)" if world.distributed else ")"), unit="step",
                       disable=not world.is_main)
    step, t0, resampled = 0, time.perf_counter(), {size: 0 for size in saes}
    read_every = 1 if torch.device(device).type == "cpu" else READ_EVERY  # a CPU read is free
    epoch, epoch_start = 0, -1
    while step < total and step > epoch_start:  # stop if an epoch yields nothing
        epoch_start = step
        for batch in epoch_batches(epoch):
            if step >= total:
                break
            batch = torch.as_tensor(batch)
            if len(batch) % world.size:
                raise ConfigError(f"sae: a batch of {len(batch)} rows cannot be shared by "
                                  f"{world.size} torchrun processes; make sae.batch_size a "
                                  f"multiple of it", key="sae.batch_size")
            x = batch[world.slice(len(batch))].to(device, non_blocking=True)
            x = (torch.mul(x, scale, out=shared) if shared is not None and x.shape == shared.shape
                 else x * scale)
            lr = lr_at(step, total, cfg)
            l1_scale = min(1.0, (step + 1) / max(1, cfg.l1_warmup_fraction * total))
            for size, sae in saes.items():
                stats = steppers[size].step(x, lr, l1_scale)
                if searches[size] is not None:  # a control loop: it reads L0 every step
                    sae.l1_coefficient = searches[size].update(step, sae.l1_coefficient, float(stats.l0))
                if step in resample_steps:
                    resampled[size] += sae.resample_dead(x, gen)
                pending.append((size, step + 1, len(batch), stats.stacked()))
            step += 1
            if step % read_every == 0 or step == total:
                latest = read_pending()
                bar.set_postfix_str(" | ".join(f"{k}: L0 {l0:.0f} mse {mse:.1f} dead {dead:.0f}"
                                               for k, (mse, l0, dead) in latest.items()), refresh=False)
                bar.update(step - bar.n)
        epoch += 1
    read_pending()
    bar.update(step - bar.n)
    bar.close()
    seconds = time.perf_counter() - t0
    info = {"steps": step, "train_seconds": round(seconds, 2),
            "activations_per_second": round(step * cfg.batch_size / seconds, 1),
            "resampled": resampled, "curves": curves,
            "graph": graph_state(steppers) if graphed else "off"}
    if cfg.recipe_spec.l1:
        info["l1_coefficients"] = {size: sae.l1_coefficient for size, sae in saes.items()}
    return saes, info


def graph_state(steppers: dict) -> str:
    """"on", or which sizes fell back to eager steps and why (said in the stage's summary)."""
    failed = {size: s.failure for size, s in steppers.items() if s.failure}
    if not failed:
        return "on"
    return "eager for " + "; ".join(f"{size} ({why})" for size, why in failed.items())


def train_all(cfg: SaeConfig, act_dir: Path, d_in: int, n_train: int, device: str
              ) -> tuple[dict[int, SparseAutoencoder], float, dict]:
    scale, b_dec_init = input_scale(act_dir, d_in)
    if torch.device(device).type == "cuda":  # the same batches, shuffled on the GPU
        stream = DeviceActivationStream(act_dir, "train", cfg.batch_size, cfg.buffer_tokens, cfg.seed, device)
    else:
        stream = ActivationStream(act_dir, "train", cfg.batch_size, cfg.buffer_tokens, cfg.seed)
    total = max(1, (n_train // cfg.batch_size) * cfg.epochs)
    saes, info = train_saes(cfg, d_in, stream.epoch, total, scale, torch.from_numpy(b_dec_init), device)
    return saes, scale, info


def run(cfg: SaeConfig, run_dir: Path, out: Path) -> tuple[str, dict]:
    # CSR works (tests/test_sae_training.py); torch 2.11 also warns that its checks are off
    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks are "
                                              "implicitly disabled)")
    start = time.perf_counter()
    device = pick_device(cfg.device, "sae")
    torch.manual_seed(cfg.seed)
    act_dir = run_dir / "activations"
    n_train = count_rows(act_dir, "train")
    d_in = acts_width(act_dir, "val")
    saes, scale, info = train_all(cfg, act_dir, d_in, n_train, device)
    if not distributed.world().is_main:
        return "", {}
    curves = info.pop("curves")
    pq.write_table(pa.table(curves), out / "curves.parquet")
    for size, sae in saes.items():
        spec = SaeSpec(d_in=d_in, d_sae=size, recipe=cfg.recipe, k=cfg.k if cfg.recipe_spec.top_k else 0,
                       input_scale=scale)
        save_sae(out / str(size), spec, sae.tensors())
    specs = {size: load_sae(out / str(size), device=device) for size in saes}  # evaluate what was saved
    with progress.heartbeat("sae (held-out evaluation)"):
        recon, mean_act = reconstruction_metrics(specs, act_dir, device, codes_dir=out)
        if (act_dir / TRUTH_FILE).is_file():  # planted: splicing into the model means nothing
            losses = {size: dict.fromkeys(LOSS_KEYS, float("nan")) for size in saes}
        else:
            model = load_transformer(run_dir / "model", device=device)
            losses = loss_metrics(model, specs, run_dir / "tokens", mean_act, cfg.eval_sequences,
                                  device)
    rows = []
    for size in saes:
        row = {"dictionary": str(size), "n_features": size, "recipe": cfg.recipe,
               **{k: v for k, v in recon[size].items() if k != "density"}, **losses[size],
               "resampled": info["resampled"][size]}
        if "l1_coefficients" in info:  # the λ it trained with (calibrated when target_l0 is set)
            row["l1_coefficient"] = info["l1_coefficients"][size]
        rows.append(row)
        save_sae(out / str(size), specs[size][0], specs[size][1],
                 extra={"training": {k: (list(v) if isinstance(v, tuple) else v)
                                     for k, v in cfg.__dict__.items()}, "metrics": row})
    pq.write_table(pa.Table.from_pylist(rows), out / "metrics.parquet")
    seconds = time.perf_counter() - start
    parts = ", ".join(f"{r['dictionary']}: L0 {r['l0']:.1f} FVU {r['fvu']:.3f} CE rec "
                      f"{_percent(r['ce_loss_recovered'])} dead {100 * r['dead_fraction']:.1f}%"
                      + (f" λ {r['l1_coefficient']:.3g}" if "l1_coefficient" in r else "") for r in rows)
    graph = {"on": ", CUDA graphs", "off": ""}.get(info["graph"], f", CUDA graph {info['graph']}")
    summary = (f"sae: {cfg.recipe}, {len(rows)} dictionaries at {info['activations_per_second']:,.0f} "
               f"act/s{graph} ({parts}), {seconds:.0f} s")
    return summary, {**info, "input_scale": scale, "metrics": rows}


def _percent(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"  # NaN: not measured (planted activations)


def metrics_table(rows: list[dict]) -> str:
    """The `status` table: one line per dictionary."""
    head = f"{'dictionary':>10} {'L0':>6} {'FVU':>6} {'CE rec':>7} {'(mean)':>7} {'KL':>6} " \
           f"{'dead':>6} {'on tokens':>9} {'ultralow':>8} {'dense':>5}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['dictionary']:>10} {r['l0']:6.1f} {r['fvu']:6.3f} "
                     f"{_percent(r['ce_loss_recovered']):>7} "
                     f"{_percent(r['ce_loss_recovered_mean_ablation']):>7} {r['kl_div']:6.3f} "
                     f"{100 * r['dead_fraction']:5.1f}% {r['dead_eval_tokens']:9,} {r['n_ultralow']:8} {r['n_dense']:5}")
    return "\n".join(lines)
