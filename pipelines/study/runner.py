"""A study: several variants of a run on the same tokens, and what compares them.

Layout of a study folder (every run folder in it is an ordinary run folder, so `status`,
the dashboard and every stage treat it as they treat any run):

```
<study>/study.json            variant names and their resolved configs (rewritten each run)
<study>/manifest.json         study-level stages (universality), same rules as a run's
<study>/shared/               a run folder holding only corpus/, tokenizer/, tokens/
<study>/runs/<variant>/       a run folder; its corpus, tokenizer and tokens are links
                              to ../../shared/<stage>, with the shared manifest entries;
                              its model and activations are links to ../<owner>/<stage>
                              when an earlier variant has the same model-side config
<study>/store/                the study's store (feature_store/study_store.py): the variants'
                              stores by relative path, and the universality tables
```

The shared stages are built once; each variant then runs model → activations → sae → stats
exactly as a run does (skip, resume, `--force`), so adding a variant later builds only that
variant and the study-level stage. Linking rather than copying keeps the tokens byte-identical
across variants, which universality relies on (it also checks).

Variants whose model-side sections (`MODEL_SIDE`: model, activations) are equal differ only
in their SAEs (e.g. `sae.seed`: the control that bounds universality). The first of them in
study order owns the model and the activation cache; the others link to its folders, as
every variant links the shared tokens, so the model is trained once and every such variant
reads the same weights (universality then also compares their decoder directions).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from feature_store import study_store
from pipelines import progress
from pipelines.universality import stage as universality
from pipelines.config import config_hash
from pipelines.errors import ConfigError, InputError, PipelineError
from pipelines.run_folder import Manifest, hash_strings, run_lock, write_text_atomic
from pipelines.runner import STAGE_NAMES, downstream, run_pipeline, stage_table
from pipelines.study.config import SHARED_SECTIONS, StudyConfig

MODEL_SIDE = ("model", "activations")  # a run's stages that read only the shared ones and
#                                        their own config sections
STUDY_FILE = "study.json"
SHARED = "shared"
RUNS = "runs"
STUDY_STAGES = ("universality",)


def is_study(folder: Path) -> bool:
    return (folder / STUDY_FILE).is_file()


def variant_dir(study_dir: Path, name: str) -> Path:
    return study_dir / RUNS / name


def run_study(cfg: StudyConfig, study_dir: Path, force: tuple[str, ...] = (),
              only: tuple[str, ...] = (), log: Callable[[str], None] = print,
              parallel: int = 0) -> None:
    """Shared stages once, then every variant (or those in `only`), `parallel` at a time
    (0: `default_parallel`), then universality."""
    unknown = [s for s in force if s not in (*STAGE_NAMES, *STUDY_STAGES)]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are "
                          f"{[*STAGE_NAMES, *STUDY_STAGES]}")
    missing = [n for n in only if n not in cfg.names]
    if missing:
        raise ConfigError(f"{cfg.source}: no variant(s) {missing}; variants are {list(cfg.names)}")
    if study_dir.exists() and not study_dir.is_dir():
        raise InputError(f"{study_dir}: not a folder (a file is in the way); --study-dir must "
                         f"name a study folder, new or existing")
    if (study_dir / "manifest.json").exists() and not is_study(study_dir):
        raise InputError(f"{study_dir}: a run folder, not a study; give a new --study-dir")
    study_dir.mkdir(parents=True, exist_ok=True)
    forced = downstream({s for s in force if s in STAGE_NAMES})
    with run_lock(study_dir):
        _write_study_file(cfg, study_dir)
        shared_dir = study_dir / SHARED
        run_pipeline(cfg.base, shared_dir, cfg.source,
                     force=tuple(s for s in SHARED_SECTIONS if s in forced),
                     until=SHARED_SECTIONS[-1], log=_prefixed(log, SHARED))
        todo = [(name, vcfg) for name, vcfg in cfg.variants if not only or name in only]
        owners = model_owners(cfg)
        for name, _ in todo:
            link_shared(shared_dir, variant_dir(study_dir, name))
            if owners[name] == name:  # it may have linked another's before its config changed
                unlink_stages(variant_dir(study_dir, name), MODEL_SIDE)
        variant_force = tuple(s for s in forced if s not in SHARED_SECTIONS)
        after_model = tuple(s for s in variant_force if s not in MODEL_SIDE)
        # When a variant links another's model, every owner builds its model side first, side
        # by side (an owner outside `only` too, when a chosen variant needs it), then the rest.
        linked = {owners[n] for n, _ in todo if owners[n] != n}
        first = sorted({owners[n] for n, _ in todo}, key=cfg.names.index) if linked else []
        if first:
            log(f"model and activations shared: "
                + "; ".join(f"{o} for {', '.join(n for n, _ in todo if owners[n] == o and n != o)}"
                            for o in sorted(linked, key=cfg.names.index)))
            _build(cfg, study_dir, [(o, cfg.variant(o)) for o in first],
                   tuple(s for s in variant_force if s in MODEL_SIDE), MODEL_SIDE[-1],
                   parallel, log)
        for name, _ in todo:
            if owners[name] != name:
                link_stages(variant_dir(study_dir, owners[name]), variant_dir(study_dir, name),
                            MODEL_SIDE, Path("..") / owners[name])
        _build(cfg, study_dir, todo, variant_force, None, parallel, log,
               force_of={n: after_model for n, _ in todo if owners[n] != n or n in first})
        _run_universality(cfg, study_dir, "universality" in force or bool(forced), bool(only), log)


def model_owners(cfg: StudyConfig) -> dict[str, str]:
    """Each variant's model owner: the first variant in study order whose model-side config
    (`MODEL_SIDE` sections) equals its own; itself when none comes before it."""
    first: dict[tuple[str, ...], str] = {}
    owners = {}
    for name, vcfg in cfg.variants:
        key = tuple(config_hash(vcfg.section(s)) for s in MODEL_SIDE)
        owners[name] = first.setdefault(key, name)
    return owners


def _build(cfg: StudyConfig, study_dir: Path, todo: list, force: tuple[str, ...],
           until: str | None, parallel: int, log: Callable[[str], None],
           force_of: dict[str, tuple[str, ...]] | None = None) -> None:
    """Run the `todo` variants' pipelines (up to `until`), `parallel` at a time; `force_of`
    gives a variant its own forced stages instead of `force`."""
    forces = {name: (force_of or {}).get(name, force) for name, _ in todo}
    workers = min(len(todo), parallel or default_parallel(len(todo)))
    if workers <= 1:
        for name, vcfg in todo:
            run_pipeline(vcfg, variant_dir(study_dir, name), f"{cfg.source} [variants.{name}]",
                         force=forces[name], until=until, log=_prefixed(log, name))
    else:
        _run_parallel(cfg, study_dir, todo, forces, until, workers, log)


def default_parallel(n_variants: int) -> int:
    """How many variants to build at once: every variant when the machine has a core for
    each. A one-layer model's matmuls are too small to keep two cores busy (d_model 128), so
    on 2 cores two variants side by side, one thread each, finish sooner than one after the
    other with two threads each (docs/results.md, "The tiny study")."""
    return max(1, min(n_variants, os.cpu_count() or 1))


def _run_parallel(cfg: StudyConfig, study_dir: Path, todo: list,
                  forces: dict[str, tuple[str, ...]], until: str | None, workers: int,
                  log: Callable[[str], None]) -> None:
    """Each variant in its own process with cores // workers threads; every variant runs to
    its end even when another fails, then the first failure is raised (one line)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"building {len(todo)} variants, {workers} at a time, {threads} thread(s) each")
    context = multiprocessing.get_context("spawn")
    errors = []
    # The workers' log lines, handed to `log` here as they come. A plain queue given to each
    # worker as it starts, not a Manager's: a Manager is a server process of its own, which
    # a kill -9 of the study left running (the workers die with the study, it did not).
    lines = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(threads, lines)) as pool:
        futures = {pool.submit(_variant_worker, vcfg, str(variant_dir(study_dir, name)),
                               f"{cfg.source} [variants.{name}]", forces[name], until,
                               name): name
                   for name, vcfg in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(lines, log)
            for future in done:
                name = futures[future]
                failure = future.result()
                if failure:
                    log(f"[{name}] failed: {failure}")
                    errors.append(f"variant {name}: {failure}")
    # after the pool's shutdown: a worker's last lines reach the queue as its process exits
    _drain(lines, log)
    if errors:
        raise PipelineError("; ".join(errors))


def _drain(lines: Any, log: Callable[[str], None]) -> None:
    while True:
        try:
            log(lines.get_nowait())
        except queue.Empty:
            return


_LINES: Any = None  # in a variant process: the queue its log lines go to (`_worker_init`)


def _worker_init(threads: int, lines: Any) -> None:
    """In each variant process: its share of the cores, the queue for its log lines, and
    death with the parent (a killed study must not leave variants writing into folders a
    rerun is about to resume)."""
    import torch

    global _LINES
    _LINES = lines
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _variant_worker(vcfg: Any, run_dir: str, source: str, force: tuple[str, ...],
                    until: str | None, name: str) -> str | None:
    """One variant's pipeline, its log lines sent to the parent; a failure comes back as its
    one-line message."""
    os.environ[progress.PREFIX_ENV] = f"[{name}] "
    try:
        run_pipeline(vcfg, Path(run_dir), source, force=force, until=until,
                     log=lambda line: _LINES.put(f"[{name}] {line}"))
    except PipelineError as err:
        return " ".join(str(err).split())
    return None


def _prefixed(log: Callable[[str], None], name: str) -> Callable[[str], None]:
    return lambda line: log(f"[{name}] {line}")


def _write_study_file(cfg: StudyConfig, study_dir: Path) -> None:
    """The variants as configured now; variants removed from the preset keep their folders
    (nothing is deleted) but leave the study."""
    data = {"schema": 1, "source": cfg.source,
            "variants": [{"name": n, "run_dir": f"{RUNS}/{n}", "config": v.to_dict()}
                         for n, v in cfg.variants]}
    write_text_atomic(study_dir / STUDY_FILE, json.dumps(data, indent=2, default=list) + "\n")


def link_shared(shared_dir: Path, run_dir: Path) -> None:
    """Make the variant's corpus, tokenizer and tokens the shared ones."""
    link_stages(shared_dir, run_dir, SHARED_SECTIONS, Path("..") / ".." / SHARED)


def link_stages(source_dir: Path, run_dir: Path, stages: tuple[str, ...], target: Path) -> None:
    """Make `run_dir`'s `stages` those of `source_dir`: a relative link each (to
    `target/<stage>`, relative to run_dir), and the source's manifest entries copied, so the
    runner sees them up to date, and sees them change when the source is rebuilt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    source, manifest = Manifest(source_dir), Manifest(run_dir)
    for name in stages:
        entry = source.get(name)
        if entry is None:
            raise InputError(f"{source_dir}: stage {name} missing; rerun the study")
        link = run_dir / name
        target_dir = target / name
        if not (link.is_symlink() and Path(os.readlink(link)) == target_dir):
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.exists():
                shutil.rmtree(link)
            link.symlink_to(target_dir, target_is_directory=True)
        if manifest.get(name) != entry:
            manifest.put(entry)


def unlink_stages(run_dir: Path, stages: tuple[str, ...]) -> None:
    """Undo `link_stages` for a variant that now owns these stages: the links and their
    copied entries go (never what they point to), so the runner builds its own."""
    manifest = Manifest(run_dir)  # empty when the folder has none yet
    for name in stages:
        link = run_dir / name
        if link.is_symlink():
            link.unlink()
            manifest.drop(name)


def _run_universality(cfg: StudyConfig, study_dir: Path, forced: bool, partial: bool,
                      log: Callable[[str], None]) -> None:
    """The study-level stage, with a run's skip rules: its config, and the output hashes of
    the stages it reads in every variant (`universality.READS`; a stats rebuild alone does
    not rerun it)."""
    manifest = Manifest(study_dir)
    runs = {name: variant_dir(study_dir, name) for name in cfg.names}
    parts = []
    for name, vdir in runs.items():
        m = Manifest(vdir)
        for stage in universality.REQUIRES:
            entry = m.get(stage)
            if entry is None and partial:
                log(f"universality: skipped, variant {name} is not built yet (run the study "
                    f"without --variant to build every variant)")
                return
            if entry is None:
                raise InputError(f"{vdir}: stage {stage} has not completed; rerun the study")
            if stage in universality.READS:
                parts.append(f"{name}/{stage}:{entry.output_hash}")
    inputs = hash_strings(*parts)
    chash = config_hash(cfg.universality)
    entry = manifest.get("universality")
    out = study_dir / universality.STORE_FOLDER
    if (not forced and entry is not None and entry.inputs_hash == inputs
            and entry.config_hash == chash and study_store.is_current(out)):
        log(f"universality: up to date, skipped (built {entry.started_at}, "
            f"{entry.duration_s:.0f} s)")
        return
    log("universality: running")
    t0 = time.perf_counter()
    universality.run_stage(cfg.universality, runs, study_dir, manifest, inputs, chash, log)
    log(f"study: {study_dir} complete ({len(runs)} variant(s); universality "
        f"{time.perf_counter() - t0:.0f} s)")


def study_status(study_dir: Path) -> list[tuple[str, list[dict[str, str]]]]:
    """(variant, `stage_table` rows) per variant, then the study-level stages."""
    data = json.loads((study_dir / STUDY_FILE).read_text(encoding="utf-8"))
    out = [(SHARED, stage_table(study_dir / SHARED, None)[: len(SHARED_SECTIONS)])]
    for v in data["variants"]:
        rows = stage_table(study_dir / v["run_dir"], None)
        out.append((v["name"], [r for r in rows if r["stage"] not in SHARED_SECTIONS]))
    entry = Manifest(study_dir).get("universality")
    out.append(("study", [{
        "stage": "universality", "state": "built" if entry else "not run",
        "built": entry.started_at if entry else "-",
        "seconds": f"{entry.duration_s:.1f}" if entry else "-",
        "summary": entry.summary if entry else "-"}]))
    return out
