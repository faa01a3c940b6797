"""Deterministic synthetic expression videos, so fercli can ship and test without a real dataset.

No public facial-expression corpus may be redistributed with the project, so the sample set is
made from one public-domain photograph (``skimage.data.astronaut()``, NASA). Each video shows
that face going neutral -> apex -> neutral, the onset-apex-offset course of the posed
BU-4DFE sequences the method is built for (thesis 3.2.1, Algorithm 1), with one of the six basic
expressions produced by smooth, expression-specific warps of the facial features. "Subjects"
differ by geometry, colour and background; everything follows from one integer seed. The
``onset-apex`` variant ends at the apex instead (neutral -> apex, no offset), the course of
CK+ sequences, so both of trim's shapes can be exercised.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fercli.core.errors import ArtifactError, ConfigError

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise")
FPS = 25
FRAME_SIZE = (320, 240)  # (width, height), as cv2.VideoWriter wants it
MIN_HEIGHT = 120  # keeps the face above the Haar detector's 30-pixel floor with room to spare
MIN_FRAMES = 16
# MPEG-4 part 2 in AVI via FFmpeg: ~43 kB per 44-frame video against ~320 kB for MJPG, so the
# committed set stays near 2 MB; every FFmpeg-enabled OpenCV build reads it back.
FOURCC = "mp4v"
# Expression courses a sample video can follow (see ``intensity_course``).
SHAPES = ("onset-apex-offset", "onset-apex")

# (x, y) pixel positions on skimage.data.astronaut(), read off a gridded 7x zoom of the face.
LANDMARKS = {
    "brow_l": (202.0, 90.0),
    "brow_r": (246.0, 90.0),
    "brow_l_in": (213.0, 92.0),
    "brow_r_in": (235.0, 92.0),
    "lid_l_up": (203.0, 98.0),
    "lid_r_up": (245.0, 99.0),
    "lid_l_low": (203.0, 106.0),
    "lid_r_low": (245.0, 107.0),
    "cheek_l": (200.0, 122.0),
    "cheek_r": (249.0, 122.0),
    "nose_root": (224.0, 104.0),
    "nostril_l": (215.0, 131.0),
    "nostril_r": (233.0, 131.0),
    "mouth_l": (204.0, 140.0),
    "mouth_r": (243.5, 140.5),
    "lip_up": (223.0, 141.0),
    "lip_low": (223.0, 154.0),
    "chin": (223.0, 178.0),
}
# Outline of hair, face and chin on the photo, traced clockwise on a gridded 4x zoom.
HEAD_OUTLINE = (
    (232, 16), (252, 19), (270, 27), (282, 40), (294, 55), (300, 72), (301, 87), (297, 105),
    (290, 117), (280, 127), (270, 130), (267, 135), (265, 145), (260, 160), (252, 170),
    (240, 176), (223, 180), (207, 179), (195, 175), (186, 165), (182, 150), (181, 130),
    (175, 120), (165, 112), (157, 100), (154, 82), (154, 65), (160, 52), (172, 41), (190, 31),
    (195, 27), (215, 19),
)
FACE_CENTRE = (226.0, 108.0)


@dataclass(frozen=True)
class Bump:
    """One Gaussian displacement: the skin around ``at`` moves by ``shift`` pixels."""

    at: str
    shift: tuple[float, float]
    sigma: float


def _pair(left: str, right: str, dx: float, dy: float, sigma: float) -> tuple[Bump, Bump]:
    """Mirror-symmetric bumps; ``dx`` > 0 moves both points towards the face midline."""
    return Bump(left, (dx, dy), sigma), Bump(right, (-dx, dy), sigma)


# Action-unit-like apex warps, in photo pixels (inter-ocular distance ~42 px). Each
# expression moves a different set of features, so the six classes are separable per frame.
EXPRESSION_WARPS: dict[str, tuple[Bump, ...]] = {
    "angry": (  # brows lowered and drawn together, lids narrowed, lips pressed
        *_pair("brow_l_in", "brow_r_in", 4.0, 6.0, 6.0),
        *_pair("brow_l", "brow_r", 1.0, 3.0, 8.0),
        *_pair("lid_l_up", "lid_r_up", 0.0, 2.0, 3.5),
        *_pair("mouth_l", "mouth_r", 5.0, 5.0, 7.0),
        Bump("lip_low", (0.0, -8.0), 7.0),
        Bump("lip_up", (0.0, 3.0), 5.0),
    ),
    "disgust": (  # upper lip and nose wings raised, nose wrinkled, brows slightly lowered
        Bump("lip_up", (0.0, -6.0), 6.0),
        *_pair("nostril_l", "nostril_r", 1.0, -4.0, 5.0),
        Bump("nose_root", (0.0, 3.0), 5.0),
        *_pair("brow_l_in", "brow_r_in", 2.0, 3.5, 6.0),
        *_pair("cheek_l", "cheek_r", 0.0, -4.0, 8.0),
        Bump("mouth_l", (1.0, 4.0), 6.0),
        Bump("mouth_r", (-3.0, -1.0), 6.0),
        Bump("lip_low", (0.0, -3.0), 6.0),
    ),
    "fear": (  # inner brows raised and together, eyes wide, lips stretched sideways
        *_pair("brow_l_in", "brow_r_in", 3.0, -6.0, 6.0),
        *_pair("brow_l", "brow_r", 0.0, -3.0, 8.0),
        *_pair("lid_l_up", "lid_r_up", 0.0, -2.5, 3.5),
        *_pair("lid_l_low", "lid_r_low", 0.0, 1.0, 3.0),
        *_pair("mouth_l", "mouth_r", -6.0, 3.0, 7.0),
        Bump("lip_low", (0.0, 5.0), 8.0),
    ),
    "happy": (  # lip corners pulled up and out, cheeks raised, lids narrowed
        *_pair("mouth_l", "mouth_r", -4.0, -7.0, 7.0),
        *_pair("cheek_l", "cheek_r", 0.0, -4.0, 9.0),
        *_pair("lid_l_low", "lid_r_low", 0.0, -1.5, 3.5),
        *_pair("lid_l_up", "lid_r_up", 0.0, 1.0, 3.0),
    ),
    "sad": (  # lip corners down, lips closed, inner brows raised
        *_pair("mouth_l", "mouth_r", 2.0, 11.0, 8.0),
        Bump("lip_low", (0.0, -6.0), 6.0),
        Bump("lip_up", (0.0, 3.0), 5.0),
        *_pair("brow_l_in", "brow_r_in", 1.0, -5.0, 5.0),
        *_pair("brow_l", "brow_r", 0.0, 2.0, 6.0),
        *_pair("lid_l_up", "lid_r_up", 0.0, 1.5, 3.5),
    ),
    "surprise": (  # brows high, eyes wide, jaw dropped, mouth rounded
        *_pair("brow_l", "brow_r", 0.0, -7.0, 9.0),
        *_pair("brow_l_in", "brow_r_in", 0.0, -5.0, 6.0),
        *_pair("lid_l_up", "lid_r_up", 0.0, -3.0, 4.0),
        *_pair("lid_l_low", "lid_r_low", 0.0, 1.5, 3.0),
        Bump("lip_low", (0.0, 10.0), 9.0),
        Bump("chin", (0.0, 9.0), 14.0),
        *_pair("mouth_l", "mouth_r", 4.0, 2.0, 6.0),
    ),
}


@dataclass(frozen=True)
class Subject:
    """How one synthetic subject differs from the photo: pose, colour, surroundings."""

    name: str
    scale: float
    angle_deg: float
    offset: tuple[float, float]
    aspect: float
    mirrored: bool
    gain: tuple[float, float, float]
    brightness: float
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    background_angle_deg: float
    clothing: tuple[int, int, int]
    amplitude: float


def subject_names(n_subjects: int) -> list[str]:
    """BU-4DFE-style ids, alternating female and male: F001, M001, F002, M002, ..."""
    return [f"{'FM'[i % 2]}{i // 2 + 1:03d}" for i in range(n_subjects)]


def make_subject(name: str, rng: np.random.Generator) -> Subject:
    """Draw a subject's appearance; ranges keep the face frontal and Haar-detectable."""
    colours = rng.integers(40, 230, size=(2, 3))
    return Subject(
        name=name,
        scale=float(rng.uniform(0.95, 1.12)),
        angle_deg=float(rng.uniform(-6.0, 6.0)),
        offset=(float(rng.uniform(-22, 22)), float(rng.uniform(-6, 6))),
        aspect=float(rng.uniform(0.92, 1.08)),
        mirrored=bool(rng.integers(2)),
        gain=_skin_gain(float(rng.uniform(0.88, 1.12)), float(rng.uniform(-0.08, 0.12))),
        brightness=float(rng.uniform(-18, 18)),
        background=(tuple(int(c) for c in colours[0]), tuple(int(c) for c in colours[1])),
        background_angle_deg=float(rng.uniform(0, 360)),
        clothing=tuple(int(c) for c in rng.integers(10, 140, size=3)),
        amplitude=float(rng.uniform(0.85, 1.15)),
    )


def _skin_gain(exposure: float, warmth: float) -> tuple[float, float, float]:
    """BGR gains that keep skin plausible: warmth trades blue for red, never tints green."""
    return exposure * (1.0 - warmth), exposure, exposure * (1.0 + warmth)


def intensity_course(n_frames: int, rng: np.random.Generator,
                     shape: str = "onset-apex-offset") -> np.ndarray:
    """Expression intensity per frame in [0, 1]: neutral, onset, apex, offset, neutral.

    Segment shares are jittered per video; onset and offset follow a smoothstep so the
    motion starts and stops gently, and the first and last frames are exactly neutral.
    ``shape="onset-apex"`` stops at the apex instead: neutral, onset, apex held to the
    last frame (CK+ sequences end on the apex frame).
    """
    if shape == "onset-apex":
        return _onset_apex_course(n_frames, rng)
    shares = np.array([0.14, 0.22, 0.28, 0.22, 0.14]) + rng.uniform(-0.04, 0.04, size=5)
    minimum = np.array([2, 3, 2, 3, 2])
    lengths = np.maximum(minimum, np.round(shares / shares.sum() * n_frames)).astype(int)
    lengths[2] += n_frames - lengths.sum()  # the apex hold absorbs rounding
    head, onset, hold, offset, tail = (int(n) for n in lengths)
    up = _smoothstep(np.arange(1, onset + 1) / onset)
    down = 1.0 - _smoothstep(np.arange(1, offset + 1) / offset)
    return np.concatenate([np.zeros(head), up, np.ones(hold), down, np.zeros(tail)])


def _onset_apex_course(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Neutral, smoothstep onset, apex to the end; the first frame exactly neutral."""
    shares = np.array([0.25, 0.35, 0.40]) + rng.uniform(-0.04, 0.04, size=3)
    lengths = np.maximum([2, 3, 2], np.round(shares / shares.sum() * n_frames)).astype(int)
    lengths[2] += n_frames - lengths.sum()  # the apex hold absorbs rounding
    head, onset, hold = (int(n) for n in lengths)
    up = _smoothstep(np.arange(1, onset + 1) / onset)
    return np.concatenate([np.zeros(head), up, np.ones(hold)])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _colour_photo(subject: Subject) -> np.ndarray:
    """The astronaut photo as BGR with the subject's skin tone and exposure."""
    from skimage import data

    bgr = data.astronaut()[:, :, ::-1].astype(np.float32)
    bgr = bgr * np.array(subject.gain, dtype=np.float32) + subject.brightness
    return np.clip(np.round(bgr), 0, 255).astype(np.uint8)


def _head_mask(shape: tuple[int, int]) -> np.ndarray:
    """Soft-edged head silhouette on the photo, so the head blends into a new background."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.array(HEAD_OUTLINE, dtype=np.int32)], 255)
    # Shrink before feathering so no photo background survives as a halo around the hair.
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 1.5)


def _placement(subject: Subject, size: tuple[int, int]) -> tuple[float, float, float]:
    """Face scale and centre in a frame of ``size``; the subject's pose is set for 240 rows."""
    width, height = size
    zoom = height / FRAME_SIZE[1]
    return (subject.scale * zoom, width / 2 + subject.offset[0] * zoom,
            height / 2 + subject.offset[1] * zoom)


def _source_grid(subject: Subject, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For every frame pixel, the photo pixel it shows (inverse of the subject's pose)."""
    scale, centre_x, centre_y = _placement(subject, size)
    xs, ys = np.meshgrid(np.arange(size[0], dtype=np.float64),
                         np.arange(size[1], dtype=np.float64))
    u, v = xs - centre_x, ys - centre_y
    theta = np.deg2rad(subject.angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = (cos * u + sin * v) / scale, (-sin * u + cos * v) / scale
    u = u / subject.aspect
    if subject.mirrored:
        u = -u
    return u + FACE_CENTRE[0], v + FACE_CENTRE[1]


def _photo_to_frame(subject: Subject, size: tuple[int, int],
                    point: tuple[float, float]) -> tuple[float, float]:
    """Forward pose: where a photo point lands in the frame (inverse of ``_source_grid``)."""
    scale, centre_x, centre_y = _placement(subject, size)
    u = (point[0] - FACE_CENTRE[0]) * subject.aspect * (-1 if subject.mirrored else 1)
    v = point[1] - FACE_CENTRE[1]
    theta = np.deg2rad(subject.angle_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    x = scale * (cos * u - sin * v) + centre_x
    y = scale * (sin * u + cos * v) + centre_y
    return float(x), float(y)


def _displacement(bumps: Sequence[Bump], px: np.ndarray, py: np.ndarray, amplitude: float):
    """Sum of Gaussian bumps at the photo points (px, py): how far the skin there moved."""
    dx = np.zeros_like(px)
    dy = np.zeros_like(py)
    for bump in bumps:
        cx, cy = LANDMARKS[bump.at]
        weight = np.exp(-((px - cx) ** 2 + (py - cy) ** 2) / (2.0 * bump.sigma**2))
        dx += amplitude * bump.shift[0] * weight
        dy += amplitude * bump.shift[1] * weight
    return dx, dy


def _background(subject: Subject, size: tuple[int, int]) -> np.ndarray:
    """Linear two-colour gradient, with the subject's top (shoulders and collar) under the chin."""
    width, height = size
    scale = _placement(subject, size)[0]
    xs, ys = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    theta = np.deg2rad(subject.background_angle_deg)
    t = np.clip((np.cos(theta) * xs + np.sin(theta) * ys) / 2.0 + 0.5, 0, 1)[..., None]
    first, second = (np.array(c, dtype=np.float32) for c in subject.background)
    canvas = ((1 - t) * first + t * second).astype(np.float32)
    chin_x, chin_y = LANDMARKS["chin"]
    for drop, axes in ((62, (100, 62)), (8, (36, 24))):  # shoulders, then a turtleneck collar
        x, y = _photo_to_frame(subject, size, (chin_x, chin_y + drop))
        radii = (round(axes[0] * scale), round(axes[1] * scale))
        cv2.ellipse(canvas, (round(x), round(y)), radii, subject.angle_deg, 0, 360,
                    subject.clothing, -1)
    return canvas


def render_frames(subject: Subject, expression: str, rng: np.random.Generator, n_frames: int,
                  size: tuple[int, int] = FRAME_SIZE,
                  shape: str = "onset-apex-offset") -> list[np.ndarray]:
    """All BGR frames of one video: the subject's face through one expression course."""
    photo = _colour_photo(subject)
    mask = _head_mask(photo.shape[:2])
    px, py = _source_grid(subject, size)
    amplitude = subject.amplitude * float(rng.uniform(0.9, 1.1))
    dx, dy = _displacement(EXPRESSION_WARPS[expression], px, py, amplitude)
    background = _background(subject, size)
    frames = []
    for level in intensity_course(n_frames, rng, shape):
        # Backward map: the frame pixel shows the skin that moved onto it (small-shift inverse).
        map_x = (px - level * dx).astype(np.float32)
        map_y = (py - level * dy).astype(np.float32)
        face = cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = alpha[..., None]
        frame = alpha * face.astype(np.float32) + (1 - alpha) * background
        frame += rng.normal(0.0, 1.0, size=frame.shape)  # sensor noise
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = FPS) -> None:
    """Write frames to an AVI atomically: a temporary file in the same folder, then rename.

    The read-back check catches a codec that silently drops frames on this OpenCV build.
    """
    path = Path(path)
    height, width = frames[0].shape[:2]
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = cv2.VideoWriter(str(partial), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*FOURCC),
                             fps, (width, height))
    try:
        if not writer.isOpened():
            raise ArtifactError(f"OpenCV cannot encode {FOURCC} video", path=path,
                                hint="Install an opencv-python build with FFmpeg")
        for frame in frames:
            writer.write(frame)
        writer.release()
        read_back = _count_frames(partial)
        if read_back != len(frames):
            raise ArtifactError(f"wrote {len(frames)} frames but read back {read_back}",
                                path=path, hint="Check the OpenCV video backend")
        os.replace(partial, path)
    finally:
        writer.release()
        partial.unlink(missing_ok=True)


def _count_frames(path: Path) -> int:
    """Frames actually decodable (the container's frame count can be wrong)."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def video_name(subject: str, expression: str) -> str:
    """BU-4DFE-style file name, e.g. ``F001_happy_tex.avi``."""
    return f"{subject}_{expression}_tex.avi"


def _check_arguments(n_subjects: int, n_frames: int, size: tuple[int, int],
                     shape: str = SHAPES[0]) -> None:
    """Refuse requests that could not give a detectable face with a full expression course."""
    if shape not in SHAPES:
        raise ConfigError(f"unknown expression course {shape!r}. Use one of: "
                          f"{', '.join(SHAPES)}")
    if n_subjects < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects}. "
                          "Pass a positive number of subjects")
    if n_frames < MIN_FRAMES:
        raise ConfigError(f"n_frames must be at least {MIN_FRAMES}, got {n_frames}. "
                          "Pass a longer sequence length")
    width, height = size
    if height < MIN_HEIGHT or width < height or width % 2 or height % 2:
        raise ConfigError(f"size must be even (width, height) with width >= height >= "
                          f"{MIN_HEIGHT}, got {tuple(size)}. Pass e.g. (320, 240)")


def generate_sample_data(out_dir: Path, n_subjects: int = 8, n_frames: int = 80,
                         size: tuple[int, int] = FRAME_SIZE, seed: int = 0,
                         progress: Callable[[int, int, Path], None] | None = None,
                         shape: str = "onset-apex-offset") -> list[Path]:
    """Write ``n_subjects`` x 6 expression videos into ``out_dir`` and return their paths.

    Each video has ``n_frames`` +- 12% frames (drawn per video) at 25 fps and ``size``
    (width, height) pixels, and follows the expression course ``shape`` (one of
    ``SHAPES``). The bytes depend only on the arguments (and the OpenCV build).
    ``progress(done, total, path)`` is called after each video.
    """
    _check_arguments(n_subjects, n_frames, size, shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jitter = n_frames // 8
    total = n_subjects * len(EXPRESSIONS)
    paths = []
    for s, name in enumerate(subject_names(n_subjects)):
        subject = make_subject(name, np.random.default_rng([seed, s]))
        for e, expression in enumerate(EXPRESSIONS):
            rng = np.random.default_rng([seed, s, e])
            length = n_frames + int(rng.integers(-jitter, jitter + 1))
            path = out_dir / video_name(name, expression)
            write_video(path, render_frames(subject, expression, rng, length, size, shape))
            paths.append(path)
            if progress is not None:
                progress(len(paths), total, path)
    return paths

