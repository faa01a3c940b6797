"""scripts/two_faces.py: the two-face videos of the README's real-video checks (issue 13),
made here from the sample clips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from fercli.vision.media import iter_frames, probe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "two_faces.py"
LEFT = ROOT / "sample_data" / "F001_angry_tex.avi"
RIGHT = ROOT / "sample_data" / "M001_happy_tex.avi"


def two_faces(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True)


def test_side_by_side_then_inset(tmp_path):
    pair, inset = tmp_path / "pair.mp4", tmp_path / "inset.mp4"
    assert two_faces(LEFT, RIGHT, pair, "--height", 240).returncode == 0
    left, right = probe(LEFT), probe(RIGHT)
    info = probe(pair)
    assert (info.width, info.height) == (left.width + right.width, 240)
    assert info.n_frames == max(left.n_frames, right.n_frames)

    done = two_faces(LEFT, RIGHT, inset, "--height", 240, "--inset", 0.5, "--inset-from", 1)
    assert done.returncode == 0 and "inset at 0.5 of the height from 1 s" in done.stdout
    info = probe(inset)
    assert (info.width, info.height) == (left.width, 240)
    frames = list(iter_frames(inset))
    originals = list(iter_frames(LEFT))
    first_inset = int(np.ceil(left.fps))  # frame at 1 s
    corner = (slice(120, 240), slice(left.width - 160, left.width))
    # the bottom-right corner is LEFT's own until 1 s, then the shrunken RIGHT
    before = np.abs(frames[0][corner].astype(int) - originals[0][corner]).mean()
    after = np.abs(frames[first_inset][corner].astype(int)
                   - originals[first_inset][corner]).mean()
    assert before < 5 < after


def test_bad_arguments_are_refused_with_one_line(tmp_path):
    out = tmp_path / "x.mp4"
    for args, message in (
            ((LEFT, RIGHT, out, "--inset", 0.5, "--cut-at", 2), "do not go together"),
            ((LEFT, RIGHT, out, "--inset", 1.5), "--inset must be"),
            ((LEFT, RIGHT, ROOT / "x.mp4"), "inside the repository")):
        done = two_faces(*args)
        assert done.returncode == 2 and message in done.stderr
        assert not out.exists()
