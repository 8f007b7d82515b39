"""Errors a store reader or writer raises for bad data, as opposed to bugs in our code.

The CLI and the dashboard turn these into one line naming the file and the problem; anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class StoreError(Exception):
    """A missing, truncated, unreadable or wrong-schema store; the message names the file."""


class FeatureNotFound(StoreError, LookupError):
    """An unknown dictionary or a feature index out of range.

    A LookupError too, so code that treats "no such key" generically (a URL with a bad feature
    id) can catch it without knowing about stores; a StoreError, so one `except` covers
    every way a store request can fail on its data."""
