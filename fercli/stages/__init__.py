"""The pipeline, in order."""
from __future__ import annotations

from ..core.engine import Stage
from .augment import AugmentStage
from .cv_train import CvTrainStage
from .detect import DetectStage
from .evaluate import EvaluateStage
from .extract import ExtractStage
from .finalize import FinalizeStage
from .fuse import FuseStage
from .index import IndexStage
from .split import SplitStage
from .track import TrackStage
from .trim import TrimStage

PIPELINE: dict[str, Stage] = {
    "index": IndexStage(),
    "split": SplitStage(),
    "detect": DetectStage(),
    "track": TrackStage(),
    "trim": TrimStage(),
    "augment": AugmentStage(),
    "extract": ExtractStage(),
    "cv-train": CvTrainStage(),
    "finalize": FinalizeStage(),
    "fuse": FuseStage(),
    "evaluate": EvaluateStage(),
}
