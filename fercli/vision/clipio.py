"""Lossless face-clip files: atomic, byte-reproducible writing, bit-exact reading, box tables.

Tracked faces are stored losslessly so that later stages see exactly the pixels the
tracker cropped (paper 000 sec. 2.2, thesis 3.2.1). Clips are written through PyAV
(FFmpeg) with the muxers' and encoders' bit-exact flags, so the same frames always give the
same bytes (OpenCV's writer passes no options, and Matroska then stores a random segment
UID) and a re-track leaves every clip hash unchanged. They are read back through OpenCV.

Codecs, measured on real 160x160 face crops on a 2-core machine (issue 13); ms per frame:

  codec     stream                                     write colour/grey  read   KiB/frame
  x264      lossless H.264 (qp 0, ultrafast), RGB      0.27 / 0.15        0.30   9 / 3
  ffv1      FFV1 (every frame independent), BGR0/grey  1.04 / 0.39        1.2    20 / 9.5
  huffyuv   HuffYUV, RGB; grey not exact, refused      0.18 / -           0.33   34 / -

All read back bit-exact, grey included (grey x264 is stored full-range, so no level
scaling touches it). x264 is the default: cheap to write and to read, the smallest, and a
video that VLC, mpv and ffplay play. Its frames build on earlier ones, which costs nothing
here since every reader decodes a clip from its start. The bytes are reproducible for one
PyAV/FFmpeg build (x264 runs single-threaded: its output depends on the thread count).
"""
from __future__ import annotations

import csv
import errno
import io
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import ArtifactError, ConfigError, FerError
from fercli.core.workspace import atomic_write_text, disk_full

BOX_COLUMNS = ("frame", "x", "y", "w", "h", "source")
BITEXACT = {"fflags": "+bitexact"}  # muxer: no random UID, no library version in the file


@dataclass(frozen=True)
class ClipCodec:
    """How one ``track.codec`` is written: FFmpeg muxer and suffix, encoder and pixel format
    for colour and for grey frames (None: grey is not stored exactly), encoder options."""

    suffix: str
    muxer: str
    color: tuple[str, str]
    gray: tuple[str, str] | None
    options: dict = field(default_factory=dict)


CODECS = {
    # One thread each: x264's output depends on its thread count, and the tracker runs alongside.
    "x264": ClipCodec(".mkv", "matroska", ("libx264rgb", "bgr24"), ("libx264", "gray"),
                      {"qp": "0", "preset": "ultrafast", "threads": "1"}),
    "ffv1": ClipCodec(".mkv", "matroska", ("ffv1", "bgr0"), ("ffv1", "gray"), {"threads": "1"}),
    "huffyuv": ClipCodec(".avi", "avi", ("huffyuv", "rgb24"), None, {"threads": "1"}),
}
GRAY_EXACT_CODECS = {name for name, codec in CODECS.items() if codec.gray}
CLIP_SUFFIXES = tuple(sorted({codec.suffix for codec in CODECS.values()}))


def clip_rate(fps: float) -> Fraction:
    """A frame rate as FFmpeg wants it: 25 -> 25, 29.97 -> 2997/100."""
    return Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)


def temp_path_for(path: Path) -> Path:
    """Hidden sibling of ``path`` that keeps its extension, so the container is the same;
    the writer's pid in the name lets an interrupted run remove exactly its own leftovers."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


class ClipWriter:
    """Context manager that writes a square clip and publishes it only on a clean exit.

    Frames go to a hidden temporary file next to ``path``; leaving the ``with`` block
    normally renames it over ``path`` (atomic on one file system), leaving it through an
    exception deletes it. So ``path`` either holds a whole clip or does not exist. The same
    frames (and fps) always give the same bytes.

    Encoding runs in a background thread (FFmpeg releases the GIL while it encodes), so
    it overlaps with decoding and tracking the next frames. A frame must not be changed
    after ``write``; at most ``QUEUE_FRAMES`` wait to be encoded.
    """

    QUEUE_FRAMES = 16

    def __init__(
        self, path: str | Path, size: int, color: bool, fps: float, codec: str = "x264"
    ):
        if codec not in CODECS:
            raise ConfigError(
                f"unknown clip codec {codec!r}", hint=f"Use one of: {', '.join(CODECS)}."
            )
        if not color and codec not in GRAY_EXACT_CODECS:
            raise ConfigError(
                f"codec {codec!r} does not store grey frames losslessly",
                hint=f"Use codec {' or '.join(sorted(GRAY_EXACT_CODECS))} for grey clips.",
            )
        self.path = Path(path)
        self.size = size
        self.color = color
        self.fps = fps
        self.codec = codec
        self.frames_written = 0
        self._temp = temp_path_for(self.path)
        self._container = None
        self._stream = None
        self._queue: queue.Queue = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._encoder: threading.Thread | None = None
        self._encoder_error: BaseException | None = None

    def __enter__(self):
        import av  # PyAV: only the writers need it

        spec = CODECS[self.codec]
        encoder, pix_fmt = spec.color if self.color else spec.gray
        self._temp.unlink(missing_ok=True)  # left by a killed run
        try:
            self._temp.touch()  # FFmpeg opens the file only at the first frame
            container = av.open(str(self._temp), "w", format=spec.muxer, options=BITEXACT)
        except OSError as exc:
            self._temp.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise disk_full(self.path) from exc
            raise FerError(
                f"cannot open a {self.codec} video writer ({exc.strerror or exc})",
                path=self.path,
                hint="Check that the folder exists and is writable.",
            ) from exc
        stream = container.add_stream(encoder, rate=clip_rate(self.fps),
                                      options={"flags": "+bitexact", **spec.options})
        stream.width = stream.height = self.size
        stream.pix_fmt = pix_fmt
        if not self.color:  # full range: grey values pass through YUV untouched
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        self._container, self._stream = container, stream
        self._frame = _FRAME_MAKERS[pix_fmt]
        self._encoder = threading.Thread(target=self._encode, name="clip-encoder", daemon=True)
        self._encoder.start()
        return self

    def _encode(self) -> None:
        index = 0
        while (face := self._queue.get()) is not None:
            if self._encoder_error is None:
                try:
                    frame = self._frame(face)
                    frame.pts = index
                    index += 1
                    self._container.mux(self._stream.encode(frame))
                except Exception as exc:  # noqa: BLE001 - re-raised in the writing thread
                    self._encoder_error = exc
        if self._encoder_error is None:
            try:
                self._container.mux(self._stream.encode(None))  # flush
            except Exception as exc:  # noqa: BLE001
                self._encoder_error = exc

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame; its shape must match the clip."""
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
        try:
            try:
                self._container.close()
            except Exception as close_error:  # noqa: BLE001 - e.g. the disk filled up
                if self._encoder_error is None:
                    self._encoder_error = close_error
            if exc_type is None and self._encoder_error is None:
                os.replace(self._temp, self.path)
                return
            for error in (exc, self._encoder_error):
                if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                    raise disk_full(self.path) from error
            if exc_type is None:
                raise self._encoder_error
        finally:
            self._temp.unlink(missing_ok=True)  # a half-written clip never stays behind


def _bgr24(face: np.ndarray):
    import av

    return av.VideoFrame.from_ndarray(face, format="bgr24")


def _rgb24(face: np.ndarray):
    import av

    return av.VideoFrame.from_ndarray(cv2.cvtColor(face, cv2.COLOR_BGR2RGB), format="rgb24")


def _gray(face: np.ndarray):
    import av

    return av.VideoFrame.from_ndarray(face, format="gray")


def _bgr0(face: np.ndarray):
    """FFV1 codes colour as BGR0 (BGR plus an unused byte), which PyAV cannot convert from."""
    import av

    h, w = face.shape[:2]
    frame = av.VideoFrame(w, h, "bgr0")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(h, plane.line_size)
    rows[:, : 4 * w] = cv2.cvtColor(face, cv2.COLOR_BGR2BGRA).reshape(h, 4 * w)
    return frame


_FRAME_MAKERS = {"bgr24": _bgr24, "rgb24": _rgb24, "gray": _gray, "bgr0": _bgr0}


def iter_clip(path: str | Path, color: bool = True) -> Iterator[np.ndarray]:
    """Decode a video frame by frame: BGR (H, W, 3), or grey (H, W) when ``color`` is False.

    Reads every clip ``ClipWriter`` writes and the OpenCV-written FFV1/HuffYUV clips of
    earlier versions. OpenCV hands grey clips back as three equal channels; BGR->grey of
    equal channels returns the same value (the weights sum to one in fixed point), so a
    grey clip reads back bit-exact.
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


def kept_frames(clip: str | Path, first: int, last: int, color: bool = True):
    """The frames trim kept (inclusive range) of a lossless clip."""
    return islice(iter_clip(clip, color), first, last + 1)
