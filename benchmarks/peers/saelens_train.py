"""Train one SAE with SAELens' own SAE classes and trainer on the head-to-head's data; print JSON.

Runs inside benchmarks/peers/.venv (SAELens needs TransformerLens < 4). The data, order and
scale come from benchmarks/peers/same_data.py, the same code our side uses; SAELens' own
normalisation is off so both see identical numbers. Everything else is SAELens' standard
training at its defaults (Adam 0.9/0.999, gradient norm clipped at 1, decoder initialised at
norm 0.1, its dead-feature window and AuxK rule for TopK), except the learning rate, held
constant at the job's `lr` (SAELens' default schedule is constant too), and for the standard
(ReLU + L1) SAE the job's λ and λ warm-up steps.

    benchmarks/peers/.venv/bin/python benchmarks/peers/saelens_train.py JOB.json OUT.json

JOB.json: same_data's fields plus architecture ("topk" | "standard"), d_sae, k, l1_coefficient,
l1_warm_up_steps, lr, sparse (SAELens' `use_sparse_activations`, TopK only).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer


def same_data(job: dict):
    spec = importlib.util.spec_from_file_location("same_data", Path(__file__).with_name("same_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SameData(job)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(torch.get_num_threads())
    data = same_data(job)
    common = dict(d_in=data.d_in, d_sae=job["d_sae"], dtype="float32", device="cpu", normalize_activations="none")
    if job["architecture"] == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=job["k"], use_sparse_activations=bool(job.get("sparse")),
                                                    **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=job["l1_coefficient"], l1_warm_up_steps=job.get("l1_warm_up_steps", 0), **common))
    cfg = SAETrainerConfig(total_training_samples=data.steps * data.batch, train_batch_size_samples=data.batch,
                           lr=job["lr"], lr_end=job["lr"], device="cpu", n_batches_for_norm_estimate=1)
    batches = data.batches()
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    step_seconds = 0.0
    for x in batches:
        t = time.perf_counter()
        trainer.step(x)
        step_seconds += time.perf_counter() - t
        trainer.n_training_steps += 1
    sae.eval()

    with torch.no_grad():
        scores = data.evaluate(sae.encode, sae.decode, sae.W_dec.detach())
    name = ("SAELens TopKTrainingSAE" if job["architecture"] == "topk" else "SAELens StandardTrainingSAE (ReLU + L1)")
    out.write_text(json.dumps({
        "peer": name + (" use_sparse_activations" if job.get("sparse") else ""), "d_sae": job["d_sae"],
        "steps": data.steps, "batch": data.batch, "activations_per_s": data.steps * data.batch / step_seconds,
        **scores, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
