"""Errors the CLI turns into one line and exit status 2.

Anything else that escapes a stage is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A problem with the user's input, not with our code; the message names the file."""


class ConfigError(PipelineError, ValueError):
    """Bad config; the message names the file, the key and the value.

    `key` ("section.key", when one key is at fault) lets the loader say which file or
    `--set` gave that key without reading it back out of the message."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InputError(PipelineError):
    """Unusable input data (empty corpus, unreadable file); the message names the file."""
