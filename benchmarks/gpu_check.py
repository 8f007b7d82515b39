"""Everything issue 27 asks a GPU to show, in one command that fits one lent device call.

    python3 benchmarks/gpu_check.py [--budget 450] [--out benchmarks/results_gpu.md]
    python3 benchmarks/gpu_check.py --device cpu --quick   # tries every section here, tiny shapes

Sections, each timed and each allowed to fail without stopping the rest (a failure is
written into the report with its last lines, so one call teaches what the next must fix),
in the order of what the issue's acceptance most needs:
1. correctness on the device: the sparse gradients (bag and csr layouts, every recipe)
   against autograd on the dense formulation; bf16 selection against fp32; a step replayed as
   a CUDA graph against the eager step, beside a second eager run that measures the device's
   own run-to-run noise (if they differ by more, every later section runs with
   `sae.graph=off`); the device stream against the host stream;
2. the tiny preset end to end: every stage's summary line, dead share per size;
3. the SAE trainer at 512-32,768 features beside the dense bf16 reference, same process, and
   at three sizes without CUDA graphs and in the first trainer's CSR/fp32 form;
4. the small preset through its sae stage (its own acceptance line: >= 1M act/s; its model
   capped at 2M tokens);
5. the paper preset's stages at their rates, on capped token counts, with the full preset's
   time extrapolated from those rates (`--paper-full` runs the real one instead); then where
   an eager SAE step's time goes at 16,384 features, kernel by kernel (torch.profiler);
6. the tiny sae stage again with `sae.codes = csr` (cuSPARSE, rows now sorted): whether the
   dead share a GPU run showed (19.8% at 2,048 against 4.1% on CPU) came from cuSPARSE's
   products over unsorted CSR rows (section 1 checks those products directly);
7. the model stage's step eager vs `torch.compile` (`benchmarks/model_step.py`), if time is
   left and the machine has what compiling needs (a C compiler, Python's headers);
8. issue 27's acceptance lines, each read back from what the sections wrote, PASS or FAIL
   (or "not measured" where the budget ran out first).
Every section's device code runs in a child process: a kernel that hangs or kills its
process costs that section, not the call. A section's command that runs past the budget is
killed, and what it finished is kept (a run cut in its stats stage still reports its model,
activations and sae stages).
The report is rewritten after every section, so a call cut short still brings back what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Report:
    def __init__(self, path: Path, header: str):
        self.path, self.parts, self.header = path, [], header

    def add(self, title: str, body: str) -> None:
        self.parts.append(f"## {title}\n\n```\n{body.rstrip()}\n```\n")
        text = self.header + "\n" + "\n".join(self.parts)
        self.path.write_text(text, encoding="utf-8")
        if os.environ.get("OUT"):  # the device call brings $OUT back even when cut short
            (Path(os.environ["OUT"]) / self.path.name).write_text(text, encoding="utf-8")
        print(f"\n## {title}\n{body}", flush=True)


MIN_TIMEOUT = 10.0  # seconds a command gets however little of the budget is left


class CutShort(RuntimeError):
    """A section's command ran past its time. It carries what the command printed until then,
    so the report keeps the stages that finished (a bare timeout error would drop them)."""

    def __init__(self, cmd: list[str], seconds: float, output: str):
        self.output = output
        done = summaries(output)
        super().__init__(f"cut short after {seconds:.0f} s: {' '.join(cmd)}\n"
                         + (f"finished before the cut:\n{done}\n" if done else "")
                         + "last lines:\n" + "\n".join(output.splitlines()[-12:]))


def _text(stream: bytes | str | None) -> str:
    """A timed-out child's captured output: bytes (even under text=True), or None."""
    if stream is None:
        return ""
    return stream.decode("utf-8", "replace") if isinstance(stream, bytes) else stream


def run(cmd: list[str], timeout: float, stdout_only: bool = False) -> tuple[str, float]:
    """A command's combined output (`stdout_only`: its stdout, without warnings) and seconds;
    raises with the combined output's tail if it fails, and `CutShort` (with everything it
    printed) if it runs past `timeout`."""
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(MIN_TIMEOUT, timeout),
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as exc:
        raise CutShort(cmd, time.perf_counter() - t, _text(exc.stdout) + _text(exc.stderr)) from None
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n" + "\n".join(out.splitlines()[-25:]))
    return proc.stdout if stdout_only else out, time.perf_counter() - t


def in_child(call: str, timeout: float) -> str:
    """The text `gpu_check.<call>` returns, computed in a child process: device code that
    hangs (a kernel that never returns) or kills its process (an illegal memory access) costs
    its own section, cut at `timeout`, not the rest of the one device call. The CUDA
    context a child sets up costs a few seconds. Its warnings stay out of the section's
    text; a failure's traceback is in it."""
    code = ("import sys; from pathlib import Path; sys.path[:0] = ['benchmarks', '.']; "
            f"import gpu_check; print(gpu_check.{call})")
    out, _ = run([sys.executable, "-c", code], timeout, stdout_only=True)
    return out.rstrip()


def summaries(output: str) -> str:
    """The stages' one-line summaries (what each wrote, its rate and time), not the bars."""
    keep = ("corpus:", "tokenizer:", "tokens:", "model:", "activations:", "sae:", "stats:", "interp:")
    return "\n".join(line for line in output.splitlines()
                     if line.startswith(keep) and "running" not in line and "%|" not in line)


def correctness(device: str, quick: bool) -> str:
    import torch

    from pipelines.sae.autoencoder import SparseAutoencoder
    from tests.test_sae_training import autograd_grads, planted

    lines = []
    x, _ = planted(512, 32, 48, 3, 0.05, 0)
    x = x.to(device)
    for recipe in ("topk", "l1", "l1-unit"):
        for layout in ("bag", "csr"):
            sae = SparseAutoencoder(32, 96, recipe, k=6, l1_coefficient=0.3, dead_window=10**9, grad_clip=1e9,
                                    b_dec_init=x.mean(0).cpu(), seed=1, codes=layout, precision="fp32",
                                    device=device)
            sae.b_enc.data += 0.05
            want = autograd_grads(sae, x, 0.3)
            sae.step(x, lr=0.0)
            errs = [float((p.grad - w).norm() / w.norm().clamp_min(1e-12)) for p, w in zip(sae.params, want)]
            lines.append(f"grad vs autograd  {recipe:8} {layout}: max relative error {max(errs):.2e}")
    xb, _ = planted(2048, 64, 128, 4, 0.05, 0)
    xb = xb.to(device)
    for recipe in ("topk", "l1-unit"):
        sae = SparseAutoencoder(64, 256, recipe, k=8, l1_coefficient=0.3, b_dec_init=xb.mean(0).cpu(), seed=1,
                                precision="fp32", device=device)
        for i in range(20 if quick else 100):
            sae.step(xb[(i % 4) * 512:(i % 4 + 1) * 512], lr=3e-3)
        grads = {}
        for dtype in (torch.float32, torch.bfloat16):
            sae.select_dtype = dtype
            sae.step(xb, lr=0.0)
            grads[dtype] = [p.grad.clone() for p in sae.params]
        err = max(float((b - a).norm() / a.norm()) for a, b in zip(grads[torch.float32], grads[torch.bfloat16]))
        lines.append(f"bf16 step vs fp32 {recipe:8}: max relative gradient difference {err:.2e}")
    lines += csr_row_order(device)
    return "\n".join(lines)


GRAPH_TOLERANCE = 1e-3  # relative weight difference after 24 steps; a baked-in value shows as ~1e-2 or more
NOISE_FACTOR = 4  # on a GPU two eager runs differ too: index_add_'s atomics add in any order


def graph_vs_eager(device: str) -> tuple[str, bool]:
    """A graphed SAE (`sae.graph`) and an eager one trained on the same 24 batches, with a
    rate that changes every step; the eager one starts AuxK halfway, the recording runs it
    from the start (exact zeros while no feature is dead), so they must still agree.
    On a GPU two eager runs are not bit-identical (atomic adds in `column_sums` and the
    embedding-bag backward; a rounding can then swap a near-tie at the k-th place), so a
    second eager run measures that noise, and the graph passes within `NOISE_FACTOR` times
    it (or `GRAPH_TOLERANCE`, whichever is larger). On a CPU the capture is the tests'
    stand-in, whose replays fail at any read from the device, and the noise is zero. The
    codes are the embedding-bag layout, the only one a GPU records. Returns the line and
    whether graphs may be used by the rest of the check."""
    import torch

    from pipelines.sae.autoencoder import SparseAutoencoder
    from pipelines.graph_capture import CudaCapture
    from pipelines.sae.step_graph import GraphedStep
    from tests.stand_in_capture import StandInCapture
    from tests.test_sae_training import planted

    xb, _ = planted(24 * 1024, 64, 512, 8, 0.05, 0)
    xb = xb.to(device)
    saes = [SparseAutoencoder(64, 1024, "topk", k=16, b_dec_init=xb.mean(0).cpu(), seed=1, aux_k=64,
                              dead_window=12 * 1024, device=device, codes="bag") for _ in range(3)]
    for sae in saes:
        sae.syncs_are_free = False  # the GPU's AuxK form on either device
    eager, again, graphed_sae = saes
    capture = CudaCapture() if torch.device(device).type == "cuda" else StandInCapture()
    graphed = GraphedStep(graphed_sae, 1024, capture=capture)
    for i in range(24):
        lr = 3e-3 * (1 - i / 30)
        eager.step(xb[i * 1024:(i + 1) * 1024], lr)
        again.step(xb[i * 1024:(i + 1) * 1024], lr)
        graphed.step(xb[i * 1024:(i + 1) * 1024], lr)
    if graphed.failure:
        return f"graph vs eager: recording FAILED ({graphed.failure}); the check runs with sae.graph=off", False

    def gap(other: SparseAutoencoder) -> float:
        return max(float((b.detach() - a.detach()).abs().max() / a.detach().abs().max())
                   for a, b in zip(eager.params, other.params))
    diff, noise = gap(graphed_sae), gap(again)
    limit = max(GRAPH_TOLERANCE, NOISE_FACTOR * noise)
    ok = diff < limit
    return (f"graph vs eager (24 steps, AuxK from step 12 in the eager run, one recording, "
            f"{'CUDA' if capture.__class__ is CudaCapture else 'stand-in'} capture): max relative weight "
            f"difference {diff:.2e} (eager vs eager: {noise:.2e}; limit {limit:.1e})"
            + ("" if ok else ": FAILED; the check runs with sae.graph=off"), ok)


def csr_row_order(device: str) -> list[str]:
    """Issue 27's dead-share hypothesis, checked directly: cuSPARSE's `sampled_addmm` over CSR
    rows whose columns are in topk's order (not ascending) against the same products gathered
    by hand. A large error unsorted and none sorted is the bug `CsrCodes.sort_rows` fixes."""
    import torch

    from pipelines.sae.codes import CsrCodes

    g = torch.Generator().manual_seed(0)
    pre, left, W = (torch.randn(*shape, generator=g).to(device) for shape in ((512, 2048), (512, 64), (2048, 64)))
    lines = []
    for sort in (False, True):
        CsrCodes.sort_rows = sort
        try:
            codes = CsrCodes.topk(pre, 32)
            got = codes.sampled_rows(left, W)
            want = (left[codes.rows()] * W[codes.cols]).sum(-1)
            err = float((got - want).abs().max() / want.abs().max())
            lines.append(f"csr sampled_addmm, rows {'sorted' if sort else 'in topk order'}: "
                         f"max relative error {err:.2e}")
        finally:
            CsrCodes.sort_rows = None
    return lines


def stream_equality(run_dir: Path, device: str) -> str:
    """The device stream against the host stream, two epochs: the second comes from the
    split kept on the device after the first where it fits (`resident`)."""
    import numpy as np

    from pipelines.activations.device_stream import DeviceActivationStream
    from pipelines.activations.shards import ActivationStream

    folder = run_dir / "activations"
    dev = DeviceActivationStream(folder, "train", 4096, 262_144, seed=0, device=device)
    lines = []
    for epoch in (0, 1):
        host = ActivationStream(folder, "train", 4096, 262_144, seed=0).epoch(epoch)
        n = same = 0
        for a, b in zip(host, dev.epoch(epoch)):
            n += 1
            same += bool(np.array_equal(a, b.cpu().numpy()))
        lines.append(f"device stream vs host stream, epoch {epoch}: {same} of {n} batches identical")
    lines.append(f"split kept on the device after epoch 0: {dev.keep}; shards read in the 2 epochs: "
                 f"{dev.reads} (the split has {len(dev.paths)})")
    return "\n".join(lines)


def sae_metrics(run_dir: Path) -> list[dict]:
    """The sae stage's held-out metrics per dictionary ([] before that stage has finished)."""
    import pyarrow.parquet as pq

    path = run_dir / "sae" / "metrics.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def dead_shares(run_dir: Path) -> str:
    return "\n".join(f"sae {r['dictionary']:>6}: L0 {r['l0']:.1f} FVU {r['fvu']:.3f} dead {100 * r['dead_fraction']:.1f}%"
                      for r in sae_metrics(run_dir))


def finished_stages(run_dir: Path) -> dict:
    """The run's finished stages by name, from its manifest ({} when there is none yet)."""
    path = run_dir / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8"))["stages"] if path.is_file() else {}


PAPER_STAGES = ("corpus", "tokenizer", "tokens", "model", "activations", "sae", "stats", "interp")


def estimated_stages(run_dir: Path) -> tuple[list[tuple[str, float, str]], list[str]]:
    """The uncapped paper preset's time from a capped run's stage times (its manifest): the
    model stage's training scaled to the preset's tokens, the activations and sae stages to
    the activations the preset would cache (its cap, or every training token the corpus
    holds, whichever is fewer); the other stages do the same work capped or not. Returns
    (name, seconds, why) per finished stage and the names of the stages not reached."""
    from pipelines.config import load_config

    full = load_config("paper", None, [])
    stages = finished_stages(run_dir)
    missing = [name for name in PAPER_STAGES if name not in stages]
    if {"tokens", "model", "activations"} - set(stages):
        return [], missing
    model, acts = stages["model"]["results"], stages["activations"]["results"]
    n_ctx = stages["tokens"]["results"]["n_ctx"]
    available = stages["tokens"]["results"]["train_sequences"] * (n_ctx - 1)
    cached = min(full.activations.max_tokens or available, available)
    scale = cached / max(acts["train_tokens"], 1)
    rows = []
    for name, stage in stages.items():
        seconds = stage["duration_s"]
        if name == "model":
            train = model["train_seconds"]
            seconds += train * (full.model.train_tokens / max(model["tokens_trained"], 1) - 1)
            why = f"{full.model.train_tokens / 1e6:.0f}M tokens at {model['tokens_per_second']:,.0f} tok/s"
        elif name == "activations":  # validation's tokens are cached whole, capped or not
            caching = acts.get("caching_seconds", seconds)  # the model's loading does not grow
            seconds += caching * ((acts["val_tokens"] + cached) / (acts["val_tokens"] + acts["train_tokens"]) - 1)
            why = f"{cached / 1e6:.1f}M training activations (x{scale:.1f}) + validation"
        elif name == "sae":  # evaluation's cost does not grow with the training activations
            seconds += stage["results"]["train_seconds"] * (scale - 1)
            why = f"training on {cached / 1e6:.1f}M activations (x{scale:.1f}) + evaluation"
        else:
            why = "as measured"
        rows.append((name, seconds, why))
    return rows, missing


def paper_estimate(run_dir: Path) -> str:
    from pipelines.config import load_config

    rows, missing = estimated_stages(run_dir)
    if not rows:
        return f"no estimate: the capped run did not finish {', '.join(missing)}"
    full = load_config("paper", None, [])
    tokens = finished_stages(run_dir)["tokens"]["results"]
    available = tokens["train_sequences"] * (tokens["n_ctx"] - 1)
    total = sum(seconds for _, seconds, _ in rows)
    lines = [f"  {name:<12}{seconds:8.0f} s  {why}" for name, seconds, why in rows]
    lines += [f"  {name:<12}       ?    not reached: the total is a lower bound" for name in missing]
    return ("full preset on this corpus, estimated from the capped stages' times "
            f"(activations: {full.activations.max_tokens / 1e6:.0f}M asked, {available / 1e6:.1f}M training tokens "
            f"in the corpus):\n" + "\n".join(lines)
            + f"\n  {'total':<12}{total:8.0f} s ({total / 60:.1f} min{', at least' if missing else ''})")


def step_profile(run_dir: Path, device: str, quick: bool) -> str:
    """Where an eager SAE step's time goes, kernel by kernel (torch.profiler), at the size where
    the trainer must beat the dense reference 3x: which of the encoder matmul, topk, the
    embedding-bag products, AuxK and Adam the next optimisation should take. AuxK runs (a
    dead window of one batch), as in a long stage run."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sae_throughput import inputs

    from pipelines.sae.autoencoder import SparseAutoencoder

    size, batch = (2048, 512) if quick else (16384, 4096)
    data, source = inputs(run_dir, batch, 8, 512)
    data = data.to(device)
    sae = SparseAutoencoder(512, size, "topk", k=32, b_dec_init=data[0].mean(0).cpu(), device=device,
                            dead_window=batch)
    for x in data[:3]:
        sae.step(x, 1e-3)
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for x in data[3:8]:
            sae.step(x, 1e-3)
        if cuda:
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / 5
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=48)
    except (AttributeError, KeyError, ValueError):
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else key, row_limit=14)
    return (f"eager topk step, {size:,} features, batch {batch}, k 32, AuxK on, inputs {source}: "
            f"{seconds * 1e3:.2f} ms a step under the profiler ({batch / seconds:,.0f} act/s)\n{table}")


def model_graph_vs_eager(run_dir: Path, device: str, quick: bool) -> tuple[str, bool]:
    """The model stage itself, run twice on `run_dir`'s tokens (the tiny preset's settings,
    a short schedule): steps replayed from a CUDA graph against eager steps. The learning
    rate changes every step (warm-up, then decay), so a rate baked into the recording shows
    as diverging losses. On a CPU the capture is the tests' stand-in."""
    import dataclasses
    import shutil
    import tempfile

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from pipelines.config import load_config
    from pipelines.model import stage

    # evaluations between replays too: an eval() forward must not disturb what the graph reads
    cfg = dataclasses.replace(load_config("tiny", None, []).model, device=device, eval_every=4 if quick else 20,
                              train_tokens=(8 if quick else 80) * 32 * 128, warmup_steps=4 if quick else 20)
    if torch.device(device).type != "cuda":
        from tests.stand_in_capture import StandInCapture
        import pipelines.graph_capture as graph_capture
        graph_capture.CudaCapture = StandInCapture
        stage.use_model_graph = lambda choice, *a: choice != "off"
    lines, curves = [], {}
    work = Path(tempfile.mkdtemp())
    paper_batch = load_config("paper", None, []).model.batch_size
    runs = [(32, "off"), (32, "on")] + ([] if quick else [(paper_batch, "off"), (paper_batch, "on")])
    failed = False
    for batch, graph in runs:  # the tiny preset's batch, then the paper preset's (rates only)
        out = work / f"{batch}-{graph}"
        out.mkdir()
        steps = cfg.train_tokens // (32 * 128) if batch == 32 else 30
        _, metrics = stage.run(dataclasses.replace(cfg, graph=graph, batch_size=batch,
                                                   train_tokens=steps * batch * 128), run_dir, out)
        if batch == 32:
            table = pq.read_table(out / "loss_curve.parquet")
            val = table.column("val_loss").to_numpy()
            curves[graph] = np.concatenate([table.column("train_loss").to_numpy(), val[~np.isnan(val)]])
        failed |= "eager (" in metrics["graph"]
        lines.append(f"model graph {graph}, batch {batch} x 128: {metrics['tokens_per_second']:,.0f} tok/s over "
                     f"{metrics['steps']} steps ({metrics['graph']}), validation loss {metrics['val_loss']:.4f}")
    shutil.rmtree(work, ignore_errors=True)
    diff = float(np.max(np.abs(curves["on"] - curves["off"]) / np.abs(curves["off"])))
    ok = diff < 2e-2 and not failed
    lines.append(f"model graph vs eager: max relative difference of the train and validation losses {diff:.2e}"
                 + ("" if ok else ": FAILED; the check runs with model.graph=off"))
    return "\n".join(lines), ok


def graph_checks(run_dir: str, device: str, quick: bool) -> None:
    """Both stages' replayed steps against eager ones (the child process of the graph section)."""
    text, ok = graph_vs_eager(device)
    print(text)
    print("sae graphs ok" if ok else "")
    text, ok = model_graph_vs_eager(Path(run_dir), device, quick)
    print(text)
    print("model graphs ok" if ok else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=450, help="seconds; later sections are skipped past it")
    parser.add_argument("--out", default="benchmarks/results_gpu.md")
    parser.add_argument("--work", default="/tmp/gpu_check")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: tries every section on a CPU")
    parser.add_argument("--paper-full", action="store_true", help="the whole paper preset, not capped")
    args = parser.parse_args()
    import torch

    start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    where = (torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU cores")
    report = Report(ROOT / args.out, f"# GPU check (benchmarks/gpu_check.py)\n\n"
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {where}, torch {torch.__version__}, "
                    f"Python {sys.version.split()[0]}; `python3 benchmarks/gpu_check.py "
                    f"{' '.join(sys.argv[1:])}`.\n")
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    py = sys.executable
    tiny = work / "tiny"
    quick_sets = (["--set", "model.train_tokens=50000", "--set", "activations.max_tokens=20000",
                   "--set", "sae.dict_sizes=[64,128]", "--set", "sae.eval_sequences=8",
                   "--set", "stats.max_tokens=5000", "--set", "interp.explain_tokens=8000"] if args.quick else [])

    def section(title: str, body, min_left: float = 20) -> None:
        if left() < min_left:
            report.add(title, f"skipped: {left():.0f} s of the {args.budget:.0f} s budget left")
            return
        t = time.perf_counter()
        try:
            text = body()
        except Exception as err:  # noqa: BLE001 - a failed section is a finding, not the end
            text = f"FAILED: {err}\n{traceback.format_exc(limit=3)}"
        report.add(title, f"{text}\n({time.perf_counter() - t:.0f} s)")

    # in child processes, like every section that runs device code (`in_child`)
    section("Correctness on the device",
            lambda: in_child(f"correctness({args.device!r}, {args.quick!r})", min(240, left())))
    graph_sets: list[str] = []  # the rest runs with a stage's graph off if its replayed steps proved wrong here

    def graphs() -> str:
        run([py, "-m", "pipelines", "run", "--preset", "tiny", "--run-dir", str(tiny), *quick_sets,
             "--until", "tokens"], left())  # the model check trains on the tiny preset's tokens
        # in a child process: a capture that crashes or hangs must not take the check with it
        code = ("import sys; sys.path[:0] = ['benchmarks', '.']; import gpu_check; "
                f"gpu_check.graph_checks({str(tiny)!r}, {args.device!r}, {args.quick!r})")
        try:
            out, _ = run([py, "-c", code], min(240, left()))
        except Exception:
            graph_sets.extend(["--set", "sae.graph=off", "--set", "model.graph=off"])
            raise
        lines = out.splitlines()
        for stage in ("sae", "model"):
            if f"{stage} graphs ok" not in lines:
                graph_sets.extend(["--set", f"{stage}.graph=off"])
        return "\n".join(line for line in lines if line.startswith(("graph vs eager", "model graph")))
    section("CUDA graph replay vs eager steps", graphs)

    def tiny_run() -> str:
        out, seconds = run([py, "-m", "pipelines", "run", "--preset", "tiny", "--run-dir", str(tiny), *quick_sets,
                            *graph_sets], left())
        return (f"{summaries(out)}\n{dead_shares(tiny)}\ntiny end to end: {seconds:.0f} s "
                f"(corpus, tokenizer and tokens were built by the graph section, in seconds)")
    section("Tiny preset end to end", tiny_run)
    section("Device stream",
            lambda: in_child(f"stream_equality(Path({str(tiny)!r}), {args.device!r})", min(120, left())))

    def throughput() -> str:
        sizes = "512,2048" if args.quick else "512,1024,2048,4096,8192,16384,32768"
        steps = "6" if args.quick else "30"
        batch = "512" if args.quick else "4096"
        graph = ["--graph", "off"] if "sae.graph=off" in graph_sets else []
        out, _ = run([py, "benchmarks/sae_throughput.py", "--device", args.device, "--run-dir", str(tiny),
                      "--sizes", sizes, "--steps", steps, "--batch", batch, "--reference", *graph,
                      "--json", str(work / "throughput.json")], left())
        eager, _ = run([py, "benchmarks/sae_throughput.py", "--device", args.device, "--run-dir", str(tiny),
                        "--sizes", "512" if args.quick else "512,2048,16384", "--steps", steps, "--batch", batch,
                        "--graph", "off"], left())
        csr, _ = run([py, "benchmarks/sae_throughput.py", "--device", args.device, "--run-dir", str(tiny),
                      "--sizes", "2048" if args.quick else "2048,16384", "--steps", steps, "--batch", batch,
                      "--codes", "csr", "--precision", "fp32", "--graph", "off"], left())
        keep = lambda text: "\n".join(l for l in text.splitlines() if not l.startswith("{"))  # noqa: E731,E741
        return (keep(out) + "\n\nthe same steps without CUDA graphs (sae.graph=off):\n" + keep(eager)
                + "\n\nfor comparison, the CSR layout in fp32 (the trainer before issue 27):\n" + keep(csr))
    section("SAE trainer vs the dense bf16 reference", throughput)

    def capped_run(preset: str, caps: list[str], *more: str) -> str:
        """A preset's run; cut short, what finished is still reported (and estimated)."""
        folder = work / preset
        try:
            out, seconds = run([py, "-m", "pipelines", "run", "--preset", preset, "--run-dir", str(folder),
                                *caps, *graph_sets, *more], left())
            ended = f"{preset} preset run: {seconds:.0f} s"
        except CutShort as cut:
            last = next((line for line in reversed(cut.output.splitlines()) if line.strip()), "")
            out, ended = cut.output, f"{preset} preset run: CUT SHORT at the check's budget; last line: {last[-200:]}"
        return f"{summaries(out)}\n{dead_shares(folder)}\n{ended}"

    def paper() -> str:
        caps = [] if args.paper_full else ["--set", "model.train_tokens=20_000_000",
                                           "--set", "activations.max_tokens=10_000_000"]
        text = capped_run("paper", quick_sets if args.quick else caps)
        if caps or args.quick:
            text += "\n" + paper_estimate(work / "paper")
        return text
    # the small preset's sae stage has an acceptance line of its own (>= 1M act/s): before
    # the paper run, whose estimate degrades gracefully when the budget cuts it (a lower
    # bound). Its model is capped at 2M tokens: the line is about the sae stage's rate.
    small_caps = quick_sets if args.quick else ["--set", "model.train_tokens=2_000_000"]
    section("Small preset through the sae stage",
            lambda: capped_run("small", small_caps, "--until", "sae"), min_left=60)
    section("Paper preset", paper, min_left=60)
    section("Where an SAE step's time goes (torch.profiler)",
            lambda: in_child(f"step_profile(Path({str(tiny)!r}), {args.device!r}, {args.quick!r})",
                             min(180, left())), min_left=30)

    def tiny_csr() -> str:
        out, seconds = run([py, "-m", "pipelines", "run", "--preset", "tiny", "--run-dir", str(tiny), *quick_sets,
                            *graph_sets, "--set", "sae.codes=csr", "--force", "sae", "--until", "sae"], left())
        return f"{summaries(out)}\n{dead_shares(tiny)}"
    section("Tiny sae stage with sae.codes = csr (cuSPARSE)", tiny_csr, min_left=40)

    def model_step() -> str:
        missing = compile_prerequisites()
        out, _ = run([py, "benchmarks/model_step.py", "--device", args.device, *([] if missing else ["--compile"]),
                      "--batch", "8" if args.quick else "256", "--steps", "8" if args.quick else "40"], left())
        return "\n".join([line for line in out.splitlines() if line.startswith(("eager", "compile"))]
                         + ([f"torch.compile not tried: {missing}"] if missing else []))
    section("Model step: eager vs torch.compile", model_step, min_left=60)
    report.add("Issue 27's acceptance lines", acceptance(work, tiny, where))
    report.add("Total", f"{time.perf_counter() - start:.0f} s of a {args.budget:.0f} s budget")
    print(json.dumps({"report": str(report.path)}))


def compile_prerequisites() -> str:
    """What torch.compile's code generation needs and this machine lacks ('' if nothing):
    Inductor builds C++ on a CPU and Triton builds a C launcher on a GPU, both against
    Python's headers; a bare image may have neither compiler nor headers."""
    import shutil
    import sysconfig

    lacks = [] if (shutil.which("cc") or shutil.which("gcc")) else ["a C compiler (cc, gcc)"]
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        lacks.append(f"Python.h in {sysconfig.get_paths()['include']}")
    return " and ".join(lacks)


def acceptance(work: Path, tiny: Path, where: str) -> str:
    """Each of issue 27's device lines, read back from what the sections wrote (throughput
    JSON, run manifests, SAE metrics): its figure, what it needs, PASS or FAIL, or 'not
    measured' where a section did not get that far."""
    lines = [f"on {where}"]
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    path = work / "throughput.json"
    rows = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    for r in rows:
        need = 3.0 if r["d_sae"] >= 16384 else 1.0 if r["d_sae"] <= 2048 else None
        lines.append(f"trainer {r['d_sae']:>6}: {r['vs_reference']:.2f}x the dense bf16 reference"
                     + (f" (needs >= {need:g}x): {verdict(r['vs_reference'] >= need)}" if need else " (no line)")
                     + f"; FVU {r['fvu']} vs {r['reference_fvu']}, never fired {r['never_fired']} vs "
                       f"{r['reference_never_fired']}")
    if not rows:
        lines.append("trainer vs the dense reference: not measured")
    small = finished_stages(work / "small").get("sae")
    if small:
        rate = small["results"]["activations_per_second"]
        lines.append(f"small preset sae stage: {rate:,.0f} act/s (needs >= 1M): {verdict(rate >= 1e6)}")
    else:
        lines.append("small preset sae stage: not measured")
    for name, folder in (("tiny", tiny), ("paper", work / "paper")):
        acts = finished_stages(folder).get("activations")
        if acts:
            rate = acts["results"]["tokens_per_second"]
            lines.append(f"activations ({name}): {rate:,.0f} tok/s (needs >= 1M): {verdict(rate >= 1e6)}")
    dead = [r for r in sae_metrics(tiny) if int(r["dictionary"]) == 2048]
    lines.append(f"tiny dead share at 2,048: {100 * dead[0]['dead_fraction']:.1f}% (needs <= 5%): "
                 f"{verdict(dead[0]['dead_fraction'] <= 0.05)}" if dead else "tiny dead share at 2,048: not measured")
    estimate, missing = estimated_stages(work / "paper")
    if estimate:
        total = sum(seconds for _, seconds, _ in estimate)
        lines.append(f"paper preset end to end: {total / 60:.1f} min{' at least' if missing else ''} (needs <= 8): "
                     + (verdict(total <= 480) if not missing or total > 480 else
                        f"not decided ({', '.join(missing)} not reached)"))
    else:
        lines.append("paper preset end to end: not measured")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
