"""The bad-input corpus: broken datasets, configs and names that fercli must survive.

Small files are committed under ``tests/data/bad/`` (``write_small_corpus`` made them; run
``python tests/data/make_bad.py --small`` to remake them). Bigger ones, and names git
cannot carry portably (bytes that are not UTF-8), are made at test time by
``make_bad_dataset(dest)``, which copies the committed ones next to a few good videos:

==================================  ==========================================================
``F201_happy_tex.avi``              truncated: first half of a 20-frame MJPG AVI
``F202_happy_tex.avi``              zero bytes
``F203_happy_tex.avi``              valid AVI header, zero frames
``F204_happy_tex.mp4``              truncated MP4 (no moov atom): cannot be opened
``F205/happy/``                     frame sequence with a gap (1, 2, 4)
``F206/happy/``                     frame sequence whose last frame has another size
``F207/happy/``                     good sequence plus notes.txt and Thumbs.db
``clip_0001.avi``                   name that does not match the bu4dfe pattern
``F208_bored_tex.avi``              label that is not a class
``F209_happy_x..y.avi``             name whose item id would contain ``..``
``F210_happy_take 2.avi``           space in the name (a good video)
``F211_happy_[copy].avi``           zero bytes, with brackets (console markup) in the name
``F301_happy_tex.avi``              made here: 9000x5000 frame (above the 8K guard)
``F302/happy/``                     made here: 9000x5000 PNG frames
``F303_happy_<0xff>.avi``           made here: file name that is not UTF-8
``F304/happy/``                     made here: sequence with a frame whose name is not UTF-8
``F001..F003_{happy,sad}_tex.avi``  made here: good videos
==================================  ==========================================================

``configs/`` holds broken config files and ``escape.csv`` a label CSV (preset ``csv``)
whose rows try to leave the dataset folder.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

BAD = Path(__file__).resolve().parent / "bad"
ROOT = BAD.parents[2]
GOOD_VIDEOS = [f"{s}_{label}_tex.avi" for s in ("F001", "F002", "F003")
               for label in ("happy", "sad")]
HUGE = (9000, 5000)  # width, height: 45 Mpx, above media.MAX_PIXELS (8K, 33 Mpx)
NOT_UTF8_VIDEO = b"F303_happy_\xff.avi"
NOT_UTF8_FRAME = b"frame_00000003_\xe9.png"


def smooth_frame(i: int, size: tuple[int, int]) -> np.ndarray:
    """A gradient that moves with ``i``: compresses well, yet every frame differs."""
    width, height = size
    x = np.arange(width, dtype=np.int32)[None, :] + 3 * i
    y = np.arange(height, dtype=np.int32)[:, None]
    grey = ((x + y) % 256).astype(np.uint8)
    return np.dstack([grey, np.roll(grey, i, axis=1), 255 - grey])


def write_video(path: Path, n_frames: int, size=(64, 48), fourcc: str = "MJPG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, size)
    for i in range(n_frames):
        writer.write(smooth_frame(i, size))
    writer.release()
    return path


def write_frames(folder: Path, numbers, size=(16, 12), sizes: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        cv2.imwrite(str(folder / f"{n:08d}.png"), smooth_frame(n, (sizes or {}).get(n, size)))
    return folder


def write_small_corpus(folder: Path) -> None:
    """(Re)make the committed files: each a few kB at most."""
    data = folder / "dataset"
    shutil.rmtree(data, ignore_errors=True)
    truncate(write_video(data / "F201_happy_tex.avi", 20), 0.5)
    (data / "F202_happy_tex.avi").write_bytes(b"")
    (data / "F211_happy_[copy].avi").write_bytes(b"")
    write_video(data / "F203_happy_tex.avi", 0)
    truncate(write_video(data / "F204_happy_tex.mp4", 10, fourcc="mp4v"), 0.5)
    write_frames(data / "F205/happy", [1, 2, 4])
    write_frames(data / "F206/happy", [1, 2, 3], sizes={3: (20, 12)})
    write_frames(data / "F207/happy", [1, 2, 3])
    (data / "F207/happy/notes.txt").write_text("frame 2: subject blinked\n")
    (data / "F207/happy/Thumbs.db").write_bytes(b"\x00" * 16)
    for name in ("clip_0001.avi", "F208_bored_tex.avi", "F209_happy_x..y.avi",
                 "F210_happy_take 2.avi"):
        write_video(data / name, 4)


def make_bad_dataset(dest: Path) -> Path:
    """A bu4dfe-style dataset folder holding every bad case plus 6 good videos."""
    add_good_videos(Path(dest))
    return add_bad_files(Path(dest))


def add_bad_files(root: Path) -> Path:
    """Copy the committed bad files into ``root`` and make the big and odd-named ones."""
    shutil.copytree(BAD / "dataset", root, dirs_exist_ok=True)
    huge = np.full((HUGE[1], HUGE[0], 3), 128, np.uint8)  # flat: quick to encode
    writer = cv2.VideoWriter(str(root / "F301_happy_tex.avi"),
                             cv2.VideoWriter_fourcc(*"MJPG"), 25, HUGE)
    writer.write(huge)
    writer.release()
    (root / "F302/happy").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "F302/happy/00000001.png"), huge)
    shutil.copyfile(root / "F302/happy/00000001.png", root / "F302/happy/00000002.png")
    # OpenCV crashes on such names, so the video is written under a plain one and renamed
    os.rename(write_video(root / "utf8-name.avi", 4), os.path.join(os.fsencode(root),
                                                                     NOT_UTF8_VIDEO))
    write_frames(root / "F304/happy", [1, 2])
    frame = os.path.join(os.fsencode(root / "F304/happy"), NOT_UTF8_FRAME)
    shutil.copyfile(root / "F304/happy/00000002.png", frame)
    return root


def add_good_videos(root: Path) -> list[Path]:
    return [write_video(root / name, 6 + k) for k, name in enumerate(GOOD_VIDEOS)]


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a file, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Alter one byte (in the middle by default): same size, another hash."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


# A workdir to damage: 5 subjects x 3 classes of sample_data through `extract` in ~15 s.
SMALL_PIPELINE = [
    f"index.root={ROOT / 'sample_data'}", "index.exclude_subjects=[F003, F004, M004]",
    "index.classes=[happy, sad, surprise]", "split.folds=2", "split.test_fraction=0.2",
    "track.size=64", "augment.methods=[flip]", "extract.backbone=small-cnn",
    "extract.max_frames=40", "train.epochs=2", "train.batch_size=8",
    "train.tensorboard=false", "train.model_params={dense_units: [16]}",
]
UNTIL_EXTRACT = ["index", "split", "detect", "track", "trim", "augment", "extract"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--small"]:
        write_small_corpus(BAD)
        print(f"wrote {BAD / 'dataset'}")
    elif len(sys.argv) == 2:
        print(make_bad_dataset(Path(sys.argv[1])))
    else:
        sys.exit("usage: make_bad.py DEST | --small")
