"""The SAE's input stream: every cached training row once per epoch (less a remainder shorter
than a batch), exactly the stored values as float32, shuffled across shards, seeded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipelines.activations.shards import ActivationStream, read_shard, shard_paths


def test_each_row_once_per_epoch_as_stored(mini_run):
    folder = mini_run / "activations"
    stored = np.concatenate([read_shard(p)["acts"] for p in shard_paths(folder, "train")])
    assert len(shard_paths(folder, "train")) > 1  # the shuffle must cross shard boundaries
    stream = ActivationStream(folder, "train", batch_size=256, buffer_tokens=8192, seed=3)
    batches = list(stream.epoch(0))
    assert all(b.dtype == np.float32 and b.shape == (256, stored.shape[1]) for b in batches)
    seen = np.concatenate(batches)
    assert len(stored) - 256 < len(seen) <= len(stored)
    # rows as bytes, as multisets (identical contexts give identical rows): every emitted row
    # is a stored row, none more often than it was stored
    stored_rows = Counter(r.tobytes() for r in stored)
    seen_rows = Counter(r.tobytes() for r in seen)
    assert not seen_rows - stored_rows
    # shuffled: the first batch mixes rows from far apart in the cache
    where = {r.tobytes(): i for i, r in enumerate(stored)}
    first = np.array([where[r.tobytes()] for r in batches[0]])
    assert first.max() - first.min() > len(stored) // 4
    again = list(ActivationStream(folder, "train", 256, 8192, seed=3).epoch(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = next(iter(ActivationStream(folder, "train", 256, 8192, seed=3).epoch(1)))
    assert not np.array_equal(other, batches[0])


@pytest.mark.parametrize("readers", [1, 3])  # a small machine / a GPU box reading ahead
def test_device_stream_yields_the_host_streams_batches(mini_run, readers, monkeypatch):
    """The GPU's stream (buffer on the device, shards read ahead on threads) must be the
    host stream row for row, for every epoch's seed; here its device is the CPU."""
    import torch

    from pipelines.activations import device_stream
    from pipelines.activations.device_stream import DeviceActivationStream

    monkeypatch.setattr(device_stream, "io_threads", lambda at_most: readers)

    folder = mini_run / "activations"
    for epoch in (0, 1):
        host = list(ActivationStream(folder, "train", 256, 8192, seed=3).epoch(epoch))
        device = list(DeviceActivationStream(folder, "train", 256, 8192, seed=3, device="cpu").epoch(epoch))
        assert len(device) == len(host) > 2
        assert all(isinstance(b, torch.Tensor) and b.dtype == torch.float32 for b in device)
        assert all(np.array_equal(b.numpy(), a) for a, b in zip(host, device))
    # a buffer larger than the split: everything is shuffled once at the end, still the same
    host = list(ActivationStream(folder, "train", 256, 10**7, seed=5).epoch(0))
    device = list(DeviceActivationStream(folder, "train", 256, 10**7, seed=5, device="cpu").epoch(0))
    assert len(device) == len(host) and all(np.array_equal(b.numpy(), a) for a, b in zip(host, device))


def test_a_resident_split_is_read_once_and_gives_the_same_batches(mini_run):
    """A split that fits the device's budget stays on it after its first epoch: later epochs
    read no shard and yield the same batches as a stream that reads every epoch, also after
    an epoch left early (training's last steps end mid-epoch: a part is resident)."""
    import torch

    from pipelines.activations.device_stream import DeviceActivationStream
    from pipelines.activations.shards import acts_width, count_rows

    folder = mini_run / "activations"
    n_shards = len(shard_paths(folder, "train"))
    split_bytes = count_rows(folder, "train") * acts_width(folder, "train") * 2
    stream = lambda budget=None: DeviceActivationStream(folder, "train", 256, 8192, seed=3,  # noqa: E731
                                                        device="cpu", resident_bytes=budget)
    assert not stream(split_bytes - 1).keep and stream(split_bytes).keep
    resident, reading = stream(split_bytes), stream()  # no budget on a CPU device
    assert not reading.keep
    left_early = resident.epoch(0)
    first = [next(left_early) for _ in range(2)]
    left_early.close()
    assert 0 < len(resident.resident) < n_shards and resident.reads == len(resident.resident)
    assert all(torch.equal(a, b) for a, b in zip(first, reading.epoch(0)))
    for epoch in (1, 2, 3):
        a, b = list(resident.epoch(epoch)), list(reading.epoch(epoch))
        assert len(a) == len(b) > 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert resident.reads == n_shards and len(resident.resident) == n_shards
    assert reading.reads > 3 * n_shards
