"""Reading the two source layouts users bring: video files and frame-sequence folders.

BU-4DFE ships videos; CK+ ships one folder of numbered PNGs per sequence. Both are read as
one stream of BGR frames, so every later stage is layout-agnostic. Problems with one
source raise ItemError (the item fails, the others go on).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import ItemError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A frame larger than this (8K) is refused before decoding eats the memory.
MAX_PIXELS = 7680 * 4320
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass(frozen=True)
class MediaInfo:
    n_frames: int
    fps: float
    width: int
    height: int


def printable(path: str | Path) -> str:
    """A path as text even when its bytes are not UTF-8 (shown as \\xff escapes)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def opencv_name(path: Path, folder: Path | None = None) -> str:
    """The name to hand OpenCV: it crashes (segfault) on names that are not UTF-8."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ItemError(f"file name '{printable(path.name)}' is not valid UTF-8",
                        path=printable(folder or path),
                        hint="Rename the file (OpenCV cannot open such names)") from None
    return name


def is_sequence_dir(path: Path) -> bool:
    """A folder holding image files directly is one frame sequence."""
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())


def sequence_frames(folder: Path) -> list[Path]:
    """Image files of a sequence sorted by frame number; a gap in the numbers fails."""
    images = [p for p in folder.iterdir()
              if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
              and not p.name.startswith(".")]
    if not images:
        raise ItemError("no image files in the sequence folder", path=folder,
                        hint="Remove the folder or add its frames")
    numbered = []
    for image in images:
        match = _LAST_NUMBER.search(image.stem)
        if not match:
            raise ItemError(f"frame file {image.name!r} has no frame number", path=folder,
                            hint="Name frames with a number, e.g. S005_001_00000001.png")
        numbered.append((int(match.group(1)), image))
    numbered.sort()
    numbers = [n for n, _ in numbered]
    for previous, current in zip(numbers, numbers[1:]):
        if current == previous:
            raise ItemError(f"frame number {current} appears twice", path=folder,
                            hint="Remove the duplicate frame file")
        if current != previous + 1:
            raise ItemError(f"frame {previous + 1} is missing (gap between {previous} and "
                            f"{current})", path=folder,
                            hint="Restore the missing frames or exclude this sequence")
    return [image for _, image in numbered]


def iter_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield BGR uint8 frames of a video file or a frame-sequence folder."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_sequence(path)
    else:
        yield from _iter_video(path)


def _iter_video(path: Path) -> Iterator[np.ndarray]:
    if not path.is_file():
        raise ItemError("video file not found", path=path, hint="Re-run `fer index`")
    if path.stat().st_size == 0:
        raise ItemError("video file is empty (0 bytes)", path=path,
                        hint="Copy the file again from the original dataset")
    capture = cv2.VideoCapture(opencv_name(path))
    try:
        if not capture.isOpened():
            raise ItemError("cannot open the video (corrupt or unsupported codec)", path=path,
                            hint="Check it with ffprobe or re-encode it")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > MAX_PIXELS:
            raise ItemError(f"resolution {width}x{height} is larger than 8K", path=path,
                            hint="Downscale the video before indexing")
        count = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield frame
        if count == 0:
            raise ItemError("no decodable frames in the video", path=path,
                            hint="The file is truncated or corrupt; copy it again")
    finally:
        capture.release()


def _iter_sequence(folder: Path) -> Iterator[np.ndarray]:
    size = None
    for image_path in sequence_frames(folder):
        frame = cv2.imread(opencv_name(image_path, folder), cv2.IMREAD_COLOR)
        if frame is None:
            raise ItemError(f"frame {image_path.name!r} cannot be decoded", path=folder,
                            hint="Replace the damaged image or exclude this sequence")
        if size is None:
            size = frame.shape[:2]
            if size[0] * size[1] > MAX_PIXELS:
                raise ItemError(f"frame size {size[1]}x{size[0]} is larger than 8K",
                                path=folder, hint="Downscale the frames before indexing")
        elif frame.shape[:2] != size:
            raise ItemError(f"frame {image_path.name!r} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"the sequence started at {size[1]}x{size[0]}", path=folder,
                            hint="All frames of a sequence must have one size")
        yield frame


def probe(path: str | Path, sequence_fps: float = 25.0) -> MediaInfo:
    """Count frames by decoding them all (container frame counts are often wrong); a
    count far below the header's means a truncated file."""
    path = Path(path)
    fps, reported = sequence_fps, 0
    if path.is_file():
        capture = cv2.VideoCapture(opencv_name(path))
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        if not 0 < fps < 1000:
            fps = sequence_fps
    n_frames, height, width = 0, 0, 0
    for frame in iter_frames(path):
        if n_frames == 0:
            height, width = frame.shape[:2]
        n_frames += 1
    # A dataset video cut short still decodes up to the cut; its header still counts all
    # frames. Header counts may be off by a frame or two (estimated from the duration).
    if n_frames < 0.9 * reported:
        raise ItemError(f"only {n_frames} of the {reported} frames its header lists decode "
                        "(truncated?)", path=path,
                        hint="Copy the file again from the original dataset (or re-encode "
                             "it, if it has a variable frame rate)")
    return MediaInfo(n_frames=n_frames, fps=round(float(fps), 3), width=width, height=height)
