"""Which torch device a stage runs on.

Every stage has its own `device` key (`model.device`, `activations.device`, `sae.device`,
`stats.device`), so the error names the key the user actually set.
"""

from __future__ import annotations

import os

from pipelines.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # what every stage's `device` key accepts


def check_device(key: str, value: str) -> None:
    """A config's `device` must be one of DEVICES (checked at load, before any stage runs)."""
    if value not in DEVICES:
        raise ConfigError(f"{key}={value!r}: must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}",
                          key=key)


def pick_device(requested: str, section: str) -> str:
    """`auto` takes CUDA when present; `cuda` without a card is the user's config error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{section}.device='cuda': no CUDA device is available here",
                          key=f"{section}.device")
    return requested


def io_threads(at_most: int) -> int:
    """Threads for Parquet reads or writes beside the compute: one on a small machine, where
    the compute needs the cores and bounds the stage anyway; up to `at_most`, half the cores,
    where they are spare (a GPU box's 16: its compute needs one). pyarrow releases the GIL,
    so these threads scale with cores (2 writers: 1.76-1.9x one on 2 cores)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else max(1, min(at_most, cores // 2))


def writer_threads(device: str) -> int:
    """Parquet writers for the activations stage. On CUDA the forward passes cost the host
    one core and the writing is the stage's bound (~0.12-0.2M rows a second per writer on
    these CPUs: a 16-core box needs 6-8 for the 1M tokens a second the stage should reach),
    so every core but two (of this rank's share) writes; on a CPU the forward passes need the
    cores (`io_threads`).
    Host memory holds writers + 1 shards (~134 MB each, twice that for validation's two
    columns): under 4 GB at 14 writers."""
    if device != "cuda":
        return io_threads(8)
    # under torchrun, this rank's share of the node's cores (one rank per GPU)
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(14, cores - 2))
