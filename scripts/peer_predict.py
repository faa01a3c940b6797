"""The peer package ``fer`` (25.10.3) on every frame of one video, timed: the baseline of
issue 13's speed goals, as ``scripts/bench.py`` measures it.

Run with the peer venv's interpreter (``.venv-peer``, made by ``scripts/peer_fer.py``: the
peer alone, installed with ``--no-deps``, reusing our venv's site-packages read-only)::

    .venv-peer/bin/python -I scripts/peer_predict.py VIDEO

It imports the peer, builds ``FER()`` with its defaults (OpenCV Haar face detector, the
quantised TFLite emotion model), then reads every frame with ``cv2.VideoCapture`` and calls
``detect_emotions(frame)`` on it, as the issue's baseline did ("Haar + TFLite every frame").
It prints one JSON object on stdout:

- ``frames_per_second``: frames / seconds of the frame loop (reading + ``detect_emotions``),
  i.e. after start-up, like fercli's ``timing.frames_per_second`` (which counts decoding too);
- ``detect_frames_per_second``: frames / seconds spent inside ``detect_emotions`` alone;
- ``startup_seconds``: from this script's first line to ``FER()`` built (imports included;
  the interpreter's own start is not in it: time the whole process from outside);
- ``frames``, ``face_frames`` (frames with at least one face), ``fer_version``.

``--setup`` (run with our venv's python) creates the peer venv when missing, via
``scripts/peer_fer.py``'s ``ensure_peer_venv``::

    .venv/bin/python scripts/peer_predict.py --setup [--venv .venv-peer]
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402 - after the start-up clock
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def measure(video: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import cv2
    import fer as fer_pkg
    from fer.fer import FER  # 25.x: fer/__init__.py no longer re-exports FER

    detector = FER()  # the peer's defaults: Haar (mtcnn=False), TFLite model
    startup = time.perf_counter() - STARTED
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise SystemExit(f"peer_predict: {video} cannot be opened as a video")
    frames = face_frames = 0
    in_detect = 0.0
    loop = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        start = time.perf_counter()
        faces = detector.detect_emotions(frame)
        in_detect += time.perf_counter() - start
        frames += 1
        face_frames += bool(faces)
    seconds = time.perf_counter() - loop
    capture.release()
    if not frames:
        raise SystemExit(f"peer_predict: no frame could be read from {video}")
    return {"video": video, "frames": frames, "face_frames": face_frames,
            "seconds": round(seconds, 3), "frames_per_second": frames / seconds,
            "detect_frames_per_second": frames / in_detect,
            "startup_seconds": round(startup, 3),
            "fer_version": getattr(fer_pkg, "__version__", "?"),
            "fer_path": fer_pkg.__file__}


def setup(venv: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_fer import PeerError, ensure_peer_venv

    try:
        python = ensure_peer_venv(venv)
    except PeerError as exc:
        print(f"peer_predict: {exc}", file=sys.stderr)
        return 2
    print(python)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", nargs="?", help="video to run the peer on, every frame")
    parser.add_argument("--setup", action="store_true",
                        help="create the peer venv when missing (run with our venv's python)")
    parser.add_argument("--venv", default=".venv-peer", help="peer venv for --setup")
    args = parser.parse_args(argv)
    if args.setup:
        return setup(args.venv)
    if not args.video:
        parser.error("give a VIDEO (or --setup)")
    print(json.dumps(measure(args.video)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
