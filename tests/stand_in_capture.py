"""A stand-in for CUDA graph capture on a machine without CUDA (tests, gpu_check's CPU dry run).

`warm` runs the step as CUDA's warm-up does (really changing the weights, which recording
must put back); `record` hands the step back to be run again at each replay. So it proves
the recording's bookkeeping, not that CUDA captures every op.

What it can prove of capture, on CPU, in three guards around every replay:
- `NoHostReads` fails the ops that stop a CUDA capture because they wait for the device (a
  value read back to the host: `.item()`, `bool(t)`, `int(t)`, `float(t)`) or make a shape
  from data (`nonzero`, boolean indexing, `masked_select`, `unique`, `repeat_interleave`
  without `output_size`): the usual reasons a step that runs eagerly cannot be recorded.
- `OpTrace` checks that a replay here, which re-runs the Python, ran what a CUDA graph would
  replay: the recording's ops, with the recording's Python numbers (a learning rate passed as
  a float, a step count), reading the same tensors made before the step (not a tensor
  replaced instead of written in place, not a batch outside the static buffer), and no
  tensor made from Python data inside the step (`torch.tensor(...)`: baked once, and a host
  copy a capture refuses). The first replay stands for the recording: it runs on the state
  the recording saw. Without it a step that bakes a value trains right here and wrong on a GPU.
- `NoDeviceCopies` fails a host copy inside the step: a factory that names no device
  (`torch.arange(n)`, host memory on a GPU machine) and a read back to the host (`.cpu()`,
  `.numpy()`, `.tolist()`, `pin_memory()`). On CPU these reach no aten op that says so, so
  the guards above miss them; on a GPU a copy from host memory inside a recording fails the
  capture or replays the recording's copy. A recorded step gets its data through the
  recorded input buffer.
"""

from __future__ import annotations

import itertools
import sys

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# aten ops that wait for the device on CUDA, by their schema name
_READS_HOST = frozenset({"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "_unique",
                         "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"})


class HostReadError(RuntimeError):
    """An op in a recorded step that a CUDA capture refuses (it would wait for the device)."""


class DeviceCopyError(RuntimeError):
    """A move between host and device inside a recorded step."""


class BakedValueError(RuntimeError):
    """A replay that ran other than its recording: a CUDA graph would replay the recorded
    ops on the recorded values and memory, so the graphed run would train differently."""


class NoHostReads(TorchDispatchMode):
    """Raises `HostReadError` at an op that reads from the device or sizes a result by its
    data. The optimizer's own code is exempt: on CPU its single-tensor form reads its step
    count with `.item()`, while a CUDA recording runs the fused capturable kernels, which
    read nothing back."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _reads_host(func, args, kwargs)
        if why and not _inside_optimizer():
            raise HostReadError(f"{func._schema.name}: {why}; a CUDA graph cannot record it "
                                "(operation not permitted when stream is capturing)")
        return func(*args, **kwargs)


# Tensor methods that always read device memory back to the host
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.pin_memory}
# factories that, without a device, make their tensor in host memory
_FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn,
              torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.eye,
              torch.empty_strided, torch.scalar_tensor, torch.as_tensor}


class NoDeviceCopies(TorchFunctionMode):
    """Raises `DeviceCopyError` at a host copy inside the step, seen at the Python call: on
    CPU every tensor already lies where it is sent, so the copy is a no-op with no aten op to
    trace. Refused: reading back to the host (`.cpu()`, `.numpy()`, `.tolist()`,
    `pin_memory()`) and a factory that names no device (`torch.arange(n)`: host memory on a GPU
    machine, copied to the device when used). A `.to()` of a tensor the step did not make in
    host memory passes: on a GPU it is a no-op when the tensor is already on the device (as
    `clip_grad_norm_`'s is), and where tensors made before the step live is gpu_check's
    device section to show. The optimizer's code is exempt, as in `NoHostReads`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = "" if _inside_optimizer() else _crosses_devices(func, args, kwargs)
        if why:
            raise DeviceCopyError(f"{why} inside the step: a CUDA graph records no copy between host "
                                  "and device memory (the capture fails, or replays the recording's "
                                  "copy); make tensors on the device and write inputs into the "
                                  "recorded buffer before the replay")
        return func(*args, **kwargs)


def _crosses_devices(func, args, kwargs) -> str:
    if func in _TO_HOST:
        return f"Tensor.{func.__name__}() copies to host memory"
    if func in _FACTORIES and kwargs.get("device") is None:
        return f"torch.{func.__name__}() without a device makes its tensor in host memory"
    return ""


def _reads_host(func, args, kwargs) -> str:
    name = func._schema.name.split("::", 1)[-1]
    if name in _READS_HOST:
        return "reads a value or a data-dependent size back to the host"
    if name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") \
            and kwargs.get("output_size") is None:
        return "repeat_interleave without output_size reads the total back to the host"
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and len(args) > 1:
        if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1]):
            return "a boolean mask index sizes its result by the data"
    return ""


def _inside_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/optim/" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


class OpTrace(TorchDispatchMode):
    """Writes down a step as a CUDA recording fixes it: each op (the optimizer's exempt, as
    in `NoHostReads`) with its Python arguments and, for each tensor it reads that existed
    before the step, that tensor's memory; tensors the step's own ops made are just "made"
    (a graph's pool gives them fixed memory). Refuses at once a tensor made from Python data."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []
        self._made: set[int] = set()
        self._held: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func._schema.name}.{func._overloadname}"
        if not _inside_optimizer():
            if func._schema.name == "aten::lift_fresh":
                raise BakedValueError(f"{name}: a tensor made from Python data inside the step "
                                      "(torch.tensor / as_tensor): a CUDA graph keeps the value it "
                                      "recorded, and a capture refuses the copy from host memory")
            self.ops.append((name, tuple(self._describe(leaf) for leaf in tree_leaves((args, kwargs)))))
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.numel() and leaf.layout == torch.strided:
                memory = leaf.untyped_storage().data_ptr()
                if memory not in self._held:
                    self._made.add(memory)
        return out

    def _describe(self, leaf) -> object:
        if not isinstance(leaf, torch.Tensor):
            return repr(leaf)
        if not leaf.numel() or leaf.layout != torch.strided:
            return "tensor"
        memory = leaf.untyped_storage().data_ptr()
        if memory in self._made:
            return "made in the step"
        self._held.add(memory)
        return f"tensor held at {memory:#x}"

    def check_against(self, recording: "OpTrace", replay: int) -> None:
        """Raises `BakedValueError` at the first op where this replay left the recording."""
        for i, ((name, args), (was, was_args)) in enumerate(zip(self.ops, recording.ops)):
            if name != was or len(args) != len(was_args):
                raise BakedValueError(f"replay {replay} ran {name} where the recording ran {was} "
                                      f"(op {i}): the Python branched on a value that changes; a CUDA "
                                      "graph replays the recorded ops")
            for j, (now, then) in enumerate(zip(args, was_args)):
                if now != then:
                    raise BakedValueError(
                        f"replay {replay}, op {i} ({name}), argument {j}: the recording had {then}, this "
                        f"replay {now}; a CUDA graph replays what it recorded (keep a changing value in a "
                        "tensor written in place, and write inputs into the recorded buffer)")
        if len(self.ops) != len(recording.ops):
            raise BakedValueError(f"replay {replay} ran {len(self.ops)} ops, the recording "
                                  f"{len(recording.ops)}: the Python branched on a value that changes")


class StandInCapture:
    """Counts warm-ups and recordings; replays by running the recorded step again, under
    `NoDeviceCopies`, `NoHostReads` (CUDA's warm-up may read the host; the recording may
    not) and `OpTrace`, each replay checked against the first."""

    def __init__(self, fail: bool = False):
        self.warmed, self.recorded, self.fail = 0, 0, fail

    def warm(self, fn) -> None:
        for _ in range(2):
            fn()
            self.warmed += 1

    def record(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.recorded += 1
        recording: list[OpTrace] = []
        replays = itertools.count()

        def replay():
            n, trace = next(replays), OpTrace()
            with NoDeviceCopies(), NoHostReads(), trace:
                out = fn()
            if recording:
                trace.check_against(recording[0], n)
            else:
                recording.append(trace)
            return out
        return replay
