"""Two videos side by side in one frame (two real faces at once), optionally with a camera cut.

    python scripts/two_faces.py LEFT RIGHT OUT.mp4 [--height 336] [--cut-at SECONDS]
    python scripts/two_faces.py LEFT RIGHT OUT.mp4 --inset FRACTION [--inset-from SECONDS]

Both videos are resized to ``--height`` (aspect kept) and placed side by side. The output
lasts as long as the longer video, at its frame rate; the shorter one loops. Frames are
matched by time, so videos of different frame rates stay in step. With ``--cut-at`` the two
swap sides from that second on, as a camera cut would. With ``--inset`` RIGHT is instead
shrunk to that fraction of the height and laid over LEFT's bottom-right corner from
``--inset-from`` seconds on: a small face joining a large one. Written with OpenCV's MPEG-4 writer
(``mp4v``; fercli's own writer, ``fercli.vision.clipio.ClipWriter``, writes square lossless
face clips only). OUT must lie outside the repository: derived videos are never committed.

Example (issue 13): ``python scripts/two_faces.py $FER_DATA/tests/woman2.mp4
$FER_DATA/test.mp4 /tmp/two.mp4 --cut-at 8``, then ``fer predict /tmp/two.mp4 --window 2
--stride 1``. A 56 px face joining woman2.mp4's ~135 px one at 4 s: ``python
scripts/two_faces.py $FER_DATA/tests/woman2.mp4 $FER_DATA/tests/woman2.mp4 /tmp/inset.mp4
--inset 0.4 --inset-from 4``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import FerError
from fercli.vision.media import MediaInfo, iter_frames, probe

REPO = Path(__file__).resolve().parent.parent


class Looped:
    """One video's frames by time, resized to a height; it starts over after its end."""

    def __init__(self, path: Path, height: int):
        self.path = path
        self.info: MediaInfo = probe(path)
        self.height = height
        self.width = 2 * round(self.info.width * height / self.info.height / 2)  # even
        self.duration = self.info.n_frames / self.info.fps
        self._frames: Iterator[np.ndarray] | None = None
        self._index = -1  # index of self._frame within the video
        self._frame: np.ndarray | None = None

    def at(self, seconds: float) -> np.ndarray:
        index = int(seconds * self.info.fps + 1e-6) % self.info.n_frames
        if self._frames is None or index < self._index:  # first call, or looped
            self._frames, self._index = iter_frames(self.path), -1
        while self._index < index:
            frame = next(self._frames, None)
            if frame is None:  # fewer frames than probed: hold the last one
                break
            self._frame, self._index = frame, self._index + 1
        return cv2.resize(self._frame, (self.width, self.height), interpolation=cv2.INTER_AREA)


def side_by_side(left: Path, right: Path, out: Path, height: int,
                 cut_at: float | None, inset: float | None = None,
                 inset_from: float = 0.0) -> dict:
    small = None if inset is None else 2 * max(8, round(height * inset / 2))
    videos = [Looped(left, height), Looped(right, small or height)]
    longer = max(videos, key=lambda v: v.duration)
    fps, n_frames = longer.info.fps, longer.info.n_frames
    width = videos[0].width if small else videos[0].width + videos[1].width
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"two_faces: cannot write {out} (OpenCV has no mp4v writer here?)")
    try:
        for i in range(n_frames):
            seconds = i / fps
            pair = [v.at(seconds) for v in videos]
            if small:
                frame = pair[0]
                if seconds >= inset_from:
                    inset_width = min(pair[1].shape[1], width)
                    frame[height - small:, width - inset_width:] = pair[1][:, :inset_width]
                writer.write(frame)
                continue
            if cut_at is not None and seconds >= cut_at:
                pair.reverse()
            writer.write(np.hstack(pair))
    finally:
        writer.release()
    return {"width": width, "height": height, "frames": n_frames, "fps": fps,
            "seconds": n_frames / fps, "looped": [v.path.name for v in videos
                                                  if v.duration < longer.duration]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("left", type=Path, help="video on the left (before any cut)")
    parser.add_argument("right", type=Path, help="video on the right (before any cut)")
    parser.add_argument("out", type=Path, help="output .mp4, outside the repository")
    parser.add_argument("--height", type=int, default=336,
                        help="common frame height in pixels (default 336)")
    parser.add_argument("--cut-at", type=float, metavar="SECONDS",
                        help="swap left and right from this second on (a camera cut)")
    parser.add_argument("--inset", type=float, metavar="FRACTION",
                        help="lay RIGHT over LEFT's bottom-right corner at this fraction of "
                             "the height (0.05-0.9) instead of side by side")
    parser.add_argument("--inset-from", type=float, default=0.0, metavar="SECONDS",
                        help="second from which the inset shows (default 0)")
    args = parser.parse_args(argv)
    if args.inset is not None and not 0.05 <= args.inset <= 0.9:
        parser.error(f"--inset must be a fraction of the height in [0.05, 0.9], got {args.inset}")
    if args.inset is not None and args.cut_at is not None:
        parser.error("--inset and --cut-at do not go together: choose one")
    if args.inset_from < 0:
        parser.error("--inset-from must be >= 0 seconds")
    if args.height < 16:
        parser.error("--height must be at least 16")
    if args.cut_at is not None and args.cut_at < 0:
        parser.error("--cut-at must be >= 0 seconds")
    if args.out.suffix.lower() != ".mp4":
        parser.error(f"OUT must end in .mp4, got {args.out}")
    if args.out.resolve().is_relative_to(REPO):
        parser.error(f"{args.out} lies inside the repository: write it elsewhere (e.g. /tmp), "
                     "derived videos are never committed")
    if not args.out.parent.is_dir():
        parser.error(f"folder {args.out.parent} does not exist")
    try:
        summary = side_by_side(args.left, args.right, args.out, args.height, args.cut_at,
                               args.inset, args.inset_from)
    except FerError as exc:
        print(f"two_faces: {exc}", file=sys.stderr)
        return 2
    cut = (f"; sides swap at {args.cut_at:g} s" if args.cut_at is not None
           and args.cut_at < summary["seconds"] else "")
    if args.inset is not None:
        cut = (f"; {args.right.name} inset at {args.inset:g} of the height from "
               f"{args.inset_from:g} s")
    looped = f"; {', '.join(summary['looped'])} loops" if summary["looped"] else ""
    print(f"wrote {args.out}: {summary['width']}x{summary['height']}, {summary['frames']} "
          f"frames at {summary['fps']:g} fps ({summary['seconds']:.1f} s){looped}{cut}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
