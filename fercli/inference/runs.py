"""A finalized run folder: the one place that writes it, checks it, finds it and loads it.

Like an nnU-Net model folder it is self-contained: the model, what it was trained on
(model.json), the resolved config (detection, tracking, trimming, backbone), the class
order and the library versions, so `fer predict`, `export` and `live` need nothing else.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core import layout
from ..core.errors import ArtifactError, ConfigError, MissingUpstreamError
from ..core.versions import write_versions
from ..core.workspace import atomic_path, atomic_write_json, atomic_write_text, read_json

RUN_FILES = ("model.keras", "model.json", "config.yaml", "classes.json")


def write_run_folder(run_dir: Path, model_file: Path, info: dict, config: dict,
                     classes: list[str]) -> list[Path]:
    """Copy the trained model in and write its description; returns the files written."""
    run_dir = Path(run_dir)
    model_path = run_dir / "model.keras"
    with atomic_path(model_path) as tmp:
        shutil.copyfile(model_file, tmp)
    files = [model_path, run_dir / "model.json", run_dir / "config.yaml",
             run_dir / "classes.json"]
    atomic_write_json(files[1], info)
    atomic_write_text(files[2], yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(files[3], classes)
    return files + [write_versions(run_dir)]


def resolve_run(run: str | Path | None, workdir: Path) -> Path:
    """A run folder from a name under <workdir>/finalize/runs, a folder, or None (newest)."""
    runs_root = layout.finalize_runs_dir(workdir)
    if run is None:
        available = sorted(runs_root.glob("*/model.json"), key=lambda p: p.stat().st_mtime)
        if not available:
            raise MissingUpstreamError("no finalized run", path=runs_root,
                                       hint="Run `fer finalize` first, or pass a run folder")
        return available[-1].parent
    path = Path(run)
    run_dir = path if path.is_dir() else runs_root / str(run)
    if not (run_dir / "model.json").is_file():
        known = ", ".join(sorted(p.parent.name for p in runs_root.glob("*/model.json")))
        raise ConfigError(f"no finalized run {str(run)!r}",
                          hint=f"Give a run folder or one of: {known or '(none yet)'}")
    return run_dir


@dataclass
class FinalizedRun:
    """A `fer finalize` run folder loaded for inference."""

    name: str
    path: Path
    info: dict  # model.json
    config: dict  # the run's resolved config.yaml
    classes: list[str]
    model: Any  # the Keras model, or runtime "tflite": a LiteRT runner (predict_on_batch)
    weight: float | None  # mean CV validation accuracy, for weighted fusion
    runtime: str = "keras"  # what ``model`` (and the backbone) run on: keras | tflite
    runtime_note: str | None = None  # why load_inference_run fell back to Keras (one line)
    backbone_graph: Any = None  # feature runs on "tflite": the LiteRT backbone
    _keras: Any = field(default=None, repr=False)

    @property
    def keras_model(self):
        """The trained Keras model (loaded on first use when ``model`` is a LiteRT runner)."""
        if self.runtime == "keras" and self.model is not None:
            return self.model
        if self._keras is None:
            from ..learning.training import load_model

            self._keras = load_model(self.path / "model.keras")
        return self._keras

    @property
    def is_clip(self) -> bool:
        return self.info["backbone"] is None

    @property
    def max_frames(self) -> int:
        return int(self.info["max_frames"])

    @property
    def min_frames(self) -> int:
        """Frames of the shortest training item (runs finalized before it was recorded: 1)."""
        return int(self.info.get("min_frames", 1))

    def encoder_key(self) -> tuple:
        """Runs with equal keys read identical per-frame inputs (computed once for all)."""
        if self.is_clip:
            return ("clip", int(self.info["clip_size"]), bool(self.info["color"]))
        extract = self.info["backbone"]
        return ("features", str(extract["backbone"]), extract.get("layer"),
                extract.get("weights"), extract.get("dtype", "float32"),
                bool(self.info["color"]))


def run_config(run_dir: Path) -> dict:
    """The saved config of a finalized run folder, after checking the folder is one."""
    missing = [n for n in RUN_FILES if not (Path(run_dir) / n).is_file()]
    if missing:
        raise ConfigError(f"{run_dir} is not a finalized run folder (no {', '.join(missing)})",
                          hint="Give a folder work/finalize/runs/<run> written by "
                               "`fer finalize`")
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        config = None
    if not (isinstance(config, dict) and all(isinstance(config.get(section), dict) for section
                                             in ("index", "detect", "track", "trim",
                                                 "extract"))):
        raise ArtifactError("the run's saved config is damaged (not a fer config)", path=path,
                            hint="Restore it, or re-run `fer finalize --force`")
    return config


def read_run(run_dir: Path) -> FinalizedRun:
    """A finalized run folder without its model (``model`` None): model.json, config.yaml,
    classes.json. ``load_run`` adds the Keras model; fercli.inference.runtime's
    ``load_inference_run`` the LiteRT graphs where it can."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    info = read_json(run_dir / "model.json", "model.json")
    classes = list(read_json(run_dir / "classes.json", "classes.json"))
    cv_json = layout.cv_run_dir(layout.workdir_of_run(run_dir), run_dir.name) / "run.json"
    weight = (read_json(cv_json, "run.json").get("cv_accuracy")
              if cv_json.is_file() else None)
    return FinalizedRun(run_dir.name, run_dir, info, config, classes, None, weight)


def load_run(run_dir: Path) -> FinalizedRun:
    """Read a finalized run folder: model.keras, model.json, config.yaml, classes.json."""
    from ..learning.training import load_model

    run = read_run(run_dir)
    run.model = load_model(run.path / "model.keras")
    return run
