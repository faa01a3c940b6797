"""Face detection, tracking and lossless clip I/O on real OpenCV with a real face photo.

Test frames paste the head of ``skimage.data.astronaut()`` (a photo Haar finds) onto a flat
grey canvas, so the true face position of every frame is known.
"""
from __future__ import annotations

import csv
import hashlib

import cv2
import numpy as np
import pytest
from skimage import data

from fercli.core.errors import ConfigError, FerError, ItemError
from fercli.vision.clipio import (
    CODECS,
    ClipWriter,
    iter_clip,
    read_clip,
    temp_path_for,
    write_boxes_csv,
)
from fercli.vision.detect import (
    Box,
    Detection,
    FullFrameDetector,
    HaarDetector,
    YuNetDetector,
    detect_first_face,
    extend_box,
    iou,
    make_detector,
)
from fercli.vision.track import (
    TRACKERS,
    BoxSmoother,
    FaceTracker,
    compare_trackers,
    crop_face,
    full_frames,
    make_tracker,
    track_faces,
)

# The head of the astronaut photo; Haar puts the face at about (47, 46, 95, 95) in it.
HEAD = np.ascontiguousarray(data.astronaut()[20:220, 130:320, ::-1])
FACE_IN_HEAD = Box(47, 46, 95, 95)
CANVAS = (320, 400)  # height, width


def blank(height: int = CANVAS[0], width: int = CANVAS[1]) -> np.ndarray:
    return np.full((height, width, 3), 120, np.uint8)


def noise(seed: int) -> np.ndarray:
    """A frame of random pixels: nothing to track, no face to find."""
    return np.random.default_rng(seed).integers(0, 256, (*CANVAS, 3), dtype=np.uint8)


def frame_with_head(x: int, y: int, head: np.ndarray = HEAD, shape=CANVAS) -> np.ndarray:
    frame = blank(*shape)
    frame[y : y + head.shape[0], x : x + head.shape[1]] = head
    return frame


def moving_face(n_frames: int = 30, head: np.ndarray = HEAD, shape=CANVAS):
    """Frames of a head drifting right and down, and the true face box in each."""
    scale = head.shape[0] // HEAD.shape[0]
    positions = [(30 + 2 * i, 20 + i) for i in range(n_frames)]
    frames = [frame_with_head(x, y, head, shape) for x, y in positions]
    truth = [
        Box(x + FACE_IN_HEAD.x * scale, y + FACE_IN_HEAD.y * scale,
            FACE_IN_HEAD.w * scale, FACE_IN_HEAD.h * scale)
        for x, y in positions
    ]
    return frames, truth


@pytest.fixture(scope="module")
def haar():
    return HaarDetector()


def write_video(path, frames, fps=25):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


# --- detection -------------------------------------------------------------------------------


def test_haar_finds_the_one_face(haar):
    frames, truth = moving_face(1)
    boxes = haar.detect(frames[0])
    assert len(boxes) == 1
    assert iou(boxes[0], truth[0]) > 0.8


def test_first_face_is_extended_10px_at_the_bottom(haar):
    frames, _ = moving_face(3)
    detection = detect_first_face(frames, haar)
    raw = detection.raw_box
    assert detection.frame_index == 0
    assert detection.box == Box(raw.x, raw.y, raw.w, raw.h + 10)


def test_detection_reads_only_up_to_the_face(haar):
    frames, _ = moving_face(5)
    read = []

    def decoder():
        for i, frame in enumerate([blank(), blank(), *frames]):
            read.append(i)
            yield frame

    assert detect_first_face(decoder(), haar).frame_index == 2
    assert read == [0, 1, 2]


def test_blank_frames_have_no_face(haar):
    with pytest.raises(ItemError, match="no face found in the first 10 frames"):
        detect_first_face([blank()] * 15, haar)


def test_face_after_the_allowed_frames_is_not_searched(haar):
    frames, _ = moving_face(1)
    with pytest.raises(ItemError, match="first 4 frames"):
        detect_first_face([blank()] * 4 + frames, haar, frames_allowed=4)


def test_two_faces_side_by_side_are_refused(haar):
    frame = blank(320, 500)
    frame[40:240, 20:210] = HEAD
    frame[40:240, 270:460] = HEAD
    with pytest.raises(ItemError,
                       match="2 faces found in the first 3 frames, expected exactly one"):
        detect_first_face([frame] * 3, haar)


def test_no_frames_at_all(haar):
    with pytest.raises(ItemError, match="no decodable frames"):
        detect_first_face(iter([]), haar)


def test_extend_and_clip_at_the_frame_edge():
    # 10 px more height runs past the bottom edge; the box also pokes out on the right.
    assert extend_box(Box(300, 280, 50, 30), 10, frame_w=320, frame_h=310) == Box(300, 280, 20, 30)
    assert extend_box(Box(10, 10, 50, 50), 10, frame_w=320, frame_h=310) == Box(10, 10, 50, 60)
    assert Box(-5, -8, 20, 20).clip(320, 310) == Box(0, 0, 15, 12)
    assert Box(400, 0, 20, 20).clip(320, 310).area == 0


def test_detector_registry():
    assert isinstance(make_detector("haar", min_neighbors=5), HaarDetector)
    with pytest.raises(ConfigError, match="haar, yunet"):
        make_detector("mtcnn")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_detector("haar", threshold=3)


def test_missing_yunet_model_says_where_to_get_it(tmp_path):
    model = tmp_path / "yunet.onnx"
    with pytest.raises(ConfigError, match="face_detection_yunet") as info:
        YuNetDetector(model)
    assert str(model) in str(info.value)
    model.write_bytes(b"not an onnx model")
    with pytest.raises(ConfigError, match="cannot load the YuNet model"):
        YuNetDetector(model)


# --- tracking --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_every_registered_tracker_constructs_and_runs(name):
    frames, truth = moving_face(2)
    tracker = make_tracker(name)
    tracker.init(frames[0], tuple(truth[0]))
    ok, _ = tracker.update(frames[1])
    assert ok


def test_unknown_tracker_lists_the_allowed_names():
    with pytest.raises(ConfigError, match="medianflow, kcf, csrt, mosse, mil, tld, boosting"):
        make_tracker("siamrpn")


@pytest.mark.parametrize("name", ["medianflow", "kcf", "csrt"])
def test_tracker_stays_on_a_moving_face(haar, name):
    frames, truth = moving_face(30)
    detection = detect_first_face(frames, haar)
    tracked = list(track_faces(frames, detection, name, size=64, detector=haar))
    assert [t.frame_index for t in tracked] == list(range(30))
    assert tracked[0].source == "detect"
    assert {t.source for t in tracked[1:]} == {"track"}
    assert min(iou(t.box, true) for t, true in zip(tracked, truth)) > 0.5
    assert all(t.face.shape == (64, 64, 3) for t in tracked)


def test_large_face_is_tracked_on_halved_frames(haar):
    big_head = cv2.resize(HEAD, None, fx=2, fy=2)
    frames, truth = moving_face(20, big_head, shape=(560, 700))
    detection = detect_first_face(frames, haar)
    assert FaceTracker("medianflow", detection.box).halvings == 1
    tracked = list(track_faces(frames, detection, size=64, color=False))
    assert min(iou(t.box, true) for t, true in zip(tracked, truth)) > 0.7
    assert tracked[-1].face.shape == (64, 64)


def test_frames_before_the_detection_are_dropped(haar):
    frames, _ = moving_face(8)
    video = [blank(), blank(), *frames]
    detection = detect_first_face(video, haar)
    tracked = list(track_faces(video, detection, size=32))
    assert detection.frame_index == 2
    assert [t.frame_index for t in tracked] == list(range(2, 10))


def test_lost_face_is_held_then_redetected(haar):
    frames, truth = moving_face(25)
    frames[15] = noise(15)  # one frame without a face: the tracker fails there
    detection = detect_first_face(frames, haar)
    tracked = list(track_faces(frames, detection, size=32, detector=haar))
    sources = [t.source for t in tracked]
    assert sources[15:18] == ["hold", "redetect", "track"]
    assert tracked[15].box == tracked[14].box
    assert iou(tracked[16].box, truth[16]) > 0.8
    assert tracked[15].row == (15, *tracked[14].row[1:5], "hold")


def test_face_gone_for_good_fails_after_the_allowed_tries(haar):
    frames, _ = moving_face(15)
    frames += [noise(i) for i in range(10)]
    detection = detect_first_face(frames, haar)
    message = "tracker lost the face at frame 15 and re-detection failed after 3 tries"
    with pytest.raises(ItemError, match=message):
        list(track_faces(frames, detection, size=32, detector=haar, redetect_tries=3))
    with pytest.raises(ItemError, match="re-detection is off"):
        list(track_faces(frames, detection, size=32))


def test_crop_is_resized_and_grey_on_request():
    frame = frame_with_head(0, 0)
    face = crop_face(frame, Box(47, 46, 95, 105), 160, color=False)
    assert face.shape == (160, 160) and face.dtype == np.uint8
    small = crop_face(frame, Box(47, 46, 95, 105), 48, color=True).astype(float)
    expected = cv2.resize(frame[46:151, 47:142], (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(small - expected).mean() < 1.0  # the pixel averaging of a plain resize


def test_fractional_crop_is_continuous_in_the_box():
    # Whole and fractional boxes share one resampling: a box moved by 1/100 px changes the
    # crop by about that much, and one moved by half a pixel lands between the neighbours.
    frame = frame_with_head(0, 0)
    base = crop_face(frame, Box(47, 46, 95, 105), 64, True).astype(float)
    nudged = crop_face(frame, Box(47.01, 46, 95, 105), 64, True).astype(float)
    half = crop_face(frame, Box(47.5, 46, 95, 105), 64, True).astype(float)
    whole = crop_face(frame, Box(48, 46, 95, 105), 64, True).astype(float)
    assert np.abs(nudged - base).mean() < 0.05 * np.abs(whole - base).mean()
    assert np.abs(half - (base + whole) / 2).mean() < 0.3 * np.abs(whole - base).mean()


# --- steady crops of a still face ------------------------------------------------------------

# The astronaut's head enlarged 3x: a ~285 px face, so tracking runs on frames halved twice.
BIG_HEAD = cv2.resize(HEAD, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)


def still_face_frames(n_frames: int = 12, sigma: float = 2.0) -> list[np.ndarray]:
    """One frame of a large still face, repeated with fresh Gaussian sensor noise."""
    frame = blank(700, 720)
    frame[30:30 + BIG_HEAD.shape[0], 45:45 + BIG_HEAD.shape[1]] = BIG_HEAD
    rng = np.random.default_rng(11)
    return [np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 255).astype(np.uint8)
            for _ in range(n_frames)]


def crop_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey change between two crops, blurred like trim's motion score."""
    def grey(face):
        return cv2.GaussianBlur(cv2.cvtColor(face, cv2.COLOR_BGR2GRAY).astype(np.float32),
                                (0, 0), 1.5)
    return float(np.abs(grey(a) - grey(b)).mean())


@pytest.mark.parametrize(("smooth", "allowed"), [(0.0, 1.4), (0.7, 1.1)])
def test_still_face_gives_still_boxes_and_crops_from_frame_0_on(smooth, allowed):
    frames = still_face_frames()
    # A start box off the 4 px grid of the twice-halved tracking frame, as a detection gives.
    box = Box(45 + 3 * 47 + 2, 30 + 3 * 46 + 1, 3 * 95 + 1, 3 * 95 + 3)
    assert FaceTracker("medianflow", box).halvings == 2
    tracked = list(track_faces(frames, Detection(0, box, box), size=160, smooth=smooth))
    assert [t.source for t in tracked] == ["detect"] + ["track"] * (len(frames) - 1)
    # Boxes do not move: well under a pixel from the detection box, frame 1 included.
    drift = max(max(abs(a - b) for a, b in zip(t.box, box)) for t in tracked)
    assert drift < 0.3, [t.box for t in tracked[:3]]
    # Consecutive crops differ by sensor noise only: the same box cut from each frame.
    noise_level = np.mean([crop_change(crop_face(a, box, 160, True), crop_face(b, box, 160, True))
                           for a, b in zip(frames, frames[1:])])
    changes = [crop_change(a.face, b.face) for a, b in zip(tracked, tracked[1:])]
    assert max(changes) < allowed * noise_level, (changes, noise_level)
    # What scaling the reduced rect back did: the box snapped to the 4 px grid at frame 1,
    # a change of about 15x the noise.
    snapped = Box(*((v >> 2) << 2 for v in box))
    jump = crop_change(tracked[0].face, crop_face(frames[1], snapped, 160, True))
    assert jump > 5 * noise_level


def test_smoother_stills_a_wobbling_box_and_follows_a_moving_one():
    rng = np.random.default_rng(5)
    smoother = BoxSmoother(0.7)
    smoother.reset(Box(100, 100, 300, 300))
    still = [smoother.update(Box(*(np.array([100, 100, 300, 300]) + rng.normal(0, 0.3, 4))),
                             720, 720) for _ in range(40)]
    assert np.std([b.x for b in still[10:]]) < 0.7 * 0.3
    smoother.reset(Box(100, 100, 300, 300))
    moving = [smoother.update(Box(100 + 3 * k, 100, 300, 300), 720, 720)
              for k in range(1, 30)]
    assert abs(moving[-1].x - (100 + 3 * 29)) < 0.5  # a plain average of 0.7 lags 7 px
    off = BoxSmoother(0.0)
    assert off.update(Box(1.5, 2, 3, 4), 10, 10) == Box(1.5, 2, 3, 4)
    with pytest.raises(ConfigError, match="track.smooth"):
        BoxSmoother(1.0)


def test_tracker_update_gives_whole_pixels_for_drawing():
    frames, truth = moving_face(3)
    tracker = FaceTracker("medianflow", truth[0])
    tracker.start(frames[0], truth[0])
    box = tracker.update(frames[1])
    assert all(isinstance(v, int) for v in box)
    assert iou(box, truth[1]) > 0.8


# --- faces already cropped -------------------------------------------------------------------


def test_detector_none_takes_the_whole_frame():
    crops = [cv2.cvtColor(cv2.resize(HEAD[40:160, 40:150], (48, 48)), cv2.COLOR_BGR2GRAY)] * 3
    frames = [cv2.cvtColor(c, cv2.COLOR_GRAY2BGR) for c in crops]
    detection = detect_first_face(frames, make_detector("none"))
    assert isinstance(make_detector("none"), FullFrameDetector)
    assert (detection.frame_index, detection.box) == (0, Box(0, 0, 48, 48))
    out = list(full_frames(frames, size=64, color=False))
    assert [t.source for t in out] == ["full"] * 3
    assert [t.row for t in out][0] == (0, 0, 0, 48, 48, "full")
    assert out[0].face.shape == (64, 64)
    assert np.abs(out[0].face - cv2.resize(crops[0], (64, 64)).astype(float)).max() <= 2


def test_compare_trackers_counts_failures_and_speed(haar, tmp_path):
    frames, _ = moving_face(20)
    good = write_video(tmp_path / "good.avi", frames)
    empty = write_video(tmp_path / "empty.avi", [blank()] * 12)
    rows = compare_trackers([good, empty], ["medianflow", "kcf"], haar, iter_clip, size=32)
    assert [r["tracker"] for r in rows] == ["medianflow", "kcf"]
    for row in rows:
        assert (row["items"], row["failed"], row["frames"]) == (2, 1, 20)
        assert row["fps"] > 0
        assert row["failures"][0][0] == empty
        assert "no face found" in row["failures"][0][1]


# --- clips -----------------------------------------------------------------------------------


def random_faces(n: int, color: bool, size: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    shape = (size, size, 3) if color else (size, size)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


CLIP_KINDS = [("x264", True), ("x264", False), ("ffv1", True), ("ffv1", False),
              ("huffyuv", True)]


def write_clip(path, faces, color, codec, fps=25.0):
    with ClipWriter(path, faces[0].shape[0], color, fps=fps, codec=codec) as writer:
        for face in faces:
            writer.write(face)
    return path


def smooth_faces(n: int, color: bool, size: int = 48) -> list[np.ndarray]:
    """A face-like clip: a smooth picture drifting a little each frame, plus sensor noise,
    so the inter-frame coding of x264 is exercised (noise alone would defeat it)."""
    rng = np.random.default_rng(3)
    base = cv2.resize(data.astronaut()[:200, 150:350], (size + n, size + n))
    faces = []
    for i in range(n):
        face = base[i:i + size, i // 2:i // 2 + size].astype(np.int16)
        face = np.clip(face + rng.integers(-3, 4, face.shape), 0, 255).astype(np.uint8)
        faces.append(face if color else cv2.cvtColor(face, cv2.COLOR_RGB2GRAY))
    return faces


@pytest.mark.parametrize(("codec", "color"), CLIP_KINDS)
@pytest.mark.parametrize("content", ["noise", "face"])
def test_lossless_round_trip_is_bit_exact(tmp_path, codec, color, content):
    """Every value 0..255 in every channel (noise), and a moving picture (face)."""
    faces = random_faces(6, color) if content == "noise" else smooth_faces(12, color)
    path = write_clip(tmp_path / f"clip{CODECS[codec].suffix}", faces, color, codec)
    clip = read_clip(path, color)
    assert clip.shape == (len(faces), *faces[0].shape)
    assert np.array_equal(clip, np.stack(faces))
    assert list(iter_clip(path, color))[-1].shape == faces[0].shape
    assert not temp_path_for(path).exists()


@pytest.mark.parametrize(("codec", "color"), CLIP_KINDS)
def test_same_frames_give_the_same_bytes(tmp_path, codec, color):
    """Clips are byte-reproducible (no random Matroska segment UID), so a re-track keeps
    every clip hash; a different frame or frame rate gives a different file."""
    faces = smooth_faces(8, color)
    suffix = CODECS[codec].suffix

    def digest(name, frames=faces, fps=25.0):
        path = write_clip(tmp_path / f"{name}{suffix}", frames, color, codec, fps)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    first = digest("a")
    assert digest("b") == first
    assert digest("c", fps=29.97) != first
    changed = [face.copy() for face in faces]
    changed[5][7, 7] ^= 1
    assert digest("d", changed) != first


def test_clips_written_by_opencv_still_read(tmp_path):
    """Clips from before issue 13 (OpenCV's FFV1 and HuffYUV writer) read as before."""
    for fourcc, suffix, color in (("FFV1", ".mkv", True), ("FFV1", ".mkv", False),
                                  ("HFYU", ".avi", True)):
        faces = smooth_faces(5, color)
        path = tmp_path / f"old-{color}{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (48, 48),
                                 isColor=color)
        for face in faces:
            writer.write(face)
        writer.release()
        assert np.array_equal(read_clip(path, color), np.stack(faces))


def test_failed_writer_leaves_no_file(tmp_path):
    path = tmp_path / "clip.mkv"
    with pytest.raises(RuntimeError, match="stop"), ClipWriter(path, 48, True, 25) as writer:
        writer.write(random_faces(1, True)[0])
        assert temp_path_for(path).exists()
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_frame_of_the_wrong_shape_is_refused(tmp_path):
    writer = ClipWriter(tmp_path / "clip.mkv", 48, color=False, fps=25)
    with pytest.raises(ValueError, match="does not fit"), writer:
        writer.write(random_faces(1, True)[0])
    assert list(tmp_path.iterdir()) == []


def test_writer_that_cannot_open_says_so(tmp_path):
    writer = ClipWriter(tmp_path / "missing" / "clip.mkv", 48, True, 25)
    with pytest.raises(FerError, match="cannot open a x264 video writer"):
        writer.__enter__()


def test_huffyuv_grey_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="grey"):
        ClipWriter(tmp_path / "clip.avi", 48, color=False, fps=25, codec="huffyuv")


def test_boxes_csv(tmp_path, haar):
    frames, _ = moving_face(3)
    tracked = list(track_faces(frames, detect_first_face(frames, haar), size=32))
    path = tmp_path / "boxes.csv"
    write_boxes_csv(path, (t.row for t in tracked))
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["frame", "x", "y", "w", "h", "source"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert rows[1][1:] == [*map(str, tracked[0].box), "detect"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.csv"]
