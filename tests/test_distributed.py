"""Data-parallel training (torchrun, gloo on CPU) gives one process's weights, and the runner
under torchrun agrees on what to run, writes once, and survives a killed rank.

Two kinds of test: the training loops themselves in 2 spawned processes against the same
loop in this one (weights equal to 1e-5 for the same global batch), and the real CLI under
`torchrun --standalone --nproc_per_node 2` on a copy of the mini run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from feature_store.sae_files import load_sae
from pipelines.config import SaeConfig
from pipelines.run_folder import Manifest
from tests.conftest import MINI, mini_config

ROOT = Path(__file__).resolve().parent.parent
D_IN, STEPS, BATCH = 16, 12, 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, size: int, port: int) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)


def _batches(epoch: int):
    """The same global batches in every process: seeded by the epoch."""
    rng = np.random.default_rng([7, epoch])
    basis = np.random.default_rng(0).standard_normal((32, D_IN)).astype(np.float32)
    for _ in range(STEPS):
        codes = rng.random((BATCH, 32)) * (rng.random((BATCH, 32)) < 0.1)
        yield (codes @ basis + 0.01 * rng.standard_normal((BATCH, D_IN))).astype(np.float32)


def _sae_config(recipe: str) -> SaeConfig:
    # topk with every feature dead after 128 tokens and aux on the whole batch: AuxK is
    # exercised every step; l1-unit resamples once (rank 0 draws, broadcasts)
    return SaeConfig(dict_sizes=(48,), recipe=recipe, k=4, batch_size=BATCH, lr=3e-3,
                     l1_coefficient=2.0, dead_window=128, aux_k=8,
                     resample_at=(0.5,) if recipe == "l1-unit" else (), epochs=1)


def _train(recipe: str) -> dict[str, torch.Tensor]:
    from pipelines.sae import stage as sae_stage

    make = sae_stage.make_sae

    def whole_batch_aux(*args, **kwargs):  # AuxK on every row: the same rows in both runs
        sae = make(*args, **kwargs)
        sae.aux_batch_fraction = 1.0
        return sae

    sae_stage.make_sae = whole_batch_aux
    try:
        saes, _ = sae_stage.train_saes(_sae_config(recipe), D_IN, _batches, STEPS, 1.0,
                                       torch.zeros(D_IN), "cpu")
    finally:
        sae_stage.make_sae = make
    return {k: v.clone() for k, v in saes[48].tensors().items()}


RECIPES = ("topk", "l1", "l1-unit")


def _sae_worker(rank: int, size: int, port: int, out: str) -> None:
    """Every recipe in one process group (one spawn: starting two torch processes costs
    more than the training)."""
    _join(rank, size, port)
    from pipelines import distributed

    try:
        got = {recipe: _train(recipe) for recipe in RECIPES}
        if rank == 0:
            torch.save(got, out)
    finally:
        distributed.shutdown()


def _spawn(fn, *args) -> None:
    mp.start_processes(fn, args=(2, _free_port(), *args), nprocs=2, join=True,
                       start_method="spawn")


@pytest.fixture(scope="module")
def ddp_saes(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Each recipe's SAE trained by two ranks on the same global batches."""
    out = tmp_path_factory.mktemp("ddp") / "ddp.pt"
    _spawn(_sae_worker, str(out))
    return torch.load(out)


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_ranks_train_an_sae_to_one_process_weights(recipe, ddp_saes):
    ddp, single = ddp_saes[recipe], _train(recipe)
    for name, want in single.items():
        torch.testing.assert_close(ddp[name], want, atol=1e-5, rtol=1e-5, msg=name)
    assert not torch.allclose(single["W_dec"], _fresh_decoder(recipe))  # it did train


def _fresh_decoder(recipe: str) -> torch.Tensor:
    from pipelines.sae.stage import make_sae

    return make_sae(_sae_config(recipe), D_IN, 48, 0, torch.zeros(D_IN), "cpu").W_dec.detach()


def _model_worker(rank: int, size: int, port: int, run_dir: str, out: str) -> None:
    _join(rank, size, port)
    from pipelines import distributed
    from pipelines.model import stage as model_training

    try:
        Path(out).mkdir(exist_ok=True)
        model_training.run(_model_cfg(), Path(run_dir), Path(out))
    finally:
        distributed.shutdown()


def _model_cfg():
    return mini_config(model={"train_tokens": 6 * 16 * 32, "eval_every": 1000}).model


def test_two_ranks_train_the_model_to_one_process_weights(mini_run, tmp_path):
    from pipelines.model import stage as model_training

    _spawn(_model_worker, str(mini_run), str(tmp_path / "ddp"))
    (tmp_path / "one").mkdir()
    model_training.run(_model_cfg(), mini_run, tmp_path / "one")
    ddp, one = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("ddp", "one"))
    assert ddp.keys() == one.keys()
    # The key bias has an exactly zero gradient (it adds q·b_k to every score of a query,
    # which the softmax removes), so its "gradient" is rounding noise that Adam scales up to
    # lr-sized steps in either run: it matches nothing, in one process or two.
    noise = {"blocks.0.attn.k.bias"}
    for name in one.keys() - noise:
        torch.testing.assert_close(ddp[name], one[name], atol=1e-5, rtol=1e-5, msg=name)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["steps"] == 6


# -- the CLI under torchrun ---------------------------------------------------------------------

def _config_file(tmp_path: Path, **sections: dict) -> Path:
    raw = {k: dict(v) for k, v in MINI.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    text = "\n".join(f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items())
                     for name, body in raw.items())
    path = tmp_path / "mini.toml"
    path.write_text(text + "\n")
    return path


def _torchrun(cfg: Path, run_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "pipelines", "run", "--config", str(cfg), "--run-dir", str(run_dir), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def ddp_run(mini_run, tmp_path_factory):
    """The mini run's model, activations and sae stages rebuilt under torchrun (2 ranks)."""
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir = tmp / "run"
    shutil.copytree(mini_run, run_dir, symlinks=True)
    cfg = _config_file(tmp)
    proc = _torchrun(cfg, run_dir, "--force", "model", "--until", "sae")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return run_dir, cfg, out


def test_torchrun_cli_runs_the_data_parallel_stages_once(ddp_run, mini_run):
    run_dir, _, out = ddp_run
    manifest = Manifest(run_dir)
    assert manifest.get("model").results["ranks"] == 2
    for stage in ("model", "activations", "sae"):
        assert out.count(f"{stage}: running") == 1, out  # rank 0 alone logs and decides
    assert out.count("run: ") == 1  # one completion line
    # the activation shards two ranks wrote are the ones one process writes
    names = sorted(p.name for p in (run_dir / "activations").glob("*.parquet"))
    assert names == sorted(p.name for p in (mini_run / "activations").glob("*.parquet"))
    # same data, same global batches: the SAEs measure as the single-process run's
    want = {r["dictionary"]: r for r in Manifest(mini_run).get("sae").results["metrics"]}
    for row in manifest.get("sae").results["metrics"]:
        assert abs(row["fvu"] - want[row["dictionary"]]["fvu"]) < 0.01, (row, want)
    assert not list(run_dir.glob("*.incomplete"))


def test_a_killed_rank_leaves_the_run_as_it_was_and_the_rerun_matches(ddp_run, tmp_path):
    src, cfg, _ = ddp_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, symlinks=True)
    before = Manifest(run_dir).get("sae").output_hash
    proc = _torchrun(cfg, run_dir, "--force", "sae", "--until", "sae")
    deadline = time.time() + 300
    while not (run_dir / "sae.incomplete").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(1.0)
    rank1 = _rank_pid(proc.pid, rank=1)
    os.kill(rank1, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    assert Manifest(run_dir).get("sae").output_hash == before  # the old sae is untouched
    assert not (run_dir / "sae.incomplete").exists()  # rank 0 unwound on SIGTERM
    proc = _torchrun(cfg, run_dir, "--force", "sae", "--until", "sae")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    for size in MINI["sae"]["dict_sizes"]:  # deterministic: equal to the uninterrupted run
        _, got = load_sae(run_dir / "sae" / str(size))
        _, want = load_sae(src / "sae" / str(size))
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=0, rtol=0)


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the worker with this RANK among the launcher's descendants."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and _descends(int(entry.name), launcher):
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker under {launcher}")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False
