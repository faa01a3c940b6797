"""The pipeline, in order. A stage not built yet is listed as None ("not implemented")."""
from __future__ import annotations

from ..engine import Stage
from .index import IndexStage
from .split import SplitStage

PIPELINE: dict[str, Stage | None] = {
    "index": IndexStage(),
    "split": SplitStage(),
    "detect": None,
    "track": None,
    "trim": None,
    "augment": None,
    "extract": None,
    "cv-train": None,
    "finalize": None,
    "fuse": None,
    "evaluate": None,
}
