"""The Ray statistics engine (`stats.engine = "ray"`, `pipelines/stats/ray_engine.py`) writes the
same store as the local engine: every Parquet table byte for byte and the manifest but
`created_at`.

The copy of the mini run here re-cuts its validation split into four shards of unequal size
(whole sequences) and reads it in small batches, so 2 Ray
workers each get shards, every shard several batches, and every statistic has something to
merge: counts, float sums, histograms, top-k (ties between equal float16 neuron values
included), interval samples, splitting sums, ablation effects.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.stats import sampling
from pipelines.stats import stage as stats
from pipelines.activations.shards import sequence_batches, shard_paths
from pipelines.config import StatsConfig, build_config
from pipelines.stats.parts import part_batches, split_parts
from tests.conftest import mini_config
from tests.helpers.shards import recut

N_CTX = 32  # the mini run's
CUTS = (0.3, 0.5, 0.7)  # four shards: 30%, 20%, 20%, 30% of the sequences


@pytest.fixture(scope="module")
def recut_run(mini_run, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ray") / "run"
    shutil.copytree(mini_run, run_dir, ignore=shutil.ignore_patterns("store"))
    assert recut(run_dir, CUTS, N_CTX) == 4
    return run_dir


def _stats_cfg(**kw) -> StatsConfig:
    base = dict(mini_config().stats.__dict__)
    base.update(batch_tokens=20 * (N_CTX - 1), umap=False, **kw)  # several batches per shard
    return StatsConfig(**base)


def _store(run_dir: Path, out: Path, cfg: StatsConfig) -> tuple[str, dict]:
    return stats.run(cfg, run_dir, out)


def test_parts_are_sequence_batches(recut_run):
    """Reading the shards part by part gives exactly `sequence_batches`' batches, with and
    without a `max_tokens` cut inside the second shard."""
    act = recut_run / "activations"
    n_rows = sum(pq.read_metadata(p).num_rows for p in shard_paths(act, "val"))
    for max_tokens in (0, int(n_rows * 0.6)):
        whole = list(sequence_batches(act, "val", N_CTX, 4 * 31, max_tokens, "cpu"))
        parts = split_parts(act, "val", N_CTX, max_tokens)
        cut = [b for p in parts for b in part_batches(p, N_CTX, 4 * 31, "cpu")]
        assert len(whole) == len(cut)
        for a, b in zip(whole, cut):
            assert torch.equal(a.seq_ids, b.seq_ids) and torch.equal(a.x, b.x)


def test_ray_store_equals_local_store(recut_run, ray_session, tmp_path):
    """2 Ray workers over 3 shards (`max_tokens` cuts the third in the middle, the fourth is
    not read): the same store as the local engine, table by table."""
    act = recut_run / "activations"
    cut = int(sum(pq.read_metadata(p).num_rows for p in shard_paths(act, "val")) * 0.6)
    local_summary, local_info = _store(recut_run, tmp_path / "local", _stats_cfg(max_tokens=cut))
    ray_summary, ray_info = _store(recut_run, tmp_path / "ray",
                                   _stats_cfg(max_tokens=cut, engine="ray", ray_workers=2))
    assert len(split_parts(act, "val", N_CTX, cut)) == 3
    assert "ray: 2 workers" in ray_summary
    assert local_info["ablation_pairs"] == ray_info["ablation_pairs"] > 0
    assert local_info["split_edges"] == ray_info["split_edges"]
    a, b = tmp_path / "local", tmp_path / "ray"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    tables = [f for f in files if f.suffix == ".parquet"]
    assert len(tables) >= 6 + 4 * 4  # the shared tables and 4 per dictionary
    for f in tables:
        ta, tb = pq.read_table(a / f), pq.read_table(b / f)
        assert ta.num_rows == tb.num_rows, f
        for name in ta.column_names:  # a readable failure first: which column differs
            assert _same(ta.column(name), tb.column(name)), f"{f}: column {name} differs"
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    ma.pop("created_at"), mb.pop("created_at")
    assert ma == mb


def _same(x, y) -> bool:
    """Equal column contents, NaN equal to NaN (ablation cells outside a window are NaN)."""
    return x.to_pylist().__repr__() == y.to_pylist().__repr__()


def test_uniform_keys_are_splitmix64():
    """The torch int64 hash equals splitmix64 computed with numpy's uint64 arithmetic, and
    its keys are uniform."""
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 10**6, 5000)
    pos = rng.integers(1, 1024, 5000)
    unit = rng.integers(0, 2**17, 5000)
    salt = sampling.key_salt(3, "sae_128")
    got = sampling.uniform_keys(salt, torch.from_numpy(seq), torch.from_numpy(pos),
                                torch.from_numpy(unit)).numpy()

    def mix(z):
        with np.errstate(over="ignore"):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    u = lambda a: a.astype(np.int64).view(np.uint64)  # noqa: E731
    h = mix(u(seq) ^ np.int64(salt).view(np.uint64))
    h = mix(h ^ u(pos))
    h = mix(h ^ u(unit))
    want = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    np.testing.assert_array_equal(got, want)
    assert abs(got.mean() - 0.5) < 0.02 and got.min() >= 0 and got.max() < 1


def test_top_k_ties_break_by_sequence_then_position():
    """Equal activations: the lower (seq_id, position) ranks first, whatever the order the
    entries were offered in (so parts merge exactly)."""
    offs = torch.zeros(1, dtype=torch.int64)
    n_ctx = 5
    seq_ids = torch.arange(4)
    codes = torch.full((16, 1), 2.0)
    row = torch.arange(16)
    feat = torch.zeros(16, dtype=torch.int64)
    results = []
    for order in (torch.arange(16), torch.arange(16).flip(0), torch.randperm(16)):
        b = sampling.BottomM(1, 3, 1, "cpu")
        for chunk in order.split(5):
            b.offer_batch(feat[chunk], -codes[chunk, 0].double(), row[chunk], codes[chunk, 0],
                          seq_ids, codes, feat[chunk], n_ctx, offs)
        results.append((b.seq[0].tolist(), b.pos[0].tolist()))
    assert results[0] == ([0, 0, 0], [1, 2, 3]) and all(r == results[0] for r in results)


def test_engine_setting_and_lazy_import():
    cfg = build_config({"stats": {"engine": "ray", "ray_workers": 2}}, "test")
    assert cfg.stats.engine == "ray" and cfg.stats.ray_address == ""
    with pytest.raises(ValueError, match="stats.engine"):
        build_config({"stats": {"engine": "spark"}}, "test")
    import subprocess
    code = "import sys, pipelines.runner, pipelines.stats.stage; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"
