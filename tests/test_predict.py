"""`fer predict` on real videos with tiny finalized runs built here (no pipeline needed).

Runs: an LSTM on small-cnn features and an LRCN on 32x32 clips, saved in run folders shaped
like `fer finalize` writes them. Videos: sample_data clips (Haar finds their face), a long
video of four clips with a blank gap (camera cuts, face lost and found), a blank video, two
faces side by side, a corrupt file and a frame-sequence folder.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import support

from fercli.core.config import defaults
from fercli.core.errors import ConfigError, InputError
from fercli.inference.predict import (
    label_groups,
    output_names,
    parse_label_map,
    predict_videos,
    sampled_in,
)

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]
MAX_FRAMES = 16
LONG_CLIPS = ("F001_happy", "M001_sad", "F002_angry", "F001_surprise")  # F001 comes back
GAP_FRAMES = 50  # two seconds without a face, between the second and third clip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABEL_MAP = {"positive": ["happy", "surprise"], "negative": ["angry", "disgust"]}


def read_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def make_run(workdir: Path, name: str, model_name: str, params: dict, input_shape: tuple,
             clip_size: int | None = None) -> Path:
    """A run folder as `fer finalize` writes it, around an untrained model."""
    config = defaults()
    config["extract"].update(backbone="small-cnn", weights=None, batch_size=32,
                             max_frames=MAX_FRAMES)
    return support.make_run(workdir, name, model_name, params, input_shape, config=config,
                            classes=CLASSES, clip_size=clip_size)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from fercli.features.backbones import build_feature_extractor

    feature_dim = build_feature_extractor("small-cnn", weights=None).feature_dim
    workdir = tmp_path_factory.mktemp("project") / "work"
    feature = make_run(workdir, "lstm-small", "lstm", {"units": 8}, (MAX_FRAMES, feature_dim))
    twin = workdir / "finalize" / "runs" / "lstm-small-copy"
    shutil.copytree(feature, twin)
    clip = make_run(workdir, "lrcn-clips32", "lrcn",
                    {"filters": [4, 4], "layers": 1, "units": 8}, (MAX_FRAMES, 32, 32, 3), 32)
    return {"feature": feature, "twin": twin, "clip": clip}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    clips = [read_frames(SAMPLE_DATA / f"{name}_tex.avi") for name in LONG_CLIPS]
    blank = np.zeros_like(clips[0][0])
    long = clips[0] + clips[1] + [blank] * GAP_FRAMES + clips[2] + clips[3]
    mixed = root / "mixed"
    mixed.mkdir()
    shutil.copy(SAMPLE_DATA / "F001_happy_tex.avi", mixed / "F001_happy.avi")
    write_video(mixed / "blank.avi", [blank] * 20)
    write_video(mixed / "two_faces.avi", [np.hstack([clips[0][0], clips[0][0]])] * 6)
    (mixed / "corrupt.avi").write_bytes(b"\x00\x01not a video" * 200)
    cv2.imwrite(str(mixed / "cover.png"), clips[0][0])  # a stray image is not a frame sequence
    still = root / "still.png"
    cv2.imwrite(str(still), clips[0][5])
    sequence = root / "sequence"
    sequence.mkdir()
    for i, frame in enumerate(clips[0][:12], start=1):
        cv2.imwrite(str(sequence / f"frame_{i:04d}.png"), frame)
    return {"mixed": mixed, "long": write_video(root / "long.avi", long),
            "n_long": len(long), "sample": mixed / "F001_happy.avi", "sequence": sequence,
            "still": still,
            "clip_lengths": [len(c) for c in clips]}


def load(out: Path, name: str) -> dict:
    return json.loads((out / name / "prediction.json").read_text())


def summary(out: Path) -> list[dict]:
    with (out / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def probabilities(result: dict) -> np.ndarray:
    return np.array([result["probabilities"][c] for c in CLASSES])


@pytest.fixture(scope="module")
def whole(runs, videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    predict_videos([videos["mixed"], videos["sequence"]], [runs["feature"]], out,
                   label_map=LABEL_MAP)
    return out


def test_bad_videos_get_a_status_and_the_good_ones_complete(whole):
    listed = summary(whole)
    rows = {(Path(r["video"]).name, r["person"]): r for r in listed}
    assert len(rows) == len(listed)  # one row per person of each video
    assert {key: r["status"] for key, r in rows.items()} == {
        ("F001_happy.avi", "1"): "ok", ("blank.avi", ""): "no face",
        ("two_faces.avi", "1"): "ok", ("two_faces.avi", "2"): "ok",
        ("corrupt.avi", ""): "unreadable", ("sequence", "1"): "ok"}
    assert "cannot open the video" in rows["corrupt.avi", ""]["reason"]
    assert "no face found" in rows["blank.avi", ""]["reason"]
    assert rows["F001_happy.avi", "1"]["label"] in CLASSES
    two = load(whole, "two_faces")  # each face is a person, left to right
    assert two["n_persons"] == 2 and two["main_person"] == 1
    assert [p["face_frames"] for p in two["persons"]] == [6, 6]
    assert all(p["label"] in CLASSES for p in two["persons"])
    for name in ("F001_happy", "blank", "two_faces", "corrupt", "sequence"):
        assert (whole / name / "prediction.json").is_file()
        assert (whole / name / "prediction.csv").is_file()
    sequence = load(whole, "sequence")
    assert (sequence["frames"], sequence["fps"], sequence["face_frames"]) == (12, 25.0, 12)


def test_a_still_is_too_short_for_a_model_of_sequences(runs, videos, tmp_path):
    """One face frame read by a model that learnt from sequences would be chance: the
    still gets its own status and no label (issue 15)."""
    predict_videos([videos["still"]], [runs["feature"]], tmp_path)
    result = load(tmp_path, "still")
    assert result["status"] == "too short" and "label" not in result
    assert "at least 2 frames" in result["reason"]
    assert summary(tmp_path)[0]["status"] == "too short"


def test_whole_video_prediction_is_a_distribution(whole):
    result = load(whole, "F001_happy")
    probs = probabilities(result)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    assert result["label"] == CLASSES[int(np.argmax(probs))]
    assert result["frames"] == result["sampled_frames"] == result["face_frames"] == 85
    (person,) = result["persons"]
    assert (person["person"], person["face_frames"], result["main_person"]) == (1, 85, 1)
    assert person["trim"]["kept_frames"] == person["trim"]["last"] - person["trim"]["first"] + 1
    assert person["used_frames"] == {"lstm-small": MAX_FRAMES}
    assert person["label"] == result["label"]
    with (whole / "F001_happy" / "prediction.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["label"] == result["label"]
    assert float(row["happy"]) == pytest.approx(result["probabilities"]["happy"], abs=1e-6)


def test_label_map_sums_mapped_classes_and_keeps_the_others(whole):
    result = load(whole, "F001_happy")
    fine, mapped = result["probabilities"], result["mapped_probabilities"]
    assert list(mapped) == ["positive", "negative", "fear", "sad"]
    assert mapped["positive"] == pytest.approx(fine["happy"] + fine["surprise"], abs=2e-6)
    assert mapped["negative"] == pytest.approx(fine["angry"] + fine["disgust"], abs=2e-6)
    assert mapped["fear"] == pytest.approx(fine["fear"], abs=1e-6)
    assert result["mapped_label"] == max(mapped, key=mapped.get)
    assert {r["mapped_label"] for r in summary(whole) if r["status"] != "ok"} == {""}


def test_prediction_matches_the_training_pipeline(runs, videos, whole, tmp_path):
    """Crops of the track stage, trim on motion, extract in batches via the float16 store
    (feature run) and load_clip from a lossless clip (clip run) give the same scores."""
    from fercli.features.backbones import build_feature_extractor
    from fercli.learning.datasets import load_clip
    from fercli.learning.training import load_model
    from fercli.stages.extract import extract_sequence
    from fercli.vision.clipio import ClipWriter
    from fercli.vision.detect import HaarDetector, detect_first_face
    from fercli.vision.media import iter_frames
    from fercli.vision.track import track_faces
    from fercli.vision.trim import motion_scores, trim_range

    video = videos["sample"]
    detector = HaarDetector()
    detection = detect_first_face(iter_frames(video), detector)
    smooth = defaults()["track"]["smooth"]  # the runs' config, as `fer track` applies it
    faces = [t.face for t in track_faces(iter_frames(video), detection, detector=detector,
                                         smooth=smooth)]
    trim = trim_range(motion_scores(faces))
    kept = faces[trim.first:trim.last + 1][:MAX_FRAMES]
    extractor = build_feature_extractor("small-cnn", weights=None)
    features = extract_sequence(kept, extractor, 32).astype(np.float16).astype(np.float32)
    expected = load_model(runs["feature"] / "model.keras").predict(
        {"features": features[None], "mask": np.ones((1, MAX_FRAMES), np.float32)}, verbose=0)
    assert load(whole, "F001_happy")["persons"][0]["trim"]["first"] == trim.first
    np.testing.assert_allclose(probabilities(load(whole, "F001_happy")), expected[0], atol=2e-6)

    clip_path = tmp_path / "face.mkv"
    with ClipWriter(clip_path, 160, True, 25) as writer:
        for face in faces:
            writer.write(face)
    clip, mask = load_clip(clip_path, trim.first, trim.last, MAX_FRAMES, (32, 32), True)
    expected = load_model(runs["clip"] / "model.keras").predict(
        {"clip": clip[None].astype(np.float32) / 255.0, "mask": mask[None].astype(np.float32)},
        verbose=0)
    out = tmp_path / "out"
    predict_videos([video], [runs["clip"]], out)
    np.testing.assert_allclose(probabilities(load(out, "F001_happy")), expected[0], atol=2e-6)


@pytest.fixture(scope="module")
def windowed(runs, videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("windows")
    predict_videos([videos["long"]], [runs["feature"], runs["clip"]], out,
                   fusion_method="average", window=1.0, stride=0.5, label_map=LABEL_MAP)
    return out


def test_window_mode_gives_a_timeline_and_a_distribution(windowed, videos):
    """The long video strings four clips (a gap without a face after the second) of three
    subjects, the first coming back last: three persons, the first re-linked by appearance,
    each with windows from their first face to their last."""
    result = load(windowed, "long")
    starts = np.cumsum([0, *videos["clip_lengths"]])
    starts[2:] += GAP_FRAMES
    lengths = videos["clip_lengths"]
    persons = result["persons"]
    assert [p["person"] for p in persons] == [1, 2, 3] and result["n_persons"] == 3
    assert result["relinked"] == 1 and result["cuts"] >= 3
    spans = [(starts[0], starts[3] + lengths[3]), (starts[1], starts[1] + lengths[1]),
             (starts[2], starts[2] + lengths[2])]
    for person, (first, end), frames in zip(persons, spans,
                                            [lengths[0] + lengths[3], lengths[1], lengths[2]]):
        assert person["first_s"] == pytest.approx(first / 25, abs=0.05)
        assert person["last_s"] == pytest.approx((end - 1) / 25, abs=0.05)
        assert person["face_frames"] == pytest.approx(frames, abs=2)
        windows = person["windows"]
        assert windows[0]["start_s"] <= person["first_s"] < windows[0]["end_s"]
        # the last whole window (the video's last half second fills none)
        assert windows[-1]["start_s"] <= person["last_s"] < windows[-1]["end_s"] + 0.5
        assert all(w["sampled_frames"] == 25 for w in windows)
        assert [w["start_s"] for w in windows] == pytest.approx(
            [windows[0]["start_s"] + 0.5 * i for i in range(len(windows))])
        ok = [w for w in windows if w["status"] == "ok"]
        assert person["n_windows"] == len(ok) > 0
        for w in ok:
            assert sum(w["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        shares = person["distribution"]["shares"]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert person["label"] == max(person["distribution"]["counts"],
                                      key=person["distribution"]["counts"].get)
        assert sum(person["mapped_distribution"]["shares"].values()) == pytest.approx(1.0)
    away = [w for w in persons[0]["windows"]  # while the others are on screen
            if w["start_s"] >= starts[1] / 25 and w["end_s"] <= starts[3] / 25]
    assert away and {w["status"] for w in away} == {"no face"}
    main = max(persons, key=lambda p: p["face_frames"])
    assert (result["main_person"], result["label"]) == (main["person"], main["label"])
    assert result["detections"] >= 3
    with (windowed / "long" / "timeline.csv").open() as handle:
        timeline = list(csv.DictReader(handle))
    assert len(timeline) == sum(len(p["windows"]) for p in persons)
    assert [row["person"] for row in timeline] == [
        str(p["person"]) for p in persons for _ in p["windows"]]
    assert timeline[0]["mapped_label"]
    with (windowed / "long" / "distribution.csv").open() as handle:
        assert {row["person"] for row in csv.DictReader(handle)} == {"1", "2", "3"}
    for name in ("timeline.png", "distribution.png"):
        assert (windowed / "long" / name).read_bytes()[:8] == PNG_SIGNATURE
    rows = summary(windowed)
    assert [r["person"] for r in rows] == ["1", "2", "3"]
    assert [r["n_windows"] for r in rows] == [str(p["n_windows"]) for p in persons]
    assert result["fusion"] == {"method": "average", "weights": None}


def test_a_video_shorter_than_the_window_gives_one_window(runs, videos, tmp_path):
    predict_videos([videos["sequence"], videos["mixed"] / "blank.avi"], [runs["clip"]],
                   tmp_path, window=1.0)
    sequence = load(tmp_path, "sequence")
    windows = sequence["persons"][0]["windows"]
    assert [(w["start_s"], w["end_s"], w["status"]) for w in windows] == [(0.0, 0.48, "ok")]
    assert sequence["n_windows"] == 1 and sequence["status"] == "ok"
    blank = load(tmp_path, "blank")
    assert (blank["status"], blank["n_persons"], blank["persons"]) == ("no face", 0, [])
    assert not (tmp_path / "blank" / "timeline.png").exists()


def test_every_second_frame_halves_the_sampled_frames(runs, videos, tmp_path):
    predict_videos([videos["sample"]], [runs["feature"]], tmp_path, every=2)
    result = load(tmp_path, "F001_happy")
    assert result["frames"] == 85 and result["sampled_frames"] == 43
    assert result["face_frames"] == 43


def test_fusion_of_identical_runs_equals_the_single_run(runs, videos, whole, tmp_path):
    predict_videos([videos["sample"]], [runs["feature"], runs["twin"]], tmp_path,
                   fusion_method="weighted")
    fused = load(tmp_path, "F001_happy")
    assert fused["fusion"] == {"method": "weighted", "weights": [1.0, 1.0]}
    assert any("equal weights" in note for note in fused["notes"])
    np.testing.assert_allclose(probabilities(fused), probabilities(load(whole, "F001_happy")),
                               atol=2e-6)


def test_label_map_parsing_and_checks():
    assert parse_label_map(["positive=happy, surprise", "negative=angry"]) == {
        "positive": ["happy", "surprise"], "negative": ["angry"]}
    for bad in (["positive"], ["=happy"], ["positive="], ["a=happy", "a=sad"]):
        with pytest.raises(ConfigError):
            parse_label_map(bad)
    with pytest.raises(ConfigError, match="joy") as info:
        label_groups({"positive": ["joy"]}, CLASSES)
    assert "angry, disgust, fear, happy, sad, surprise" in str(info.value)
    with pytest.raises(ConfigError, match="mapped to both"):
        label_groups({"a": ["happy"], "b": ["happy"]}, CLASSES)
    assert label_groups({"positive": ["happy"]}, ["happy", "sad"]) == [
        ("positive", [0]), ("sad", [1])]


def test_configuration_mistakes_fail_before_any_video(runs, videos, tmp_path):
    with pytest.raises(ConfigError, match="not a finalized run folder"):
        predict_videos([videos["sample"]], [tmp_path], tmp_path / "out")
    with pytest.raises(ConfigError, match="--stride needs --window"):
        predict_videos([videos["sample"]], [runs["feature"]], tmp_path / "out", stride=1.0)
    with pytest.raises(ConfigError, match="unknown class"):
        predict_videos([videos["sample"]], [runs["feature"]], tmp_path / "out",
                       label_map={"positive": ["joy"]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos"):
        predict_videos([tmp_path / "empty"], [runs["feature"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_helpers():
    assert output_names([Path("a/x.avi"), Path("b/x.mp4"), Path("c/y.avi")]) == [
        "x", "x-2", "y"]
    assert sampled_in(0, 25, 2) == 13 and sampled_in(25, 50, 2) == 12
    assert sampled_in(5, 5, 1) == 0


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """Two of the project's subjects side by side, then a cut that swaps their sides."""
    return write_video(tmp_path_factory.mktemp("two") / "debate.avi",
                       support.two_face_cut_clip())


def green_share(frame: np.ndarray) -> tuple[float, float]:
    """Share of person 1's box colour (green) in the left and right halves of a frame."""
    near = np.abs(frame.astype(int) - (0, 220, 0)).max(axis=2) < 60
    half = frame.shape[1] // 2
    return near[:, :half].mean(), near[:, half:].mean()


def test_two_faces_are_two_persons_whose_ids_survive_a_cut(runs, two_faces, tmp_path):
    """Issue 13: every face gets its own person, timeline and distribution, and keeps its
    id when a cut swaps the speakers' sides (annotated.mp4 shows it: person 1's colour
    moves from the left face to the right one)."""
    predict_videos([two_faces], [runs["feature"]], tmp_path, window=1.0, stride=0.5,
                   label_map=LABEL_MAP, write=True)
    result = load(tmp_path, "debate")
    frames = support.BEFORE + support.AFTER
    assert (result["n_persons"], result["cuts"], result["relinked"]) == (2, 1, 2)
    assert [(p["person"], p["face_frames"], p["status"]) for p in result["persons"]] == [
        (1, frames, "ok"), (2, frames, "ok")]
    for person in result["persons"]:
        assert person["n_windows"] == len(person["windows"]) > 0
        assert sum(person["distribution"]["shares"].values()) == pytest.approx(1.0)
        assert person["mapped_label"] in person["mapped_probabilities"]
    with (tmp_path / "debate" / "timeline.csv").open() as handle:
        timeline = list(csv.DictReader(handle))
    assert {r["person"] for r in timeline} == {"1", "2"}
    with (tmp_path / "debate" / "distribution.csv").open() as handle:
        assert {r["person"] for r in csv.DictReader(handle)} == {"1", "2"}
    assert [(r["person"], r["status"]) for r in summary(tmp_path)] == [("1", "ok"),
                                                                      ("2", "ok")]
    annotated = read_frames(tmp_path / "debate" / "annotated.mp4")
    assert len(annotated) == frames and result["annotated"].endswith("annotated.mp4")
    left, right = green_share(annotated[support.BEFORE - 5])
    assert left > 0.005 and right < left / 10  # person 1 on the left before the cut ...
    left, right = green_share(annotated[support.BEFORE + 5])
    assert right > 0.005 and left < right / 10  # ... and on the right after it


def test_largest_keeps_one_face_per_frame(runs, two_faces, tmp_path):
    predict_videos([two_faces], [runs["feature"]], tmp_path, faces="largest")
    result = load(tmp_path, "debate")
    assert result["faces"] == "largest"
    assert sum(p["face_frames"] for p in result["persons"]) == result["face_frames"] == (
        support.BEFORE + support.AFTER)
    with pytest.raises(ConfigError, match="--faces"):
        predict_videos([two_faces], [runs["feature"]], tmp_path / "x", faces="biggest")
