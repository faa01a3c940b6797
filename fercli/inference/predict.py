"""`fer predict`: apply finalized models (or a fusion of them) to new videos of any length.

The preprocessing of training is replayed on each new video, frame for frame: the run's
face detector finds the face, its tracker follows it (thesis 3.2.1; paper 000 sec. 2.2) and
each face is cut out with ``crop_face`` at ``track.size``/``track.color``, so the model sees
the pixels it saw in training. Wild videos (long, several faces, cuts) differ from
BU-4DFE clips, so the "detect once, then track" rule of ``fer detect`` becomes a loop
(seed 004 samples a long video and tallies per-frame emotions, Algorithm 1):

- every ``every``-th frame is looked at (seed 004 took about one frame in twenty);
- with no face tracked, the frame is searched with the detector. Exactly one face starts
  the tracker; several faces give no face for that frame (status ``several faces``), since
  picking one of two speakers at random would mix two people's expressions in one
  sequence; none gives ``no face``;
- a tracker that fails (the face left, or a camera cut) is dropped and the same frame is
  searched again, and every sampled frame after it until a face is found.

Two ways to read a video:

- whole-video mode: the face frames are trimmed with the run's Algorithm 1 parameters on
  motion scores (as ``fer trim``), the kept frames are padded or truncated to the model's
  ``max_frames`` and predicted once. Only face boxes are held during the first pass; a
  second decode crops just the frames the model reads, so any length fits in memory;
- window mode: sliding windows of ``window`` seconds every ``stride`` seconds; each
  window with faces in at least half its sampled frames is predicted (no trimming inside a
  window). Windows stream: features of one window length plus one prediction batch are
  held at a time. The per-video result is the majority label over windows (seed 004,
  Algorithm 1, with windows in place of frames) and the share of windows per label.

Feature models get per-frame features from the run's backbone in batches, rounded through
``extract.dtype`` as the feature store held them; clip models get the face resized and
scaled exactly as ``fercli.learning.datasets.load_clip`` and ``clip_dataset`` do.
"""
from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core.errors import ConfigError, InputError, ItemError
from ..core.workspace import atomic_write_json, read_json, write_csv
from ..features.identity import BASELINE_FRAMES
from ..learning.fusion import METHODS, fuse_scores
from ..vision.detect import Box, FaceDetector, detector_from_params, extend_box
from ..vision.media import is_sequence_dir, iter_frames, sequence_frames
from ..vision.track import BoxSmoother, FaceTracker, crop_face
from ..vision.trim import motion_scores, trim_clip
from .encoders import ClipEncoder, FeatureEncoder, baseline_key, model_inputs, with_baseline
from .records import PredictRecords, run_fingerprint, shard_of
from .runs import RUN_FILES, FinalizedRun, load_run, run_config

DEFAULT_VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov")
PREDICT_BATCH = 16  # sequences per forward pass (windows of hours of video stream through)
TRIM_KEYS = ("min_frames_end", "threshold_ratio", "max_cut_ratio", "anomaly_last_frames")
SUMMARY_COLUMNS = ["video", "status", "reason", "label", "confidence", "n_windows"]
LIST_SUFFIXES = (".txt", ".list", ".lst")  # a file of video paths, one per line


# --------------------------------------------------------------------------- label map
def parse_label_map(entries: Sequence[str]) -> dict[str, list[str]]:
    """CLI ``--map`` entries such as ``positive=happy,surprise`` -> {name: [classes]}."""
    hint = "Write NAME=class,class, e.g. positive=happy,surprise"
    mapping: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, members = entry.partition("=")
        classes = [c.strip() for c in members.split(",") if c.strip()]
        if not sep or not name.strip() or not classes:
            raise ConfigError(f"label map entry {entry!r} is not NAME=class,class", hint=hint)
        if name.strip() in mapping:
            raise ConfigError(f"label map names {name.strip()!r} twice", hint=hint)
        mapping[name.strip()] = classes
    return mapping


def label_groups(label_map: Mapping[str, Sequence[str]],
                 classes: Sequence[str]) -> list[tuple[str, list[int]]]:
    """(coarse name, class indices) in map order, then each unmapped class under its name.

    Seed 004 maps the 7 FER classes onto positive/neutral/negative (Experiments, step 2);
    probabilities of a coarse label are the sums over its classes.
    """
    known = ", ".join(classes)
    unknown = [c for members in label_map.values() for c in members if c not in classes]
    if unknown:
        raise ConfigError(f"label map names unknown class(es) {', '.join(unknown)}",
                          hint=f"The model's classes are: {known}")
    seen: dict[str, str] = {}
    for name, members in label_map.items():
        for member in members:
            if member in seen:
                raise ConfigError(f"class {member!r} is mapped to both {seen[member]!r} and "
                                  f"{name!r}", hint="Map each class once")
            seen[member] = name
    groups = [(name, [classes.index(c) for c in members]) for name, members in label_map.items()]
    for index, cls in enumerate(classes):
        if cls not in seen:
            if cls in label_map:
                raise ConfigError(f"label map name {cls!r} is also an unmapped class",
                                  hint=f"Rename it or map {cls!r} into it")
            groups.append((cls, [index]))
    return groups


def map_probabilities(probabilities: np.ndarray,
                      groups: Sequence[tuple[str, list[int]]]) -> np.ndarray:
    """(N, C) class probabilities -> (N, G) coarse probabilities (sums over each group)."""
    return np.stack([probabilities[:, idx].sum(axis=1) for _, idx in groups], axis=1)


def preprocessing(config: dict) -> dict:
    """The config values that decide which face pixels a model is fed."""
    return {"detect": config["detect"],
            "track": {k: config["track"].get(k) for k in ("tracker", "size", "color",
                                                          "smooth")},
            "trim": {k: config["trim"].get(k) for k in ("score", "shape", *TRIM_KEYS)},
            "sequence_fps": config["index"]["sequence_fps"]}


def check_runs(runs: Sequence[FinalizedRun]) -> None:
    """Fused runs must share classes and preprocessing, or their scores do not align."""
    first = runs[0]
    reference = preprocessing(first.config)
    for run in runs[1:]:
        if run.classes != first.classes:
            raise ConfigError(f"runs {first.name} and {run.name} have different classes "
                              f"({', '.join(first.classes)} vs {', '.join(run.classes)})",
                              hint="Fuse runs trained on one class list")
        other = preprocessing(run.config)
        for section, values in reference.items():
            if other[section] != values:
                raise ConfigError(f"runs {first.name} and {run.name} were preprocessed "
                                  f"differently ({section}: {values} vs {other[section]})",
                                  hint="Fuse runs of one workdir's detect/track/trim")


# --------------------------------------------------------------------------- face sampling
@dataclass(frozen=True)
class FaceSample:
    """One sampled frame: its index in the video, how its face was found, the box."""

    frame: int
    status: str  # detect | track | no face | several faces
    box: Box | None


class FaceSampler:
    """Detect when searching, track otherwise, over every ``every``-th frame (see module doc).

    ``frames_read`` and ``counts`` (statuses, plus ``lost`` tracker failures) fill in as
    ``samples`` is consumed.
    """

    def __init__(self, detector: FaceDetector, tracker: str, extend_px: int, size: int,
                 color: bool, every: int, smooth: float = 0.0):
        self.detector = detector
        # track.smooth as `fer track` applies it; a box every Nth frame is not a steady
        # stream, so only every-frame sampling is smoothed
        self.smoother = BoxSmoother(smooth if every == 1 else 0.0)
        self.tracker_name = tracker
        self.extend_px = extend_px
        self.size = size
        self.color = color
        self.every = every
        self.frames_read = 0
        self.counts: Counter = Counter()

    def samples(self, frames: Iterable[np.ndarray]
                ) -> Iterator[tuple[FaceSample, np.ndarray | None]]:
        tracker = None
        for index, frame in enumerate(frames):
            self.frames_read = index + 1
            if index % self.every:
                continue
            box = None
            if tracker is not None:
                box = tracker.locate(frame)  # sub-pixel, as `fer track` cuts its clips
                status = "track"
                if box is None:
                    tracker = None
                    self.counts["lost"] += 1
                else:
                    box = self.smoother.update(box, frame.shape[1], frame.shape[0])
            if tracker is None:
                boxes = self.detector.detect(frame)
                status = "no face" if not boxes else "several faces"
                if len(boxes) == 1:
                    height, width = frame.shape[:2]
                    box = extend_box(boxes[0], self.extend_px, width, height)
                    tracker = FaceTracker(self.tracker_name, box)
                    tracker.start(frame, box)
                    self.smoother.reset(box)
                    status = "detect"
            self.counts[status] += 1
            face = crop_face(frame, box, self.size, self.color) if box is not None else None
            yield FaceSample(index, status, box), face


def crops_at(frames: Iterable[np.ndarray], boxes: Mapping[int, Box], size: int,
             color: bool) -> Iterator[np.ndarray]:
    """Re-cut recorded boxes from a second decode; stops after the last one needed."""
    last = max(boxes)
    for index, frame in enumerate(frames):
        if index in boxes:
            yield crop_face(frame, boxes[index], size, color)
        if index >= last:
            return


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# --------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class WindowSpec:
    """Window k holds the frames whose time t satisfies k*stride <= t < k*stride + window."""

    window: float
    stride: float
    fps: float

    def bounds(self, k: int) -> tuple[int, int]:
        """First and one-past-last frame index of window k."""
        start = math.ceil(k * self.stride * self.fps - 1e-6)
        end = math.ceil((k * self.stride + self.window) * self.fps - 1e-6)
        return start, end

    def times(self, k: int) -> tuple[float, float]:
        return k * self.stride, k * self.stride + self.window


def sampled_in(start: int, end: int, every: int) -> int:
    """How many frames of [start, end) are sampled (multiples of ``every``)."""
    return max(0, (end - 1) // every - (start - 1) // every) if end > start else 0


@dataclass
class Window:
    start_s: float
    end_s: float
    sampled: int
    faces: int
    several: int
    codes: dict = field(default_factory=dict)  # encoder key -> (T, ...) per-frame inputs

    @property
    def status(self) -> str:
        """ok with faces in at least half the sampled frames; else the commoner failure."""
        if self.sampled and 2 * self.faces >= self.sampled:
            return "ok"
        no_face = self.sampled - self.faces - self.several
        return "several faces" if self.several > no_face else "no face"


def stream_windows(samples: Iterable[tuple[FaceSample, np.ndarray | None]], encoders: dict,
                   spec: WindowSpec, every: int, sampler: FaceSampler) -> Iterator[Window]:
    """Complete windows as soon as the stream passes their end; faces encoded in batches.

    Held at a time: the frames of the windows still open plus one encoder batch. Only
    whole windows are returned, except for a video shorter than one window, which gives
    one window of its own length.
    """
    entries: deque = deque()  # [frame, status, {key: code} | None]
    pending: list = []  # (entry, face) awaiting encoding
    onset: dict = {key: [] for key in encoders}  # the video's first face codes (baseline)
    batch = min(e.batch_size for e in encoders.values())
    k = 0

    def encode() -> None:
        faces = [face for _, face in pending]
        for key, encoder in encoders.items():
            for (entry, _), code in zip(pending, encoder.encode(faces)):
                entry[2] = entry[2] or {}
                entry[2][key] = code
                if len(onset[key]) < BASELINE_FRAMES:
                    onset[key].append(code)
        pending.clear()

    def close(upto: int) -> Iterator[Window]:
        nonlocal k
        while True:
            start, end = spec.bounds(k)
            if end > upto:
                return
            yield make_window(k, start, end)
            k += 1
            next_start = spec.bounds(k)[0]
            while entries and entries[0][0] < next_start:
                entries.popleft()

    def make_window(index: int, start: int, end: int, times=None) -> Window:
        inside = [e for e in entries if start <= e[0] < end]
        coded = [e[2] for e in inside if e[2] is not None]
        window = Window(*(times or spec.times(index)), sampled_in(start, end, every),
                        len(coded), sum(e[1] == "several faces" for e in inside))
        if coded and window.status == "ok":
            window.codes = with_baseline(
                {key: np.stack([c[key] for c in coded]) for key in encoders},
                {key: np.stack(codes) for key, codes in onset.items()})
        return window

    for sample, face in samples:
        entry = [sample.frame, sample.status, None]
        entries.append(entry)
        if face is not None:
            pending.append((entry, face))
        if len(pending) >= batch:
            encode()
        yield from close(pending[0][0][0] if pending else sample.frame + 1)
    if pending:
        encode()
    n_frames = sampler.frames_read
    yield from close(n_frames)
    if k == 0 and n_frames:
        yield make_window(0, 0, n_frames, (0.0, n_frames / spec.fps))


# --------------------------------------------------------------------------- prediction
@dataclass
class Predictor:
    """Runs, their encoders, fusion and label map: everything one video needs."""

    runs: list[FinalizedRun]
    encoders: dict  # encoder key -> FeatureEncoder | ClipEncoder
    fusion: str | None
    weights: list[float] | None
    groups: list[tuple[str, list[int]]] | None

    @property
    def classes(self) -> list[str]:
        return self.runs[0].classes

    def per_run(self, codes: Sequence[dict]) -> list[np.ndarray]:
        """(N, C) softmax of every run for N sequences (each a {encoder key: codes})."""
        out = []
        for run in self.runs:
            key = run.encoder_key()
            encoder = self.encoders[key]
            parts = [run.model.predict_on_batch(model_inputs(
                run, encoder, [c[key] for c in chunk], PREDICT_BATCH,
                [c[baseline_key(key)] for c in chunk] if run.info.get("identity") else None)
            )[:len(chunk)] for chunk in batched(codes, PREDICT_BATCH)]
            out.append(np.concatenate(parts).astype(np.float64))
        return out

    def fused(self, per_run: list[np.ndarray]) -> np.ndarray:
        if len(per_run) == 1:
            return per_run[0]
        return fuse_scores(per_run, self.fusion, self.weights)

    def describe(self, probabilities: np.ndarray) -> dict:
        """Label, confidence and named (mapped) probabilities of one probability row."""
        best = int(np.argmax(probabilities))
        result = {"label": self.classes[best], "confidence": round(float(probabilities[best]), 6),
                  "probabilities": _named(self.classes, probabilities)}
        if self.groups:
            mapped = map_probabilities(probabilities[None], self.groups)[0]
            result["mapped_label"] = self.groups[int(np.argmax(mapped))][0]
            result["mapped_probabilities"] = _named([g for g, _ in self.groups], mapped)
        return result


def _named(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {name: round(float(v), 6) for name, v in zip(names, values)}


def build_predictor(run_dirs: Sequence[Path], fusion_method: str | None,
                    label_map: Mapping[str, Sequence[str]] | None,
                    notes: list[str]) -> Predictor:
    if not run_dirs:
        raise ConfigError("no finalized run given", hint="Name at least one run folder")
    if fusion_method is not None and fusion_method not in METHODS:
        raise ConfigError(f"unknown fusion method {fusion_method!r}",
                          hint=f"Use one of: {', '.join(METHODS)}")
    runs = [load_run(Path(d)) for d in run_dirs]
    check_runs(runs)
    groups = label_groups(label_map, runs[0].classes) if label_map else None
    fusion = (fusion_method or "average") if len(runs) > 1 else None
    weights = None
    if fusion == "weighted":
        if all(r.weight is not None for r in runs):
            weights = [float(r.weight) for r in runs]
        else:
            weights = [1.0] * len(runs)
            notes.append("weighted fusion: a run lacks cv-train run.json "
                         "(cv_accuracy); equal weights used")
    encoders = {}
    for run in runs:
        key = run.encoder_key()
        if key not in encoders:
            encoders[key] = ClipEncoder(run) if run.is_clip else FeatureEncoder(run)
        if run.is_clip:
            size = int(run.info["clip_size"])
            expected = [run.max_frames, size, size, 3 if run.info["color"] else 1]
            if list(run.info["input_shape"]) != expected:
                raise ConfigError(f"run {run.name}: model input {run.info['input_shape']} does "
                                  f"not match clip_size/color/max_frames {expected}",
                                  hint="Re-run `fer finalize` for it")
    if runs[0].config["trim"]["score"] == "openface":
        notes.append("trim.score is openface, which needs OpenFace CSVs of the new videos; "
                     "motion scores are used instead")
    return Predictor(runs, encoders, fusion, weights, groups)


# --------------------------------------------------------------------------- inputs
def list_videos(inputs: Sequence[Path], extensions: Sequence[str]) -> list[Path]:
    """Expand folders and list files: a folder holding videos gives each video (and each
    frame-sequence folder inside it; a stray image there is not a frame); a folder holding
    only images is one frame sequence; a ``.txt`` file lists inputs, one per line."""
    videos: list[Path] = []
    for path in map(Path, inputs):
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            videos.extend(list_videos(read_video_list(path), extensions))
        elif path.is_file():
            videos.append(path)
        elif path.is_dir():
            entries = sorted(path.iterdir())
            found = [p for p in entries if not p.name.startswith(".") and (
                (p.is_file() and p.suffix.lower() in extensions) or is_sequence_dir(p))]
            if not found and is_sequence_dir(path):
                found = [path]
            if not found:
                raise InputError(f"no videos ({', '.join(extensions)}) or frame-sequence "
                                 "folders in it", path=path,
                                 hint="Point at videos or at a folder holding them")
            videos.extend(found)
        else:
            raise InputError("no such file or folder", path=path, hint="Check the path")
    return videos


def read_video_list(path: Path) -> list[Path]:
    """Inputs named in a list file (one per line, ``#`` comments; relative to the file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError("list file is not UTF-8 text", path=path,
                         hint="Give one video path per line") from None
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not entries:
        raise InputError("list file names no video", path=path,
                         hint="Give one video path per line")
    return [path.parent / entry for entry in entries]


def output_names(videos: Sequence[Path]) -> list[str]:
    """One folder name per video: its stem, with -2, -3 ... when stems repeat."""
    names, used = [], Counter()
    for video in videos:
        stem = video.name if video.is_dir() else video.stem
        used[stem] += 1
        names.append(stem if used[stem] == 1 else f"{stem}-{used[stem]}")
    return names


def video_meta(path: Path, sequence_fps: float) -> tuple[float, int | None]:
    """Frame rate and a frame count for progress (container counts can be wrong)."""
    if path.is_dir():
        try:
            return float(sequence_fps), len(sequence_frames(path))
        except ItemError:
            return float(sequence_fps), None
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    return (float(fps) if 0 < fps < 1000 else float(sequence_fps)), (count or None)


# --------------------------------------------------------------------------- one video
@dataclass
class Settings:
    """How a video is read: every n-th frame, whole (window None) or in windows (seconds)."""

    every: int
    window: float | None
    stride: float | None


def predict_video(path: Path, predictor: Predictor, detector: FaceDetector,
                  settings: Settings, fps: float, advance=None) -> dict:
    """Predict one video; ItemError for an unreadable one (the caller records it).

    ``advance`` is called once per decoded frame (progress display).
    """
    config = predictor.runs[0].config
    track = config["track"]
    sampler = FaceSampler(detector, track["tracker"], config["detect"]["extend_px"],
                          track["size"], track["color"], settings.every,
                          smooth=track.get("smooth", 0.0))

    def frames() -> Iterator[np.ndarray]:
        for frame in iter_frames(path):
            if advance:
                advance()
            yield frame

    started = time.perf_counter()
    if settings.window:
        spec = WindowSpec(settings.window, settings.stride, fps)
        start, end = spec.bounds(0)
        if sampled_in(start, end, settings.every) == 0:
            raise ConfigError(f"a {settings.window} s window holds no sampled frame at "
                              f"{fps:g} fps with every {settings.every}", path=path,
                              hint="Lengthen the window or lower --every")
        result = _windows(sampler.samples(frames()), predictor, spec, settings, sampler)
    else:
        result = _whole(path, sampler, frames, predictor)
    seconds = time.perf_counter() - started
    counts = sampler.counts
    result.update({
        "fps": fps, "frames": sampler.frames_read,
        "sampled_frames": sum(counts[s] for s in ("detect", "track", "no face",
                                                   "several faces")),
        "face_frames": counts["detect"] + counts["track"],
        "detections": counts["detect"], "tracker_lost": counts["lost"],
        "several_faces_frames": counts["several faces"],
        "timing": {"seconds": round(seconds, 3),
                   "frames_per_second": round(sampler.frames_read / max(seconds, 1e-9), 1)}})
    if result["status"] in ("no face", "several faces"):
        result["reason"] = _faceless_reason(result["status"], result["sampled_frames"],
                                            counts["several faces"], result["face_frames"])
    shortest = max(run.min_frames for run in predictor.runs)
    if result["status"] == "ok" and result["face_frames"] < shortest:
        result.update(status="too short", reason=(
            f"{result['face_frames']} face frame(s); the model learnt from sequences of at "
            f"least {shortest} frames, so its answer would be chance. Give a longer video "
            "(a still needs a model trained on stills, index.stills=true)"))
        for key in ("label", "confidence", "probabilities", "mapped_label",
                    "mapped_probabilities", "distribution", "mapped_distribution"):
            result.pop(key, None)
        for window in result.get("windows", []):  # no window's label means more
            for key in ("label", "confidence", "probabilities", "mapped_label",
                        "mapped_probabilities"):
                window.pop(key, None)
            window["status"] = "too short" if window["status"] == "ok" else window["status"]
    return result


def _faceless_status(counts: Counter) -> str:
    return "several faces" if counts["several faces"] else "no face"


def _faceless_reason(status: str, sampled: int, several: int, faces: int) -> str:
    if faces:  # window mode: faces were found, but in no window often enough
        return (f"no window had a single face in half its sampled frames ({faces} of "
                f"{sampled} sampled frames had one). Try a longer --window")
    if status == "several faces":
        return (f"{several} of {sampled} sampled frames showed several faces and none a single "
                "one. Crop the video to one person")
    return (f"no face found in {sampled} sampled frames. Try detect.detector=yunet or a lower "
            "detect.min_neighbors")


def _whole(path: Path, sampler: FaceSampler, frames, predictor: Predictor) -> dict:
    """Trim the face frames (Algorithm 1 on motion), predict the kept ones once."""
    boxes: list[tuple[int, Box]] = []

    def faces() -> Iterator[np.ndarray]:
        for sample, face in sampler.samples(frames()):
            if face is not None:
                boxes.append((sample.frame, sample.box))
                yield face

    stream = faces()
    first = next(stream, None)
    if first is None:
        return {"status": _faceless_status(sampler.counts)}
    scores = motion_scores(chain([first], stream))
    params = predictor.runs[0].config["trim"]
    trim = trim_clip(scores, shape=params.get("shape", "onset-apex-offset"),
                     **{k: params[k] for k in TRIM_KEYS})
    longest = max(run.max_frames for run in predictor.runs)
    last = min(trim.last, trim.first + longest - 1)
    wanted = dict(boxes[trim.first:last + 1])
    onset_frames = [frame for frame, _ in boxes[:BASELINE_FRAMES]]  # neutral onset
    needed = {**dict(boxes[:BASELINE_FRAMES]), **wanted}
    track = predictor.runs[0].config["track"]
    read = dict(zip(sorted(needed), crops_at(iter_frames(path), needed, track["size"],
                                             track["color"])))
    if len(read) != len(needed):
        raise ItemError(f"the second read gave {len(read)} of {len(needed)} face frames",
                        path=path, hint="The file changed or decodes inconsistently; copy it")
    crops = [read[frame] for frame in sorted(wanted)]
    onset_crops = [read[frame] for frame in onset_frames]

    def encoded(faces, encoder):
        return np.concatenate([encoder.encode(chunk)
                               for chunk in batched(faces, encoder.batch_size)])

    codes = with_baseline(
        {key: encoded(crops, encoder) for key, encoder in predictor.encoders.items()},
        {key: encoded(onset_crops, encoder) for key, encoder in predictor.encoders.items()})
    per_run = predictor.per_run([codes])
    probabilities = predictor.fused(per_run)[0]
    result = {"status": "ok", "reason": "", **predictor.describe(probabilities),
              "trim": {"status": trim.status, "first": trim.first, "last": trim.last,
                       "kept_frames": trim.last - trim.first + 1,
                       "first_video_frame": boxes[trim.first][0],
                       "last_video_frame": boxes[trim.last][0]},
              "used_frames": {run.name: min(len(crops), run.max_frames)
                              for run in predictor.runs}}
    if len(predictor.runs) > 1:
        result["run_probabilities"] = {run.name: _named(predictor.classes, p[0])
                                       for run, p in zip(predictor.runs, per_run)}
    kept = trim.last - trim.first + 1
    if kept > longest:
        note = (f"{kept} frames kept after trimming; the model reads the first {longest}. "
                "Use --window for long videos")
        result["notes"] = [note]
    return result


def _windows(samples, predictor: Predictor, spec: WindowSpec, settings: Settings,
             sampler: FaceSampler) -> dict:
    """Predict every window with faces; aggregate labels by majority (seed 004)."""
    rows: list[dict] = []
    ready: list[tuple[dict, Window]] = []

    def flush() -> None:
        probabilities = predictor.fused(predictor.per_run([w.codes for _, w in ready]))
        for (row, _), p in zip(ready, probabilities):
            row.update(predictor.describe(p))
        ready.clear()

    for window in stream_windows(samples, predictor.encoders, spec, settings.every, sampler):
        row = {"start_s": round(window.start_s, 3), "end_s": round(window.end_s, 3),
               "status": window.status, "sampled_frames": window.sampled,
               "face_frames": window.faces}
        rows.append(row)
        if window.status == "ok":
            ready.append((row, window))
            if len(ready) >= PREDICT_BATCH:
                flush()
    if ready:
        flush()
    predicted = [r for r in rows if r["status"] == "ok"]
    result: dict[str, Any] = {"windows": rows, "n_windows": len(predicted),
                              "window": {"seconds": spec.window, "stride": spec.stride}}
    notes = []
    longest = max(w["sampled_frames"] for w in rows) if rows else 0
    short = [r.name for r in predictor.runs if r.max_frames < longest]
    if short:
        notes.append(f"windows hold up to {longest} sampled frames; run(s) {', '.join(short)} "
                     "read only the first max_frames. Raise --every or shorten --window")
    if notes:
        result["notes"] = notes
    if not predicted:
        status = "several faces" if any(r["status"] == "several faces" for r in rows) \
            else _faceless_status(sampler.counts)
        return {**result, "status": status}
    result["status"] = "ok"
    result["reason"] = ""
    result["distribution"] = _distribution(predicted, predictor.classes, "label",
                                           "probabilities")
    label = _vote(result["distribution"])
    result.update({"label": label,
                   "confidence": result["distribution"]["mean_probabilities"][label],
                   "probabilities": result["distribution"]["mean_probabilities"]})
    if predictor.groups:
        names = [g for g, _ in predictor.groups]
        mapped = _distribution(predicted, names, "mapped_label", "mapped_probabilities")
        result["mapped_distribution"] = mapped
        result["mapped_label"] = _vote(mapped)
        result["mapped_probabilities"] = mapped["mean_probabilities"]
    return result


def _distribution(rows: Sequence[dict], names: Sequence[str], label_key: str,
                  probs_key: str) -> dict:
    counts = Counter(r[label_key] for r in rows)
    means = np.mean([[r[probs_key][n] for n in names] for r in rows], axis=0)
    return {"windows": len(rows), "counts": {n: counts[n] for n in names},
            "shares": {n: round(counts[n] / len(rows), 6) for n in names},
            "mean_probabilities": _named(names, means)}


def _vote(distribution: dict) -> str:
    """Most frequent window label; ties go to the higher mean probability."""
    return max(distribution["counts"], key=lambda n: (distribution["counts"][n],
                                                      distribution["mean_probabilities"][n]))


# --------------------------------------------------------------------------- outputs
def _probability_cells(result: dict, key: str, names: Sequence[str]) -> list:
    values = result.get(key) or {}
    return [f"{values[n]:.6f}" if n in values else "" for n in names]


def write_outputs(folder: Path, result: dict, predictor: Predictor) -> list[Path]:
    """prediction.json/.csv, and in window mode timeline.csv/.png, distribution.csv/.png."""
    from ..reporting.plots import plot_prediction_distribution, plot_prediction_timeline

    classes = predictor.classes
    mapped = [g for g, _ in predictor.groups] if predictor.groups else []
    written = [folder / "prediction.json", folder / "prediction.csv"]
    atomic_write_json(written[0], result)
    header = ["video", "status", "label", *classes]
    row = [result["video"], result["status"], result.get("label", ""),
           *_probability_cells(result, "probabilities", classes)]
    if mapped:
        header += ["mapped_label", *mapped]
        row += [result.get("mapped_label", ""),
                *_probability_cells(result, "mapped_probabilities", mapped)]
    write_csv(written[1], header, [row])
    windows = result.get("windows")
    if windows is None:
        return written
    header = ["start_s", "end_s", "status", "sampled_frames", "face_frames", "label", *classes]
    header += ["mapped_label", *mapped] if mapped else []
    lines = []
    for w in windows:
        line = [w["start_s"], w["end_s"], w["status"], w["sampled_frames"], w["face_frames"],
                w.get("label", ""), *_probability_cells(w, "probabilities", classes)]
        if mapped:
            line += [w.get("mapped_label", ""),
                     *_probability_cells(w, "mapped_probabilities", mapped)]
        lines.append(line)
    write_csv(folder / "timeline.csv", header, lines)
    probabilities = np.array([[w["probabilities"][c] for c in classes] if "label" in w
                              else [np.nan] * len(classes) for w in windows])
    title = Path(result["video"]).name
    plot_prediction_timeline([w["start_s"] for w in windows], [w["end_s"] for w in windows],
                             probabilities, [w.get("label") for w in windows], classes,
                             folder / "timeline.png", title)
    written += [folder / "timeline.csv", folder / "timeline.png"]
    groups = []
    dist_rows = []
    for level, key, heading in (("class", "distribution", "classes"),
                                ("mapped", "mapped_distribution", "mapped labels")):
        dist = result.get(key)
        if dist is None:
            continue
        groups.append((heading, dist["shares"], dist["mean_probabilities"]))
        dist_rows += [[level, name, dist["counts"][name], dist["shares"][name],
                       dist["mean_probabilities"][name]] for name in dist["counts"]]
    write_csv(folder / "distribution.csv",
              ["level", "label", "windows", "share", "mean_probability"], dist_rows)
    written.append(folder / "distribution.csv")
    if groups:
        plot_prediction_distribution(groups, folder / "distribution.png",
                                     f"{title}: {result['n_windows']} windows")
        written.append(folder / "distribution.png")
    return written


def write_summary(path: Path, rows: Sequence[dict], mapped: bool) -> None:
    header = SUMMARY_COLUMNS + (["mapped_label"] if mapped else [])
    lines = []
    for r in rows:
        confidence = r.get("confidence")
        line = [r["video"], r["status"], r.get("reason", ""), r.get("label", ""),
                "" if confidence is None else f"{confidence:.6f}", r.get("n_windows", "")]
        lines.append(line + ([r.get("mapped_label", "")] if mapped else []))
    write_csv(path, header, lines)


# --------------------------------------------------------------------------- entry point
def predict_videos(inputs: list[Path], run_dirs: list[Path], out_dir: Path, *,
                   fusion_method: str | None = None, window: float | None = None,
                   stride: float | None = None, every: int = 1,
                   label_map: dict[str, list[str]] | None = None,
                   shard: tuple[int, int] | None = None, console=None) -> list[dict]:
    """Predict every input video with one finalized run or a fusion of several.

    Writes ``out_dir/<video>/prediction.json`` and ``prediction.csv`` (plus timeline and
    distribution files in window mode) and ``out_dir/summary.csv``; returns one summary
    row per video (video, status, reason, label, confidence, n_windows, mapped_label). A
    video that cannot be read or shows no single face gets its status and the others go on.
    Configuration mistakes (bad run folder, label map, window) raise ConfigError first.
    """
    if every < 1:
        raise ConfigError(f"--every must be >= 1, got {every}")
    if window is None and stride is not None:
        raise ConfigError("--stride needs --window", hint="Give --window SECONDS too")
    if window is not None and (window <= 0 or (stride is not None and stride <= 0)):
        raise ConfigError("--window and --stride must be positive seconds")
    settings = Settings(every, window, (stride or window) if window else None)
    configs = [run_config(Path(r)) for r in run_dirs]
    if label_map:  # checked before anything is written
        label_groups(label_map, read_json(Path(run_dirs[0]) / "classes.json", "classes.json"))
    extensions = tuple(e.lower() for e in configs[0]["index"].get("video_extensions")
                       or DEFAULT_VIDEO_EXTENSIONS)
    videos = list_videos(inputs, extensions)
    names = output_names(videos)
    out_dir = Path(out_dir)
    records = PredictRecords(out_dir, {
        "runs": [run_fingerprint(Path(r), RUN_FILES) for r in run_dirs],
        "fusion": fusion_method, "label_map": label_map, "every": every, "window": window,
        "stride": settings.stride})
    with records.lock(shard):
        mine = shard_of(list(zip(videos, names)), shard)
        todo = [(video, name) for video, name in mine if not records.done(name, video)]
        if len(todo) < len(mine):
            _say(console, f"predict: {len(mine) - len(todo)} of {len(mine)} videos already "
                          f"done (records in {records.folder}), {len(todo)} to do")
        if todo:  # TensorFlow and the models load only when there is work
            _predict_todo(todo, videos, names, records, run_dirs, fusion_method, label_map,
                          settings, out_dir, console)
        return records.rows(videos, names)


def _predict_todo(todo, videos, names, records, run_dirs, fusion_method, label_map, settings,
                  out_dir, console) -> None:
    notes: list[str] = []
    predictor = build_predictor(run_dirs, fusion_method, label_map, notes)
    detector = detector_from_params(predictor.runs[0].config["detect"])
    for note in notes:
        _say(console, f"[yellow]predict: {note}[/]")
    with _progress(console) as progress:
        for video, name in todo:
            result = _predict_one(video, predictor, detector, settings, progress)
            result["notes"] = notes + result.get("notes", [])
            write_outputs(out_dir / name, result, predictor)
            row = {key: result.get(key, "") for key in SUMMARY_COLUMNS}
            row["confidence"] = result.get("confidence")
            if predictor.groups:
                row["mapped_label"] = result.get("mapped_label", "")
            records.write(name, video, row)
            with records.summary_lock():
                write_summary(out_dir / "summary.csv", records.rows(videos, names),
                              bool(predictor.groups))
            _say(console, _line(name, result))


def _predict_one(video: Path, predictor: Predictor, detector: FaceDetector,
                 settings: Settings, progress) -> dict:
    header = {"video": str(video), "runs": [{"run": r.name, "path": str(r.path),
                                             "model": r.info.get("model"), "weight": r.weight}
                                            for r in predictor.runs],
              "fusion": ({"method": predictor.fusion, "weights": predictor.weights}
                         if predictor.fusion else None),
              "mode": "window" if settings.window else "video", "every": settings.every}
    fps, n_frames = video_meta(video, predictor.runs[0].config["index"]["sequence_fps"])
    task = progress.add_task(video.name, total=n_frames) if progress else None
    try:
        result = predict_video(video, predictor, detector, settings, fps,
                               (lambda: progress.advance(task)) if progress else None)
    except ItemError as exc:
        result = {"status": "unreadable", "reason": str(exc)}
    finally:
        if progress:
            progress.remove_task(task)
    return {**header, **result}


def _progress(console):
    from contextlib import nullcontext

    if console is None:
        return nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)


def _line(name: str, result: dict) -> str:
    if result["status"] != "ok":
        return f"{name}: [yellow]{result['status']}[/] {result.get('reason', '')}"
    extra = f", {result['n_windows']} windows" if "n_windows" in result else ""
    mapped = f" ({result['mapped_label']})" if "mapped_label" in result else ""
    return (f"{name}: {result['label']}{mapped} {result['confidence']:.2f}{extra}, "
            f"{result['frames']} frames in {result['timing']['seconds']:.1f} s")

