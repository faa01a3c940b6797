"""Face detection on BGR frames and the "first face" rule of the preprocessing step.

The pipeline detects once, near the start of a video, and then tracks (thesis 3.2.1;
paper 000 sec. 2.2): BU-4DFE clips open on a neutral, frontal face, so a single
detection there is reliable and far cheaper than detecting on every frame.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from fercli.core.errors import ConfigError, ItemError

YUNET_SOURCE = (
    "the OpenCV model zoo, models/face_detection_yunet "
    "(e.g. face_detection_yunet_2023mar.onnx)"
)


class Box(NamedTuple):
    """An axis-aligned box in pixel coordinates: top-left corner, width, height.

    Detectors give whole pixels; the tracker keeps sub-pixel floats, so a face that
    hardly moves gives a box that hardly moves (see ``vision.track``).
    """

    x: float
    y: float
    w: float
    h: float

    def clip(self, frame_w: int, frame_h: int) -> Box:
        """The part of the box inside a frame of the given size (may be empty: w or h 0)."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.w, frame_w), min(self.y + self.h, frame_h)
        return Box(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    def rounded(self) -> Box:
        """The nearest whole-pixel box, for drawing and for APIs that want integers."""
        return Box(*(int(round(v)) for v in self))

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


def iou(a: Box, b: Box) -> float:
    """Intersection over union: how well two boxes agree (1 = identical, 0 = disjoint)."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union else 0.0


class FaceDetector(Protocol):
    """Anything that finds face boxes in a BGR uint8 frame."""

    def detect(self, frame_bgr: np.ndarray) -> list[Box]: ...


class HaarDetector:
    """Viola-Jones cascade with OpenCV's ``haarcascade_frontalface_default.xml``.

    Defaults are the paper's (paper 000 sec. 2.2): scaleFactor 1.1, minNeighbors 10,
    minSize 30x30. The paper hands the frame to the cascade without histogram
    equalisation, so neither do we; the grey conversion is the one OpenCV would do
    inside ``detectMultiScale`` for a colour frame.
    """

    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 10, min_size: int = 30):
        cascade_path = Path(cv2.data.haarcascades) / self.CASCADE
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise ConfigError(
                f"cannot load the Haar cascade {cascade_path}",
                hint="Reinstall opencv-contrib-python, which ships it.",
            )
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
        faces = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            flags=cv2.CASCADE_SCALE_IMAGE,
        )
        return [Box(*map(int, f)) for f in faces]


class YuNetDetector:
    """OpenCV's YuNet CNN detector (``cv2.FaceDetectorYN``) for harder footage.

    The ONNX model is not shipped with OpenCV; the user downloads it once.
    """

    def __init__(self, model_path: str | Path, score_threshold: float = 0.8):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ConfigError(
                f"YuNet model file {model_path} does not exist",
                hint=f"Download the ONNX model from {YUNET_SOURCE} and set its path.",
            )
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(model_path), "", (320, 320), score_threshold
            )
        except cv2.error as exc:
            raise ConfigError(
                f"cannot load the YuNet model {model_path}: {exc.err}",
                hint=f"Download it again from {YUNET_SOURCE}.",
            ) from exc
        self.score_threshold = score_threshold

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        h, w = frame_bgr.shape[:2]
        self._net.setInputSize((w, h))
        _, faces = self._net.detect(frame_bgr)
        if faces is None:
            return []
        return [Box(*(round(v) for v in f[:4])) for f in faces]


class FullFrameDetector:
    """For footage that is already one face per frame (CK+48, FER2013-style crops).

    Running a detector on a 48x48 crop finds nothing (Haar's smallest window is 30 px
    of a face with context), so the whole frame is taken as the face box.
    """

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        h, w = frame_bgr.shape[:2]
        return [Box(0, 0, w, h)]


DETECTORS = {"haar": HaarDetector, "yunet": YuNetDetector, "none": FullFrameDetector}


def make_detector(name: str, **params) -> FaceDetector:
    """Build a detector by its configuration name, e.g. ``make_detector("haar")``."""
    if name not in DETECTORS:
        raise ConfigError(
            f"unknown face detector {name!r}",
            hint=f"Use one of: {', '.join(DETECTORS)}.",
        )
    try:
        return DETECTORS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for detector {name!r}: {exc}") from exc


@dataclass(frozen=True)
class Detection:
    """The face chosen for a video: where it was found and the box the tracker starts from."""

    frame_index: int
    box: Box  # raw_box extended in height and clipped to the frame
    raw_box: Box  # as the detector returned it


def extend_box(box: Box, extend_px: int, frame_w: int, frame_h: int) -> Box:
    """Grow a face box downwards by ``extend_px`` and clip it to the frame.

    Haar boxes tend to cut through an open mouth ("surprise"), so the papers add
    10 px to the height (paper 000 sec. 2.2, thesis 3.2.1). They give the height, not
    the side; the problem they fix is at the chin, so all of it goes at the bottom.
    """
    return Box(box.x, box.y, box.w, box.h + extend_px).clip(frame_w, frame_h)


def detect_first_face(
    frames: Iterable[np.ndarray],
    detector: FaceDetector,
    frames_allowed: int = 10,
    extend_px: int = 10,
) -> Detection:
    """Find the single face in the first ``frames_allowed`` frames (paper 000 sec. 2.2).

    Reads frames only until the first frame with exactly one face, so a caller can
    pass a lazy decoder. Raises ItemError when no frame has exactly one face.
    """
    counts: list[int] = []
    for index, frame in enumerate(frames):
        if index >= frames_allowed:
            break
        boxes = detector.detect(frame)
        if len(boxes) == 1:
            h, w = frame.shape[:2]
            return Detection(index, extend_box(boxes[0], extend_px, w, h), boxes[0])
        counts.append(len(boxes))
    if not counts:
        raise ItemError("no decodable frames", hint="Check that the video plays.")
    several = [c for c in counts if c]
    if not several:
        raise ItemError(
            f"no face found in the first {len(counts)} frames",
            hint="Check the video; or look at more frames (--set detect.frames_allowed=N), "
                 "or try another detector (detect.detector) or a lower detect.min_neighbors.",
        )
    raise ItemError(
        f"{max(several)} faces found in the first {len(counts)} frames, expected exactly one",
        hint="Raise detect.min_neighbors, look at more frames (--set "
             "detect.frames_allowed=N) or crop the video to one person.",
    )


def detector_from_params(params: dict) -> FaceDetector:
    """Build the configured detector (shared by detect, track's re-detection and predict)."""
    if params["detector"] == "none":
        return make_detector("none")
    if params["detector"] == "yunet":
        if not params["model_path"]:
            raise ConfigError("detect.model_path is not set for detector `yunet`",
                              hint="Download face_detection_yunet_2023mar.onnx from the "
                                   "OpenCV model zoo and set detect.model_path")
        return make_detector("yunet", model_path=params["model_path"],
                             score_threshold=params["score_threshold"])
    return make_detector("haar", scale_factor=params["scale_factor"],
                         min_neighbors=params["min_neighbors"], min_size=params["min_size"])
