"""Cut the neutral onset and offset frames of a face clip (thesis 3.2.1, Algorithm 1).

Pure cores of ``fer trim``: the cutting rules on a per-frame expression score, one per
expression course (``trim_clip`` picks one), the two score sources (OpenFace AU intensities
as in the thesis, or a tool-free motion proxy), and the manual decisions for clips the rules
refuse to cut ("anomaly").
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml

from fercli.core.errors import ConfigError, ItemError

TrimStatus = Literal["trimmed", "anomaly", "flat", "override", "still", "short"]
TrimShape = Literal["onset-apex-offset", "onset-apex"]
SHAPES = ("auto", "onset-apex-offset", "onset-apex")
# A clip "ends at the apex" when the median of its last frames is still at or above the
# threshold; a median of three lets one blink or dropped frame at the very end not decide.
TAIL_FRAMES = 3
# Fewer frames than an onset and a tail of TAIL_FRAMES each cannot show a course: CK+48 keeps
# only the last 3 (apex) frames of each sequence, and their scores are noise around each other.
MIN_COURSE_FRAMES = 2 * TAIL_FRAMES

OPENFACE_HINT = "run OpenFace FeatureExtraction on the clip or use trim.score=motion"
OVERRIDES_HINT = (
    "write one decision per item: CSV columns item_id,first,last or YAML item_id: [first, last], "
    "with 0 <= first <= last (inclusive frame indices)"
)
_AU_INTENSITY = re.compile(r"AU\d\d_r")
_BLINK_COLUMN = "AU45_r"


@dataclass(frozen=True)
class TrimResult:
    """Which frames of a clip to keep and why.

    ``first`` and ``last`` are inclusive indices of the kept frames. ``threshold`` and
    ``max_score`` are None for a manual override, which is decided without scores.
    ``shape`` is the expression course the clip was judged by (see ``trim_clip``); None
    when no course applies (a still, an override) or for plain ``trim_range``.
    """

    first: int
    last: int
    status: TrimStatus
    threshold: float | None
    max_score: float | None
    n_cut_start: int
    n_cut_end: int
    shape: TrimShape | None = None


def trim_range(
    scores: Sequence[float],
    min_frames_end: int = 10,
    threshold_ratio: float = 0.5,
    max_cut_ratio: float = 0.5,
    anomaly_last_frames: int = 20,
) -> TrimResult:
    """Apply thesis Algorithm 1 (sec. 3.2.1) to one clip's per-frame scores.

    Reading of the pseudo-code, by its line numbers:

    - l.2: threshold = ``threshold_ratio`` x the maximum score; a frame is neutral when its
      score is strictly below it.
    - l.3: max_frames = floor(length x ``max_cut_ratio``): frames are whole, so an odd length
      keeps the middle frame.
    - l.4-5, l.21: one counter ``i`` walks inwards from both ends at once.
    - l.6-11 run before l.12-17 in each iteration: the start side looks at frame ``i``, then
      the end side at frame ``length-1-i``.
    - l.10/l.16 "stop cutting" is final: a side that met a frame at or above the threshold
      never resumes, since cutting past a kept frame would make the clip non-contiguous.
    - l.13: the end side cuts while ``i < min_frames_end`` whatever the score, so at least
      ``min_frames_end`` tail frames go (the thesis found the offset long).
    - l.18: the loop ends when both sides stopped or the cut count reached max_frames. The
      pseudo-code tests the cap once per iteration, so when both sides cut in the iteration
      that crosses it the total could exceed 50% by one frame; the prose says the cut "should
      not exceed 50%", so the cap is tested before every single cut instead. The two readings
      differ by at most that one end frame; in return more than half the clip (and so at
      least one frame) is always kept, however short the clip.

    Before the loop, as in the prose: when the first maximum lies in the last
    ``anomaly_last_frames`` frames (a smile, blink or head move at the offset), the clip is
    marked ``anomaly`` and kept whole for a manual decision (see ``load_overrides``). Clips
    no longer than ``anomaly_last_frames`` are therefore always anomalies; 0 disables the
    rule. A clip whose maximum score is not positive carries no expression signal (e.g. OpenFace
    lost the face throughout); it is kept whole with status ``flat`` rather than losing its
    last ``min_frames_end`` frames to a meaningless threshold of 0.
    """
    values = np.asarray(scores, dtype=np.float64)
    _check_trim_arguments(values, min_frames_end, threshold_ratio, max_cut_ratio,
                          anomaly_last_frames)
    length = len(values)
    peak = int(np.argmax(values))
    max_score = float(values[peak])
    threshold = threshold_ratio * max_score
    if max_score <= 0:
        return TrimResult(0, length - 1, "flat", threshold, max_score, 0, 0)
    if peak >= length - anomaly_last_frames:
        return TrimResult(0, length - 1, "anomaly", threshold, max_score, 0, 0)

    max_frames = math.floor(length * max_cut_ratio)
    n_cut_start = n_cut_end = 0
    cutting_start = cutting_end = True
    i = 0
    while True:
        if cutting_start and n_cut_start + n_cut_end < max_frames:
            if values[i] < threshold:
                n_cut_start += 1
            else:
                cutting_start = False
        if cutting_end and n_cut_start + n_cut_end < max_frames:
            if values[length - 1 - i] < threshold or i < min_frames_end:
                n_cut_end += 1
            else:
                cutting_end = False
        if not (cutting_start or cutting_end) or n_cut_start + n_cut_end >= max_frames:
            break
        i += 1
    return TrimResult(n_cut_start, length - 1 - n_cut_end, "trimmed", threshold, max_score,
                      n_cut_start, n_cut_end)


def trim_onset(
    scores: Sequence[float], threshold_ratio: float = 0.5, max_cut_ratio: float = 0.5
) -> TrimResult:
    """Cut only the neutral onset of a neutral -> apex clip (CK+ sequences end at the apex).

    The start side of Algorithm 1 alone: frames strictly below ``threshold_ratio`` x the
    maximum are cut from the start until the first frame at or above it, at most
    floor(length x ``max_cut_ratio``) of them. The end is never cut, since there the apex
    is, and Algorithm 1's tail rules (10 frames always cut, maximum in the last frames =
    anomaly) would remove or refuse exactly the frames such a clip is for. Its anomaly is
    the opposite one: a curve that falls instead of rising (``falls_after_start``). A
    maximum that is not positive gives ``flat``, as in ``trim_range``.
    """
    values = np.asarray(scores, dtype=np.float64)
    _check_trim_arguments(values, 0, threshold_ratio, max_cut_ratio, 0)
    length = len(values)
    max_score = float(values.max())
    threshold = threshold_ratio * max_score
    if max_score <= 0:
        return TrimResult(0, length - 1, "flat", threshold, max_score, 0, 0, "onset-apex")
    if falls_after_start(values, threshold_ratio):
        return TrimResult(0, length - 1, "anomaly", threshold, max_score, 0, 0, "onset-apex")
    max_frames = math.floor(length * max_cut_ratio)
    n_cut = 0
    while n_cut < max_frames and values[n_cut] < threshold:
        n_cut += 1
    return TrimResult(n_cut, length - 1, "trimmed", threshold, max_score, n_cut, 0,
                      "onset-apex")


def ends_at_apex(scores: Sequence[float], threshold_ratio: float = 0.5) -> bool:
    """Whether the expression is still on at the end of the clip.

    True when the median score of the last ``TAIL_FRAMES`` frames is at or above
    ``threshold_ratio`` x the maximum, i.e. the frames Algorithm 1 would keep as expressive.
    """
    values = np.asarray(scores, dtype=np.float64)
    return bool(np.median(values[-TAIL_FRAMES:]) >= threshold_ratio * values.max())


def falls_after_start(scores: Sequence[float], threshold_ratio: float = 0.5) -> bool:
    """The onset-apex anomaly: the maximum comes early and the clip ends below threshold.

    An onset-apex clip rises to its apex and stays there; one whose first maximum lies in
    its first half and whose end has fallen back below the threshold is a blink, head move
    or mislabelled course at the start, for a manual decision.
    """
    values = np.asarray(scores, dtype=np.float64)
    peak = int(np.argmax(values))
    return 2 * peak < len(values) and not ends_at_apex(values, threshold_ratio)


def trim_clip(
    scores: Sequence[float],
    shape: str = "auto",
    min_frames_end: int = 10,
    threshold_ratio: float = 0.5,
    max_cut_ratio: float = 0.5,
    anomaly_last_frames: int = 20,
) -> TrimResult:
    """Trim one clip by its expression course: ``shape`` is one of ``SHAPES``.

    ``onset-apex-offset`` is thesis Algorithm 1 (``trim_range``), for BU-4DFE's neutral ->
    apex -> neutral videos; ``onset-apex`` cuts the neutral onset only (``trim_onset``), for
    CK+'s neutral -> apex sequences. ``auto`` decides per clip: a clip that ends at the apex
    (``ends_at_apex``) is onset-apex, one that falls back below the threshold is
    onset-apex-offset; an ``anomaly`` under auto therefore fits neither course. The chosen
    course is returned in ``shape``. A 1-frame clip (a still image) has no course: it is
    kept whole as ``still``; a clip shorter than ``MIN_COURSE_FRAMES`` is kept whole as
    ``short`` (too few frames to tell onset from apex, so nothing is cut or flagged).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    values = np.asarray(scores, dtype=np.float64)
    _check_trim_arguments(values, min_frames_end, threshold_ratio, max_cut_ratio,
                          anomaly_last_frames)
    if len(values) == 1:
        score = float(values[0])
        return TrimResult(0, 0, "still", threshold_ratio * score, score, 0, 0)
    if len(values) < MIN_COURSE_FRAMES:
        peak = float(values.max())
        return TrimResult(0, len(values) - 1, "short", threshold_ratio * peak, peak, 0, 0)
    if shape == "auto":
        shape = "onset-apex" if ends_at_apex(values, threshold_ratio) else "onset-apex-offset"
    if shape == "onset-apex":
        return trim_onset(values, threshold_ratio, max_cut_ratio)
    result = trim_range(values, min_frames_end, threshold_ratio, max_cut_ratio,
                        anomaly_last_frames)
    return replace(result, shape="onset-apex-offset")


def _check_trim_arguments(
    values: np.ndarray,
    min_frames_end: int,
    threshold_ratio: float,
    max_cut_ratio: float,
    anomaly_last_frames: int,
) -> None:
    """Reject inputs on which Algorithm 1 has no meaning, before any cutting."""
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain NaN or infinite values")
    if min_frames_end < 0 or anomaly_last_frames < 0:
        raise ValueError("min_frames_end and anomaly_last_frames must be >= 0")
    if not 0 < threshold_ratio <= 1:
        raise ValueError(f"threshold_ratio must be in (0, 1], got {threshold_ratio}")
    if not 0 <= max_cut_ratio <= 1:
        raise ValueError(f"max_cut_ratio must be in [0, 1], got {max_cut_ratio}")


def apply_override(n_frames: int, first: int, last: int) -> TrimResult:
    """Keep the manually chosen inclusive range ``first..last`` of an ``n_frames`` clip."""
    if not 0 <= first <= last < n_frames:
        raise ItemError(
            f"override range [{first}, {last}] does not fit a clip of {n_frames} frames",
            hint=f"choose 0 <= first <= last <= {n_frames - 1} in the overrides file",
        )
    return TrimResult(first, last, "override", None, None, first, n_frames - 1 - last)


def motion_scores(
    frames: Iterable[np.ndarray], n_reference: int = 5, blur_sigma: float = 1.5
) -> np.ndarray:
    """Per-frame distance from the clip's neutral onset face, a tool-free AU-curve proxy.

    Score = mean absolute gray-level difference between the frame and a reference face, both
    blurred (``blur_sigma`` pixels) so sensor noise and compression speckle do not count. The
    reference is the pixel-wise median of the first ``n_reference`` frames, so one blink
    among them does not shift it. In a neutral -> apex -> neutral clip (BU-4DFE) the face
    departs from the onset face as the expression builds and comes back at the offset, which
    gives the rise and fall the thesis reads from AU intensities (Figure 3.3). It measures
    any change from the onset face: head motion and lighting changes count too, which is why
    Algorithm 1's anomaly rule and manual overrides still matter.

    Frames stream through: only the ``n_reference`` first frames are held at once.
    """
    scorer = MotionScorer(n_reference, blur_sigma)
    for frame in frames:
        scorer.add(frame)
    return scorer.scores()


class MotionScorer:
    """``motion_scores`` one frame at a time, for several faces of one video at once
    (`fer predict` scores each person's face stream as the video is read)."""

    def __init__(self, n_reference: int = 5, blur_sigma: float = 1.5):
        if n_reference < 1:
            raise ValueError(f"n_reference must be >= 1, got {n_reference}")
        self.n_reference = n_reference
        self.blur_sigma = blur_sigma
        self.head: list[np.ndarray] = []  # the first frames, until the reference exists
        self.reference: np.ndarray | None = None
        self.values: list[float] = []

    def add(self, frame: np.ndarray) -> None:
        gray = _smoothed_gray(frame, self.blur_sigma)
        index = len(self.head) + len(self.values)
        if self.head or self.values:
            _require_shape(gray, (self.head[0] if self.head else self.reference).shape, index)
        if self.reference is None:
            self.head.append(gray)
            if len(self.head) == self.n_reference:
                self._score_head()
        else:
            self.values.append(float(np.mean(np.abs(gray - self.reference))))

    def _score_head(self) -> None:
        self.reference = np.median(np.stack(self.head), axis=0)
        self.values = [float(np.mean(np.abs(g - self.reference))) for g in self.head]
        self.head = []

    def scores(self) -> np.ndarray:
        if self.reference is None:
            if not self.head:
                raise ItemError("the face clip has no frames",
                                hint="re-run the track stage for it")
            self._score_head()
        return np.asarray(self.values, dtype=np.float64)


def _smoothed_gray(frame: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Gray float32 image, Gaussian-blurred; BGR, BGRA and single-channel frames accepted."""
    image = np.asarray(frame)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    gray = image.astype(np.float32)
    if blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    return gray


def _require_shape(gray: np.ndarray, shape: tuple[int, ...], index: int) -> None:
    """A clip's frames must share one size, or pixel differences mean nothing."""
    if gray.shape != shape:
        raise ItemError(
            f"frame {index} is {gray.shape[1]}x{gray.shape[0]} but frame 0 is "
            f"{shape[1]}x{shape[0]}",
            hint="re-run the track stage so every face crop has the same size",
        )


def openface_scores(csv_path: str | Path) -> np.ndarray:
    """Per-frame mean AU intensity from an OpenFace 2.0 FeatureExtraction CSV (thesis 3.2.1).

    Averages the ``AUxx_r`` intensity columns (0-5) without AU45, whose blinks the thesis
    found to add noise. OpenFace pads header names with a space (`` AU01_r``), so names are
    stripped. Rows with ``success`` 0 had no face: they score 0 (neutral) rather than NaN, so
    a lost face at either end is cut like a neutral one and Algorithm 1 needs no NaN rule.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ItemError("OpenFace CSV not found", path=path, hint=OPENFACE_HINT)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        au_columns = [
            j for j, name in enumerate(header)
            if _AU_INTENSITY.fullmatch(name) and name != _BLINK_COLUMN
        ]
        if not au_columns:
            raise ItemError("no AU intensity columns (AU01_r ...) in the CSV header",
                            path=path, hint=OPENFACE_HINT)
        success = header.index("success") if "success" in header else None
        needed = max(au_columns + ([success] if success is not None else [])) + 1
        scores = []
        for row in reader:
            if not row:
                continue
            if len(row) < needed:
                raise ItemError(f"line {reader.line_num} has {len(row)} fields, the header "
                                f"{len(header)}", path=path, hint=OPENFACE_HINT)
            if success is not None and _number(row, success, header, reader, path) == 0:
                scores.append(0.0)
                continue
            scores.append(float(np.mean([_number(row, j, header, reader, path)
                                         for j in au_columns])))
    if not scores:
        raise ItemError("the OpenFace CSV has a header but no frames", path=path,
                        hint=OPENFACE_HINT)
    return np.asarray(scores, dtype=np.float64)


def _number(row: list[str], column: int, header: list[str], reader, path: Path) -> float:
    """One numeric field, or an ItemError that names the line and column."""
    try:
        return float(row[column])
    except ValueError:
        raise ItemError(f"line {reader.line_num}: {header[column]} is not a number "
                        f"({row[column]!r})", path=path, hint=OPENFACE_HINT) from None


def load_overrides(path: str | Path) -> dict[str, tuple[int, int]]:
    """Manual keep ranges for clips Algorithm 1 marked ``anomaly`` (thesis 3.2.1).

    ``.csv``: header ``item_id,first,last``, one row per item. ``.yaml``/``.yml``: a mapping
    ``item_id: [first, last]``. Ranges are inclusive frame indices; whether they fit the clip
    is checked later by ``apply_override``, which knows its length.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("overrides file not found", path=path, hint=OVERRIDES_HINT)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _overrides_from_csv(path)
    if suffix in (".yaml", ".yml"):
        return _overrides_from_yaml(path)
    raise ConfigError(f"unknown overrides format {suffix!r}; expected .csv, .yaml or .yml",
                      path=path, hint=OVERRIDES_HINT)


def _overrides_from_csv(path: Path) -> dict[str, tuple[int, int]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, skipinitialspace=True)
        header = [name.strip() for name in next(reader, [])]
        if header != ["item_id", "first", "last"]:
            raise ConfigError(f"line 1: header is {','.join(header)!r}, expected "
                              "'item_id,first,last'", path=path, hint=OVERRIDES_HINT)
        overrides: dict[str, tuple[int, int]] = {}
        for row in reader:
            if not row:
                continue
            where = f"line {reader.line_num}"
            if len(row) != 3 or not row[0].strip():
                raise ConfigError(f"{where}: expected item_id,first,last, got {','.join(row)!r}",
                                  path=path, hint=OVERRIDES_HINT)
            item_id = row[0].strip()
            bounds = []
            for text in row[1:]:
                try:
                    bounds.append(int(text.strip()))
                except ValueError:
                    raise ConfigError(f"{where}: {text.strip()!r} is not a frame index",
                                      path=path, hint=OVERRIDES_HINT) from None
            _add_override(overrides, item_id, bounds, where, path)
    return overrides


def _overrides_from_yaml(path: Path) -> dict[str, tuple[int, int]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{where}not valid YAML", path=path, hint=OVERRIDES_HINT) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping item_id: [first, last], got a "
                          f"{type(data).__name__}", path=path, hint=OVERRIDES_HINT)
    overrides: dict[str, tuple[int, int]] = {}
    for item_id, bounds in data.items():
        if not isinstance(item_id, str):
            raise ConfigError(f"key {item_id!r} is not a string; quote item ids such as '001'",
                              path=path, hint=OVERRIDES_HINT)
        if not (isinstance(bounds, list) and len(bounds) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise ConfigError(f"key {item_id!r}: expected [first, last] frame indices, got "
                              f"{bounds!r}", path=path, hint=OVERRIDES_HINT)
        _add_override(overrides, item_id, bounds, f"key {item_id!r}", path)
    return overrides


def _add_override(overrides: dict[str, tuple[int, int]], item_id: str, bounds: list[int],
                  where: str, path: Path) -> None:
    """Record one decision after the checks that need no clip length."""
    first, last = bounds
    if not 0 <= first <= last:
        raise ConfigError(f"{where}: range [{first}, {last}] needs 0 <= first <= last",
                          path=path, hint=OVERRIDES_HINT)
    if item_id in overrides:
        raise ConfigError(f"{where}: item {item_id!r} appears twice", path=path,
                          hint=OVERRIDES_HINT)
    overrides[item_id] = (first, last)
