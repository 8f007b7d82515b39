"""`python -m pipelines run|study|status|config`: the command line.

Bad input (config, corpus, run folder) prints one line to stderr and exits 2; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from pipelines import distributed
from pipelines.config import load_config, to_toml
from pipelines.errors import PipelineError
from pipelines.run_folder import Manifest
from pipelines.runner import STAGE_NAMES, run_pipeline, stage_table
from pipelines.sae.stage import metrics_table
from pipelines.study.runner import STUDY_STAGES, is_study, run_study, study_status
from pipelines.study.config import load_study


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--preset", help="a preset in pipelines/presets/ (tiny, small, paper)")
        group.add_argument("--config", help="a TOML file (copy a preset and edit it)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config value, e.g. --set model.act_fn=gelu (repeatable)")

    run = sub.add_parser("run", help="run every stage that is not up to date")
    config_args(run)
    run.add_argument("--run-dir", help="the run folder (default: runs/<preset>)")
    run.add_argument("--force", action="append", default=[], choices=STAGE_NAMES,
                     help="rerun this stage and everything downstream (repeatable)")
    run.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")

    study = sub.add_parser("study", help="several variants on the same tokens, and universality "
                                         "between them (pipelines/study/runner.py)")
    config_args(study)
    study.add_argument("--study-dir", help="the study folder (default: runs/<preset>-study)")
    study.add_argument("--force", action="append", default=[],
                       choices=(*STAGE_NAMES, *STUDY_STAGES),
                       help="rerun this stage (in every variant) and everything downstream")
    study.add_argument("--variant", action="append", default=[], metavar="NAME",
                       help="build only this variant (repeatable); universality covers all")
    study.add_argument("--parallel", type=int, default=0, metavar="N",
                       help="variants built at once, each in its own process (default: one "
                            "per CPU core, up to the number of variants; 1 = one after another)")

    status = sub.add_parser("status", help="what each stage produced and whether it is up to date")
    status.add_argument("run_dir", help="a run folder or a study folder")
    config_args(status)

    show = sub.add_parser("config", help="print the resolved config, every key of every stage "
                                         "(presets state only what differs from the defaults)")
    config_args(show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "study":
            return _study(args)
        if args.command == "config":
            print(to_toml(load_config(args.preset, args.config, args.set).to_dict()), end="")
            return 0
        if is_study(Path(args.run_dir)):
            return _study_status(Path(args.run_dir))
        return _status(args)
    except PipelineError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.preset, args.config, args.set)
    source = args.config or f"pipelines/presets/{args.preset or 'tiny'}.toml"
    run_dir = Path(args.run_dir or f"runs/{Path(args.config).stem if args.config else args.preset or 'tiny'}")
    start = time.perf_counter()
    if distributed.launched():  # torchrun: stop like an error (staging removed) when killed
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        run_pipeline(cfg, run_dir, source, force=tuple(args.force), until=args.until)
    finally:
        distributed.shutdown()
    if distributed.launched() and int(os.environ["RANK"]) != 0:
        return 0
    print(f"run: {run_dir} complete in {time.perf_counter() - start:.0f} s "
          f"(python -m pipelines status {run_dir})")
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _study(args: argparse.Namespace) -> int:
    if distributed.launched():
        raise PipelineError("study: not supported under torchrun yet (a study already runs its "
                            "variants side by side); run it with python -m pipelines study")
    cfg = load_study(args.preset, args.config, args.set)
    name = Path(args.config).stem if args.config else args.preset or "tiny"
    study_dir = Path(args.study_dir or f"runs/{name}-study")
    start = time.perf_counter()
    if args.parallel < 0:
        raise PipelineError(f"--parallel {args.parallel}: must be >= 0")
    run_study(cfg, study_dir, force=tuple(args.force), only=tuple(args.variant),
              parallel=args.parallel)
    print(f"study: {study_dir} complete in {time.perf_counter() - start:.0f} s "
          f"({', '.join(cfg.names)}; python -m pipelines status {study_dir})")
    return 0


def _print_table(rows: list[dict[str, str]]) -> None:
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("stage", "state", "built", "seconds")}
    print("  ".join(k.ljust(widths[k]) for k in widths))
    for row in rows:
        print("  ".join(row[k].ljust(widths[k]) for k in widths))


def _study_status(study_dir: Path) -> int:
    for name, rows in study_status(study_dir):
        print(f"== {name}")
        _print_table(rows)
        for row in rows:
            if row["summary"] != "-":
                print(row["summary"])
        print()
    return 0


def _status(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").exists():
        raise PipelineError(f"{run_dir}: no run here (no manifest.json); build one with "
                            f"python -m pipelines run --preset tiny --run-dir {run_dir}")
    given = args.preset or args.config or args.set
    cfg = load_config(args.preset, args.config, args.set) if given else None
    rows = stage_table(run_dir, cfg)
    _print_table(rows)
    print()
    for row in rows:
        if row["summary"] != "-":
            print(row["summary"])
    sae = Manifest(run_dir).get("sae")
    if sae is not None:
        print()
        print(f"SAE metrics on held-out validation tokens ({sae.config.get('recipe')}):")
        print(metrics_table(sae.results["metrics"]))
    return 0
