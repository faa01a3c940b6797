"""The synthetic sample set: BU-4DFE-style names, decodable 25 fps videos, a detectable face,
a neutral -> apex -> neutral course, and byte-identical output for a seed."""
from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercli.core.errors import ArtifactError, ConfigError
from fercli.sampledata import EXPRESSIONS, FPS, generate_sample_data, intensity_course, write_video

N_SUBJECTS = 2
N_FRAMES = 20
NAME = re.compile(r"^(?P<subject>[FM]\d{3})_(?P<label>[a-z]+)_tex\.avi$")
HAAR = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"


def _read(path: Path) -> tuple[list[np.ndarray], float, int]:
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                return frames, fps, declared
            frames.append(frame)
    finally:
        capture.release()


def _faces(frame: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return cv2.CascadeClassifier(HAAR).detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=10, minSize=(30, 30))


def _face_change(frame: np.ndarray, reference: np.ndarray, box: np.ndarray) -> float:
    """Mean absolute grey-level change inside the face box, blurred to ignore sensor noise."""
    x, y, w, h = box

    def grey(image):
        return cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (0, 0), 1.5)

    diff = cv2.absdiff(grey(frame), grey(reference))
    return float(diff[y:y + h, x:x + w].mean())


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    calls = []
    paths = generate_sample_data(out, n_subjects=N_SUBJECTS, n_frames=N_FRAMES, seed=0,
                                 progress=lambda done, total, path: calls.append((done, total)))
    videos = {path.name: _read(path) for path in paths}
    return out, paths, videos, calls


def test_names_are_bu4dfe_style_and_cover_every_subject_and_expression(sample):
    out, paths, _, _ = sample
    parsed = [NAME.match(path.name) for path in paths]
    assert all(parsed), [path.name for path in paths]
    pairs = {(m["subject"], m["label"]) for m in parsed}
    assert {subject for subject, _ in pairs} == {"F001", "M001"}
    assert pairs == {(s, e) for s in ("F001", "M001") for e in EXPRESSIONS}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no leftovers


def test_progress_reports_every_video(sample):
    _, paths, _, calls = sample
    assert calls == [(i, len(paths)) for i in range(1, len(paths) + 1)]


def test_videos_decode_at_25_fps_with_varied_lengths_near_the_request(sample):
    _, _, videos, _ = sample
    lengths = []
    for name, (frames, fps, declared) in videos.items():
        assert fps == FPS, name
        assert len(frames) == declared, name
        assert frames[0].shape == (240, 320, 3), name
        lengths.append(len(frames))
    jitter = N_FRAMES // 8
    assert min(lengths) >= N_FRAMES - jitter and max(lengths) <= N_FRAMES + jitter
    assert len(set(lengths)) > 1


def test_haar_finds_exactly_one_face_early_in_every_video(sample):
    _, _, videos, _ = sample
    for name, (frames, _, _) in videos.items():
        assert any(len(_faces(frame)) == 1 for frame in frames[:10]), name


def test_each_video_goes_neutral_apex_neutral(sample):
    _, _, videos, _ = sample
    for name, (frames, _, _) in videos.items():
        box = _faces(frames[0])[0]
        apex = _face_change(frames[len(frames) // 2], frames[0], box)
        end = _face_change(frames[-1], frames[0], box)
        assert apex > 2.0 and apex > 3 * end, (name, apex, end)


def test_the_six_apex_faces_of_a_subject_differ_from_each_other(sample):
    _, _, videos, _ = sample
    apexes = {}
    for expression in EXPRESSIONS:
        frames = videos[f"F001_{expression}_tex.avi"][0]
        apexes[expression] = frames[len(frames) // 2]
    box = _faces(videos["F001_angry_tex.avi"][0][0])[0]
    for first, second in combinations(EXPRESSIONS, 2):
        assert _face_change(apexes[first], apexes[second], box) > 2.5, (first, second)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(sample, tmp_path):
    _, paths, _, _ = sample
    again = generate_sample_data(tmp_path / "again", n_subjects=N_SUBJECTS, n_frames=N_FRAMES)
    assert [p.name for p in again] == [p.name for p in paths]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again))
    other = generate_sample_data(tmp_path / "other", n_subjects=1, n_frames=N_FRAMES, seed=1)
    assert other[0].read_bytes() != paths[0].read_bytes()


@pytest.mark.parametrize("n_frames", [14, 20, 44, 61])
def test_intensity_course_rests_neutral_at_both_ends_and_holds_the_apex_in_the_middle(n_frames):
    for seed in range(20):
        course = intensity_course(n_frames, np.random.default_rng(seed))
        assert len(course) == n_frames
        assert course[:2].max() == 0 and course[-2:].max() == 0
        assert course[n_frames // 2] == 1
        peak = int(np.argmax(course))
        assert np.all(np.diff(course[:peak + 1]) >= 0) and np.all(np.diff(course[peak:]) <= 0)


def test_a_video_that_does_not_read_back_whole_never_gets_its_final_name(tmp_path):
    frames = [np.zeros((240, 320, 3), np.uint8)] * 3 + [np.zeros((120, 160, 3), np.uint8)]
    with pytest.raises(ArtifactError, match="wrote 4 frames but read back 3"):
        write_video(tmp_path / "F001_sad_tex.avi", frames)
    assert not list(tmp_path.iterdir())


def test_a_smaller_frame_keeps_a_detectable_face(tmp_path):
    paths = generate_sample_data(tmp_path, n_subjects=1, n_frames=16, size=(160, 120))
    for path in paths:
        frames, _, _ = _read(path)
        assert frames[0].shape == (120, 160, 3)
        assert len(_faces(frames[0])) == 1, path.name


@pytest.mark.parametrize("arguments, key", [
    ({"n_frames": 8}, "n_frames"),
    ({"n_subjects": 0}, "n_subjects"),
    ({"size": (100, 80)}, "size"),
    ({"size": (321, 240)}, "size"),
])
def test_impossible_requests_are_refused_before_writing(tmp_path, arguments, key):
    with pytest.raises(ConfigError, match=key):
        generate_sample_data(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n_frames", [14, 20, 44, 61])
def test_onset_apex_course_rises_from_neutral_and_ends_on_the_apex(n_frames):
    for seed in range(20):
        course = intensity_course(n_frames, np.random.default_rng(seed), shape="onset-apex")
        assert len(course) == n_frames
        assert course[:2].max() == 0 and course[-2:].min() == 1
        assert np.all(np.diff(course) >= 0)


def test_onset_apex_videos_end_at_the_apex(tmp_path, runner):
    from fercli.cli import app

    out = tmp_path / "ck"
    result = runner.invoke(app, ["sample-data", str(out), "--subjects", "1",
                                 "--shape", "onset-apex"])
    assert result.exit_code == 0, result.output
    paths = sorted(out.glob("*.avi"))
    assert len(paths) == len(EXPRESSIONS)
    for path in paths[:2]:
        frames, _, _ = _read(path)
        box = _faces(frames[0])[0]
        middle = _face_change(frames[len(frames) // 2], frames[0], box)
        end = _face_change(frames[-1], frames[0], box)
        assert end > 2.0 and end >= 0.9 * middle, (path.name, middle, end)
    with pytest.raises(ConfigError, match="onset-apex"):
        generate_sample_data(tmp_path / "bad", n_subjects=1, shape="apex")
