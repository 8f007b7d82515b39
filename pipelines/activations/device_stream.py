"""The SAE's shuffled input stream with its buffer on the training device (a GPU).

`ActivationStream` (`pipelines/activations/shards.py`) shuffles in host memory and hands
each batch to the trainer, which copies it to the device: one small host-to-device copy per
step, and the step waits for the host's shuffle. Here the shuffle buffer lives on the device
in the stored float16; whole shards are read on background threads (one, or up to four on a
machine with cores to spare) while the device trains on the previous one, and each crosses
to the device in one pinned upload. The batches are `ActivationStream`'s, row for row
(same seed, same random draws in the same order: the test compares them), as float32
tensors already on the device.

A split that fits in a third of the device's free memory stays there after its first epoch
(`resident_bytes`): later epochs read nothing (the small preset trains 3 epochs over 2.7M
tokens, 2.8 GB, so 2 of its 3 passes skip Parquet's decoding, ~0.3-0.4M rows/s per reader
on these CPUs). The draws are the same either way, so are the batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipelines.activations.shards import acts_width, count_rows, read_shard, shard_paths
from pipelines.devices import io_threads

READERS = 4  # at most: where cores are spare (io_threads), one shard's read each


class DeviceActivationStream:
    def __init__(self, folder: Path, split: str, batch_size: int, buffer_tokens: int, seed: int,
                 device: str, resident_bytes: int | None = None):
        """`resident_bytes`: the most device memory the split may keep between epochs (None:
        a third of what is free on a GPU, nothing elsewhere)."""
        self.paths = shard_paths(folder, split)
        self.batch_size, self.buffer_tokens, self.seed = batch_size, buffer_tokens, seed
        self.device = torch.device(device)
        if resident_bytes is None:
            resident_bytes = (torch.cuda.mem_get_info(self.device)[0] // 3
                              if self.device.type == "cuda" else 0)
        width = acts_width(folder, split) if self.paths else 0
        self.keep = count_rows(folder, split) * width * 2 <= resident_bytes  # float16
        self.resident: dict[Path, torch.Tensor] = {}
        self.reads = 0  # shards read from disk, all epochs

    def _upload(self, path: Path) -> torch.Tensor:
        """One shard's float16 rows as a (pinned, on a GPU) host tensor: runs on the reader thread."""
        acts = torch.from_numpy(read_shard(path, acts_dtype=np.float16)["acts"])
        return acts.pin_memory() if self.device.type == "cuda" else acts

    def _shards(self, order: list[Path]) -> Iterator[torch.Tensor]:
        """Each shard's float16 rows on the device, in `order`: the resident copy, or read
        ahead on threads while the device trains on the ones before."""
        todo = [path for path in order if path not in self.resident]
        readers = io_threads(READERS)
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="shard-reader") as pool:
            ahead = {path: pool.submit(self._upload, path) for path in todo[:readers]}
            queued = len(ahead)
            for path in order:
                if path in self.resident:
                    yield self.resident[path]
                    continue
                host = ahead.pop(path).result()
                self.reads += 1
                if queued < len(todo):
                    ahead[todo[queued]] = pool.submit(self._upload, todo[queued])
                    queued += 1
                acts = host.to(self.device, non_blocking=True)
                if self.keep:  # never written in place: the buffer below cats and indexes
                    self.resident[path] = acts
                yield acts

    def epoch(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, epoch])  # ActivationStream's draws, in its order
        order = [self.paths[i] for i in rng.permutation(len(self.paths))]
        buffer: torch.Tensor | None = None
        for acts in self._shards(order):
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

