"""Feature families: the connected groups that split edges join across dictionary sizes.

Which edges exist is the stats stage's decision (`pipelines/stats/splitting.py`); this module only
groups them, so every store derives families the same way from whatever edges it holds.
Nodes are global ids (a dictionary's offset in dictionary order plus the feature index), so
sorting nodes sorts by dictionary, then index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Families:
    """Every node some edge touches, with its family; and each edge's family."""

    nodes: np.ndarray  # sorted global node ids
    node_family: np.ndarray  # family id of each node
    edge_family: np.ndarray  # family id of each edge, in the order given


def group(u: np.ndarray, v: np.ndarray) -> Families:
    """Families of the undirected edges (u[e], v[e]). Family ids are numbered in order of each
    family's first member (smallest global node id), so they are stable across rebuilds."""
    nodes, inverse = np.unique(np.concatenate([u, v]).astype(np.int64), return_inverse=True)
    if nodes.size == 0:  # no split edges (e.g. dictionaries too small to split): no families
        empty = np.zeros(0, dtype=np.int64)
        return Families(nodes, empty, empty)
    label = connected_components(inverse[:u.size], inverse[u.size:], nodes.size)
    _, first = np.unique(label, return_index=True)
    family_of_label = np.empty(label.max() + 1, dtype=np.int64)
    family_of_label[label[np.sort(first)]] = np.arange(first.size)
    node_family = family_of_label[label]
    return Families(nodes, node_family, node_family[inverse[:u.size]])


def connected_components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Connected-component labels (smallest node id in the component) by min-label
    propagation with pointer jumping: numpy only, a few passes for split-graph depths."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new
