"""`fer predict`: apply finalized models (or a fusion of them) to new videos of any length.

The preprocessing of training is replayed on each new video, frame for frame: the run's
face detector finds the faces, its tracker follows them (thesis 3.2.1; paper 000 sec. 2.2)
and each face is cut out with ``crop_face`` at ``track.size``/``track.color``, so the model
sees the pixels it saw in training. Wild videos (long, several faces, cuts) differ from
BU-4DFE clips: seed 004 wants an emotion distribution per debate candidate, so every face
is followed as a person with its own id (fercli.vision.faces: detection every
``--detect-every`` seconds, association by overlap, re-linking by appearance after a cut or
an occlusion) and every person gets their own prediction. ``--faces largest`` keeps only
the largest face of each frame. Every ``every``-th frame is looked at (seed 004 took about
one frame in twenty). A person seen in fewer sampled frames than the shortest training
sequence is reported as ``too short``, with no label.

Two ways to read a video:

- whole-video mode: each person's face frames are trimmed with the run's Algorithm 1
  parameters on motion scores (as ``fer trim``), the kept frames are padded or truncated
  to the model's ``max_frames`` and predicted once. Only face boxes and scores are held
  during the first pass; a second decode crops just the frames the model reads;
- window mode: sliding windows of ``window`` seconds every ``stride`` seconds; each
  person's window with their face in at least half its sampled frames is predicted (no
  trimming inside a window). Windows stream: features of one window length per person
  plus one prediction batch are held at a time; faces of all persons share backbone
  batches and windows share prediction batches. A person's result is the majority label
  over their windows (seed 004, Algorithm 1, with windows in place of frames) and the share
  of windows per label.

Feature models get per-frame features from the run's backbone in batches, rounded through
``extract.dtype`` as the feature store held them; clip models get the face resized and
scaled exactly as ``fercli.learning.datasets.load_clip`` and ``clip_dataset`` do.
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core.errors import ConfigError, InputError, ItemError
from ..core.workspace import atomic_write_json, read_json, remove_temp_files, write_csv
from ..features.identity import BASELINE_FRAMES
from ..learning.fusion import METHODS, fuse_scores
from ..vision.detect import Box, FaceDetector, detector_from_params
from ..vision.media import is_sequence_dir, iter_frames, sequence_frames
from ..vision.track import BoxSmoother, crop_face
from ..vision.trim import MotionScorer, trim_clip
from .encoders import ClipEncoder, FeatureEncoder, baseline_key, model_inputs, with_baseline
from .records import PredictRecords, run_fingerprint, shard_of
from .runs import RUN_FILES, FinalizedRun, run_config
from .runtime import load_inference_run

DEFAULT_VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov")
PREDICT_BATCH = 16  # sequences per forward pass (windows of hours of video stream through)
TRIM_KEYS = ("min_frames_end", "threshold_ratio", "max_cut_ratio", "anomaly_last_frames")
SUMMARY_COLUMNS = ["video", "person", "status", "reason", "label", "confidence", "n_windows",
                   "face_frames"]
LIST_SUFFIXES = (".txt", ".list", ".lst")  # a file of video paths, one per line
FACES = ("all", "largest")
ANNOTATED = "annotated.mp4"


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
    """One face of a sampled frame: the frame's index, whose face it is, how it was found."""

    frame: int
    person: int
    source: str  # detect | track
    box: Box


class FaceSampler:
    """Every face of every ``every``-th frame with its person id (fercli.vision.faces), each
    cut out as `fer track` cuts its clips (``crop_face`` at track.size/track.color).

    ``frames_read``, ``sampled``, ``face_frames`` and ``counts`` (the tracker's: detections,
    cuts, lost, relinked) fill in as ``samples`` is consumed; ``boxes``, when given, gets
    each sampled frame's [(person, box)] (for ``--write``).
    """

    def __init__(self, detector: FaceDetector, tracker: str, extend_px: int, size: int,
                 color: bool, every: int, smooth: float = 0.0, faces: str = "all",
                 detect_every: int = 10, boxes: dict | None = None):
        from ..vision.faces import PersonTracker

        self.persons = PersonTracker(detector, tracker, extend_px, detect_every=detect_every,
                                     faces=faces)
        # track.smooth as `fer track` applies it; a box every Nth frame is not a steady
        # stream, so only every-frame sampling is smoothed
        self.smooth = smooth if every == 1 else 0.0
        self.smoothers: dict[int, BoxSmoother] = {}
        self.size = size
        self.color = color
        self.every = every
        self.frames_read = 0
        self.sampled = 0
        self.face_frames = 0
        self.boxes = boxes

    @property
    def counts(self) -> Counter:
        return self.persons.counts

    def samples(self, frames: Iterable[np.ndarray]
                ) -> Iterator[tuple[int, list[tuple[FaceSample, np.ndarray]]]]:
        """(frame index, [(sample, face crop)]) for each sampled frame, persons in id order."""
        for index, frame in enumerate(frames):
            self.frames_read = index + 1
            if index % self.every:
                continue
            self.sampled += 1
            faces = []
            for seen in self.persons.observe(frame):
                box = self._smoothed(seen, frame)
                faces.append((FaceSample(index, seen.person, seen.source, box),
                              crop_face(frame, box, self.size, self.color)))
            self.face_frames += bool(faces)
            if self.boxes is not None and faces:
                self.boxes[index] = [(s.person, s.box) for s, _ in faces]
            yield index, faces

    def _smoothed(self, seen, frame: np.ndarray) -> Box:
        if not self.smooth:
            return seen.box
        smoother = self.smoothers.get(seen.person)
        if smoother is None or seen.source == "detect":
            self.smoothers[seen.person] = smoother = BoxSmoother(self.smooth)
            return smoother.reset(seen.box)
        return smoother.update(seen.box, frame.shape[1], frame.shape[0])


def crops_at(frames: Iterable[np.ndarray], wanted: Mapping[int, Mapping[int, Box]], size: int,
             color: bool) -> Iterator[tuple[int, int, np.ndarray]]:
    """(frame, person, crop) of recorded boxes from a second decode; stops after the last."""
    last = max(wanted)
    for index, frame in enumerate(frames):
        for person, box in wanted.get(index, {}).items():
            yield index, person, crop_face(frame, box, size, color)
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

    def first_holding(self, frame: int) -> int:
        """The first window whose frames reach ``frame``."""
        k = max(0, math.floor((frame / self.fps - self.window) / self.stride) - 1)
        while self.bounds(k)[1] <= frame:
            k += 1
        return k


def sampled_in(start: int, end: int, every: int) -> int:
    """How many frames of [start, end) are sampled (multiples of ``every``)."""
    return max(0, (end - 1) // every - (start - 1) // every) if end > start else 0


@dataclass
class Window:
    start_s: float
    end_s: float
    sampled: int
    faces: int
    codes: dict = field(default_factory=dict)  # encoder key -> (T, ...) per-frame inputs

    @property
    def status(self) -> str:
        """ok with the person's face in at least half the sampled frames, else no face."""
        return "ok" if self.sampled and 2 * self.faces >= self.sampled else "no face"


class PersonWindows:
    """One person's windows, from the first that holds their first face to the video's end.

    Entries are ``[frame, {encoder key: code} | None]``, filled in when their batch is
    encoded; a window is made once every entry before its end is encoded. Windows without
    the person's face are given out only when a later one has it again, so a person who
    left early costs nothing for the rest of an hours-long video.
    """

    def __init__(self, spec: WindowSpec, every: int, first_frame: int, encoders: dict):
        self.spec = spec
        self.every = every
        self.entries: deque = deque()
        self.k = spec.first_holding(first_frame)
        self.away_from: int | None = None  # the first of the faceless windows held back
        self.onset: dict = {key: [] for key in encoders}  # the person's first face codes

    def close(self, upto: int) -> Iterator[Window]:
        """Every window that ends at or before frame ``upto`` (faceless ones held back)."""
        while True:
            start, end = self.spec.bounds(self.k)
            if end > upto:
                return
            window = self.make(start, end, self.spec.times(self.k))
            if window.faces:
                for away in range(self.away_from if self.away_from is not None else self.k,
                                  self.k):
                    first, last = self.spec.bounds(away)
                    yield Window(*self.spec.times(away), sampled_in(first, last, self.every), 0)
                self.away_from = None
                yield window
            elif self.away_from is None:
                self.away_from = self.k
            self.k += 1
            next_start = self.spec.bounds(self.k)[0]
            while self.entries and self.entries[0][0] < next_start:
                self.entries.popleft()

    def make(self, start: int, end: int, times: tuple[float, float]) -> Window:
        coded = [e[1] for e in self.entries if start <= e[0] < end and e[1] is not None]
        window = Window(*times, sampled_in(start, end, self.every), len(coded))
        if coded and window.status == "ok":
            window.codes = with_baseline(
                {key: np.stack([c[key] for c in coded]) for key in self.onset},
                {key: np.stack(codes) for key, codes in self.onset.items()})
        return window


def stream_windows(samples: Iterable[tuple[int, list[tuple[FaceSample, np.ndarray]]]],
                   encoders: dict, spec: WindowSpec, every: int,
                   sampler: FaceSampler) -> Iterator[tuple[int, Window]]:
    """(person, window) as soon as the stream passes the window's end; the faces of all
    persons are encoded together in batches.

    Held at a time: each person's frames of the windows still open plus one encoder batch.
    A video shorter than one window gives each person one window of the video's length.
    """
    persons: dict[int, PersonWindows] = {}
    pending: list = []  # (person, entry, face) awaiting encoding
    batch = min(e.batch_size for e in encoders.values())

    def encode() -> None:
        faces = [face for _, _, face in pending]
        for key, encoder in encoders.items():
            for (person, entry, _), code in zip(pending, encoder.encode(faces)):
                entry[1] = entry[1] or {}
                entry[1][key] = code
                onset = persons[person].onset[key]
                if len(onset) < BASELINE_FRAMES:
                    onset.append(code)
        pending.clear()

    def close(upto: int) -> Iterator[tuple[int, Window]]:
        for person, windows in persons.items():
            for window in windows.close(upto):
                yield person, window

    for frame, faces in samples:
        for sample, face in faces:
            if sample.person not in persons:
                persons[sample.person] = PersonWindows(spec, every, frame, encoders)
            entry = [frame, None]
            persons[sample.person].entries.append(entry)
            pending.append((sample.person, entry, face))
        if len(pending) >= batch:
            encode()
        yield from close(pending[0][1][0] if pending else frame + 1)
    if pending:
        encode()
    n_frames = sampler.frames_read
    yield from close(n_frames)
    if n_frames and spec.bounds(0)[1] > n_frames:
        for person, windows in persons.items():
            yield person, windows.make(0, n_frames, (0.0, n_frames / spec.fps))


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
    runs = [load_inference_run(Path(d)) for d in run_dirs]  # LiteRT graphs where they can be
    notes.extend(run.runtime_note for run in runs if run.runtime_note)
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
    """How a video is read: every n-th frame, whole (window None) or in windows (seconds),
    which faces (all, or the largest of each frame), how often the detector looks for new
    faces (seconds), and whether an annotated copy is written."""

    every: int
    window: float | None
    stride: float | None
    faces: str = "all"
    detect_every: float = 1.0
    write: bool = False


PERSON_SUMMARY = ("status", "reason", "label", "confidence", "probabilities", "mapped_label",
                  "mapped_probabilities", "n_windows")


def predict_video(path: Path, predictor: Predictor, detector: FaceDetector,
                  settings: Settings, fps: float, advance=None,
                  boxes: dict | None = None) -> dict:
    """Predict every person of one video; ItemError for an unreadable one (the caller
    records it). ``advance`` is called once per decoded frame (progress display); ``boxes``,
    when given, receives every sampled frame's (person, box) list (for ``--write``).

    The result lists ``persons`` (each with its own status, label, windows or trim); its
    top-level label and status are those of the main person: of the persons with a
    prediction, the one seen in most sampled frames.
    """
    config = predictor.runs[0].config
    track = config["track"]
    sampler = FaceSampler(detector, track["tracker"], config["detect"]["extend_px"],
                          track["size"], track["color"], settings.every,
                          smooth=track.get("smooth", 0.0), faces=settings.faces,
                          detect_every=max(1, round(settings.detect_every * fps
                                                    / settings.every)),
                          boxes=boxes)

    def frames() -> Iterator[np.ndarray]:
        for frame in iter_frames(path, prefetch=16):  # decoding overlaps the face work
            if advance:
                advance()
            yield frame

    seen: dict[int, list[int]] = {}  # person -> [sampled frames with the face, first, last]
    started = time.perf_counter()
    samples = _tally(sampler.samples(frames()), seen)
    if settings.window:
        spec = WindowSpec(settings.window, settings.stride, fps)
        start, end = spec.bounds(0)
        if sampled_in(start, end, settings.every) == 0:
            raise ConfigError(f"a {settings.window} s window holds no sampled frame at "
                              f"{fps:g} fps with every {settings.every}", path=path,
                              hint="Lengthen the window or lower --every")
        persons = _windows(samples, predictor, spec, settings, sampler, seen)
    else:
        persons = _whole(path, samples, predictor)
    seconds = time.perf_counter() - started
    shortest = max(run.min_frames for run in predictor.runs)
    listed = []
    for person in sorted(persons):
        count, first, last = seen[person]
        entry = {"person": person, "face_frames": count, "first_s": round(first / fps, 3),
                 "last_s": round(last / fps, 3), **persons[person]}
        if entry["status"] == "ok" and count < shortest:
            _too_short(entry, shortest)
        listed.append(entry)
    counts = sampler.counts
    result = _video_status(listed, sampler)
    result.update({
        "fps": fps, "frames": sampler.frames_read, "sampled_frames": sampler.sampled,
        "face_frames": sampler.face_frames, "faces": settings.faces,
        "detections": counts["detect"], "tracker_lost": counts["lost"],
        "cuts": counts["cut"], "relinked": counts["relinked"],
        "n_persons": len(listed), "persons": listed,
        "timing": {"seconds": round(seconds, 3),
                   "frames_per_second": round(sampler.frames_read / max(seconds, 1e-9), 1)}})
    return result


def _tally(samples, seen: dict[int, list[int]]):
    """Pass samples through, counting each person's sampled face frames, first and last."""
    for frame, faces in samples:
        for sample, _ in faces:
            if sample.person in seen:
                tally = seen[sample.person]
                tally[0] += 1
                tally[2] = frame
            else:
                seen[sample.person] = [1, frame, frame]
        yield frame, faces


def _too_short(entry: dict, shortest: int) -> None:
    """A person seen too briefly for the model: reported, with no label."""
    entry.update(status="too short", reason=(
        f"person {entry['person']} was seen in {entry['face_frames']} sampled frame(s); the "
        f"model learnt from sequences of at least {shortest} frames, so its answer would be "
        "chance. Give a longer video or a lower --every (a still needs a model trained on "
        "stills, index.stills=true)"))
    for key in ("label", "confidence", "probabilities", "mapped_label",
                "mapped_probabilities", "distribution", "mapped_distribution"):
        entry.pop(key, None)
    for window in entry.get("windows", []):  # no window's label means more
        for key in ("label", "confidence", "probabilities", "mapped_label",
                    "mapped_probabilities"):
            window.pop(key, None)
        window["status"] = "too short" if window["status"] == "ok" else window["status"]


def _video_status(persons: list[dict], sampler: FaceSampler) -> dict:
    """The video's status and label: its main person's (see ``predict_video``)."""
    if not persons:
        return {"status": "no face", "reason": (
            f"no face found in {sampler.sampled} sampled frames. Try detect.detector=yunet or "
            "a lower detect.min_neighbors")}
    predicted = [p for p in persons if p["status"] == "ok"]
    main = max(predicted or persons, key=lambda p: (p["face_frames"], -p["person"]))
    return {"main_person": main["person"],
            **{key: main[key] for key in PERSON_SUMMARY if key in main}}


def _whole(path: Path, samples, predictor: Predictor) -> dict[int, dict]:
    """Per person: trim the face frames (Algorithm 1 on motion), predict the kept ones once.

    Only boxes and one motion score per face frame are held during the first read; a
    second decode cuts out just the frames each model reads.
    """
    boxes: dict[int, list[tuple[int, Box]]] = {}
    scorers: dict[int, MotionScorer] = {}
    for frame, faces in samples:
        for sample, face in faces:
            boxes.setdefault(sample.person, []).append((frame, sample.box))
            scorers.setdefault(sample.person, MotionScorer()).add(face)
    if not boxes:
        return {}
    params = predictor.runs[0].config["trim"]
    longest = max(run.max_frames for run in predictor.runs)
    plans, wanted = {}, {}
    for person, person_boxes in boxes.items():
        trim = trim_clip(scorers[person].scores(),
                         shape=params.get("shape", "onset-apex-offset"),
                         **{k: params[k] for k in TRIM_KEYS})
        kept = person_boxes[trim.first:min(trim.last, trim.first + longest - 1) + 1]
        onset = person_boxes[:BASELINE_FRAMES]  # the person's neutral onset
        for frame, box in chain(onset, kept):
            wanted.setdefault(frame, {})[person] = box
        plans[person] = (trim, [f for f, _ in kept], [f for f, _ in onset])
    track = predictor.runs[0].config["track"]
    read = {(frame, person): crop for frame, person, crop
            in crops_at(iter_frames(path), wanted, track["size"], track["color"])}
    needed = sum(len(v) for v in wanted.values())
    if len(read) != needed:
        raise ItemError(f"the second read gave {len(read)} of {needed} face frames",
                        path=path, hint="The file changed or decodes inconsistently; copy it")

    def encoded(faces, encoder):
        return np.concatenate([encoder.encode(chunk)
                               for chunk in batched(faces, encoder.batch_size)])

    persons = sorted(plans)
    codes = []
    for person in persons:
        _, kept, onset = plans[person]
        crops = [read[frame, person] for frame in kept]
        onset_crops = [read[frame, person] for frame in onset]
        codes.append(with_baseline(
            {key: encoded(crops, enc) for key, enc in predictor.encoders.items()},
            {key: encoded(onset_crops, enc) for key, enc in predictor.encoders.items()}))
    per_run = predictor.per_run(codes)
    fused = predictor.fused(per_run)
    results = {}
    for i, person in enumerate(persons):
        trim, kept, _ = plans[person]
        frames_of = boxes[person]
        result = {"status": "ok", "reason": "", **predictor.describe(fused[i]),
                  "trim": {"status": trim.status, "first": trim.first, "last": trim.last,
                           "kept_frames": trim.last - trim.first + 1,
                           "first_video_frame": frames_of[trim.first][0],
                           "last_video_frame": frames_of[trim.last][0]},
                  "used_frames": {run.name: min(len(kept), run.max_frames)
                                  for run in predictor.runs}}
        if len(predictor.runs) > 1:
            result["run_probabilities"] = {run.name: _named(predictor.classes, p[i])
                                           for run, p in zip(predictor.runs, per_run)}
        if trim.last - trim.first + 1 > longest:
            result["notes"] = [f"{trim.last - trim.first + 1} frames kept after trimming; "
                               f"the model reads the first {longest}. Use --window for long "
                               "videos"]
        results[person] = result
    return results


def _windows(samples, predictor: Predictor, spec: WindowSpec, settings: Settings,
             sampler: FaceSampler, seen: Mapping[int, Any]) -> dict[int, dict]:
    """Predict every person's windows with their face; aggregate labels by majority (seed
    004); windows of all persons share prediction batches."""
    rows: dict[int, list[dict]] = {}
    ready: list[tuple[dict, Window]] = []

    def flush() -> None:
        probabilities = predictor.fused(predictor.per_run([w.codes for _, w in ready]))
        for (row, _), p in zip(ready, probabilities):
            row.update(predictor.describe(p))
        ready.clear()

    for person, window in stream_windows(samples, predictor.encoders, spec, settings.every,
                                         sampler):
        row = {"start_s": round(window.start_s, 3), "end_s": round(window.end_s, 3),
               "status": window.status, "sampled_frames": window.sampled,
               "face_frames": window.faces}
        rows.setdefault(person, []).append(row)
        if window.status == "ok":
            ready.append((row, window))
            if len(ready) >= PREDICT_BATCH:
                flush()
    if ready:
        flush()
    return {person: _person_windows(rows.get(person, []), predictor, spec)
            for person in seen}


def _person_windows(rows: list[dict], predictor: Predictor, spec: WindowSpec) -> dict:
    predicted = [r for r in rows if r["status"] == "ok"]
    result: dict[str, Any] = {"windows": rows, "n_windows": len(predicted),
                              "window": {"seconds": spec.window, "stride": spec.stride}}
    longest = max((w["sampled_frames"] for w in rows), default=0)
    short = [r.name for r in predictor.runs if r.max_frames < longest]
    if short:
        result["notes"] = [f"windows hold up to {longest} sampled frames; run(s) "
                           f"{', '.join(short)} read only the first max_frames. Raise --every "
                           "or shorten --window"]
    if not predicted:
        return {**result, "status": "no face", "reason": (
            "the face was in no window for half its sampled frames. Try a longer --window")}
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
    """prediction.json, prediction.csv (a row per person) and, in window mode, timeline and
    distribution CSVs (a ``person`` column) and figures (a panel row per person)."""
    from ..reporting.plots import (
        PersonTimeline,
        plot_prediction_distribution,
        plot_prediction_timeline,
    )

    classes = predictor.classes
    mapped = [g for g, _ in predictor.groups] if predictor.groups else []
    persons = result.get("persons") or []
    written = [folder / "prediction.json", folder / "prediction.csv"]
    atomic_write_json(written[0], result)
    header = ["video", "person", "status", "label", *classes]
    header += ["mapped_label", *mapped] if mapped else []
    lines = []
    for entry in persons or [result]:
        line = [result["video"], entry.get("person", ""), entry["status"],
                entry.get("label", ""), *_probability_cells(entry, "probabilities", classes)]
        if mapped:
            line += [entry.get("mapped_label", ""),
                     *_probability_cells(entry, "mapped_probabilities", mapped)]
        lines.append(line)
    write_csv(written[1], header, lines)
    windowed = [p for p in persons if "windows" in p]
    if not windowed:
        return written
    header = ["person", "start_s", "end_s", "status", "sampled_frames", "face_frames", "label",
              *classes]
    header += ["mapped_label", *mapped] if mapped else []
    lines = []
    for person in windowed:
        for w in person["windows"]:
            line = [person["person"], w["start_s"], w["end_s"], w["status"],
                    w["sampled_frames"], w["face_frames"], w.get("label", ""),
                    *_probability_cells(w, "probabilities", classes)]
            if mapped:
                line += [w.get("mapped_label", ""),
                         *_probability_cells(w, "mapped_probabilities", mapped)]
            lines.append(line)
    write_csv(folder / "timeline.csv", header, lines)
    title = Path(result["video"]).name
    plot_prediction_timeline([PersonTimeline(
        f"person {p['person']}", [w["start_s"] for w in p["windows"]],
        [w["end_s"] for w in p["windows"]],
        np.array([[w["probabilities"][c] for c in classes] if "label" in w
                  else [np.nan] * len(classes) for w in p["windows"]]),
        [w.get("label") for w in p["windows"]]) for p in windowed],
        classes, folder / "timeline.png", title)
    written += [folder / "timeline.csv", folder / "timeline.png"]
    figure_rows, dist_rows = [], []
    for person in windowed:
        groups = []
        for level, key, heading in (("class", "distribution", "classes"),
                                    ("mapped", "mapped_distribution", "mapped labels")):
            dist = person.get(key)
            if dist is None:
                continue
            groups.append((heading, dist["shares"], dist["mean_probabilities"]))
            dist_rows += [[person["person"], level, name, dist["counts"][name],
                           dist["shares"][name], dist["mean_probabilities"][name]]
                          for name in dist["counts"]]
        if groups:
            figure_rows.append((f"person {person['person']} ({person['n_windows']} windows)",
                                groups))
    write_csv(folder / "distribution.csv",
              ["person", "level", "label", "windows", "share", "mean_probability"], dist_rows)
    written.append(folder / "distribution.csv")
    if figure_rows:
        plot_prediction_distribution(figure_rows, folder / "distribution.png",
                                     f"{title}: {len(figure_rows)} person(s) with predictions")
        written.append(folder / "distribution.png")
    return written


def summary_rows(result: dict, mapped: bool) -> list[dict]:
    """One summary row per person of a video (one row for a video without any)."""
    rows = []
    for entry in result.get("persons") or [{}]:
        source = entry or result
        row = {key: source.get(key, "") for key in SUMMARY_COLUMNS}
        row.update(video=result["video"], person=entry.get("person", ""),
                   confidence=source.get("confidence"))
        if mapped:
            row["mapped_label"] = source.get("mapped_label", "")
        rows.append(row)
    return rows


def write_summary(path: Path, rows: Sequence[dict], mapped: bool) -> None:
    header = SUMMARY_COLUMNS + (["mapped_label"] if mapped else [])
    lines = []
    for r in rows:
        confidence = r.get("confidence")
        line = [r["video"], r.get("person", ""), r["status"], r.get("reason", ""),
                r.get("label", ""), "" if confidence is None else f"{confidence:.6f}",
                r.get("n_windows", ""), r.get("face_frames", "")]
        lines.append(line + ([r.get("mapped_label", "")] if mapped else []))
    write_csv(path, header, lines)


# --------------------------------------------------------------------------- entry point
def predict_videos(inputs: list[Path], run_dirs: list[Path], out_dir: Path, *,
                   fusion_method: str | None = None, window: float | None = None,
                   stride: float | None = None, every: int = 1,
                   label_map: dict[str, list[str]] | None = None,
                   shard: tuple[int, int] | None = None, faces: str = "all",
                   detect_every: float = 1.0, write: bool = False, workers: int = 1,
                   console=None) -> list[dict]:
    """Predict every person of every input video with one finalized run or a fusion.

    Writes ``out_dir/<video>/prediction.json`` and ``prediction.csv`` (plus timeline and
    distribution files in window mode, ``annotated.mp4`` with ``write``) and
    ``out_dir/summary.csv`` (a row per person); returns one row per video (its main
    person's status, label, confidence, n_windows, mapped_label, and ``persons``: a
    summary row per person). A video that cannot be read or shows no face gets its status
    and the others go on. ``workers`` > 1 predicts that many videos at once, each process
    loading the models once. Configuration mistakes (bad run folder, label map, window, faces)
    raise ConfigError first.
    """
    if every < 1:
        raise ConfigError(f"--every must be >= 1, got {every}")
    if window is None and stride is not None:
        raise ConfigError("--stride needs --window", hint="Give --window SECONDS too")
    if window is not None and (window <= 0 or (stride is not None and stride <= 0)):
        raise ConfigError("--window and --stride must be positive seconds")
    if faces not in FACES:
        raise ConfigError(f"--faces {faces!r} is not one of {', '.join(FACES)}",
                          hint="all: every face with its own id; largest: the largest face")
    if not detect_every > 0:
        raise ConfigError(f"--detect-every must be positive seconds, got {detect_every}",
                          hint="Give e.g. --detect-every 1 (look for new faces every second)")
    settings = Settings(every, window, (stride or window) if window else None, faces,
                        detect_every, write)
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
        "stride": settings.stride, "faces": faces, "detect_every": detect_every,
        "write": write})
    with records.lock(shard):
        mine = shard_of(list(zip(videos, names)), shard)
        todo = [(video, name) for video, name in mine if not records.done(name, video)]
        if len(todo) < len(mine):
            _say(console, f"predict: {len(mine) - len(todo)} of {len(mine)} videos already "
                          f"done (records in {records.folder}), {len(todo)} to do")
        if todo:  # the models load only when there is work
            _predict_todo(todo, videos, names, records, run_dirs, fusion_method, label_map,
                          settings, out_dir, console, workers)
        return records.rows(videos, names)


def _predict_todo(todo, videos, names, records, run_dirs, fusion_method, label_map, settings,
                  out_dir, console, workers: int) -> None:
    """Predict the unfinished videos, here or in ``workers`` processes (each loads the
    models once); records and the summary are written here as each video finishes."""
    from ..core.engine import StopRequests, run_in_workers

    state = _predictor_state(run_dirs, fusion_method, label_map)  # config errors first
    for note in state["notes"]:
        _say(console, f"[yellow]predict: {note}[/]")
    mapped = bool(state["predictor"].groups)

    def finished(video: Path, name: str, row: dict, line: str) -> None:
        records.write(name, video, row)
        with records.summary_lock():
            write_summary(out_dir / "summary.csv",
                          [p for r in records.rows(videos, names) for p in r["persons"]],
                          mapped)
        _say(console, line)

    with _progress(console) as progress:
        if workers <= 1 or len(todo) == 1:
            try:
                with StopRequests(graceful=False):
                    for video, name in todo:
                        finished(video, name, *predict_and_write(
                            video, name, run_dirs, fusion_method, label_map, settings,
                            out_dir, progress))
            except KeyboardInterrupt:  # a stop may land between a temp file and its cleanup
                remove_temp_files(out_dir, {os.getpid()})
                raise
            return
        task = progress.add_task(f"{len(todo)} videos, {workers} workers",
                                 total=len(todo)) if progress else None
        jobs = [(video, name, run_dirs, fusion_method, label_map, settings, out_dir)
                for video, name in todo]
        abandoned = partial(remove_temp_files, out_dir)  # killed workers' half-written files
        for (video, name, *_), (row, line) in run_in_workers(predict_and_write, jobs, workers,
                                                             on_abandon=abandoned):
            finished(video, name, row, line)
            if progress:
                progress.advance(task)


_STATE: dict = {}  # this process's loaded predictor (workers load it once)


def _predictor_state(run_dirs, fusion_method, label_map) -> dict:
    key = ([str(d) for d in run_dirs], fusion_method, label_map)
    if _STATE.get("key") != key:
        notes: list[str] = []
        predictor = build_predictor(run_dirs, fusion_method, label_map, notes)
        _STATE.update(key=key, notes=notes, predictor=predictor,
                      detector=detector_from_params(predictor.runs[0].config["detect"]))
    return _STATE


def predict_and_write(video: Path, name: str, run_dirs, fusion_method, label_map,
                      settings: Settings, out_dir: Path, progress=None) -> tuple[dict, str]:
    """One video: predicted, its outputs written; returns its record row and a line."""
    state = _predictor_state(run_dirs, fusion_method, label_map)
    predictor = state["predictor"]
    result = _predict_one(video, predictor, state["detector"], settings, progress,
                          out_dir / name / ANNOTATED)
    result["notes"] = state["notes"] + result.get("notes", [])
    write_outputs(out_dir / name, result, predictor)
    persons = summary_rows(result, bool(predictor.groups))
    row = {**{key: result.get(key, "") for key in SUMMARY_COLUMNS},
           "person": result.get("main_person", ""), "confidence": result.get("confidence"),
           "persons": persons}
    if predictor.groups:
        row["mapped_label"] = result.get("mapped_label", "")
    return row, _line(name, result)


def _predict_one(video: Path, predictor: Predictor, detector: FaceDetector,
                 settings: Settings, progress, annotated: Path) -> dict:
    header = {"video": str(video), "runs": [{"run": r.name, "path": str(r.path),
                                             "model": r.info.get("model"), "weight": r.weight}
                                            for r in predictor.runs],
              "fusion": ({"method": predictor.fusion, "weights": predictor.weights}
                         if predictor.fusion else None),
              "mode": "window" if settings.window else "video", "every": settings.every}
    fps, n_frames = video_meta(video, predictor.runs[0].config["index"]["sequence_fps"])
    task = progress.add_task(video.name, total=n_frames) if progress else None
    boxes: dict | None = {} if settings.write else None
    try:
        result = predict_video(video, predictor, detector, settings, fps,
                               (lambda: progress.advance(task)) if progress else None, boxes)
        if settings.write:
            from .annotate import write_annotated

            if progress:
                progress.reset(task, description=f"{video.name} (writing {ANNOTATED})")
            frames = _advancing(iter_frames(video), progress, task)
            if write_annotated(frames, annotated, fps, boxes, result["persons"],
                               settings.every):
                result["annotated"] = str(annotated)
    except ItemError as exc:
        result = {"status": "unreadable", "reason": str(exc)}
    finally:
        if progress:
            progress.remove_task(task)
    return {**header, **result}


def _advancing(frames: Iterable[np.ndarray], progress, task) -> Iterator[np.ndarray]:
    for frame in frames:
        if progress:
            progress.advance(task)
        yield frame


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
    persons = result["n_persons"]
    who = f"person {result['main_person']} of {persons}: " if persons > 1 else ""
    return (f"{name}: {who}{result['label']}{mapped} {result['confidence']:.2f}{extra}, "
            f"{result['frames']} frames in {result['timing']['seconds']:.1f} s")

