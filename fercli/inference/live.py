"""`fer live`: the current emotion of every face in a camera, a video file or a stream.

Real-time FER (thesis 4.2) has to keep up with the frames as they come. Here every frame
goes through the run's own face path, the ``FaceSampler`` of `fer predict` (each face a
person with its own id: fercli.vision.faces; crop at track.size/track.color), and each
person's face crops of the last ``window`` seconds form the sequence the classifier reads,
every ``stride`` seconds:

- a window with the person's face in fewer than half its frames gets no prediction (the
  rule of `fer predict --window`); its most recent ``max_frames`` faces are used when it
  holds more;
- a run with identity normalisation (fercli.features.identity) also reads the neutral
  onset: each person's first ``identity.BASELINE_FRAMES`` face crops are kept for the whole
  run (`fer predict`'s rule: the person's first face frames);
- the classifier is an exported graph of `fer export` (TFLite preferred: the run's export
  folder is used when it matches model.keras) or else the run's own pipeline, on the
  LiteRT graphs `fer finalize` cached in it (no TensorFlow import) or on Keras;
- each prediction prints one line (person, time, label, every probability); ``--write``
  saves the video with each face's box, person id and label, and one bar per class of the
  first person, ``--show`` shows it.

At the end it reports frames per second and the real-time factor: seconds of video
processed per second of wall time (above 1: faster than the video plays; a camera can
never run ahead of itself, so there it stays at or below 1).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import ConfigError, FerError, InputError
from ..core.workspace import file_sha256, read_json
from ..features.identity import BASELINE_FRAMES
from .annotate import draw_face, person_colour, video_writer
from .export import ExportedModel, KerasPipeline, default_out_dir, pad_clip, pad_onset
from .runs import resolve_run

# Exported files in order of preference: TFLite float32 keeps the Keras scores, then the
# smaller TFLite variants, then the SavedModel.
PREFERENCE = ("model.tflite", "model-float16.tflite", "model-int8.tflite", "savedmodel")
BAR_WIDTH = 120  # pixels of a probability of 1.0 in the overlay


# --------------------------------------------------------------------------- classifiers
@dataclass
class Classifier:
    """A run ready for windows of face crops: its config, classes and a predict function."""

    name: str
    kind: str  # tflite | savedmodel (exports) | litert (the run's cached graphs) | keras
    path: Path
    classes: list[str]
    max_frames: int
    config: dict  # detect and track sections (the face path the model was trained on)
    # (crops, onset): lists of (S, S, C) uint8 -> (classes,); onset is read by identity runs
    predict_crops: object = field(repr=False)
    needs_onset: bool = False  # identity normalisation: the first face crops are an input

    def predict(self, crops: list[np.ndarray],
                onset: list[np.ndarray] | None = None) -> np.ndarray:
        """Probabilities of the window's face crops; ``onset``: the first face crops of the
        source (up to BASELINE_FRAMES), used by identity runs (default: the window's first)."""
        if self.needs_onset and not onset:
            onset = crops[:BASELINE_FRAMES]
        return np.asarray(self.predict_crops(crops[-self.max_frames:],
                                             list(onset or [])[:BASELINE_FRAMES]), np.float64)


def exported_classifier(path: Path) -> Classifier:
    """A classifier from `fer export` output: its folder, a .tflite file or a SavedModel."""
    path = Path(path)
    folder = path if (path / "export.json").is_file() else path.parent
    if not (folder / "export.json").is_file():
        raise ConfigError(f"{path} has no export.json beside it",
                          hint="Give the folder `fer export` wrote (or a file inside it)")
    summary = read_json(folder / "export.json", "export.json")
    if path == folder:
        names = [n for n in PREFERENCE if n in summary["artifacts"] and (folder / n).exists()]
        if not names:
            raise ConfigError(f"{folder} holds no exported model", hint="Run `fer export`")
        path = folder / names[0]
    model = ExportedModel(path)
    size = int(summary["config"]["track"]["size"])
    channels = 3 if summary["config"]["track"]["color"] else 1

    def predict(crops: list[np.ndarray], onset: list[np.ndarray]) -> np.ndarray:
        clip, mask = pad_clip(crops, model.max_frames, size, channels)
        return model.predict(clip, mask, pad_onset(onset, size, channels)
                             if model.needs_onset else None)[0]

    return Classifier(summary["run"], model.kind, path, list(summary["classes"]),
                      model.max_frames, summary["config"], predict, model.needs_onset)


def keras_classifier(run_dir: Path, runtime: bool = False) -> Classifier:
    """The run's own pipeline (`fer predict`'s encoders and model); with ``runtime``, on the
    LiteRT graphs `fer finalize` cached in the run (kind ``litert``) where it can be."""
    from .runs import load_run
    from .runtime import CACHE_DIR, load_inference_run

    run = load_inference_run(run_dir) if runtime else load_run(run_dir)
    pipeline = KerasPipeline(run)
    on_litert = run.runtime == "tflite"
    return Classifier(run.name, "litert" if on_litert else "keras",
                      run.path / CACHE_DIR if on_litert else run.path, run.classes,
                      run.max_frames, run.config,
                      lambda crops, onset: pipeline.predict(
                          np.stack(crops), np.stack(onset) if onset else None),
                      pipeline.needs_onset)


def load_classifier(workdir: Path, run: str | None = None,
                    model: Path | None = None) -> Classifier:
    """``model`` (an export) as given; else the run (default: newest), exported if it can.

    A run's export folder (<workdir>/export/<run>) is used when its export.json was made
    from the run's current model.keras; otherwise the run's own pipeline runs, on its
    cached LiteRT graphs (fercli.inference.runtime) or else on Keras.
    """
    if model is not None:
        if run is not None:
            raise ConfigError("--run and --model exclude each other", hint="Give one of them")
        return exported_classifier(model)
    run_dir = resolve_run(run, workdir)
    export_dir = default_out_dir(run_dir)
    if (export_dir / "export.json").is_file():
        summary = read_json(export_dir / "export.json", "export.json")
        if summary.get("source_sha256") == file_sha256(run_dir / "model.keras") and any(
                (export_dir / n).exists() for n in PREFERENCE if n in summary["artifacts"]):
            return exported_classifier(export_dir)
    return keras_classifier(run_dir, runtime=True)


# --------------------------------------------------------------------------- sources
def open_source(source: str) -> tuple[cv2.VideoCapture, bool]:
    """A camera index (digits), a video file or a stream URL; (capture, is_camera)."""
    camera = source.isdigit()
    if not camera and "://" not in source and not Path(source).exists():
        raise InputError("no such video file", path=source,
                         hint="Give a video file, a camera index (0) or a stream URL")
    capture = cv2.VideoCapture(int(source) if camera else source)
    if not capture.isOpened():
        capture.release()
        what = "camera" if camera else "video or stream"
        raise InputError(f"cannot open the {what}", path=source,
                         hint="Check the index, the path or URL, and the codec")
    return capture, camera


def frames_of(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


# --------------------------------------------------------------------------- drawing
def draw_overlay(frame: np.ndarray, boxes: dict, persons: dict,
                 classes: list[str]) -> np.ndarray:
    """The frame with each face's box, person id and current label, and one bar per class
    for the first person with a prediction."""
    out = frame.copy()
    for number, box in boxes.items():
        probabilities = persons[number].probabilities
        text = "" if probabilities is None else (
            f"{classes[int(np.argmax(probabilities))]} {probabilities.max():.0%}")
        draw_face(out, number, box, text)
    shown = next(((n, p.probabilities) for n, p in sorted(persons.items())
                  if n in boxes and p.probabilities is not None), None)
    if shown is None:
        cv2.putText(out, "looking for a face" if not boxes else "", (8, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 255), 1, cv2.LINE_AA)
        return out
    number, probabilities = shown
    best = int(np.argmax(probabilities))
    panel = out[:16 * len(classes) + 20, :74 + BAR_WIDTH]
    panel[:] = (panel * 0.4).astype(np.uint8)  # darken behind the bars
    cv2.putText(out, f"P{number}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                person_colour(number), 1, cv2.LINE_AA)
    for i, (name, p) in enumerate(zip(classes, probabilities, strict=True)):
        y = 30 + 16 * i
        colour = (0, 220, 0) if i == best else (200, 200, 200)
        cv2.rectangle(out, (70, y - 10), (70 + int(BAR_WIDTH * p), y + 2), colour, -1)
        cv2.putText(out, name[:9], (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1,
                    cv2.LINE_AA)
    return out


# --------------------------------------------------------------------------- the loop
@dataclass
class LiveWindow:
    """Face crops (None where no face) of the last ``frames`` frames."""

    frames: int
    entries: deque = field(default_factory=deque)

    def add(self, face: np.ndarray | None) -> None:
        self.entries.append(face)
        while len(self.entries) > self.frames:
            self.entries.popleft()

    def faces(self) -> list[np.ndarray]:
        return [f for f in self.entries if f is not None]

    def ready(self) -> bool:
        """A face in at least half the frames (as `fer predict --window` asks)."""
        return bool(self.entries) and 2 * len(self.faces()) >= len(self.entries)


def probability_line(seconds: float, probabilities: np.ndarray, classes: list[str]) -> str:
    best = int(np.argmax(probabilities))
    cells = " ".join(f"{c} {p:.2f}" for c, p in zip(classes, probabilities, strict=True))
    return f"{seconds:7.2f} s  {classes[best]:<9} {probabilities[best]:.2f}  | {cells}"


def run_live(source: str, classifier: Classifier, window: float = 2.0, stride: float = 0.5,
             show: bool = False, write: Path | None = None, say=print, faces: str = "all",
             detect_every: float = 1.0) -> dict:
    """Classify every face in ``source`` as it plays; returns the timing and predictions.

    ``say`` receives each output line (probabilities, notes, the final report).
    """
    from ..vision.detect import detector_from_params
    from .predict import FACES, FaceSampler

    if window <= 0 or stride <= 0:
        raise ConfigError("--window and --stride must be positive seconds")
    if faces not in FACES:
        raise ConfigError(f"--faces {faces!r} is not one of {', '.join(FACES)}",
                          hint="all: every face with its own id; largest: the largest face")
    capture, camera = open_source(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps_note = ""
    if not 0 < fps < 1000:
        fps = 25.0
        fps_note = " (the source reports no frame rate; 25 fps assumed)"
    detect, track = classifier.config["detect"], classifier.config["track"]
    sampler = FaceSampler(detector_from_params(detect), track["tracker"], detect["extend_px"],
                          track["size"], track["color"], every=1,
                          smooth=track.get("smooth", 0.0), faces=faces,
                          detect_every=max(1, round(detect_every * fps)))  # as predict
    window_frames = max(1, round(window * fps))
    stride_frames = max(1, round(stride * fps))
    blank = np.zeros(_crop_shape(track), np.uint8)
    classifier.predict([blank], [blank])  # build the graph first
    persons: dict[int, LivePerson] = {}
    current: dict = {}

    def frames() -> Iterator[np.ndarray]:
        for frame in frames_of(capture):
            current["frame"] = frame
            yield frame

    predictions: list[dict] = []
    say(f"live: {classifier.name} ({classifier.kind}: {classifier.path}) on {source}, "
        f"{fps:g} fps{fps_note}; window {window:g} s, a prediction every {stride:g} s")
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    started = time.perf_counter()
    try:
        with video_writer(write, size, fps) as writer:
            try:
                for index, found in sampler.samples(frames()):
                    boxes = {}
                    for sample, face in found:
                        person = persons.setdefault(sample.person,
                                                    LivePerson(LiveWindow(window_frames)))
                        person.add(face if face.ndim == 3 else face[..., None])
                        boxes[sample.person] = sample.box
                    for number, person in persons.items():
                        if number not in boxes:
                            person.window.add(None)
                    if (index + 1) % stride_frames == 0:
                        seconds = (index + 1) / fps
                        lines = [person.predict(classifier, seconds, number)
                                 for number, person in sorted(persons.items())]
                        for person_line in filter(None, lines):
                            say(person_line)
                        predictions += [p.last for p, line in zip(
                            (persons[n] for n in sorted(persons)), lines) if line]
                        if not any(lines):
                            say(f"{seconds:7.2f} s  no face in half the window")
                    if writer is not None or show:
                        frame = draw_overlay(current["frame"], boxes, persons,
                                             classifier.classes)
                        if writer is not None:
                            writer.write(frame)
                        if show and _show(frame):
                            break
            except KeyboardInterrupt:  # a camera runs until stopped: keep what was written
                say("live: interrupted")
    finally:
        capture.release()
        if show:
            cv2.destroyAllWindows()
    wall = time.perf_counter() - started
    frames_read = sampler.frames_read
    summary = {"source": str(source), "camera": camera, "run": classifier.name,
               "kind": classifier.kind, "model": str(classifier.path), "fps": fps,
               "frames": frames_read, "face_frames": sampler.face_frames,
               "detections": sampler.counts["detect"], "persons": len(persons),
               "predictions": predictions, "wall_seconds": round(wall, 3),
               "video_seconds": round(frames_read / fps, 3),
               "frames_per_second": round(frames_read / max(wall, 1e-9), 2),
               "realtime_factor": round(frames_read / fps / max(wall, 1e-9), 3),
               "written": str(write) if write else None}
    say(f"live: {frames_read} frames ({summary['video_seconds']:.1f} s of video) in "
        f"{wall:.1f} s: {summary['frames_per_second']:.1f} frames/s, real-time factor "
        f"{summary['realtime_factor']:.2f}; {len(persons)} person(s), "
        f"{len(predictions)} predictions")
    return summary


@dataclass
class LivePerson:
    """One person's recent face crops, neutral onset and latest prediction."""

    window: LiveWindow
    onset: list = field(default_factory=list)  # first face crops: identity runs' baseline
    probabilities: np.ndarray | None = None
    last: dict = field(default_factory=dict)

    def add(self, face: np.ndarray) -> None:
        self.window.add(face)
        if len(self.onset) < BASELINE_FRAMES:
            self.onset.append(face)

    def predict(self, classifier: Classifier, seconds: float, number: int) -> str | None:
        """A prediction line when the window holds the face often enough, else None."""
        if not self.window.ready():
            self.probabilities = None
            return None
        self.probabilities = classifier.predict(self.window.faces(), self.onset)
        best = classifier.classes[int(np.argmax(self.probabilities))]
        self.last = {"seconds": round(seconds, 3), "person": number, "label": best,
                     "probabilities": [round(float(p), 6) for p in self.probabilities]}
        return f"P{number} " + probability_line(seconds, self.probabilities,
                                                classifier.classes)


def _crop_shape(track: dict) -> tuple[int, ...]:
    return (track["size"], track["size"], 3 if track["color"] else 1)


def _show(frame: np.ndarray) -> bool:
    """Show the frame; True when the user pressed q or Esc."""
    try:
        cv2.imshow("fer live (q: quit)", frame)
        return cv2.waitKey(1) & 0xFF in (ord("q"), 27)
    except cv2.error as exc:
        raise FerError(f"cannot open a window ({str(exc).strip().splitlines()[-1][:120]})",
                       hint="Without a display, use --write OUT.mp4 instead of --show") \
            from None
