"""One exception hierarchy, mapped to exit codes at the CLI boundary (see cli.main).

Messages follow one shape: ``<file or key>: <what is wrong>. <what to do>`` so the
user sees a single actionable line; tracebacks only with ``--debug``.
"""
from __future__ import annotations


class FerError(Exception):
    """Base of every error fercli reports to the user."""

    exit_code = 1

    def __init__(self, message: str, *, path: object | None = None, hint: str | None = None):
        self.path = path
        self.hint = hint
        self.detail = message
        text = f"{path}: {message}" if path is not None else message
        if hint:
            text = f"{text.rstrip('.')}. {hint}"
        super().__init__(text)


class ConfigError(FerError):
    """Wrong key, wrong type or missing required value in the configuration."""

    exit_code = 2


class InputError(FerError):
    """The dataset or a user-supplied file cannot be used as it is."""

    exit_code = 3


class MissingUpstreamError(FerError):
    """A stage needs the output of an earlier stage that is missing or stale."""

    exit_code = 4


class LockError(FerError):
    """Another live process holds the lock of the stage."""

    exit_code = 5


class ItemsFailedError(FerError):
    """The stage finished, but some items failed (each recorded with its reason)."""

    exit_code = 6


class ArtifactError(FerError):
    """A recorded artifact (manifest, clip, store, checkpoint) is unreadable or altered."""

    exit_code = 7


class DiskFullError(FerError):
    """No space left on device: every later item would fail the same way, so the stage
    stops at once; the items finished before keep their records."""


class ItemError(FerError):
    """One item (video, sequence, fold) cannot be processed; the others go on.

    Raised inside a stage's per-item function; the engine records the item as
    failed with this message as its reason and never re-raises it.
    """

    exit_code = 6
