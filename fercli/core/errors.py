"""One exception hierarchy, mapped to exit codes at the CLI boundary (see cli.main).

Messages follow one shape: ``<file or key>: <what is wrong>. <what to do>`` so the
user sees a single actionable line; tracebacks only with ``--debug``.
"""
from __future__ import annotations

import errno
import os


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


class AccessError(FerError):
    """The operating system refused a file or folder: permission, read-only file system,
    a file where a folder is expected (and the reverse)."""

    exit_code = 8


# errno -> (what happened, what to do); the rest keep the system's own words.
_OS_REMEDIES = {
    errno.EACCES: ("permission denied", "Give this user access (chmod/chown), or point "
                   "fercli at a folder it may use"),
    errno.EPERM: ("operation not permitted", "Give this user access (chmod/chown), or point "
                  "fercli at a folder it may use"),
    errno.EROFS: ("read-only file system", "Set workdir to a writable location, e.g. "
                  "--set workdir=/scratch/$USER/work"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "Move the file away or "
                    "choose another path (e.g. --set workdir=...)"),
    errno.EISDIR: ("is a folder where a file is expected", "Move the folder away or name a "
                   "file"),
    errno.EEXIST: ("already exists and is not a folder", "Move it away or choose another path"),
    errno.ELOOP: ("too many levels of symbolic links (a link loop)", "Fix or remove the link"),
    errno.ENAMETOOLONG: ("file name too long", "Use shorter names or a shorter workdir path"),
    errno.EIO: ("input/output error (failing disk or network file system)", "Check the "
                "storage, then run the same command again"),
}


def access_error(exc: OSError) -> FerError:
    """One actionable line for an OSError, naming its path; a full disk keeps its own."""
    if exc.errno == errno.ENOSPC:
        return DiskFullError("no space left on device while writing", path=exc.filename,
                             hint="Free disk space and run the same command again "
                                  "(finished items are kept)")
    what, hint = _OS_REMEDIES.get(exc.errno, (exc.strerror or type(exc).__name__,
                                              "Check the path and run the command again"))
    path = exc.filename
    if path is not None and exc.filename2 is not None:
        path = f"{exc.filename} -> {exc.filename2}"
    return AccessError(what, path=os.fspath(path) if path is not None else None, hint=hint)
