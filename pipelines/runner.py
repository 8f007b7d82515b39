"""The stage graph and the rules for skipping, rerunning and resuming.

A stage is up to date when its manifest entry exists, its config hash equals the current
config's, its inputs hash equals the hash of its upstream stages' current outputs (plus, for
the corpus, a fingerprint of the source files), and its folder exists. Anything else reruns
it; `--force STAGE` reruns that stage and everything downstream of it.

Under torchrun (`pipelines/distributed.py`) rank 0 is the only one that decides: it takes the
run lock, judges each stage and broadcasts the verdict, so every rank agrees on what runs.
The data-parallel stages (`DATA_PARALLEL`) then run on every rank into rank 0's staging
folder, between two barriers; the others run on rank 0 alone. Only rank 0 swaps a staging
folder into place and writes the manifest, after every rank has finished the stage, so a
failure on any rank (torchrun then stops them all; SIGTERM unwinds like an error) leaves the
run folder as it was.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from feature_store.errors import StoreError
from pipelines import distributed
from pipelines.activations import stage as activations
from pipelines.data import corpus, tokenizer, tokens
from pipelines.interp import stage as interp
from pipelines.model import stage as model
from pipelines.sae import stage as sae
from pipelines.stats import stage as stats
from pipelines.config import RunConfig, build_config, config_hash
from pipelines.errors import ConfigError, InputError, PipelineError
from pipelines.run_folder import (Manifest, ManifestEntry, clean_leftovers, hash_folder,
                                  hash_strings, run_lock, staged_dir, staging_path,
                                  write_text_atomic)


class StageModule(Protocol):
    """What every stage module exposes: `run` reads its inputs from the run folder (the
    outputs of the stages it depends on) and writes only into `out`, the staging folder. A
    stage that reads files outside the run also has `input_fingerprint(cfg) -> str`, which
    changes when they do (only the corpus)."""

    def run(self, cfg: Any, run_dir: Path, out: Path) -> tuple[str, dict]:
        """(summary line, results for the manifest); `cfg` is the stage's config section."""
        ...


@dataclass(frozen=True)
class Stage:
    name: str  # also the config section it reads
    deps: tuple[str, ...]
    module: StageModule  # looked up at run time, so a test can replace `module.run`
    folder: str = ""  # output folder under the run, when it is not the stage's name

    @property
    def out(self) -> str:
        return self.folder or self.name

    def external_inputs(self, cfg: RunConfig) -> str:
        """What the stage reads from outside the run folder (the corpus's source files)."""
        fingerprint = getattr(self.module, "input_fingerprint", None)
        return fingerprint(cfg.section(self.name)) if fingerprint else ""


STAGES: tuple[Stage, ...] = (
    Stage("corpus", (), corpus),
    Stage("tokenizer", ("corpus",), tokenizer),
    Stage("tokens", ("corpus", "tokenizer"), tokens),
    Stage("model", ("tokenizer", "tokens"), model),
    Stage("activations", ("tokens", "model"), activations),
    Stage("sae", ("activations",), sae),
    Stage("stats", ("tokenizer", "tokens", "model", "activations", "sae"), stats, folder="store"),
    # Writes store/explanations/ inside the stats stage's folder: a stats rebuild replaces the
    # store (and so removes it), and interp, downstream of stats, is rebuilt after it.
    Stage("interp", ("tokens", "model", "activations", "sae", "stats"), interp,
          folder="store/explanations"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
DATA_PARALLEL = frozenset({"model", "activations", "sae"})  # run on every rank under torchrun
_PACKAGES = ("torch", "transformer-lens", "tokenizers", "numpy", "pyarrow", "safetensors")


def downstream(names: set[str]) -> set[str]:
    """The named stages and every stage that (transitively) depends on them."""
    closed = set(names)
    for stage in STAGES:  # STAGES is in topological order
        if closed & set(stage.deps):
            closed.add(stage.name)
    return closed


def inputs_hash(stage: Stage, cfg: RunConfig | None, manifest: Manifest) -> str | None:
    """None when an upstream stage has no output yet."""
    parts = []
    for dep in stage.deps:
        entry = manifest.get(dep)
        if entry is None:
            return None
        parts.append(f"{dep}:{entry.output_hash}")
    if cfg is not None:
        parts.append(stage.external_inputs(cfg))
    return hash_strings(*parts)


def staleness(stage: Stage, cfg: RunConfig, manifest: Manifest, run_dir: Path) -> str | None:
    """Why the stage must run, or None when it is up to date."""
    entry = manifest.get(stage.name)
    if entry is None:
        return "never completed"
    if not (run_dir / stage.out).is_dir():
        return "output missing"
    if entry.config_hash != config_hash(cfg.section(stage.name)):
        changed = sorted(k for k, v in cfg.to_dict()[stage.name].items()
                         if entry.config.get(k) != (list(v) if isinstance(v, tuple) else v))
        return f"config changed ({', '.join(changed) or 'values'})"
    if entry.inputs_hash != inputs_hash(stage, cfg, manifest):
        return "inputs changed"
    return None


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_pipeline(cfg: RunConfig, run_dir: Path, source: str, force: tuple[str, ...] = (),
                 until: str | None = None, log: Callable[[str], None] = print) -> Manifest:
    """Run every stage that is not up to date, in order; stop after `until` if given."""
    unknown = [name for name in (*force, *([until] if until else [])) if name not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}")
    forced = downstream(set(force))
    world = distributed.world()
    if not world.is_main:
        return _follow(cfg, run_dir, until, world)
    created = _make_run_dir(run_dir)
    try:
        with run_lock(run_dir):
            for name in clean_leftovers(run_dir):
                log(f"removed {run_dir / name} left by an interrupted run")
            manifest = Manifest(run_dir)
            for stage in STAGES:
                _run_stage(stage, cfg, run_dir, manifest, stage.name in forced, source, log)
                if stage.name == until:
                    break
            return manifest
    except PipelineError:
        if created and not any(run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _make_run_dir(run_dir: Path) -> bool:
    """Create the run folder if needed; True when this call created it (so a failed first
    stage can remove it again). A path that is a file, or under one, or unwritable, is the
    user's to fix: one line naming it, and nothing created or touched."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a folder (a file is in the way); --run-dir must name "
                         f"a run folder, new or existing")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent that is a file, no permission, read-only disk
        raise InputError(f"{run_dir}: cannot create the run folder ({err.strerror or err})") from None
    return created


def _run_stage(stage: Stage, cfg: RunConfig, run_dir: Path, manifest: Manifest, forced: bool,
               source: str, log: Callable[[str], None]) -> None:
    reason = "forced" if forced else staleness(stage, cfg, manifest, run_dir)
    world = distributed.world()
    world.broadcast(reason)  # every rank runs or skips the stage with rank 0
    if reason is None:
        entry = manifest.get(stage.name)
        log(f"{stage.name}: up to date, skipped (built {entry.started_at}, {entry.duration_s:.0f} s)")
        return
    log(f"{stage.name}: running ({reason})")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    final = run_dir / stage.out
    try:
        with staged_dir(final, before_swap=lambda: manifest.drop(stage.name)) as out:
            parallel = world.distributed and stage.name in DATA_PARALLEL
            if parallel:
                world.barrier()  # the staging folder exists: the other ranks start
            summary, results = stage.module.run(cfg.section(stage.name), run_dir, out)
            if parallel:
                world.barrier()  # every rank is done before anything is swapped in
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}", key=err.key) from None
    except StoreError as err:  # a model or SAE file of this run that cannot be read
        raise InputError(str(err)) from None
    entry = ManifestEntry(
        stage=stage.name,
        config=cfg.to_dict()[stage.name],
        config_hash=config_hash(cfg.section(stage.name)),
        inputs_hash=inputs_hash(stage, cfg, manifest) or "",
        output_hash=hash_folder(final),
        outputs=tuple(sorted(str(p.relative_to(run_dir)) for p in final.rglob("*") if p.is_file())),
        summary=f"{summary} -> {final}",
        results=results,
        versions=_versions(),
        started_at=started,
        duration_s=round(time.perf_counter() - t0, 2),
    )
    manifest.put(entry)
    write_text_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=list) + "\n")
    log(entry.summary)
    world.barrier()  # the other ranks read this stage's output next


def _follow(cfg: RunConfig, run_dir: Path, until: str | None,
            world: distributed.World) -> Manifest:
    """A rank other than 0: for each stage, rank 0's verdict; take part in the data-parallel
    ones (writing only into rank 0's staging folder), wait out the others."""
    for stage in STAGES:
        if world.broadcast(None) is not None:
            if stage.name in DATA_PARALLEL:
                world.barrier()
                stage.module.run(cfg.section(stage.name), run_dir,
                                 staging_path(run_dir / stage.out))
                world.barrier()
            world.barrier()
        if stage.name == until:
            break
    return Manifest(run_dir)


def saved_config(run_dir: Path) -> RunConfig | None:
    """The resolved config the last run of this folder used (`config.json`)."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg})") from None
    return build_config(raw, str(path))


def stage_table(run_dir: Path, cfg: RunConfig | None) -> list[dict[str, str]]:
    """One row per stage for `status`: state, when, how long, what it wrote.

    Without a config given, states are judged against the config the folder was last run with."""
    manifest = Manifest(run_dir)
    cfg = cfg or saved_config(run_dir)
    rows = []
    for stage in STAGES:
        entry = manifest.get(stage.name)
        if entry is None:
            state = "not run"
        elif cfg is None:
            state = "unknown (no config.json)"
        else:
            reason = staleness(stage, cfg, manifest, run_dir)
            state = "up to date" if reason is None else f"stale: {reason}"
        rows.append({
            "stage": stage.name, "state": state,
            "built": entry.started_at if entry else "-",
            "seconds": f"{entry.duration_s:.1f}" if entry else "-",
            "summary": entry.summary if entry else "-",
        })
    return rows
