"""A stand-in for CUDA graph capture on a machine without CUDA (tests, gpu_check's CPU dry run).

`warm` runs the step as CUDA's warm-up does (really changing the weights, which recording
must put back); `record` hands the step back to be run again at each replay. So it proves
the recording's bookkeeping, not that CUDA captures every op, and not that no Python value
was baked in: a replay here re-runs the Python.
"""

from __future__ import annotations


class StandInCapture:
    """Counts warm-ups and recordings; replays by running the recorded step again."""

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
        return fn
