"""Studies: config layering, shared stages built once, universality equal to brute force."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from feature_store.study_store import StudyStore, is_study_store
from feature_store.transformer_files import load_transformer
from pipelines.model.readout import logit_weights, model_readout
from pipelines.activations.shards import read_shard, shard_paths
from pipelines.config import build_config
from pipelines.stats.dictionaries import load_dictionaries
from pipelines.errors import ConfigError, InputError
from pipelines.run_folder import Manifest
from pipelines.study.runner import run_study, study_status
from pipelines.study.config import build_study
from pipelines.universality.stage import check_same_tokens
from tests.conftest import MINI, study_raw
from tests.helpers.shards import recut


# -- config -------------------------------------------------------------------------------------

def test_variants_layer_over_base_and_set():
    cfg = build_study(study_raw(), "t.toml", ["sae.k=8", "variants.gelu.sae.k=6"])
    assert cfg.names == ("solu", "gelu")
    assert cfg.variant("solu").model.act_fn == "solu_ln" and cfg.variant("solu").sae.k == 8
    assert cfg.variant("gelu").model.act_fn == "gelu" and cfg.variant("gelu").sae.k == 6
    assert cfg.base.sae.k == 8 and cfg.base.tokens == cfg.variant("gelu").tokens


def test_set_adds_a_variant_and_untrained_control_is_expressible():
    cfg = build_study(study_raw(), "t.toml", ["variants.untrained.model.train_tokens=0"])
    assert cfg.names == ("solu", "gelu", "untrained")
    assert cfg.variant("untrained").model.train_tokens == 0


def test_no_variants_is_a_study_of_one():
    raw = {k: dict(v) for k, v in MINI.items()}
    assert build_study(raw, "t.toml").names == ("base",)


@pytest.mark.parametrize("variants, needle", [
    ({"x": {"tokens": {"n_ctx": 16}}}, "share the corpus, tokenizer and tokens"),
    ({"bad name": {}}, "variant names"),
    ({"x": {"model": {"act_fn": "relu"}}}, "[variants.x]: model.act_fn='relu'"),
    ({"x": {"act_fn": "gelu"}}, "unknown section 'act_fn'"),
])
def test_bad_variants_are_refused_with_the_variant_named(variants, needle):
    with pytest.raises(ConfigError) as err:
        build_study(study_raw(**variants), "t.toml")
    assert needle in str(err.value)


def test_plain_run_ignores_variants_but_refuses_setting_them():
    assert build_config(study_raw(), "t.toml").model.act_fn == "solu_ln"
    with pytest.raises(ConfigError, match="read by `python -m pipelines study`"):
        build_config(study_raw(), "t.toml", ["variants.gelu.model.act_fn=gelu"])


# -- the mini study -----------------------------------------------------------------------------

def test_shared_stages_are_built_once_and_linked(mini_study):
    study_dir, lines = mini_study
    assert sum(line.startswith("[shared] tokens: running") for line in lines) == 1
    assert not any("] corpus: running" in line and not line.startswith("[shared]")
                   for line in lines)
    for name in ("solu", "gelu"):
        run = study_dir / "runs" / name
        assert (run / "tokens").is_symlink()
        assert Manifest(run).get("tokens") == Manifest(study_dir / "shared").get("tokens")
        assert (run / "store" / "manifest.json").is_file()
    assert Manifest(study_dir / "runs" / "gelu").get("model").results["act_fn"] == "gelu"
    rows = dict(study_status(study_dir))
    assert rows["gelu"] and all(r["state"] == "up to date" for r in rows["gelu"])
    assert {r["stage"] for r in rows["gelu"]} >= {"model", "activations", "sae", "stats"}


def dense_codes(run_dir: Path) -> dict[str, np.ndarray]:
    """Every dictionary's activations on the validation tokens, dense, the slow obvious way."""
    x = np.concatenate([read_shard(p)["acts"] for p in shard_paths(run_dir / "activations", "val")])
    model = load_transformer(run_dir / "model")
    W_out, _ = model_readout(model)
    with torch.no_grad():
        return {d.name: d.encode(torch.from_numpy(x)).numpy().astype(np.float64)
                for d in load_dictionaries(run_dir, W_out, "cpu")}


def test_best_matches_equal_brute_force_corrcoef(mini_study):
    study_dir, _ = mini_study
    study = StudyStore.open(study_dir)
    assert is_study_store(study_dir) and study.variants() == ["solu", "gelu"]
    # the matches below came from the sae stage's kept held-out codes, not a re-encoding
    from pipelines.universality.stage import _Variant
    variant = _Variant("solu", study_dir / "runs" / "solu", "cpu")
    assert {name for name, d in variant.dictionaries.items() if d.stored is not None} == {"sae_64", "sae_128"}
    solu, gelu = dense_codes(study_dir / "runs" / "solu"), dense_codes(study_dir / "runs" / "gelu")
    for name in ("neurons", "sae_64", "sae_128"):
        a, b = solu[name], gelu[name]
        n_a = a.shape[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            full = np.corrcoef(a.T, b.T)[:n_a, n_a:]
        rows = study.matches("solu", "gelu", name)
        back = study.matches("gelu", "solu", name)
        assert len(rows) == n_a and len(back) == b.shape[1]
        alive = np.isfinite(full).any(1)
        best = np.where(alive, np.nan_to_num(full, nan=-2).argmax(1), -1)
        expect = np.where(alive, np.nan_to_num(full, nan=-2).max(1), np.nan)
        got = rows["best_corr"].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(got, expect, atol=2e-4, equal_nan=True)
        # the chosen match is the best, or ties with it
        chosen = rows["best_match"].to_numpy()
        assert np.array_equal(chosen < 0, best < 0)
        ok = chosen >= 0
        np.testing.assert_allclose(full[np.flatnonzero(ok), chosen[ok]], expect[ok], atol=2e-4)
        second = rows["second_corr"].to_numpy(dtype=np.float64)
        assert np.all(second[ok] <= got[ok] + 1e-6)
        back_expect = np.nan_to_num(full, nan=-2).max(0)
        back_alive = np.isfinite(full).any(0)
        np.testing.assert_allclose(back["best_corr"].to_numpy(dtype=np.float64)[back_alive],
                                   back_expect[back_alive], atol=2e-4)
    summary = study.summary()
    assert set(summary["dictionary"]) == {"neurons", "sae_64", "sae_128"}
    assert not summary["directions_comparable"].any()  # two different models
    assert study.matches("solu", "gelu", "neurons")["decoder_cosine"].isna().all()


def test_universality_does_not_depend_on_where_shards_end(mini_study, tmp_path):
    """Two runs whose validation shards are cut differently (another
    `activations.shard_tokens`) hold the same sequences: the stage walks them in step, in
    batches that depend on the sequences alone, and finds the same correlations."""
    from pipelines.study.config import UniversalityConfig
    from pipelines.universality.stage import _Variant, correlate

    runs = mini_study[0] / "runs"
    recut_dir = tmp_path / "solu"
    shutil.copytree(runs / "solu", recut_dir, ignore=shutil.ignore_patterns("store"))
    n_ctx = MINI["tokens"]["n_ctx"]
    assert recut(recut_dir, (0.17, 0.5, 0.61), n_ctx) == 4
    rows = [[pq.read_metadata(p).num_rows for p in shard_paths(r / "activations", "val")]
            for r in (runs / "solu", recut_dir)]
    assert sum(rows[0]) == sum(rows[1]) and rows[0] != rows[1], rows
    cfg = UniversalityConfig(batch_tokens=7 * (n_ctx - 1), device="cpu")  # no cut at a batch's end
    gelu = _Variant("gelu", runs / "gelu", "cpu")
    with torch.no_grad():
        same, _, n_same = correlate([_Variant("solu", runs / "solu", "cpu"), gelu], cfg, "cpu")
        cut, _, n_cut = correlate([_Variant("solu", recut_dir, "cpu"), gelu], cfg, "cpu")
    assert n_cut == n_same > 0 and same.keys() == cut.keys()
    for key in same:
        torch.testing.assert_close(cut[key], same[key], atol=1e-6, rtol=0, equal_nan=True)
    shard_paths(recut_dir / "activations", "val")[-1].unlink()  # a run holding fewer sequences
    with pytest.raises(InputError, match="holds other validation sequences"), torch.no_grad():
        correlate([gelu, _Variant("solu", recut_dir, "cpu")], cfg, "cpu")


def test_rebatched_cuts_across_shards_and_keeps_every_row():
    from pipelines.activations.shards import SequenceBatch, rebatched

    n_ctx, per_seq = 4, 3
    sizes = [2, 5, 1, 4, 4, 3]  # sequences per incoming batch (a shard's end cuts one short)
    ids = torch.arange(sum(sizes))
    x = torch.randn(len(ids) * per_seq, 2)
    pre = x + 1
    incoming, lo = [], 0
    for n in sizes:
        rows = slice(lo * per_seq, (lo + n) * per_seq)
        incoming.append(SequenceBatch(ids[lo:lo + n], x[rows], pre[rows]))
        lo += n
    out = list(rebatched(incoming, n_ctx, 4 * per_seq + 2))  # 4 sequences a batch
    assert [len(b.seq_ids) for b in out] == [4, 4, 4, 4, 3]
    assert torch.equal(torch.cat([b.seq_ids for b in out]), ids)
    assert torch.equal(torch.cat([b.x for b in out]), x)
    assert torch.equal(torch.cat([b.pre_ln for b in out]), pre)
    assert all(b.x.shape[0] == len(b.seq_ids) * per_seq for b in out)
    full = SequenceBatch(ids[:4], x[:12])
    assert next(rebatched([full], n_ctx, 12)) is full  # a full batch passes through as is


def test_logit_correlation_of_the_matched_pair(mini_study):
    study_dir, _ = mini_study
    runs = {n: study_dir / "runs" / n for n in ("solu", "gelu")}
    weights = {}
    for name, run in runs.items():
        model = load_transformer(run / "model")
        W_out, ro = model_readout(model)
        weights[name] = logit_weights(W_out, ro).numpy()  # neurons: out_dir = W_out rows
    rows = StudyStore.open(study_dir).matches("solu", "gelu", "neurons")
    row = rows[rows["best_match"] >= 0].iloc[0]
    i, j = int(row["index"]), int(row["best_match"])
    expect = np.corrcoef(weights["solu"][i], weights["gelu"][j])[0, 1]
    assert row["logit_corr"] == pytest.approx(expect, abs=1e-4)


def test_rerun_skips_everything_and_a_new_variant_builds_only_itself(mini_study, tmp_path):
    study_dir, _ = mini_study
    copy = tmp_path / "s"
    shutil.copytree(study_dir, copy, symlinks=True)
    lines: list[str] = []
    run_study(build_study(study_raw(), "t.toml"), copy, log=lines.append)
    assert not any(": running" in line for line in lines), lines
    lines.clear()
    cfg = build_study(study_raw(), "t.toml", ["variants.solu1.model.seed=1"])
    run_study(cfg, copy, log=lines.append)
    running = [line.split(":")[0] for line in lines if ": running" in line]
    assert running[:4] == ["[solu1] model", "[solu1] activations", "[solu1] sae",
                           "[solu1] stats"], lines
    assert running[-1] == "universality" and all(r.startswith("[solu1]") for r in running[:-1])
    study = StudyStore.open(copy)
    assert study.variants() == ["solu", "gelu", "solu1"]
    summary = study.summary()
    pair = summary[(summary["variant"] == "solu") & (summary["other"] == "solu1")]
    # two SoLU models also compare their neurons before the mid-MLP LayerNorm; SoLU vs GeLU not
    assert set(pair["dictionary"]) == {"neurons", "neurons_pre_ln", "sae_64", "sae_128"}
    assert "neurons_pre_ln" not in set(summary[summary["other"] == "gelu"]["dictionary"])
    a, b = (np.concatenate([read_shard(p, columns=("acts_pre_ln",))["acts_pre_ln"]
                            for p in shard_paths(copy / "runs" / v / "activations", "val")])
            .astype(np.float64) for v in ("solu", "solu1"))
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(a.T, b.T)[: a.shape[1], a.shape[1]:]
    rows = study.matches("solu", "solu1", "neurons_pre_ln")
    expect = np.where(np.isfinite(full).any(1), np.nan_to_num(full, nan=-2).max(1), np.nan)
    np.testing.assert_allclose(rows["best_corr"].to_numpy(dtype=np.float64), expect, atol=2e-4,
                               equal_nan=True)
    assert rows["logit_corr"].isna().all()  # no logit weights before the LayerNorm


def test_variants_with_other_tokens_are_refused(mini_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(mini_run, other)
    manifest = Manifest(other)
    entry = manifest.get("tokens")
    manifest.put(type(entry)(**{**entry.__dict__, "output_hash": "0" * 16}))
    with pytest.raises(InputError, match="hold different tokens") as err:
        check_same_tokens({"a": mini_run, "b": other})
    assert "\n" not in str(err.value)


def test_one_variant_study_works(tmp_path):
    raw = {k: dict(v) for k, v in MINI.items()}
    raw["variants"] = {"only": {}}
    run_study(build_study(raw, "t.toml", ["model.train_tokens=0"]), tmp_path / "s",
              log=lambda line: None)
    study = StudyStore.open(tmp_path / "s")
    assert study.variants() == ["only"] and study.summary().empty
    assert study.store("only").n_features("neurons") == 64


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_mid_study_then_rerun_resumes(tmp_path):
    """kill -9 the study while both models train in their own processes: the workers die
    with it (nothing keeps writing), and the rerun resumes and completes the study, the
    SAE-seed variant linking the model it shares (issue 28)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    study_dir = tmp_path / "s"
    cfg_file = tmp_path / "study.toml"
    raw = study_raw()
    raw["model"]["train_tokens"] = 5_000_000  # long enough to be killed mid-stage
    variants = raw.pop("variants")
    text = "\n".join(f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items())
                     for name, body in raw.items())
    text += "\n" + "\n".join(f'[variants.{n}]\nmodel.act_fn = "{v["model"]["act_fn"]}"'
                             for n, v in variants.items())
    # and an SAE-seed control, which links solu's model: the owners build their models first,
    # side by side, and the kill lands there
    text += '\n[variants.saeseed1]\nmodel.act_fn = "solu_ln"\nsae.seed = 1\n'
    cfg_file.write_text(text + "\n")
    cmd = [sys.executable, "-m", "pipelines", "study", "--config", str(cfg_file),
           "--study-dir", str(study_dir), "--parallel", "2"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    incomplete = [study_dir / "runs" / n / "model.incomplete" for n in variants]
    while not all(p.exists() for p in incomplete):
        assert proc.poll() is None and time.time() < deadline, "variants never started training"
        time.sleep(0.05)
    time.sleep(0.5)
    children = _children(proc.pid)  # the variant workers and whatever else the study started
    assert len(children) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the workers got SIGKILL with their parent; give the kernel a moment
    deadline = time.time() + 10  # every other child sees its pipes close and exits
    while (left := [c for c in children if _alive(c)]) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed study still run: {left}"  # was a Manager's server
    for path in incomplete:  # no orphan keeps a variant's lock
        assert not (path.parent / "model").exists()
    assert not (study_dir / "runs" / "saeseed1" / "model").exists()  # no link to a half model

    cfg_file.write_text(cfg_file.read_text().replace("5000000", "20000"))
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "model.incomplete" in done.stdout and "[shared] tokens: up to date" in done.stdout
    assert StudyStore.open(study_dir).variants() == ["solu", "gelu", "saeseed1"]
    assert done.stdout.count("] model: running") == 2, done.stdout  # solu's is shared
    assert os.readlink(study_dir / "runs" / "saeseed1" / "model") == \
        os.path.join("..", "solu", "model")
