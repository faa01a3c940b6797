"""Where every artifact lives: the one module that joins work-folder paths.

``<workdir>/<stage>/`` is a stage's folder (manifest, records, artifacts; see workspace).
The artifacts that other stages, `predict`, `export`, `tune` and the report read are named
here, with the readers that give the usual remedy when one is missing.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import InputError
from .workspace import StageDir, read_json, read_text


# --------------------------------------------------------------------------- paths
def stage_dir(workdir: Path, stage: str) -> Path:
    return Path(workdir) / stage


def index_csv(workdir: Path) -> Path:
    return stage_dir(workdir, "index") / "index.csv"


def classes_json(workdir: Path) -> Path:
    return stage_dir(workdir, "index") / "classes.json"


def splits_json(workdir: Path) -> Path:
    return stage_dir(workdir, "split") / "splits.json"


def features_h5(workdir: Path) -> Path:
    return stage_dir(workdir, "extract") / "features.h5"


def cv_run_dir(workdir: Path, run: str) -> Path:
    return stage_dir(workdir, "cv-train") / "runs" / run


def finalize_runs_dir(workdir: Path) -> Path:
    return stage_dir(workdir, "finalize") / "runs"


def finalize_run_dir(workdir: Path, run: str) -> Path:
    return finalize_runs_dir(workdir) / run


def fusions_dir(workdir: Path) -> Path:
    return stage_dir(workdir, "fuse") / "fusions"


def fusion_table_csv(workdir: Path) -> Path:
    return stage_dir(workdir, "fuse") / "fusion_table.csv"


def predict_dir(workdir: Path) -> Path:
    return Path(workdir) / "predict"


def report_dir(workdir: Path) -> Path:
    return Path(workdir) / "report"


def tune_dir(workdir: Path) -> Path:
    return Path(workdir) / "tune"


def export_dir(workdir: Path) -> Path:
    return Path(workdir) / "export"


def workdir_of_run(run_dir: Path) -> Path:
    """The work folder a finalized run folder (<workdir>/finalize/runs/<run>) lies in."""
    return Path(run_dir).resolve().parents[2]


# --------------------------------------------------------------------------- readers
def read_index(workdir: Path) -> list[dict]:
    """index.csv rows (item_id, subject, label, ...)."""
    path = index_csv(workdir)
    if not path.is_file():
        raise InputError("index.csv is missing", path=path, hint="Run `fer index` first")
    return list(csv.DictReader(io.StringIO(read_text(path, "index.csv"))))


def read_classes(workdir: Path) -> list[str]:
    return read_json(classes_json(workdir), "classes.json")


def load_splits(workdir: Path) -> dict:
    """splits.json for later stages, with the usual remedy when it is missing."""
    path = splits_json(workdir)
    if not path.is_file():
        raise InputError("splits.json is missing", path=path, hint="Run `fer split` first")
    return read_json(path, "splits.json")


def finalized_runs(workdir: Path) -> dict[str, dict]:
    """run name -> model.json of every finalized run on disk (several live side by side)."""
    return {path.parent.name: read_json(path, "model.json")
            for path in sorted(finalize_runs_dir(workdir).glob("*/model.json"))}


def cv_probability_files(workdir: Path, run: str) -> list[Path]:
    """The validation softmax of each fold of a cross-validated run."""
    return sorted(cv_run_dir(workdir, run).glob("fold-*/val_probs.csv"))


def done_items(workdir: Path, stage: str, required: bool = True) -> dict[str, dict]:
    """id -> record of the items a finished stage did (its manifest); {} when the stage
    has not finished and ``required`` is false."""
    manifest = StageDir(Path(workdir), stage).read_manifest()
    if manifest is None:
        if not required:
            return {}
        raise InputError(f"stage `{stage}` has not finished (no manifest)",
                         path=stage_dir(workdir, stage), hint=f"Run `fer {stage}` first")
    return {i: r for i, r in manifest["items"].items() if r.get("status") == "done"}
