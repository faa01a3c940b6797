"""`fer detect`: find the one face of each item in its first frames (thesis 3.2.1).

Detection runs once per video, on the first ``detect.frames_allowed`` frames; tracking then
follows the face (paper 000 sec. 2.2), which is what makes the preprocessing fast. With
``detect.detector: none`` (footage that is already face crops) the box is the whole of
frame 0 and no detector runs.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..core.config import params_hash
from ..core.engine import Context, Item, ItemOutput, Stage
from ..core.workspace import write_csv
from ..vision.detect import Detection, FaceDetector, detect_first_face, detector_from_params
from ..vision.media import iter_frames


class DetectStage(Stage):
    name = "detect"
    help = ("Find the single face of every item in its first frames (Haar cascade; "
            "detector none: the whole frame).")
    upstream = ("index",)
    cpu_parallel = True
    sections = ("detect",)

    def list_items(self, ctx: Context) -> list[Item]:
        return ctx.upstream_item_list("index")

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        params = ctx.params["detect"]
        detection = _detect(item.payload["path"], params)
        return ItemOutput(info={"path": item.payload["path"], "frame": detection.frame_index,
                                "box": list(detection.box), "raw_box": list(detection.raw_box),
                                "n_frames": item.payload["n_frames"]})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        path = write_csv(ctx.stage.path("detections.csv"),
                         ["item_id", "status", "frame", "x", "y", "w", "h", "reason"],
                         ([r["id"], "done", r["info"]["frame"], *r["info"]["box"], ""]
                          if r["status"] == "done" else
                          [r["id"], "failed", "", "", "", "", "", r["reason"]]
                          for r in records))
        return [path]


_DETECTORS: dict[str, FaceDetector] = {}


def _detect(path: str, params: dict) -> Detection:
    key = params_hash(params)  # one detector per process and parameter set
    if key not in _DETECTORS:
        _DETECTORS[key] = detector_from_params(params)
    return detect_first_face(iter_frames(path), _DETECTORS[key],
                             frames_allowed=params["frames_allowed"],
                             extend_px=params["extend_px"])
