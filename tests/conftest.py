"""Shared fixtures: tiny real datasets (videos and PNG sequences) made on the fly."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"


def write_video(path: Path, n_frames: int = 8, size=(64, 48), value: int = 0) -> Path:
    """A small MJPG video whose frames are flat grey levels (real container, real codec)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(n_frames):
        writer.write(np.full((size[1], size[0], 3), (value + 10 * i) % 256, np.uint8))
    writer.release()
    return path


def write_sequence(folder: Path, n_frames: int = 6, size=(40, 30), prefix: str = "",
                   start: int = 1, skip: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n_frames):
        if i == skip:
            continue
        frame = np.full((size[1], size[0], 3), 20 * i % 256, np.uint8)
        cv2.imwrite(str(folder / f"{prefix}{i:08d}.png"), frame)
    return folder


@pytest.fixture
def bu_videos(tmp_path: Path) -> Path:
    """BU-4DFE-style flat folder: 6 subjects x 3 labels, lengths differ per subject."""
    root = tmp_path / "bu"
    for k, subject in enumerate(["F001", "F002", "F003", "M001", "M002", "M003"]):
        for label in ["happy", "sad", "Angry"]:
            write_video(root / f"{subject}_{label}_tex.avi", n_frames=5 + k)
    return root


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fer(runner, tmp_path, monkeypatch):
    """Invoke `fer` in-process inside tmp_path; returns the click Result."""
    from fercli.cli import app

    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def astronaut_face() -> np.ndarray:
    """The face region of scikit-image's astronaut photo (public domain), BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[0:260, 120:330].copy()


def write_face_video(path: Path, n_frames: int = 40, faces: int = 1, shift: int = 0) -> Path:
    """A real face drifting slowly, with a bump of 'expression' (brighter mouth) mid-clip."""
    face = astronaut_face()
    width = 120 + 230 * faces
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, 300))
    for i in range(n_frames):
        frame = np.full((300, width, 3), 90, np.uint8)
        amp = np.sin(np.pi * i / (n_frames - 1)) ** 2
        patch = face.copy()
        patch[150:200] = np.clip(patch[150:200].astype(int) + int(50 * amp), 0, 255)
        for k in range(faces):
            x = 40 + 230 * k + shift + i // 8
            frame[20:280, x:x + 210] = patch
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def face_videos(tmp_path: Path) -> Path:
    """4 subjects x 2 expressions of real-face clips, BU-4DFE names."""
    root = tmp_path / "faces"
    root.mkdir()
    for k, subject in enumerate(["F001", "F002", "M001", "M002"]):
        for label in ["happy", "sad"]:
            write_face_video(root / f"{subject}_{label}_tex.avi", n_frames=50 + 2 * k,
                             shift=3 * k)
    return root
