"""Geometry of the dictionaries' directions: nearest units by cosine, and the joint UMAP.

Neighbours: within a dictionary, nearest by decoder cosine (for neurons, whose basis vectors
are orthogonal, by the cosine of their W_out output directions, as the schema says);
counterparts in every other dictionary by decoder cosine in activation space (neurons: their
basis vectors, so the cosine to SAE feature i is W_dec[i, j] / |W_dec[i]|); aligned neurons of
an SAE feature: largest |cosine| between W_out·d_i and each neuron's W_out row (signed value
stored). The stats driver picks which rows to compare; this module only measures.

UMAP: one joint 2-D embedding (cosine metric) of the unit decoder directions of every SAE
dictionary plus the neurons' basis vectors. umap-learn compiles its numba kernels on first
use and, for the three this layout runs, compiled them again in every process (~8 s on 2
cores, 2-3x the layout itself at tiny's 3,584 points); `cache_umap_kernels` has numba keep
them on disk beside umap's source, so only an environment's first layout pays.
`stats.umap = false` skips it and the store's UMAP table is empty (never a silent substitute).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch


def normalized_rows(direction: torch.Tensor) -> torch.Tensor:
    """Each row scaled to length 1 (a zero row stays zero)."""
    return direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-12)


def nearest(a: torch.Tensor, b: torch.Tensor, k: int, exclude_self: bool = False,
            chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a, the k rows of b with the largest cosine (rows already normalised)."""
    k = min(k, b.shape[0] - (1 if exclude_self else 0))
    if k <= 0:
        return np.full((a.shape[0], 1), -1), np.zeros((a.shape[0], 1), np.float32)
    idx, val = [], []
    for lo in range(0, a.shape[0], chunk):
        cos = a[lo: lo + chunk] @ b.T
        if exclude_self:
            rows = torch.arange(cos.shape[0], device=cos.device)
            cos[rows, rows + lo] = -float("inf")
        top = cos.topk(k, dim=1)
        idx.append(top.indices)
        val.append(top.values)
    return torch.cat(idx).cpu().numpy(), torch.cat(val).cpu().numpy()


def joint_umap(directions: list[torch.Tensor], n_neighbours: int,
               seed: int) -> tuple[np.ndarray, float]:
    """2-D UMAP (cosine) of every row of every direction matrix, rows in the given order,
    and the seconds it took."""
    t0 = time.perf_counter()
    points, knn = umap_knn(directions, n_neighbours)
    return umap_layout(points, knn, seed), time.perf_counter() - t0


def umap_knn(directions: list[torch.Tensor], n_neighbours: int
             ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The points a joint UMAP lays out (unit rows, on the host) and their exact cosine
    nearest neighbours (indices, distances), found by one matmul per block where the
    directions live (a GPU's in no time): it skips pynndescent and its numba JIT (~30 s)."""
    points = torch.cat([normalized_rows(d) for d in directions])
    k = min(n_neighbours, points.shape[0] - 1)
    knn_i, knn_d = [], []
    for lo in range(0, points.shape[0], 4096):
        top = (points[lo: lo + 4096] @ points.T).topk(k, dim=1)
        knn_i.append(top.indices)
        knn_d.append((1.0 - top.values).clamp(min=0.0))
    return points.cpu().numpy(), (torch.cat(knn_i).cpu().numpy(), torch.cat(knn_d).cpu().numpy())


def umap_layout(points: np.ndarray, knn: tuple[np.ndarray, np.ndarray], seed: int) -> np.ndarray:
    """UMAP's layout of `points` from their precomputed kNN (`umap_knn`). Single-threaded
    (a fixed seed makes umap-learn run one numba thread), so the same inputs give the same
    layout in any process: `pipelines/stats/umap_beside.py` runs it in a second one."""
    threads = torch.get_num_threads()
    try:
        return _umap_layout(points, knn, seed, threads)
    finally:
        # numba's OpenMP layer resets the process's OpenMP thread count (torch's too) to
        # every core: in a study's variant process, which has one thread per variant, the
        # next variant's SAE training then ran 2 threads per process on 2 cores, 8x slower.
        torch.set_num_threads(threads)


# umap-learn's lazily compiled kernels that a layout from a precomputed kNN runs, by module
UMAP_KERNELS = (("umap.umap_", "smooth_knn_dist"), ("umap.umap_", "compute_membership_strengths"),
                ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"))


def cache_umap_kernels() -> int:
    """Turn on numba's disk cache for UMAP_KERNELS (umap-learn 0.5 declares them without
    `cache=True`); how many were turned on. numba keys each cached kernel on its source
    file's timestamp and the CPU, so an upgraded umap or another machine compiles afresh. A
    kernel that is gone or already compiled is left as it is: slower, never wrong."""
    import importlib

    from numba.core.dispatcher import Dispatcher

    turned_on = 0
    for module, name in UMAP_KERNELS:
        kernel = getattr(importlib.import_module(module), name, None)
        if isinstance(kernel, Dispatcher) and not kernel.signatures:
            try:
                kernel.enable_caching()
            except RuntimeError:  # numba found no writable place for a cache: compile each time
                continue
            turned_on += 1
    return turned_on


def _umap_layout(points: np.ndarray, knn: tuple[np.ndarray, np.ndarray], seed: int,
                 threads: int) -> np.ndarray:
    import numba
    import umap  # numba JIT on first use; see the module docstring

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    cache_umap_kernels()
    k = knn[0].shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no NNDescent index", "n_jobs": expected
        reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=k, random_state=seed,
                            precomputed_knn=(knn[0], knn[1], None),
                            n_epochs=200)  # default 500: 2.5x the time, same families
        return reducer.fit_transform(points).astype(np.float32)
