"""Lossless face-clip files: atomic writing, bit-exact reading, per-frame box tables.

Tracked faces are stored losslessly so that later stages see exactly the pixels the
tracker cropped (paper 000 sec. 2.2, thesis 3.2.1). Both codecs were checked bit-exact
through OpenCV 5.1's FFmpeg backend, except HuffYUV for grey, which does not read back
exactly and is refused. Costs per 160x160 frame on a 2-core machine: FFV1 colour ~1.4 ms
to write and ~2 ms to read, FFV1 grey ~0.5 / 0.8 ms, HuffYUV colour ~0.2 / 0.5 ms (files
~30% larger than FFV1). OpenCV passes no encoder options through, so FFV1 cannot be tuned.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from fercli.errors import ArtifactError, ConfigError, FerError
from fercli.workspace import atomic_write_text, disk_full

CODECS = {"ffv1": "FFV1", "huffyuv": "HFYU"}
GRAY_EXACT_CODECS = {"ffv1"}
BOX_COLUMNS = ("frame", "x", "y", "w", "h", "source")


def temp_path_for(path: Path) -> Path:
    """Hidden sibling of ``path`` that keeps its extension, so the container is the same;
    the writer's pid in the name lets an interrupted run remove exactly its own leftovers."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


class ClipWriter:
    """Context manager that writes a square clip and publishes it only on a clean exit.

    Frames go to a hidden temporary file next to ``path``; leaving the ``with`` block
    normally renames it over ``path`` (atomic on one file system), leaving it through an
    exception deletes it. So ``path`` either holds a whole clip or does not exist.

    Encoding runs in a background thread (OpenCV releases the GIL while it encodes), so
    it overlaps with decoding and tracking the next frames: FFV1 takes ~1.5 ms for a
    160x160 colour frame, more than tracking it. A frame must not be changed after
    ``write``; at most ``QUEUE_FRAMES`` wait to be encoded.
    """

    QUEUE_FRAMES = 16

    def __init__(
        self, path: str | Path, size: int, color: bool, fps: float, codec: str = "ffv1"
    ):
        if codec not in CODECS:
            raise ConfigError(
                f"unknown clip codec {codec!r}", hint=f"Use one of: {', '.join(CODECS)}."
            )
        if not color and codec not in GRAY_EXACT_CODECS:
            raise ConfigError(
                f"codec {codec!r} does not store grey frames losslessly",
                hint="Use codec 'ffv1' for grey clips.",
            )
        self.path = Path(path)
        self.size = size
        self.color = color
        self.fps = fps
        self.codec = codec
        self.frames_written = 0
        self._temp = temp_path_for(self.path)
        self._writer: cv2.VideoWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._encoder: threading.Thread | None = None
        self._encoder_error: cv2.error | None = None

    def __enter__(self):
        self._temp.unlink(missing_ok=True)  # left by a killed run
        fourcc = cv2.VideoWriter_fourcc(*CODECS[self.codec])
        writer = cv2.VideoWriter(
            str(self._temp), fourcc, self.fps, (self.size, self.size), isColor=self.color
        )
        if not writer.isOpened():
            self._temp.unlink(missing_ok=True)
            raise FerError(
                f"cannot open a {self.codec} video writer",
                path=self.path,
                hint="Check that the folder exists and is writable and that the extension "
                "suits the codec (.mkv or .avi).",
            )
        self._writer = writer
        self._encoder = threading.Thread(target=self._encode, name="clip-encoder", daemon=True)
        self._encoder.start()
        return self

    def _encode(self) -> None:
        while (frame := self._queue.get()) is not None:
            if self._encoder_error is None:
                try:
                    self._writer.write(frame)
                except cv2.error as exc:  # re-raised in the writing thread
                    self._encoder_error = exc

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame; its shape must match the clip (cv2 would drop it silently)."""
        expected = (self.size, self.size, 3) if self.color else (self.size, self.size)
        if frame.shape != expected or frame.dtype != np.uint8:
            raise ValueError(
                f"frame of shape {frame.shape} {frame.dtype} does not fit a clip of "
                f"shape {expected} uint8"
            )
        if self._encoder_error is not None:
            raise self._encoder_error
        self._queue.put(frame)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._encoder.join()
        self._writer.release()
        try:
            if exc_type is None and self._encoder_error is None:
                os.replace(self._temp, self.path)
                return
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise disk_full(self.path) from exc
            if exc_type is None:
                raise self._encoder_error
        finally:
            self._temp.unlink(missing_ok=True)  # a half-written clip never stays behind


def iter_clip(path: str | Path, color: bool = True) -> Iterator[np.ndarray]:
    """Decode a video frame by frame: BGR (H, W, 3), or grey (H, W) when ``color`` is False.

    OpenCV hands grey FFV1 back as three equal channels; BGR->grey of equal channels
    returns the same value (the weights sum to one in fixed point), so a grey clip
    reads back bit-exact.
    """
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ArtifactError(
                "cannot open the video", path=path, hint="Check that the file exists and plays."
            )
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame if color else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    finally:
        capture.release()


def read_clip(path: str | Path, color: bool = True) -> np.ndarray:
    """A whole clip as one array (T, H, W, 3) or (T, H, W); for short face clips only."""
    frames = list(iter_clip(path, color))
    if not frames:
        raise ArtifactError("the clip has no frames", path=path,
                            hint="Rerun the stage that made it.")
    return np.stack(frames)


def write_boxes_csv(path: str | Path, rows: Iterable[tuple]) -> None:
    """Write per-frame boxes (frame, x, y, w, h, source) atomically, one row per frame."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(BOX_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
