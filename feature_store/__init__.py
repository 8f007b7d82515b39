"""The feature store: the on-disk format of a run's results and the only code that reads it.

`pipelines/` writes through this package and `dashboard/` reads through it; it imports
neither. torch is imported lazily, only by the functions that load the live model or SAEs.
"""

from feature_store.errors import FeatureNotFound, StoreError
from feature_store.records import (
    DENSITY_CLASSES, N_INTERVALS, NEURONS, Example, Family, FeatureRecord, Histogram, Interval,
    LogitEntry, Neighbour, SplitEdge,
)
from feature_store.store import FeatureStore
from feature_store.writer import StoreWriter

__all__ = [
    "DENSITY_CLASSES", "N_INTERVALS", "NEURONS", "Example", "Family", "FeatureNotFound",
    "FeatureRecord", "FeatureStore", "Histogram", "Interval", "LogitEntry", "Neighbour",
    "SplitEdge", "StoreError", "StoreWriter",
]
