"""`fer live` with a video file as the source (about 25 s).

The run is built here as `fer finalize` writes it, around an untrained LSTM on small-cnn
features (no work directory needed); its TFLite export is made once per module. The
source is sample_data's F001_happy clip (85 frames, 25 fps, 320x240), whose face OpenCV's
Haar cascade finds.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import support

from fercli.core.config import defaults
from fercli.core.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT / "sample_data" / "F001_happy_tex.avi"
N_FRAMES = 85
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]
MAX_FRAMES = 16
# window 1 s, a prediction every 0.5 s = 12 frames at 25 fps: frames 12, 24, ... 84
N_PREDICTIONS = N_FRAMES // 12
LINE = re.compile(r"^P1\s+(\d+\.\d+) s\s+(\w+)\s+(\d\.\d\d)\s+\| (.+)$")


def make_run(workdir: Path, name: str, identity: bool = False) -> Path:
    """A finalized run folder around an untrained LSTM on small-cnn features, or with
    ``identity`` an untrained pooled model with identity normalisation (baseline input)."""
    from fercli.features.backbones import build_feature_extractor

    dim = build_feature_extractor("small-cnn", weights=None).feature_dim
    if identity:  # fixed weights: the onset's effect on the scores is the same every run
        import keras

        keras.utils.set_random_seed(3)
    config = defaults()
    config["track"]["size"] = 64
    config["extract"].update(backbone="small-cnn", weights=None, max_frames=MAX_FRAMES)
    return support.make_run(workdir, name, "pooled" if identity else "lstm",
                            {} if identity else {"units": 8}, (MAX_FRAMES, dim),
                            config=config, classes=CLASSES, identity=identity)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from fercli.inference.export import export_run

    run_dir = make_run(tmp_path_factory.mktemp("live") / "work", "lstm-small")
    export_run(run_dir, formats=["tflite"], check=False)  # to work/export/lstm-small
    return run_dir


def probability_lines(output: str) -> list[tuple[float, str, float, dict]]:
    rows = []
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            cells = match.group(4).split()
            probs = {cells[i]: float(cells[i + 1]) for i in range(0, len(cells), 2)}
            rows.append((float(match.group(1)), match.group(2), float(match.group(3)), probs))
    return rows


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames


def test_live_on_a_video_file_with_the_exported_model(run, fer, tmp_path):
    out = tmp_path / "overlay.mp4"
    result = fer("live", str(VIDEO), "--run", str(run), "--window", "1", "--stride", "0.5",
                 "--write", str(out))
    assert result.exit_code == 0, result.output
    assert "(tflite:" in result.output  # the run's matching export is preferred
    rows = probability_lines(result.output)
    assert [t for t, *_ in rows] == [12 * (k + 1) / 25 for k in range(N_PREDICTIONS)]
    for _, label, confidence, probs in rows:
        assert list(probs) == CLASSES and abs(sum(probs.values()) - 1) < 0.05
        assert probs[label] == confidence == max(probs.values())
    report = re.search(r"live: (\d+) frames \(3\.4 s of video\) in [\d.]+ s: ([\d.]+) frames/s,"
                       r" real-time factor ([\d.]+); 1 person\(s\), (\d+) predictions",
                       result.output)
    assert report, result.output
    assert int(report.group(1)) == N_FRAMES and int(report.group(4)) == N_PREDICTIONS
    assert float(report.group(2)) > 0 and float(report.group(3)) > 0
    source, written = read_video(VIDEO), read_video(out)
    assert len(written) == N_FRAMES and written[0].shape == source[0].shape
    bars = np.abs(written[-1][:100, :200].astype(int) - source[-1][:100, :200]).mean()
    assert bars > 5  # the class bars are drawn (the codec alone changes far less)


def test_the_run_pipeline_runs_when_the_export_is_stale(run, tmp_path):
    from fercli.inference.live import load_classifier, run_live
    from fercli.learning.training import load_model

    workdir = run.parents[2]
    assert load_classifier(workdir, run.name).kind == "tflite"
    stale = tmp_path / "work" / "finalize" / "runs" / run.name
    stale.parent.mkdir(parents=True)
    shutil.copytree(run, stale)
    model = load_model(stale / "model.keras")
    model.set_weights([w + 0.01 for w in model.get_weights()])
    model.save(stale / "model.keras")
    shutil.copytree(workdir / "export", tmp_path / "work" / "export")
    classifier = load_classifier(tmp_path / "work", run.name)
    # export.json names another model.keras: the run's own graphs run, on LiteRT
    assert classifier.kind == "litert" and classifier.path == stale / "tflite"
    lines: list[str] = []
    summary = run_live(str(VIDEO), classifier, window=1.0, stride=0.5, say=lines.append)
    assert summary["frames"] == N_FRAMES and summary["face_frames"] == N_FRAMES
    assert len(summary["predictions"]) == N_PREDICTIONS == len(probability_lines(
        "\n".join(lines)))
    assert summary["realtime_factor"] == pytest.approx(
        N_FRAMES / 25 / summary["wall_seconds"], rel=0.01)
    exported = load_classifier(workdir, model=workdir / "export" / run.name / "model.tflite")
    assert (exported.kind, exported.classes, exported.max_frames) == ("tflite", CLASSES,
                                                                      MAX_FRAMES)


def test_a_video_without_a_face_gets_no_prediction(run, tmp_path):
    from fercli.inference.live import load_classifier, run_live

    blank = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(blank), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for _ in range(30):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    lines: list[str] = []
    summary = run_live(str(blank), load_classifier(run.parents[2], run.name), window=1.0,
                       stride=0.5, say=lines.append)
    assert summary["frames"] == 30 and summary["predictions"] == []
    assert sum("no face in half the window" in line for line in lines) == 2


def test_live_mistakes_fail_in_one_line(run, fer, tmp_path):
    result = fer("live", str(tmp_path / "missing.avi"), "--run", str(run))
    assert result.exit_code == InputError.exit_code and "no such video file" in result.output
    result = fer("live", str(VIDEO), "--run", str(run), "--model", str(run))
    assert result.exit_code == ConfigError.exit_code and "exclude each other" in result.output
    result = fer("live", str(VIDEO), "--run", str(run), "--write", str(tmp_path / "x.gif"))
    assert result.exit_code == ConfigError.exit_code and "cannot write .gif" in result.output
    assert not (tmp_path / "x.gif").exists()


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory) -> Path:
    from fercli.inference.export import export_run

    run_dir = make_run(tmp_path_factory.mktemp("live-identity") / "work", "pooled-identity",
                       identity=True)
    export_run(run_dir, formats=["tflite"], check=False)
    return run_dir


def test_live_feeds_identity_runs_the_first_face_crops_as_onset(identity_run):
    """An identity run's baseline comes from the first BASELINE_FRAMES face crops of the
    source for every window (`fer predict`'s rule), in the export and the Keras pipeline."""
    from fercli.features.identity import BASELINE_FRAMES
    from fercli.inference.export import KerasPipeline
    from fercli.inference.live import keras_classifier, load_classifier, run_live
    from fercli.inference.predict import FaceSampler
    from fercli.inference.runs import load_run
    from fercli.vision.detect import detector_from_params

    exported = load_classifier(identity_run.parents[2], identity_run.name)
    assert exported.kind == "tflite" and exported.needs_onset
    summaries = [run_live(str(VIDEO), classifier, window=1.0, stride=0.5, say=lambda _: None)
                 for classifier in (exported, keras_classifier(identity_run))]
    run = load_run(identity_run)
    detect, track = run.config["detect"], run.config["track"]
    sampler = FaceSampler(detector_from_params(detect), track["tracker"], detect["extend_px"],
                          track["size"], track["color"], every=1, smooth=track["smooth"],
                          detect_every=25)  # live's default: once a second
    crops = [face for _, found in sampler.samples(read_video(VIDEO))  # the crops live saw
             for _, face in found]
    assert len(crops) == N_FRAMES and all(c is not None for c in crops)
    onset = np.stack(crops[:BASELINE_FRAMES])
    pipeline = KerasPipeline(run)
    for summary in summaries:
        assert len(summary["predictions"]) == N_PREDICTIONS
        for k, prediction in enumerate(summary["predictions"]):
            end = 12 * (k + 1)  # a prediction every 12 frames, windows of 25 frames
            faces = np.stack(crops[max(0, end - 25):end][-MAX_FRAMES:])
            np.testing.assert_allclose(prediction["probabilities"],
                                       pipeline.predict(faces, onset), atol=2e-5)
    # late windows no longer hold the onset frames: their own first crops score otherwise
    faces = np.stack(crops[-MAX_FRAMES:])
    assert np.abs(pipeline.predict(faces, faces[:BASELINE_FRAMES])
                  - pipeline.predict(faces, onset)).max() > 4e-4  # 20 x the tolerance
