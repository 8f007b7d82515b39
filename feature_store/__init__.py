"""The feature store: the on-disk format of a run's results and the only code that reads it.

`pipelines/` writes through this package and `dashboard/` reads through it; it imports
neither. torch is imported lazily, only by the functions that load the live model or SAEs.
"""
