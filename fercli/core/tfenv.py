"""TensorFlow's logging, set up in one place before TensorFlow is first imported.

On a CPU machine, every process that imports TensorFlow prints start-up notices: the
oneDNN and "could not find cuda drivers" INFO lines (twice, with absl's "All log messages
before absl::InitializeLog()" line, because they are written while the shared libraries
load, before TF_CPP_MIN_LOG_LEVEL is read) and the "failed call to cuInit" ERROR line when
the devices are first listed. fercli's own one-line messages would drown in them.

`quiet()` runs at ``import fercli``, so in `fer` and in every worker that the engine spawns
(they import fercli to unpickle their work, and inherit the environment):

- TF_CPP_MIN_LOG_LEVEL=2 (unless set already): TensorFlow's C++ INFO and WARNING lines
  are not printed; errors still are. oneDNN stays on (TF_ENABLE_ONEDNN_OPTS is untouched:
  turning it off made Conv3D training 7x slower).
- The first ``import tensorflow`` (from anywhere: fercli, keras, keras_tuner) and the device
  listing right after it run with file descriptor 2 read into a temporary file; the lines
  below that level (and the CPU machine's expected "cuInit"/"Unable to register cu..."
  notices) are dropped, everything else is written back to stderr unchanged.
- TensorFlow's and absl's Python loggers show errors only.

`fer --verbose` (or FERCLI_VERBOSE=1 in the environment) leaves all of it at TensorFlow's
defaults, in the process and in its workers.
"""
from __future__ import annotations

import importlib.abc
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager

VERBOSE_ENV = "FERCLI_VERBOSE"
LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "2"  # INFO and WARNING hidden, ERROR and FATAL shown

_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# absl's "I0000 00:00:1796495114.932674   30688 port.cc:153] ..." and TF's older
# "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ..."
_LOG_LINE = re.compile(r"^(?:([IWEF])\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: ([IWEF]) )"
                       r"\S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# ERROR lines that only say "no usable CUDA here" on a machine without a GPU: as INFO
_CPU_MACHINE_NOTICES = ("failed call to cuInit", "Unable to register cu")

_set_level_here = False  # True when quiet() set TF_CPP_MIN_LOG_LEVEL (not the user)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet() -> None:
    """Quiet TensorFlow in this process and its children, unless verbose (see above)."""
    global _set_level_here
    if verbose():
        return
    if LEVEL_ENV not in os.environ:
        os.environ[LEVEL_ENV] = DEFAULT_LEVEL
        _set_level_here = True
    if "tensorflow" in sys.modules:  # imported before fercli: its start-up lines are out
        _quiet_python_loggers()
    elif not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def set_verbose() -> None:
    """`fer --verbose`: TensorFlow's own defaults here and in workers spawned later."""
    global _set_level_here
    os.environ[VERBOSE_ENV] = "1"
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]
    if _set_level_here:
        os.environ.pop(LEVEL_ENV, None)
        _set_level_here = False


def quiet_import_pending() -> bool:
    """Whether the next ``import tensorflow`` will be quietened."""
    return any(isinstance(finder, _QuietImport) for finder in sys.meta_path)


def min_level() -> int:
    try:
        return int(os.environ.get(LEVEL_ENV, "0"))
    except ValueError:
        return 0


def is_chatter(line: str, level: int) -> bool:
    """Whether TF_CPP_MIN_LOG_LEVEL=``level`` would have hidden this stderr line."""
    if line.startswith(_ABSL_PREAMBLE):
        return level > _SEVERITY["W"]
    match = _LOG_LINE.match(line)
    if not match:
        return False
    severity = _SEVERITY[match.group(1) or match.group(2)]
    if any(notice in line for notice in _CPU_MACHINE_NOTICES):
        severity = _SEVERITY["I"]
    return severity < level


@contextmanager
def filtered_stderr(level: int):
    """Stderr without the lines that are chatter at ``level`` (see ``stderr_without``)."""
    with stderr_without(lambda line: is_chatter(line, level)):
        yield


@contextmanager
def stderr_without(drop: Callable[[str], bool]):
    """File descriptor 2 (C++ and Python writes alike) goes to a temporary file; on exit
    the lines ``drop`` does not match are written back."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not drop(line))
            if kept:
                os.write(2, kept.encode("utf-8", errors="replace"))


def _quiet_python_loggers() -> None:
    if min_level() < _SEVERITY["E"]:
        return
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Hands out TensorFlow's module spec with a loader that imports it quietly, once."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        if verbose():  # --verbose came after the finder was asked
            self._loader.exec_module(module)
            return
        with filtered_stderr(min_level()):
            self._loader.exec_module(module)
            try:  # the CUDA platform reports at the first device listing: have it here
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 - the first real use raises it again
                pass
        _quiet_python_loggers()
