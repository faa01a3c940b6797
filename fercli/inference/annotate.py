"""Annotated copies of videos: each face's box with its person id and current label.

`fer predict --write` and `fer live --write` draw the same way, so a reader can check by eye
which face got which label (and that a person keeps one id across a cut).
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import ConfigError, FerError
from ..core.workspace import atomic_path

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "XVID", ".mov": "mp4v"}
PALETTE = [(0, 220, 0), (255, 160, 0), (0, 160, 255), (220, 0, 220), (0, 220, 220),
           (160, 80, 255)]  # BGR, one colour per person id (cycled)


def person_colour(person: int) -> tuple[int, int, int]:
    return PALETTE[(person - 1) % len(PALETTE)]


@contextmanager
def video_writer(path: Path | None, size: tuple[int, int], fps: float):
    """cv2.VideoWriter into a temporary name, renamed into place when the loop ends."""
    if path is None:
        yield None
        return
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ConfigError(f"cannot write {path.suffix or 'files without a suffix'}",
                          hint=f"Use one of: {', '.join(VIDEO_CODECS)}")
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not writer.isOpened():
            raise FerError(f"cannot open a {codec} video writer", path=path,
                           hint="Check that the folder is writable, or try .avi")
        try:
            yield writer
        finally:
            writer.release()


def draw_face(frame: np.ndarray, person: int, box, text: str) -> None:
    """Draw (in place) a person's box with ``P<id> <text>`` under it (above at the edge)."""
    colour = person_colour(person)
    box = box.rounded()  # tracker boxes are sub-pixel: draw the nearest pixels
    cv2.rectangle(frame, (box.x, box.y), (box.x + box.w, box.y + box.h), colour, 2)
    below = box.y + box.h + 20
    y = below if below < frame.shape[0] else max(box.y - 8, 14)
    cv2.putText(frame, f"P{person} {text}".strip(), (box.x, y), cv2.FONT_HERSHEY_SIMPLEX,
                0.55, colour, 2, cv2.LINE_AA)


class PersonLabels:
    """A person's label at any time: the window whose centre is nearest (window mode) or the
    one label of the whole video."""

    def __init__(self, entry: dict):
        windows = [w for w in entry.get("windows", []) if "label" in w]
        self.centres = [(w["start_s"] + w["end_s"]) / 2 for w in windows]
        self.windows = windows
        self.whole = (f"{entry['label']} {entry['confidence']:.0%}"
                      if "label" in entry and "windows" not in entry else entry["status"])
        self.status = entry["status"]

    def at(self, seconds: float) -> str:
        if not self.windows:
            return self.whole
        i = bisect_right(self.centres, seconds)
        near = min((j for j in (i - 1, i) if 0 <= j < len(self.windows)),
                   key=lambda j: abs(self.centres[j] - seconds))
        window = self.windows[near]
        if not window["start_s"] <= seconds <= window["end_s"]:
            return ""
        return f"{window['label']} {window['confidence']:.0%}"


def write_annotated(frames: Iterable[np.ndarray], out: Path, fps: float,
                    boxes: dict[int, Sequence[tuple[int, object]]], persons: Sequence[dict],
                    every: int) -> Path | None:
    """Each frame with the boxes of its latest sampled frame (kept for ``every`` frames)."""
    labels = {p["person"]: PersonLabels(p) for p in persons}
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        return None
    current: Sequence = ()
    with video_writer(out, (first.shape[1], first.shape[0]), fps) as writer:
        for index, frame in enumerate(chain([first], iterator)):
            if index % every == 0:
                current = boxes.get(index, ())
            drawn = frame.copy()
            for person, box in current:
                text = labels[person].at(index / fps) if person in labels else ""
                draw_face(drawn, person, box, text)
            writer.write(drawn)
    return out
