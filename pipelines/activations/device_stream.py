"""The SAE's shuffled input stream with its buffer on the training device (a GPU).

`ActivationStream` (`pipelines/activations/shards.py`) shuffles in host memory and hands
each batch to the trainer, which copies it to the device: one small host-to-device copy per
step, and the step waits for the host's shuffle. Here the shuffle buffer lives on the device
in the stored float16; whole shards are read on background threads (one, or two on a
machine with cores to spare) while the device trains on the previous one, and each crosses
to the device in one pinned upload. The batches are `ActivationStream`'s, row for row
(same seed, same random draws in the same order: the test compares them), as float32
tensors already on the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipelines.activations.shards import read_shard, shard_paths
from pipelines.devices import io_threads


class DeviceActivationStream:
    def __init__(self, folder: Path, split: str, batch_size: int, buffer_tokens: int, seed: int,
                 device: str):
        self.paths = shard_paths(folder, split)
        self.batch_size, self.buffer_tokens, self.seed = batch_size, buffer_tokens, seed
        self.device = torch.device(device)

    def _upload(self, path: Path) -> torch.Tensor:
        """One shard's float16 rows as a (pinned, on a GPU) host tensor: runs on the reader thread."""
        acts = torch.from_numpy(read_shard(path, acts_dtype=np.float16)["acts"])
        return acts.pin_memory() if self.device.type == "cuda" else acts

    def epoch(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch])  # ActivationStream's draws, in its order
        order = [self.paths[i] for i in rng.permutation(len(self.paths))]
        buffer: torch.Tensor | None = None
        readers = io_threads(2)  # one shard's read (~0.3 s here) must hide behind its steps
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="shard-reader") as pool:
            ahead = [pool.submit(self._upload, path) for path in order[:readers]]
            for i in range(len(order)):
                host = ahead.pop(0).result()
                if i + readers < len(order):
                    ahead.append(pool.submit(self._upload, order[i + readers]))
                acts = host.to(self.device, non_blocking=True)
                buffer = acts if buffer is None or len(buffer) == 0 else torch.cat([buffer, acts])
                if len(buffer) < self.buffer_tokens:
                    continue
                buffer = buffer[self._permutation(rng, len(buffer))]
                emit = (len(buffer) // 2 // self.batch_size) * self.batch_size
                for start in range(0, emit, self.batch_size):
                    yield buffer[start: start + self.batch_size].float()
                buffer = buffer[emit:]
        if buffer is None:
            return
        buffer = buffer[self._permutation(rng, len(buffer))]
        for start in range(0, len(buffer) - self.batch_size + 1, self.batch_size):
            yield buffer[start: start + self.batch_size].float()

    def _permutation(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        return torch.from_numpy(rng.permutation(n)).to(self.device, non_blocking=True)
