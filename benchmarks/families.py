"""The feature-family figures docs/results.md states, read from a built store.

Share of SAE features in a family, family sizes, the median decoder cosine, activation cosine
and containment of the kept edges, and, for scale, how close each feature of a larger SAE comes
to *any* feature of the next smaller one (its best counterpart by decoder cosine): the split
rule needs decoder cosine ≥ `stats.split_min_decoder_cosine`, so when two sizes share few
directions, few features can be in families.

    python benchmarks/families.py [runs/tiny/store]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store import FeatureStore  # noqa: E402


def report(store_path: Path) -> list[str]:
    store = FeatureStore.open(store_path)
    saes = [d for d in store.dictionaries() if store.dictionary_info(d)["kind"] == "sae"]
    n_sae = sum(store.n_features(d) for d in saes)
    edges = pd.read_parquet(store_path / "splits.parquet")
    members = pd.read_parquet(store_path / "families.parquet")
    sizes = members.groupby("family_id").size()
    lines = [f"store {store_path}: {n_sae:,} SAE features in {len(saes)} dictionaries",
             f"in a family: {len(members):,} ({len(members) / max(1, n_sae):.1%}); "
             f"{len(sizes)} families, {len(edges)} edges"]
    if len(sizes):
        counts = ", ".join(f"{n} of size {s}" for s, n in sizes.value_counts().sort_index().items())
        lines.append(f"family sizes: {counts}")
        med = edges[["decoder_cosine", "masked_cosine", "containment"]].median()
        lines.append(f"kept edges, median: decoder cosine {med['decoder_cosine']:.2f}, activation "
                     f"cosine over the child's tokens {med['masked_cosine']:.2f}, containment "
                     f"{med['containment']:.2f}")
    neighbours = {d: pd.read_parquet(store_path / "neighbours" / f"dictionary={d}") for d in saes}
    for small, large in zip(saes, saes[1:]):
        nb = neighbours[large]
        best = nb[(nb["relation"] == "counterpart") & (nb["neighbour_dictionary"] == small)
                  & (nb["rank"] == 0)]
        alive = store.features(large)["n_active"].to_numpy() > 0
        cos = best.set_index("feature")["cosine"].reindex(np.flatnonzero(alive)).to_numpy()
        lines.append(f"{large} -> {small}: best decoder cosine of a live feature to any "
                     f"{small} feature: median {np.nanmedian(cos):.2f}, ≥ 0.5 for "
                     f"{np.nanmean(cos >= 0.5):.1%}, ≥ 0.8 for {np.nanmean(cos >= 0.8):.1%}")
    return lines


if __name__ == "__main__":
    print("\n".join(report(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny/store"))))
