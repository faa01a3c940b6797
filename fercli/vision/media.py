"""Reading the source layouts users bring as one stream of BGR frames.

Four kinds of source, told apart by the path alone so that every stage reads any of them
with the same ``iter_frames(path)`` call:

- a video file (BU-4DFE ships ``.avi``);
- a frame-sequence folder (CK+ ships one folder of numbered PNGs per sequence);
- a frame list, a small text file ending in ``.frames`` that names the images of one
  sequence in order, one path per line (relative paths are relative to the list's folder,
  ``#`` starts a comment). `fer index` writes one for every sequence it groups out of a
  folder holding many sequences (CK+48: ``anger/S010_004_00000017.png`` ...);
- a single image (JAFFE, FER2013-style folders): a one-frame item.

Problems with one source raise ItemError (the item fails, the others go on).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue
from typing import Iterator

import cv2
import numpy as np

from ..core.errors import ItemError, access_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FRAME_LIST_SUFFIX = ".frames"
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


def source_kind(path: str | Path) -> str:
    """``sequence`` (a folder), ``frames`` (a frame list), ``image`` or ``video``."""
    path = Path(path)
    if path.is_dir():
        return "sequence"
    suffix = path.suffix.lower()
    if suffix == FRAME_LIST_SUFFIX:
        return "frames"
    return "image" if suffix in IMAGE_EXTENSIONS else "video"


def frame_number(name: str) -> int | None:
    """The last number in a file's stem (``S005_001_00000011.png`` -> 11), if any."""
    match = _LAST_NUMBER.search(Path(name).stem)
    return int(match.group(1)) if match else None


def check_frame_numbers(numbered: list[tuple[int, str]], source: object) -> list[str]:
    """Names sorted by frame number; a repeated or missing number fails the item."""
    numbered = sorted(numbered)
    numbers = [n for n, _ in numbered]
    for previous, current in zip(numbers, numbers[1:]):
        if current == previous:
            raise ItemError(f"frame number {current} appears twice", path=source,
                            hint="Remove the duplicate frame file")
        if current != previous + 1:
            raise ItemError(f"frame {previous + 1} is missing (gap between {previous} and "
                            f"{current})", path=source,
                            hint="Restore the missing frames or exclude this sequence")
    return [name for _, name in numbered]


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
        number = frame_number(image.name)
        if number is None:
            raise ItemError(f"frame file {image.name!r} has no frame number", path=folder,
                            hint="Name frames with a number, e.g. S005_001_00000001.png")
        numbered.append((number, image.name))
    return [folder / name for name in check_frame_numbers(numbered, folder)]


def frame_list_text(frames: list[Path]) -> str:
    """The content of a ``.frames`` file naming ``frames`` (absolute paths) in order."""
    return "# fercli frame list: one image per line, in frame order\n" + \
        "".join(f"{Path(f).resolve()}\n" for f in frames)


def read_frame_list(path: Path) -> list[Path]:
    """The images a ``.frames`` file names, in its order."""
    if not path.is_file():
        raise ItemError("frame list not found", path=path, hint="Re-run `fer index`")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ItemError(f"frame list cannot be read ({exc})", path=path,
                        hint="Re-run `fer index --force`") from None
    frames = [path.parent / line.strip() for line in lines
              if line.strip() and not line.lstrip().startswith("#")]
    if not frames:
        raise ItemError("frame list names no images", path=path,
                        hint="Re-run `fer index` or add one image path per line")
    return frames


def iter_frames(path: str | Path, prefetch: int = 0) -> Iterator[np.ndarray]:
    """Yield BGR uint8 frames of a video, a sequence folder, a frame list or an image.

    ``prefetch`` > 0 decodes up to that many frames ahead in a background thread
    (``read_ahead``), so decoding overlaps the caller's work; 0 decodes on demand.
    """
    frames = _frames(Path(path))
    return read_ahead(frames, prefetch) if prefetch > 0 else frames


def _frames(path: Path) -> Iterator[np.ndarray]:
    kind = source_kind(path)
    if kind == "sequence":
        yield from _iter_images(sequence_frames(path), path)
    elif kind == "frames":
        yield from _iter_images(read_frame_list(path), None)
    elif kind == "image":
        if not path.is_file():
            raise ItemError("image file not found", path=path, hint="Re-run `fer index`")
        yield from _iter_images([path], None)
    else:
        yield from _iter_video(path)


_FRAME, _END, _ERROR = range(3)


def read_ahead(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """``frames``, produced by a background thread into a queue of ``size`` frames.

    OpenCV and PyAV release the GIL while they decode, so the next frames decode while the
    caller works on this one. An exception of the producer (an ItemError for a damaged
    file, ...) is raised here, unchanged, after the frames before it. Closing this
    generator early (``break``, an exception in the caller, garbage collection) stops the
    thread, which closes ``frames`` (releasing the capture), and joins it. The thread
    starts at the first frame asked for.
    """
    queue: Queue = Queue(maxsize=max(1, size))
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in frames:
                queue.put((_FRAME, frame))
                if stop.is_set():
                    break
            else:
                queue.put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer as it is
            queue.put((_ERROR, exc))
        finally:
            frames.close()  # in this thread, which ran the generator (capture released)

    thread = threading.Thread(target=produce, name="fer-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == _FRAME:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting for room in the queue
            try:
                queue.get(timeout=0.05)
            except Empty:
                pass
        thread.join()


def readable(path: Path) -> None:
    """OpenCV says 'cannot open' for a file it may not read: tell permission from damage."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ItemError(f"file is not readable ({access_error(exc).detail}), not damaged",
                        path=path, hint="Give this user read access (chmod/chown)") from None


def _iter_video(path: Path) -> Iterator[np.ndarray]:
    if not path.is_file():
        raise ItemError("video file not found", path=path, hint="Re-run `fer index`")
    if path.stat().st_size == 0:
        raise ItemError("video file is empty (0 bytes)", path=path,
                        hint="Copy the file again from the original dataset")
    readable(path)
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


def _iter_images(images: list[Path], folder: Path | None) -> Iterator[np.ndarray]:
    """Decode images as frames of one item; all must have one size. ``folder`` names the
    sequence folder in errors; without it (frame lists, stills) the image itself is named."""
    size = None
    for image_path in images:
        where = folder or image_path
        name = f"frame {image_path.name!r}" if folder else "frame"
        if folder is None and not image_path.is_file():
            raise ItemError("frame file not found", path=image_path,
                            hint="Restore the file or re-run `fer index`")
        readable(image_path)
        frame = cv2.imread(opencv_name(image_path, folder), cv2.IMREAD_COLOR)
        if frame is None:
            raise ItemError(f"{name} cannot be decoded", path=where,
                            hint="Replace the damaged image or exclude this item")
        if size is None:
            size = frame.shape[:2]
            if size[0] * size[1] > MAX_PIXELS:
                raise ItemError(f"frame size {size[1]}x{size[0]} is larger than 8K",
                                path=where, hint="Downscale the frames before indexing")
        elif frame.shape[:2] != size:
            raise ItemError(f"{name} is {frame.shape[1]}x{frame.shape[0]}, "
                            f"the sequence started at {size[1]}x{size[0]}", path=where,
                            hint="All frames of a sequence must have one size")
        yield frame


def probe(path: str | Path, sequence_fps: float = 25.0) -> MediaInfo:
    """Count frames by decoding them all (container frame counts are often wrong); a
    count far below the header's means a truncated file."""
    path = Path(path)
    fps, reported = sequence_fps, 0
    if source_kind(path) == "video" and path.is_file():
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
