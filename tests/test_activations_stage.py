"""The activations stage's shard writer runs on a thread beside the forward passes: its
output must be the shards in order, and an error it meets (a NaN activation) must stop the
stage with the file named, not vanish with the thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipelines.activations import stage
from pipelines.activations.shards import read_shard, shard_paths
from pipelines.config import ActivationsConfig
from pipelines.errors import InputError


def fake_capture(bad_seq: int | None):
    """Activations that encode (sequence's first token, position), NaN at one sequence."""
    def capture(model, batch, hooks):
        pos = torch.arange(batch.shape[1]).expand(batch.shape[0], -1)
        acts = torch.stack([batch[:, :1].expand(-1, batch.shape[1]).float(), pos.float()], dim=-1)
        if bad_seq is not None:
            acts[batch[:, 0] == bad_seq] = float("nan")
        return {hook: acts for hook in hooks}
    return capture


@pytest.mark.parametrize("writers", [1, 3])  # a 2-core box / a GPU box's writer pool
def test_shards_hold_every_sequence_in_order(tmp_path, monkeypatch, writers):
    monkeypatch.setattr(stage, "capture_many", fake_capture(None))
    monkeypatch.setattr(stage, "writer_threads", lambda device: writers)
    seqs = np.stack([np.full(9, i) for i in range(40)])  # 40 sequences of n_ctx 9
    cfg = ActivationsConfig(shard_tokens=8 * 7, batch_size=3)  # 7 sequences a shard: 6 shards
    assert stage.cache_split(None, seqs, np.arange(40) + 100, tmp_path, "train", cfg, "cpu") == 40 * 8
    paths = shard_paths(tmp_path, "train")
    assert len(paths) == 6
    got = [read_shard(p, columns=("seq_id", "position", "acts")) for p in paths]
    seq_id = np.concatenate([g["seq_id"] for g in got])
    acts = np.concatenate([g["acts"] for g in got])
    assert np.array_equal(seq_id, np.repeat(np.arange(40) + 100, 8))
    assert np.array_equal(acts[:, 0], np.repeat(np.arange(40), 8))  # first token, in order
    assert np.array_equal(acts[:, 1], np.tile(np.arange(1, 9), 40))  # positions 1..8, BOS skipped


def test_a_shard_of_two_columns_holds_half_the_rows(tmp_path, monkeypatch):
    """`shard_tokens` bounds a shard's activations over all its columns: a SoLU model's
    validation shards (`acts` and `acts_pre_ln`) hold half a training shard's rows, so every
    shard is about the same bytes to read and to write (on a GPU each is one writer's work)."""
    monkeypatch.setattr(stage, "capture_many", fake_capture(None))
    seqs = np.stack([np.full(9, i) for i in range(40)])
    cfg = ActivationsConfig(shard_tokens=8 * 7, batch_size=3)  # 7 one-column sequences a shard
    stage.cache_split(None, seqs, np.arange(40), tmp_path, "val", cfg, "cpu", pre_ln=True)
    got = [read_shard(p, columns=("seq_id", "acts", "acts_pre_ln"))
           for p in shard_paths(tmp_path, "val")]
    assert [len(g["seq_id"]) for g in got] == [3 * 8] * 13 + [8]  # 56 // (8 x 2) = 3 sequences
    assert np.array_equal(np.concatenate([g["seq_id"] for g in got]), np.repeat(np.arange(40), 8))
    for column in ("acts", "acts_pre_ln"):
        acts = np.concatenate([g[column] for g in got])
        assert np.array_equal(acts[:, 0], np.repeat(np.arange(40), 8))


@pytest.mark.parametrize("writers", [1, 3])
def test_a_nan_in_a_later_shard_stops_the_stage_naming_it(tmp_path, monkeypatch, writers):
    monkeypatch.setattr(stage, "capture_many", fake_capture(bad_seq=9))  # in the second shard
    monkeypatch.setattr(stage, "writer_threads", lambda device: writers)
    seqs = np.stack([np.full(9, i) for i in range(40)])
    cfg = ActivationsConfig(shard_tokens=8 * 7, batch_size=3)
    with pytest.raises(InputError, match=r"train-00001\.parquet: acts is NaN or Inf at sequence 9"):
        stage.cache_split(None, seqs, np.arange(40), tmp_path, "train", cfg, "cpu")


def test_a_value_past_float16_range_is_caught_before_writing(tmp_path, monkeypatch):
    """The stored float16 turns 1e5 into Inf: the check reads the stored values, not the
    model's float32."""
    def capture(model, batch, hooks):
        acts = torch.zeros(batch.shape[0], batch.shape[1], 2)
        acts[batch[:, 0] == 4, 3, 1] = 1e5
        return {hook: acts for hook in hooks}
    monkeypatch.setattr(stage, "capture_many", capture)
    seqs = np.stack([np.full(9, i) for i in range(10)])
    with pytest.raises(InputError, match=r"train-00000\.parquet: acts is NaN or Inf at sequence 4, position 3"):
        stage.cache_split(None, seqs, np.arange(10), tmp_path, "train",
                          ActivationsConfig(shard_tokens=8 * 7, batch_size=3), "cpu")
    assert not list(tmp_path.glob("train-00000*"))


def test_the_activations_stage_writes_on_every_spare_core_beside_a_gpu(monkeypatch):
    """On CUDA the writing bounds the activations stage: every core of this rank's share but
    two writes; on a CPU the forward passes keep the cores (one writer on a small box)."""
    from pipelines import devices

    monkeypatch.setattr(devices.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert devices.writer_threads("cuda") == 14
    assert devices.writer_threads("cpu") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPUs on the node, one rank each
    assert devices.writer_threads("cuda") == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert devices.writer_threads("cuda") == 6
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    assert devices.writer_threads("cpu") == 1 and devices.writer_threads("cuda") == 1


def test_one_writer_pool_lets_the_next_split_run_while_the_last_shards_are_written(tmp_path, monkeypatch):
    """Both splits share the writers: the validation split's forward passes start while the
    training split's shards are still being written (a split that waited for its own writes
    would leave the GPU and the other writers idle at its end)."""
    validation_started = threading.Event()
    capture = fake_capture(None)

    def capture_marking(model, batch, hooks):
        if batch[0, 0] >= 1000:  # the validation sequences below
            validation_started.set()
        return capture(model, batch, hooks)

    write = stage._write_shard

    def slow_train_write(path, *args, **kwargs):
        if path.name.startswith("train") and not validation_started.wait(timeout=20):
            raise AssertionError("the training shards' writing held the validation split back")
        write(path, *args, **kwargs)

    monkeypatch.setattr(stage, "capture_many", capture_marking)
    monkeypatch.setattr(stage, "_write_shard", slow_train_write)
    train = np.stack([np.full(9, i) for i in range(14)])
    val = np.stack([np.full(9, 1000 + i) for i in range(7)])
    cfg = ActivationsConfig(shard_tokens=8 * 7, batch_size=3)
    with stage.ShardWriters(3) as writers:
        stage.cache_split(None, train, np.arange(14), tmp_path, "train", cfg, "cpu", writers=writers)
        assert not validation_started.is_set()
        stage.cache_split(None, val, np.arange(7), tmp_path, "val", cfg, "cpu", writers=writers)
        writers.wait()
    assert len(shard_paths(tmp_path, "train")) == 2 and len(shard_paths(tmp_path, "val")) == 1
