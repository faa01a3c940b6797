"""Follow the detected face through a video and cut it out frame by frame.

Tracking from one detection is faster than detecting on every frame and keeps the
box steady (thesis 2.1.1 and 3.2.1; paper 000 sec. 2.2 and Table 1, where
MedianFlow was the fastest of CSRT, KCF and MedianFlow with no failed sample).
Everything here streams: one frame in, one face out, so no video is held in memory.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from fercli.core.errors import ConfigError, ItemError
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
# BoxSmoother: how fast the one-euro filter opens with the box's speed (in face widths per
# frame), and the cutoff (cycles per frame) that smooths that speed: 0.04 is Casiez et al.'s
# 1 Hz at 25 fps. Beta 300 kept the lag under 0.4 px on faces moving 2-4 px per frame while
# halving the box wobble on the two real CK+ videos (measured for issue 11).
SMOOTH_BETA = 300.0
SPEED_CUTOFF = 0.04


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
    halvings, side = 0, int(min(box.w, box.h))
    while min_face_px and side >> (halvings + 1) >= min_face_px:
        halvings += 1
    return halvings


class FaceTracker:
    """An OpenCV tracker that works on a reduced copy of each frame, in full-frame boxes.

    Tracking cost grows with the frame, not the face: MedianFlow takes ~7 ms on a
    1280x960 frame and ~0.6 ms on the same frame halved, with the same face. So frames
    are halved while the face stays at least ``min_face_px`` wide (a 160 px BU-4DFE face
    is tracked at 80 px; the sample videos' ~100 px faces are not reduced) and handed to
    grey-native trackers as grey.

    Only the tracker's *motion* is taken from the reduced frame: its rect is read as a
    shift and scale against the rect it was started on, and applied in float to the
    full-resolution start box. Scaling the reduced rect back instead would snap every box
    to 2**halvings px, so a still face would jump by up to that much at the first tracked
    frame (a spike in trim's motion score) and later crops would move in such steps.
    """

    def __init__(self, name: str, first_box: Box, min_face_px: int = TRACK_FACE_PX):
        self.name = name
        self.halvings = halvings_for(first_box, min_face_px)
        self.gray = name in GRAY_TRACKERS
        self._tracker = None
        self._start_box = first_box
        self._start_rect = (0, 0, 1, 1)

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
        factor = 1 << self.halvings
        # Whole pixels: the newer OpenCV trackers (KCF, CSRT, MIL) accept nothing else.
        x, y = round(box.x / factor), round(box.y / factor)
        rect = (x, y, max(round((box.x + box.w) / factor) - x, 1),
                max(round((box.y + box.h) / factor) - y, 1))
        self._tracker = make_tracker(self.name)
        self._tracker.init(self._view(frame), rect)
        self._start_box, self._start_rect = Box(*map(float, box)), rect

    def locate(self, frame: np.ndarray) -> Box | None:
        """The face box in this frame in sub-pixel floats (clipped), or None when lost."""
        ok, rect = self._tracker.update(self._view(frame))
        if not ok or rect[2] <= 0 or rect[3] <= 0:
            return None
        factor = 1 << self.halvings
        x0, y0, w0, h0 = self._start_rect
        start = self._start_box
        w, h = start.w * rect[2] / w0, start.h * rect[3] / h0
        cx = start.x + start.w / 2 + factor * (rect[0] + rect[2] / 2 - x0 - w0 / 2)
        cy = start.y + start.h / 2 + factor * (rect[1] + rect[3] / 2 - y0 - h0 / 2)
        box = Box(cx - w / 2, cy - h / 2, w, h).clip(frame.shape[1], frame.shape[0])
        return box if box.w > 1 and box.h > 1 else None

    def update(self, frame: np.ndarray) -> Box | None:
        """``locate`` rounded to whole pixels (for drawing and per-frame prediction)."""
        box = self.locate(frame)
        return None if box is None else box.rounded()


class BoxSmoother:
    """One-euro filter (Casiez et al., CHI 2012) on a box's centre and size, frame by frame.

    ``strength`` is the weight the previous box keeps while the face is still (0 = off):
    the tracker's sub-pixel wobble is averaged away there. The filter opens up as the box
    moves (by ``beta`` x its speed in face widths per frame), so a moving head is followed
    with little lag, which a plain moving average of the same strength would not do.
    """

    def __init__(self, strength: float = 0.0, beta: float = SMOOTH_BETA):
        if not 0 <= strength < 1:
            raise ConfigError(f"track.smooth must be in [0, 1), got {strength}",
                              hint="Use 0 (off) up to e.g. 0.9 (strong).")
        self.strength = strength
        self.beta = beta
        # Cutoff (cycles per frame) whose one-step weight on the new value is 1 - strength.
        self._min_cutoff = (1 - strength) / (2 * math.pi * strength) if strength else 0.0
        self._value: np.ndarray | None = None
        self._speed = np.zeros(4)

    def reset(self, box: Box) -> Box:
        """Start again from ``box`` (after a detection or re-detection) and return it."""
        self._value = np.array([box.x + box.w / 2, box.y + box.h / 2, box.w, box.h])
        self._speed = np.zeros(4)
        return box

    def update(self, box: Box, frame_w: int, frame_h: int) -> Box:
        """The smoothed box for this frame's tracked ``box``, clipped to the frame."""
        if self._value is None or not self.strength:
            return self.reset(box)
        raw = np.array([box.x + box.w / 2, box.y + box.h / 2, box.w, box.h])
        self._speed += _alpha(SPEED_CUTOFF) * (raw - self._value - self._speed)
        relative_speed = np.abs(self._speed) / max(self._value[2], self._value[3], 1.0)
        self._value += _alpha(self._min_cutoff + self.beta * relative_speed) * (raw - self._value)
        cx, cy, w, h = (float(v) for v in self._value)
        return Box(cx - w / 2, cy - h / 2, w, h).clip(frame_w, frame_h)


def _alpha(cutoff):
    """One-step weight of the new sample for a low-pass of this cutoff (cycles per frame)."""
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * np.maximum(cutoff, 1e-9)))


class TrackedFrame(NamedTuple):
    """One output frame: source frame index, the box cut out, how it was found, the face.

    ``source`` is 'detect' (the detection frame), 'track', 'redetect' (tracker lost,
    detector found the face again), 'hold' (tracker lost, last good box reused while
    re-detection is tried, so the clip keeps one frame per video frame) or 'full'
    (no detector: the frame is the face, see ``full_frames``).
    """

    frame_index: int
    box: Box
    source: str
    face: np.ndarray

    @property
    def row(self) -> tuple:
        """(frame, x, y, w, h, source), the layout of ``clipio.write_boxes_csv``.

        Sub-pixel boxes are written to 1/100 px; whole-pixel ones stay integers.
        """
        values = (v if isinstance(v, int) else round(float(v), 2) for v in self.box)
        return (self.frame_index, *values, self.source)


def crop_face(frame: np.ndarray, box: Box, size: int, color: bool) -> np.ndarray:
    """Cut ``box`` (inside the frame, sub-pixel allowed) out as size x size, grey if not ``color``.

    The crop is a continuous function of the box: a box that moves by a hundredth of a
    pixel changes the crop by about that much, whole-pixel boxes included (rounding to
    whole pixels would shift a still face by up to half a pixel from frame to frame; an
    integer patch plus a fractional shift changes the blur whenever the box crosses a
    pixel). The box is sampled bilinearly onto an m-times finer grid, m the smallest whole
    factor that makes that grid at least as fine as the frame's pixels, and averaged back
    m x m (INTER_AREA), which is the pixel averaging of a plain shrinking resize. Grey
    conversion is done last, on fewer pixels.
    """
    x, y, w, h = (float(v) for v in box)
    m = max(1, math.ceil(max(w, h) / size - 1e-9))
    fine = size * m
    sx, sy = w / fine, h / fine  # frame pixels per fine-grid pixel, centres aligned
    to_frame = np.array([[sx, 0, x + sx / 2 - 0.5], [0, sy, y + sy / 2 - 0.5]])
    face = cv2.warpAffine(frame, to_frame, (fine, fine),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    if m > 1:
        face = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
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
    smooth: float = 0.0,
) -> Iterator[TrackedFrame]:
    """Yield the tracked face of every frame from ``detection.frame_index`` on.

    ``frames`` is the whole video again, from frame 0. Frames before the detection
    frame are dropped: detection looks at the first few (neutral) frames only, and the
    clip should start at the first frame where a face was confirmed. The tracker starts
    on the detection box. When it fails, the face is re-detected in that frame and the
    next ones (``redetect_tries`` frames in all) and the tracker restarts on it; until
    then the last good box is reused ('hold'), so the clip keeps one face per frame.
    Every frame, the first included, is cut from the same sub-pixel box track with the
    same resampling (``crop_face``); ``smooth`` > 0 smooths that track (``BoxSmoother``).
    Raises ItemError when re-detection does not find the face again.
    """
    tracker = FaceTracker(tracker_name, detection.box, min_face_px)
    smoother = BoxSmoother(smooth)
    last_box = detection.box
    started = False
    lost_at = None  # frame where the tracker failed, while re-detection is going on
    tries = 0
    for index, frame in enumerate(frames):
        if index < detection.frame_index:
            continue
        if not started:
            tracker.start(frame, last_box)
            smoother.reset(last_box)
            started = True
            yield TrackedFrame(index, last_box, "detect", crop_face(frame, last_box, size, color))
            continue
        if lost_at is None:
            box = tracker.locate(frame)
            if box is not None:
                last_box = smoother.update(box, frame.shape[1], frame.shape[0])
                yield TrackedFrame(index, last_box, "track",
                                   crop_face(frame, last_box, size, color))
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
            last_box, lost_at = smoother.reset(found), None
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


def full_frames(
    frames: Iterable[np.ndarray], size: int = 160, color: bool = True
) -> Iterator[TrackedFrame]:
    """Every frame whole, resized to size x size: for footage that is already face crops.

    With ``detect.detector: none`` there is nothing to track (the face fills the frame),
    so no tracker runs and every frame is marked 'full'.
    """
    for index, frame in enumerate(frames):
        box = Box(0, 0, frame.shape[1], frame.shape[0])
        yield TrackedFrame(index, box, "full", crop_face(frame, box, size, color))


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
