"""Every face with a stable person id (fercli.vision.faces), on real OpenCV.

The clips are the project's own synthetic subjects (fercli.sampledata) side by side, found
by the real Haar detector and followed by the real MedianFlow tracker; only the tests of
the association rules alone use a detector that returns fixed boxes.
"""
from __future__ import annotations

import numpy as np
import pytest
import support

from fercli.core.errors import ConfigError
from fercli.vision.detect import Box, HaarDetector
from fercli.vision.faces import QUICK_LOOKS_IN_A_ROW, FaceObservation, PersonTracker

PANEL = support.PANEL
BEFORE, AFTER = support.BEFORE, support.AFTER
DETECT_EVERY = 10


@pytest.fixture(scope="module")
def panels() -> dict[str, list[np.ndarray]]:
    return support.two_subject_panels()


@pytest.fixture(scope="module")
def cut_clip(panels) -> list[np.ndarray]:
    return support.two_face_cut_clip(panels)


def side(observation: FaceObservation) -> str:
    return "left" if observation.box.center[0] < PANEL[0] else "right"


def observe_all(tracker: PersonTracker, frames) -> list[list[FaceObservation]]:
    return [tracker.observe(frame) for frame in frames]


def haar_medianflow(**options) -> PersonTracker:
    return PersonTracker(HaarDetector(), "medianflow", 10, detect_every=DETECT_EVERY, **options)


def test_two_faces_keep_their_ids_across_a_cut_that_swaps_their_sides(cut_clip):
    tracker = haar_medianflow()
    seen = observe_all(tracker, cut_clip)

    assert tracker.persons == 2
    assert all(len(faces) == 2 for faces in seen)
    assert all([o.person for o in faces] == [1, 2] for faces in seen)  # sorted by person
    before = {(o.person, side(o)) for faces in seen[:BEFORE] for o in faces}
    after = {(o.person, side(o)) for faces in seen[BEFORE:] for o in faces}
    # one subject per id before the cut, numbered left to right ...
    assert before == {(1, "left"), (2, "right")}
    # ... and each subject keeps its id after it, so the ids change sides
    assert after == {(1, "right"), (2, "left")}
    assert tracker.counts["cut"] == 1
    assert tracker.counts["relinked"] == 2
    assert tracker.counts["new"] == 2
    # detection on the cadence plus the cut frame, not on every frame
    cadence = len(cut_clip) // DETECT_EVERY
    looks = tracker.counts["detect"] + tracker.counts["quick look"]
    assert cadence <= looks <= cadence + 3
    assert tracker.counts["quick look"] >= cadence - 3  # nothing new: half resolution suffices
    assert tracker.counts["detect"] + tracker.counts["track"] <= len(cut_clip)
    assert [o.source for o in seen[BEFORE]] == ["detect", "detect"]  # the cut was searched
    assert tracker.counts["no face"] == 0
    frame_h, frame_w = cut_clip[0].shape[:2]
    for faces in seen:
        for o in faces:
            assert 0 <= o.box.x and o.box.x + o.box.w <= frame_w + 1e-6
            assert 0 <= o.box.y and o.box.y + o.box.h <= frame_h + 1e-6


def slide_out_and_back(panels) -> list[np.ndarray]:
    """RIGHT stays put; LEFT slides out of the frame, stays away, slides back in."""
    frames = []
    offsets = ([0] * 12 + [-20 * k for k in range(1, 11)] + [-PANEL[0]] * 20
               + [-20 * k for k in range(9, -1, -1)] + [0] * 18)
    for index, offset in enumerate(offsets):
        left = np.full_like(panels["left"][index], 128)
        visible = PANEL[0] + offset
        if visible > 0:
            left[:, :visible] = panels["left"][index][:, -offset:]
        frames.append(np.hstack([left, panels["right"][index]]))
    return frames


def test_a_face_that_leaves_and_comes_back_gets_its_old_id(panels):
    frames = slide_out_and_back(panels)
    tracker = haar_medianflow()
    seen = observe_all(tracker, frames)

    assert tracker.persons == 2
    ids = [{side(o): o.person for o in faces} for faces in seen]
    assert ids[0] == {"left": 1, "right": 2}
    assert all(faces.get("right") == 2 for faces in ids)  # the one who stayed
    assert not any("left" in faces for faces in ids[22:42])  # gone while out of the frame
    assert ids[-1] == {"left": 1, "right": 2}  # back, with the old id
    assert tracker.counts["relinked"] >= 1
    assert tracker.counts["cut"] == 0


def test_largest_returns_only_the_largest_face_of_each_frame(panels):
    # LEFT at the panel size, RIGHT rendered 1.25x as large (face size follows the height)
    small = support.subject_panel(support.LEFT, "happy", 5, 12)
    large = support.subject_panel(support.RIGHT, "happy", 6, 12, size=(250, 300))
    frames = []
    for a, b in zip(small, large):
        canvas = np.full((300, 450, 3), 100, np.uint8)
        canvas[30:270, :200] = a
        canvas[:, 200:] = b
        frames.append(canvas)
    every = observe_all(haar_medianflow(faces="all"), frames)
    largest_tracker = haar_medianflow(faces="largest")
    largest = observe_all(largest_tracker, frames)

    assert all(len(faces) == 2 for faces in every)
    assert all(len(faces) == 1 for faces in largest)
    assert largest_tracker.persons == 2  # both are tracked, one is returned
    for all_faces, (chosen,) in zip(every, largest):
        biggest = max(all_faces, key=lambda o: o.box.area)
        assert chosen == biggest
        assert chosen.box.center[0] > 200 and chosen.person == 2


class FixedDetector:
    """Returns the same boxes on every call and counts the calls (association rules only)."""

    def __init__(self, boxes, width: int = 2 * PANEL[0], min_size: float = 0):
        self.boxes = [Box(*b) for b in boxes]
        self.width = width  # of the frames the boxes belong to (scaled for smaller ones)
        self.min_size = min_size  # as Haar's minSize: smaller faces (after scaling) are missed
        self.calls = 0

    def detect(self, frame_bgr):
        self.calls += 1
        scale = frame_bgr.shape[1] / self.width
        scaled = [Box(*(v * scale for v in box)) for box in self.boxes]
        return [box for box in scaled if min(box.w, box.h) >= self.min_size]


@pytest.fixture(scope="module")
def still(panels) -> np.ndarray:
    """A textured frame for the tracker to hold on to."""
    return np.hstack([panels["left"][0], panels["right"][0]])


def test_two_strongly_overlapping_detections_are_one_person(still):
    detector = FixedDetector([(60, 70, 100, 100), (66, 74, 106, 106), (90, 100, 40, 40)])
    tracker = PersonTracker(detector, "medianflow", 10, detect_every=3)
    seen = observe_all(tracker, [still] * 7)

    assert tracker.persons == 1
    assert all(len(faces) == 1 for faces in seen)
    assert seen[0] == [FaceObservation(1, Box(66, 74, 106, 116), "detect")]  # the larger
    # detection runs on frames 0, 3 and 6; the tracker holding the face keeps its box
    assert tracker.counts["detect"] + tracker.counts["quick look"] == 3 == detector.calls
    assert [faces[0].source for faces in seen] == ["detect"] + ["track"] * 6


def test_detection_runs_on_the_cadence_while_faces_are_tracked(still):
    detector = FixedDetector([(60, 70, 100, 100), (260, 70, 100, 100)])
    tracker = PersonTracker(detector, "medianflow", 0, detect_every=5)
    seen = observe_all(tracker, [still] * 20)

    # frames 0, 5, 10, 15: a full detection, then quick looks that find the same faces
    assert (detector.calls, tracker.counts["detect"], tracker.counts["quick look"]) == (4, 1, 3)
    assert tracker.counts["track"] == 19  # every frame but the one full detection
    assert tracker.persons == 2
    assert all([o.person for o in faces] == [1, 2] for faces in seen)


def test_a_small_face_joining_a_large_one_is_found_by_the_next_full_detection(still):
    # 40 px: the detector (smallest face 30 px) sees it at full resolution, not at half
    detector = FixedDetector([(60, 70, 100, 100)], min_size=30)
    tracker = PersonTracker(detector, "medianflow", 0, detect_every=2)
    observe_all(tracker, [still] * 3)  # frame 0: full detection; frame 2: a quick look
    detector.boxes.append(Box(260, 70, 40, 40))
    seen = observe_all(tracker, [still] * 10)  # frames 3 to 12

    # the quick looks on frames 4, 6 and 8 (the fourth in a row) find only the large face;
    # frame 10's check is a full detection again, which finds the small one, and frame
    # 12's too (a tracked face under QUICK_LOOK_PX)
    assert QUICK_LOOKS_IN_A_ROW == 4
    assert [len(faces) for faces in seen] == [1] * 7 + [2] * 3
    assert seen[7][1] == FaceObservation(2, Box(260, 70, 40, 40), "detect")
    assert (tracker.counts["detect"], tracker.counts["quick look"]) == (3, 4)
    assert tracker.persons == 2


def test_detection_runs_on_every_frame_while_nobody_is_found(still):
    detector = FixedDetector([])
    tracker = PersonTracker(detector, "medianflow", 10, detect_every=10)
    assert observe_all(tracker, [still] * 4) == [[]] * 4
    assert detector.calls == 4
    assert tracker.counts["no face"] == 4
    assert tracker.persons == 0


def test_a_face_the_detector_misses_is_kept_while_the_tracker_holds_it(still):
    detector = FixedDetector([(60, 70, 100, 100)])
    tracker = PersonTracker(detector, "medianflow", 10, detect_every=2)
    tracker.observe(still)
    detector.boxes = []  # the detector misses the face from now on
    seen = observe_all(tracker, [still] * 6)

    assert all(faces == [FaceObservation(1, faces[0].box, "track")] for faces in seen)
    assert tracker.counts["dropped"] == 0
    assert tracker.counts["detect"] == 4


@pytest.mark.parametrize("bad", ["both", "", "LARGEST"])
def test_an_unknown_faces_mode_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="faces") as raised:
        PersonTracker(FixedDetector([]), "medianflow", 10, faces=bad)
    assert "all, largest" in str(raised.value)


def test_an_unknown_tracker_or_cadence_is_a_config_error():
    with pytest.raises(ConfigError, match="tracker"):
        PersonTracker(FixedDetector([]), "nope", 10)
    with pytest.raises(ConfigError, match="detect_every"):
        PersonTracker(FixedDetector([]), "medianflow", 10, detect_every=0)


def test_small_assignments_equal_the_hungarian_method():
    from scipy.optimize import linear_sum_assignment

    from fercli.vision.faces import assign

    rng = np.random.default_rng(7)
    for rows, cols in [(1, 1), (2, 3), (3, 2), (4, 4), (4, 8), (8, 4), (3, 7)]:
        for _ in range(20):
            scores = rng.random((rows, cols))
            eligible = rng.random((rows, cols)) > 0.3
            gain = np.where(eligible, scores + 1.0, 0.0)
            ours = assign(scores, eligible)
            r, c = linear_sum_assignment(gain, maximize=True)
            best = sum(gain[i, j] for i, j in zip(r, c) if eligible[i, j])
            assert sum(gain[i, j] for i, j in ours) == pytest.approx(best)
            assert len({i for i, _ in ours}) == len({j for _, j in ours}) == len(ours)
