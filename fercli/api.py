"""The library entry points the CLI, scripts and notebooks share.

    from fercli.api import load_config, run_pipeline
    results = run_pipeline(load_config("fer.yaml"), until="finalize")
"""
from __future__ import annotations

import os
from typing import Callable

from rich.console import Console

from .core import layout
from .core.config import Config, load_config
from .core.engine import StageResult, stage_states
from .core.engine import run_stage as _run_stage
from .core.errors import ConfigError
from .stages import PIPELINE

__all__ = ["load_config", "run_pipeline", "run_stage", "status", "default_workers"]


def default_workers(name: str) -> int:
    """OpenCV stages use every core; TensorFlow stages one process (it threads itself)."""
    return (os.cpu_count() or 1) if PIPELINE[name].cpu_parallel else 1


def run_stage(name: str, config: Config, *, workers: int | None = None,
              console: Console | None = None, **kwargs) -> StageResult:
    """One stage by name (skipped when up to date); kwargs: force, shard, only."""
    if name not in PIPELINE:
        raise ConfigError(f"{name!r} is not a stage; choose one of: {', '.join(PIPELINE)}")
    return _run_stage(PIPELINE[name], config, PIPELINE, console=console,
                      workers=default_workers(name) if workers is None else workers, **kwargs)


def run_pipeline(config: Config, until: str | None = None, workers: int | None = None,
                 console: Console | None = None,
                 after_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Every stage in order up to ``until`` (default: all, then the HTML report), each
    resumable and skipped when up to date; items that fail are recorded and the later
    stages go on with the others. ``after_stage`` sees each stage's result as it ends."""
    if until is not None and until not in PIPELINE:
        raise ConfigError(f"--until {until!r} is not a stage; choose one of: "
                          f"{', '.join(PIPELINE)}")
    results = []
    for name in PIPELINE:
        results.append(run_stage(name, config, workers=workers, console=console))
        if after_stage:
            after_stage(results[-1])
        if name == until:
            return results
    from .reporting.report import write_report

    html_path, _, n_images = write_report(config.workdir, layout.report_dir(config.workdir))
    (console or Console(stderr=True)).print(f"report: {html_path} ({n_images} figures)")
    return results


def status(config: Config) -> dict:
    """Stage name -> StageState (up to date / stale / incomplete / not run, and why)."""
    return stage_states(config, PIPELINE)
