"""Follow the detected face through a video and cut it out frame by frame.

Tracking from one detection is faster than detecting on every frame and keeps the
box steady (thesis 2.1.1 and 3.2.1; paper 000 sec. 2.2 and Table 1, where
MedianFlow was the fastest of CSRT, KCF and MedianFlow with no failed sample).
Everything here streams: one frame in, one face out, so no video is held in memory.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from fercli.errors import ConfigError, ItemError
from fercli.vision.detect import Box, Detection, FaceDetector, detect_first_face, extend_box

# Registry name -> OpenCV class suffix. The main cv2 namespace is used where it has the
# tracker (CSRT, KCF, MIL in OpenCV 4.5+/5.x), cv2.legacy for the rest.
TRACKERS = {
    "medianflow": "MedianFlow",
    "kcf": "KCF",
    "csrt": "CSRT",
    "mosse": "MOSSE",
    "mil": "MIL",
    "tld": "TLD",
    "boosting": "Boosting",
}
DEFAULT_TRACKER = "medianflow"
# Trackers that turn every frame grey themselves (checked: identical boxes from grey input),
# so handing them a grey frame saves their two conversions per update.
GRAY_TRACKERS = frozenset({"medianflow", "mosse"})
# Frames are halved for tracking while the face stays at least this wide (see FaceTracker).
TRACK_FACE_PX = 64


def make_tracker(name: str):
    """A fresh, uninitialised OpenCV tracker for a registry name."""
    if name not in TRACKERS:
        raise ConfigError(
            f"unknown tracker {name!r}", hint=f"Use one of: {', '.join(TRACKERS)}."
        )
    class_name = "Tracker" + TRACKERS[name]
    tracker_class = getattr(cv2, class_name, None)
    if tracker_class is None or not hasattr(tracker_class, "create"):
        tracker_class = getattr(cv2.legacy, class_name)
    return tracker_class.create()


def halvings_for(box: Box, min_face_px: int) -> int:
    """How often a frame can be halved with the face still ``min_face_px`` wide (0: never)."""
    halvings, side = 0, min(box.w, box.h)
    while min_face_px and side >> (halvings + 1) >= min_face_px:
        halvings += 1
    return halvings


class FaceTracker:
    """An OpenCV tracker that works on a reduced copy of each frame, in full-frame boxes.

    Tracking cost grows with the frame, not the face: MedianFlow takes ~7 ms on a
    1280x960 frame and ~0.6 ms on the same frame halved, with the same face. So frames
    are halved while the face stays at least ``min_face_px`` wide (a 160 px BU-4DFE face
    is tracked at 80 px; the sample videos' ~100 px faces are not reduced) and handed to
    grey-native trackers as grey. Boxes are scaled back, so they are exact to 2**halvings px.
    """

    def __init__(self, name: str, first_box: Box, min_face_px: int = TRACK_FACE_PX):
        self.name = name
        self.halvings = halvings_for(first_box, min_face_px)
        self.gray = name in GRAY_TRACKERS
        self._tracker = None

    def _view(self, frame: np.ndarray) -> np.ndarray:
        if self.gray and frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if self.halvings:
            h, w = frame.shape[:2]
            size = (w >> self.halvings, h >> self.halvings)
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        return frame

    def start(self, frame: np.ndarray, box: Box) -> None:
        """(Re)start on ``box``; a fresh tracker, since not every OpenCV tracker re-inits."""
        self._tracker = make_tracker(self.name)
        self._tracker.init(self._view(frame), tuple(v >> self.halvings for v in box))

    def update(self, frame: np.ndarray) -> Box | None:
        """The face box in this frame (clipped to it), or None when the tracker lost it."""
        ok, rect = self._tracker.update(self._view(frame))
        if not ok:
            return None
        factor = 1 << self.halvings
        box = Box(*(round(v * factor) for v in rect)).clip(frame.shape[1], frame.shape[0])
        return box if box.w > 1 and box.h > 1 else None


class TrackedFrame(NamedTuple):
    """One output frame: source frame index, the box cut out, how it was found, the face.

    ``source`` is 'detect' (the detection frame), 'track', 'redetect' (tracker lost,
    detector found the face again) or 'hold' (tracker lost, last good box reused while
    re-detection is tried, so the clip keeps one frame per video frame).
    """

    frame_index: int
    box: Box
    source: str
    face: np.ndarray

    @property
    def row(self) -> tuple:
        """(frame, x, y, w, h, source), the layout of ``clipio.write_boxes_csv``."""
        return (self.frame_index, *self.box, self.source)


def crop_face(frame: np.ndarray, box: Box, size: int, color: bool) -> np.ndarray:
    """Cut ``box`` (inside the frame) out and resize it to size x size, grey if not ``color``.

    INTER_AREA averages the pixels it drops when the box is larger than the output;
    smaller boxes are enlarged bilinearly. Grey conversion is done after resizing, on
    fewer pixels.
    """
    patch = frame[box.y : box.y + box.h, box.x : box.x + box.w]
    shrinking = box.w > size or box.h > size
    face = cv2.resize(
        patch, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    if not color and face.ndim == 3:
        face = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    return face


def _redetect(detector: FaceDetector, frame: np.ndarray, last: Box, extend_px: int) -> Box | None:
    """The detected face nearest to where the face was last seen, extended like the first."""
    boxes = detector.detect(frame)
    if not boxes:
        return None
    cx, cy = last.center
    nearest = min(boxes, key=lambda b: (b.center[0] - cx) ** 2 + (b.center[1] - cy) ** 2)
    h, w = frame.shape[:2]
    return extend_box(nearest, extend_px, w, h)


def track_faces(
    frames: Iterable[np.ndarray],
    detection: Detection,
    tracker_name: str = DEFAULT_TRACKER,
    size: int = 160,
    color: bool = True,
    detector: FaceDetector | None = None,
    redetect_tries: int = 3,
    extend_px: int = 10,
    min_face_px: int = TRACK_FACE_PX,
) -> Iterator[TrackedFrame]:
    """Yield the tracked face of every frame from ``detection.frame_index`` on.

    ``frames`` is the whole video again, from frame 0. Frames before the detection
    frame are dropped: detection looks at the first few (neutral) frames only, and the
    clip should start at the first frame where a face was confirmed. The tracker starts
    on the detection box. When it fails, the face is re-detected in that frame and the
    next ones (``redetect_tries`` frames in all) and the tracker restarts on it; until
    then the last good box is reused ('hold'), so the clip keeps one face per frame.
    Raises ItemError when re-detection does not find the face again.
    """
    tracker = FaceTracker(tracker_name, detection.box, min_face_px)
    last_box = detection.box
    started = False
    lost_at = None  # frame where the tracker failed, while re-detection is going on
    tries = 0
    for index, frame in enumerate(frames):
        if index < detection.frame_index:
            continue
        if not started:
            tracker.start(frame, last_box)
            started = True
            yield TrackedFrame(index, last_box, "detect", crop_face(frame, last_box, size, color))
            continue
        if lost_at is None:
            box = tracker.update(frame)
            if box is not None:
                last_box = box
                yield TrackedFrame(index, box, "track", crop_face(frame, box, size, color))
                continue
            lost_at, tries = index, 0
        if detector is None or redetect_tries < 1:
            raise ItemError(
                f"tracker lost the face at frame {lost_at} and re-detection is off",
                hint="Give a detector and redetect_tries > 0, or try another tracker.",
            )
        tries += 1
        found = _redetect(detector, frame, last_box, extend_px)
        if found is not None:
            tracker.start(frame, found)
            last_box, lost_at = found, None
            yield TrackedFrame(index, found, "redetect", crop_face(frame, found, size, color))
        elif tries >= redetect_tries:
            raise ItemError(
                f"tracker lost the face at frame {lost_at} and re-detection failed after "
                f"{tries} tries",
                hint="Try another tracker (e.g. csrt) or check the video.",
            )
        else:
            yield TrackedFrame(index, last_box, "hold", crop_face(frame, last_box, size, color))
    if not started:
        raise ItemError(
            f"the video has no frame {detection.frame_index}, where the face was detected",
            hint="Rerun detection; the video may have changed.",
        )


def compare_trackers(
    videos: Sequence,
    tracker_names: Sequence[str],
    detector: FaceDetector,
    read_frames: Callable[[object], Iterable[np.ndarray]],
    size: int = 160,
    frames_allowed: int = 10,
    extend_px: int = 10,
    redetect_tries: int = 3,
) -> list[dict]:
    """Track every video with each tracker and tabulate failures and speed (paper 000 Table 1).

    Detection runs once per video, untimed; a video without a usable detection counts
    as failed for every tracker. Timing covers decoding, tracking, cropping and
    resizing, i.e. the track stage without writing. ``read_frames(video)`` decodes one
    video lazily.
    """
    detections = []
    for video in videos:
        try:
            detection = detect_first_face(read_frames(video), detector, frames_allowed, extend_px)
        except ItemError as exc:
            detection = exc
        detections.append((video, detection))
    rows = []
    for name in tracker_names:
        make_tracker(name)  # unknown names fail before any timing
        failures, frames, seconds = [], 0, 0.0
        for video, detection in detections:
            if isinstance(detection, ItemError):
                failures.append((video, str(detection)))
                continue
            start = time.perf_counter()
            try:
                for _ in track_faces(
                    read_frames(video), detection, name, size,
                    detector=detector, redetect_tries=redetect_tries, extend_px=extend_px,
                ):
                    frames += 1
            except ItemError as exc:
                failures.append((video, str(exc)))
            seconds += time.perf_counter() - start
        rows.append(
            {
                "tracker": name,
                "items": len(videos),
                "failed": len(failures),
                "seconds": seconds,
                "frames": frames,
                "fps": frames / seconds if seconds else 0.0,
                "failures": failures,
            }
        )
    return rows
