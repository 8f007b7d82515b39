"""Train SAELens' TopK SAE on our cached activations and report speed and quality as JSON.

Runs inside benchmarks/peers/.venv (SAELens needs TransformerLens < 4). The inputs are the
same shards our sae stage reads, scaled by the same constant (mean norm sqrt(d_in)), fed in the
same order and batch size, with the same k, learning rate and step count; SAELens' own
normalisation is off so both see identical numbers. FVU and L0 are measured the way
pipelines/sae_metrics.py measures them: over every validation token, in activation units
(FVU is invariant to the constant scale).

    benchmarks/peers/.venv/bin/python benchmarks/peers/saelens_train.py RUN_DIR D_SAE STEPS K LR OUT.json [sparse]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer


def shard(path: Path) -> np.ndarray:
    column = pq.read_table(path, columns=["acts"]).column("acts")
    d = column.type.list_size
    return np.concatenate([c.flatten().to_numpy().reshape(-1, d) for c in column.chunks]).astype(np.float32)


def main() -> None:
    run_dir, d_sae, steps, k, lr, out = (Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                         int(sys.argv[4]), float(sys.argv[5]), Path(sys.argv[6]))
    sparse = len(sys.argv) > 7 and sys.argv[7] == "sparse"  # SAELens' own sparse option
    batch = 4096
    train = np.concatenate([shard(p) for p in sorted((run_dir / "activations").glob("train-*.parquet"))])
    d_in = train.shape[1]
    scale = float(np.sqrt(d_in) / np.linalg.norm(train[:65536], axis=1).mean())
    order = np.random.default_rng(0).permutation(len(train))[: steps * batch]
    data = torch.from_numpy(train[order] * scale)
    batches = iter(data.split(batch))

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                                                normalize_activations="none", aux_loss_coefficient=1 / 32,
                                                use_sparse_activations=sparse))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr, lr_end=lr,
                           device="cpu", n_batches_for_norm_estimate=1)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    torch.manual_seed(0)
    for _ in range(3):  # warm-up steps, not timed (same as ours)
        trainer.step(next(batches))
        trainer.n_training_steps += 1
    t = time.perf_counter()
    for _ in range(steps - 3):
        trainer.step(next(batches))
        trainer.n_training_steps += 1
    seconds = time.perf_counter() - t

    sq_err, l0, n, total, total_sq = 0.0, 0.0, 0, None, 0.0
    val = np.concatenate([shard(p) for p in sorted((run_dir / "activations").glob("val-*.parquet"))])
    mean = val.astype(np.float64).mean(0)
    var_sum = float(((val - mean) ** 2).sum())
    with torch.no_grad():
        for chunk in torch.from_numpy(val).split(8192):
            feats = sae.encode(chunk * scale)
            recon = sae.decode(feats) / scale
            sq_err += float(((recon - chunk) ** 2).sum())
            l0 += float((feats > 0).sum())
            n += len(chunk)
    out.write_text(json.dumps({
        "peer": "SAELens TopKTrainingSAE + SAETrainer" + (" (use_sparse_activations)" if sparse else ""), "d_sae": d_sae, "steps": steps, "batch": batch,
        "activations_per_s": (steps - 3) * batch / seconds, "fvu": sq_err / var_sum, "l0": l0 / n,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
