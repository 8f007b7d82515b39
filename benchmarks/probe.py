"""This machine's dense fp32 matmul speed, now: the yardstick every timing in the docs is
stated against (machines differ by 1.5x and a busy one halves it).

    python benchmarks/probe.py
"""

from __future__ import annotations

import os
import time

import torch


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


if __name__ == "__main__":
    print(f"fp32 matmul probe: {matmul_gflops():.0f} GFLOP/s on {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f})")
