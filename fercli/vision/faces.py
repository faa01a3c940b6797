"""Every face of a video, each with a person id that stays the same across cuts and exits.

``PersonTracker`` generalises the single-face rule of ``fer predict`` ("detect when
searching, track otherwise") to several faces, for footage such as debates: several
speakers, camera cuts, people leaving and coming back. It is pure: one sampled BGR frame
in, that frame's faces out (``observe``); no file I/O, no printing. The rules, and why:

1. **When to detect.** On the first frame, then every ``detect_every`` observed frames,
   and also on any frame where a tracker failed, where a scene cut was seen, or where
   nobody is tracked. Detection is the expensive step (Haar takes several times what a
   MedianFlow tracker takes per face), so it runs periodically, to pick up new faces and
   remove tracker drift, and at once when a face has gone missing, as the single-face rule
   does. While others are still tracked, a person who has left the frame is searched for
   only at the periodic detections, so a speaker walking off does not turn every later
   frame into a detection frame. The periodic check first takes a quick look at half
   resolution (a quarter of the detector's work; only when every tracked face is large
   enough to be found there): when it finds exactly the tracked faces where their
   trackers have them, nothing has changed and the full detection is skipped (on
   woman2.mp4 this took `fer predict` from 440 to 670 frames/s). Half resolution cannot
   see a face under twice the detector's smallest size (60 px with the paper's 30), so
   after ``QUICK_LOOKS_IN_A_ROW`` quick looks the check is a full detection again: a
   small face that joins a tracked large one gets its id within that many checks plus
   one (5 s at `fer predict`'s default cadence), where it was never found before.
2. **Between detections** every active person is followed by its own ``FaceTracker`` (the
   run's tracker, MedianFlow by default). A tracker failure makes that person inactive
   ("lost"). So does a tracked box less than half inside the frame (``MIN_VISIBLE``): the
   face is leaving, and MedianFlow was seen to jump elsewhere once its box left the frame.
   And when two tracked boxes become one face (rule 7's test), the tracker whose box
   looks less like its person (rule 5's descriptor) has slid onto the other's face: that
   person is lost, and only appearance can give its id back.
3. **At a detection** the detections are matched one-to-one with the active persons, and
   with those whose tracker failed since the last detection (at their last box: a face
   that defeated the tracker is usually still there), by the IoU of the extended boxes,
   maximising the summed IoU (Hungarian assignment). A pair qualifies at IoU >=
   ``match_iou`` (0.3: between detections a tracked face drifts by a fraction of its
   width, and two faces side by side hardly overlap) or when each box's centre lies
   inside the other (a drifted tracker still sits on its face), and only if the
   detection looks like the person (appearance similarity, rule 5, >= ``same_similarity``,
   0.85, below the lowest same-person score measured on real hand-held footage, 0.91): a
   cut the colour check missed can put another face where the tracker was, and MedianFlow
   follows it without failing. A matched person whose
   tracked box still overlaps the detection by IoU >= ``restart_iou`` (0.5) keeps its
   tracker and box: the boxes then follow `fer track`'s rule (detect once, track after),
   so the crops are those the model was trained on; a tracker that drifted further is
   restarted on the detected box. An active person whom no
   detection matches keeps its tracked box while that box still looks like the person
   (rule 5's similarity): detectors miss faces now and then (a turned head, a blink).
   Otherwise it counts a miss, and ``miss_limit`` (2) misses in a row drop it (make it
   inactive): a tracker left on the background never fails by itself.
4. **Camera cuts.** Each observed frame is reduced to a 64x48 thumbnail, and the
   hue-saturation-value histograms (8x4x4 bins) of its four quadrants are compared with
   the previous frame's (mean Bhattacharyya distance, 0 alike to 1 disjoint; ~0.05 ms a
   frame on 596x336); above ``cut_threshold`` (0.48) is a cut. Histograms ignore where
   things are inside a quadrant, so camera shake, pans and people moving change them
   little, while a cut changes the colours, and the quadrants catch a cut that only
   moves the same people to other places. Measured on the development videos: within a
   shot <= 0.16 for steady shots (frames 1 to 20 apart) and <= 0.42 for a hand-held night
   scene 20 frames apart (0.29 at 5 apart); between different videos >= 0.55; for two
   real faces swapping sides >= 0.79; for the tests' swap-and-new-background cut >= 0.74.
   (A pixel difference of small grey thumbnails does not separate them: the hand-held
   shot differs as much from 20 frames earlier as at a real cut; one histogram of the
   whole frame misses the swap.) On a cut every active person becomes inactive without
   consulting its tracker (MedianFlow happily "tracks" whatever lies in the old box after
   a cut) and the frame is searched with the detector; the faces found get their ids
   back by appearance (rule 5). A false cut costs one detection and the re-links; a cut
   between two shots that look alike is missed, and then the trackers' failures and
   rule 3 put the faces back in the detector's hands.
5. **Re-linking.** Detections that rule 3 left over are compared by appearance with the
   inactive persons, one-to-one (Hungarian, highest summed similarity). A pair at
   similarity >= ``relink_similarity`` gives the person its id back ("relinked"); any
   other detection starts a new person, numbered 1, 2, 3 ... in order of first
   appearance (left to right within a frame). The descriptor (``appearance``) is taken
   from the middle of the box (``APPEARANCE_MARGINS``; the corners show background,
   which a cut changes), resized to 48x48, and joins two unit halves of equal weight:
   the square roots of the normalised 16x16-bin hue-saturation histogram (skin, hair,
   glasses; free of brightness, which shifts between cameras) and of the uniform
   local-binary-pattern histograms of the patch's four quadrants (texture, robust to
   light and small pose changes). A dot product of two such halves is a Bhattacharyya
   coefficient; the similarity is their mean, in [0, 1]. Each person keeps a running
   mean of its descriptors, updated at every detection that matches it (plain over the
   first ``APPEARANCE_MEMORY`` detections, exponential after, so it follows slow changes
   of light). A 16x16 grey thumbnail in place of the texture half did worse on real
   faces (a turned head moves every pixel). The threshold, 0.93, from single detections
   against a person's mean on the development videos: the same person scores >= 0.97 in
   steady shots (a talking face, two CK+ sequences) and 0.91-0.98 in the hand-held night
   scene; other people score 0.56-0.87, except the two CK+ subjects, filmed in the same
   lab light, at 0.93-0.95. The synthetic sample subjects score >= 0.97 against their own
   mean across a cut to a new background. A missed re-link costs a spare person id, a
   wrong one mixes two people's expressions; 0.93 keeps the real people apart but for
   same-light look-alikes, at the price of a few spare ids in hard footage. This is a
   cheap descriptor, not face recognition.
6. **faces="largest"** returns only the largest face of each frame (by box area); every
   face is still tracked, so ids stay right when the largest one changes. ``faces="all"``
   returns all of them.
7. **Duplicates.** Two detections with IoU > ``duplicate_iou`` (0.5) are one face (Haar
   can fire twice on one face at neighbouring scales), and so is a box that lies more than
   ``nested`` (0.7) of its area inside another (Haar also finds small "faces" inside a
   real one, e.g. around the mouth); the larger box is kept. A detection left over by
   rule 3 that is one face with a box a tracker still holds is dropped as well. So one
   face never becomes two persons.

``counts`` tallies per ``observe`` call: "frames"; "detect" (a full detection ran); "quick
look" (a half-resolution cadence check ran); "track" (a
frame served by the trackers alone); "no face" (no observation); "cut"; "lost" (tracker
failures); "recovered" (a face whose tracker failed, found again at its place by rule 3);
"dropped" (missed by ``miss_limit`` detections in a row); "relinked" (rule 5); "new"
(persons created).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations, permutations

import cv2
import numpy as np

from fercli.core.errors import ConfigError
from fercli.vision.detect import Box, FaceDetector, extend_box, iou
from fercli.vision.track import TRACK_FACE_PX, FaceTracker, make_tracker

FACES = ("all", "largest")
# Rule 1's cadence check runs at half resolution when every tracked (extended) box is at
# least this wide and high: the face inside is then >= 2 x the 24 px Haar window.
QUICK_LOOK_PX = 80
# ... and at most this many quick looks in a row, then a full detection (rule 1).
QUICK_LOOKS_IN_A_ROW = 4
# Cut check (rule 4): thumbnail size, its cells (rows, columns) and their hue x saturation
# x value histogram bins.
CUT_THUMB = (64, 48)
CUT_GRID = (2, 2)
CUT_BINS = (8, 4, 4)
# Appearance (rule 5): margins cut from the box (sides, top, bottom, as fractions of its
# size), patch side, hue x saturation bins, LBP grid (cells per side), running-mean memory.
APPEARANCE_MARGINS = (0.15, 0.1, 0.1)
APPEARANCE_PATCH = 48
HS_BINS = (16, 16)
LBP_GRID = 2
APPEARANCE_MEMORY = 20
# A tracked face less than this share inside the frame is leaving it: lost (rule 2).
MIN_VISIBLE = 0.5


def _uniform_lbp_table() -> np.ndarray:
    """8-bit LBP code -> its bin: the 58 uniform codes (<= 2 circular bit flips), then 1 other."""
    flips = [bin(c ^ ((c >> 1) | ((c & 1) << 7))).count("1") for c in range(256)]
    uniform = [c for c in range(256) if flips[c] <= 2]
    table = np.full(256, len(uniform), np.intp)
    table[uniform] = np.arange(len(uniform))
    return table


LBP_TABLE = _uniform_lbp_table()
LBP_BINS = int(LBP_TABLE.max()) + 1
# The eight neighbours, clockwise from the top left, of each inner pixel.
LBP_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


@dataclass(frozen=True)
class FaceObservation:
    """One face of one frame.

    ``person`` is its id (1, 2, 3 ... in order of first appearance); ``box`` is the face
    box extended by ``extend_px`` and clipped to the frame (what ``crop_face`` cuts);
    ``source`` is "detect" (the detector's box in this frame) or "track".
    """

    person: int
    box: Box
    source: str


@dataclass(eq=False)
class _Person:
    """One identity: its tracker while active, its last box and its appearance."""

    id: int
    box: Box
    descriptor: np.ndarray
    tracker: FaceTracker | None = None
    size: tuple[float, float] = (1.0, 1.0)  # width, height of the box it was last detected at
    misses: int = 0  # detections in a row that did not find it
    failed: bool = False  # its tracker failed since the last detection (rule 3)
    seen: int = 1  # detections its descriptor is the mean of

    @property
    def active(self) -> bool:
        return self.tracker is not None

    def remember(self, descriptor: np.ndarray) -> None:
        self.seen += 1
        weight = 1.0 / min(self.seen, APPEARANCE_MEMORY)
        self.descriptor = self.descriptor + weight * (descriptor - self.descriptor)


def colour_histograms(frame: np.ndarray) -> list[np.ndarray]:
    """HSV histograms of the CUT_GRID cells of a small thumbnail of the frame (rule 4)."""
    small = cv2.resize(frame, CUT_THUMB, interpolation=cv2.INTER_LINEAR)
    if small.ndim == 2:
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    rows, cols = CUT_GRID
    height, width = CUT_THUMB[1] // rows, CUT_THUMB[0] // cols
    return [cv2.calcHist([hsv[i * height:(i + 1) * height, j * width:(j + 1) * width]],
                         [0, 1, 2], None, list(CUT_BINS), [0, 180, 0, 256, 0, 256])
            for i in range(rows) for j in range(cols)]


def cut_distance(previous: list[np.ndarray], current: list[np.ndarray]) -> float:
    """Mean Bhattacharyya distance of two frames' cell histograms: 0 alike, 1 disjoint."""
    return float(np.mean([cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA)
                          for a, b in zip(previous, current)]))


def _unit_sqrt(histogram: np.ndarray) -> np.ndarray:
    histogram = histogram.ravel().astype(np.float32)
    return np.sqrt(histogram / max(float(histogram.sum()), 1.0))


def appearance(frame: np.ndarray, box: Box) -> np.ndarray:
    """The unit-norm appearance descriptor of the face in ``box`` (rule 5)."""
    side, top, bottom = APPEARANCE_MARGINS
    x0, y0 = int(box.x + side * box.w), int(box.y + top * box.h)
    x1 = max(int(np.ceil(box.x + (1 - side) * box.w)), x0 + 1)
    y1 = max(int(np.ceil(box.y + (1 - bottom) * box.h)), y0 + 1)
    patch = cv2.resize(frame[y0:y1, x0:x1], (APPEARANCE_PATCH, APPEARANCE_PATCH),
                       interpolation=cv2.INTER_AREA)
    if patch.ndim == 2:
        patch = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
    hsv = cv2.cvtColor(patch, cv2.COLOR_BGR2HSV)
    colour = _unit_sqrt(cv2.calcHist([hsv], [0, 1], None, list(HS_BINS), [0, 180, 0, 256]))
    texture = _unit_sqrt(lbp_histograms(cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)))
    return np.concatenate([colour, texture]) / np.float32(np.sqrt(2.0))


def lbp_histograms(grey: np.ndarray, grid: int = LBP_GRID) -> np.ndarray:
    """Uniform 8-neighbour LBP histograms of the grid x grid cells of a grey image, joined."""
    image = grey.astype(np.int16)
    centre = image[1:-1, 1:-1]
    height, width = centre.shape
    code = np.zeros(centre.shape, np.intp)
    for bit, (dy, dx) in enumerate(LBP_NEIGHBOURS):
        code |= (image[1 + dy:1 + dy + height, 1 + dx:1 + dx + width] >= centre) << bit
    bins = LBP_TABLE[code]
    cell_y, cell_x = height // grid, width // grid
    return np.concatenate([
        np.bincount(bins[i * cell_y:(i + 1) * cell_y, j * cell_x:(j + 1) * cell_x].ravel(),
                    minlength=LBP_BINS)
        for i in range(grid) for j in range(grid)])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two descriptors (running means are not unit-norm)."""
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def assign(scores: np.ndarray, eligible: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs among the eligible ones with the largest summed score.

    A frame holds a handful of faces, so small problems are solved by trying every
    assignment (microseconds, and no 0.4 s scipy import before the first frame); larger
    ones by the Hungarian method.
    """
    if not eligible.any():
        return []
    gain = np.where(eligible, scores + 1.0, 0.0)  # +1: any eligible pair beats none
    if min(gain.shape) <= 4 and max(gain.shape) <= 8:
        pairs = _best_pairs(gain)
    else:
        from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn

        pairs = zip(*linear_sum_assignment(gain, maximize=True))
    return [(int(r), int(c)) for r, c in pairs if eligible[r, c]]


def _best_pairs(gain: np.ndarray) -> list[tuple[int, int]]:
    """Exhaustive maximum-gain one-to-one assignment (rows <= columns after transposing)."""
    flip = gain.shape[0] > gain.shape[1]
    table = gain.T if flip else gain
    rows = range(table.shape[0])
    best = max(permutations(range(table.shape[1]), table.shape[0]),
               key=lambda cols: sum(table[r, c] for r, c in zip(rows, cols)))
    pairs = list(zip(rows, best))
    return [(c, r) for r, c in pairs] if flip else pairs


def deduplicate(boxes: list[Box], overlap: float, nested: float) -> list[Box]:
    """The boxes less those that overlap a larger one by more than ``overlap`` IoU, or lie
    inside it by more than ``nested`` of their own area (rule 7)."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: b.area, reverse=True):
        if all(iou(box, other) <= overlap and inside_share(box, other) <= nested
               for other in kept):
            kept.append(box)
    return kept


def inside_share(box: Box, other: Box) -> float:
    """The share of ``box``'s area that lies inside ``other``."""
    ix = max(0.0, min(box.x + box.w, other.x + other.w) - max(box.x, other.x))
    iy = max(0.0, min(box.y + box.h, other.y + other.h) - max(box.y, other.y))
    return ix * iy / box.area if box.area else 0.0


def visible_share(box: Box, size: tuple[float, float]) -> float:
    """How much of a tracked face is inside the frame: ``box`` is clipped to it, ``size``
    is the face's detected box. The trackers scale width and height alike, so the less
    scaled side of the clipped box is the one the frame edge cut."""
    width, height = box.w / size[0], box.h / size[1]
    return min(width, height) / max(width, height, 1e-9)


def _inside(point: tuple[float, float], box: Box) -> bool:
    return box.x <= point[0] <= box.x + box.w and box.y <= point[1] <= box.y + box.h


class PersonTracker:
    """Detect, track and re-identify every face of a video (rules in the module doc).

    Call ``observe`` on every sampled frame, in order. ``persons`` is how many distinct
    person ids exist so far; ``counts`` tallies what happened (see the module doc).
    """

    def __init__(self, detector: FaceDetector, tracker: str, extend_px: int, *,
                 detect_every: int = 10, faces: str = "all", match_iou: float = 0.3,
                 duplicate_iou: float = 0.5, miss_limit: int = 2,
                 cut_threshold: float = 0.48, relink_similarity: float = 0.93,
                 nested: float = 0.7, restart_iou: float = 0.5,
                 same_similarity: float = 0.85,
                 min_face_px: int = TRACK_FACE_PX):
        if faces not in FACES:
            raise ConfigError(f"unknown faces mode {faces!r}",
                              hint=f"Use one of: {', '.join(FACES)}.")
        if detect_every < 1:
            raise ConfigError(f"detect_every must be at least 1, got {detect_every}",
                              hint="Use 1 (detect on every frame) or more, e.g. 10.")
        if miss_limit < 1:
            raise ConfigError(f"miss_limit must be at least 1, got {miss_limit}",
                              hint="Use e.g. 2.")
        make_tracker(tracker)  # an unknown name fails here, not at the first face
        self.detector = detector
        self.tracker_name = tracker
        self.extend_px = extend_px
        self.detect_every = detect_every
        self.faces = faces
        self.match_iou = match_iou
        self.duplicate_iou = duplicate_iou
        self.nested = nested
        self.restart_iou = restart_iou
        self.same_similarity = same_similarity
        self.miss_limit = miss_limit
        self.cut_threshold = cut_threshold
        self.relink_similarity = relink_similarity
        self.min_face_px = min_face_px
        self.counts: Counter = Counter()
        self._people: list[_Person] = []
        self._colours: list[np.ndarray] | None = None  # colour_histograms of the last frame
        self._since_detection = 0
        self._quick_looks = 0  # in a row, since the last full detection

    @property
    def persons(self) -> int:
        return len(self._people)

    def observe(self, frame: np.ndarray) -> list[FaceObservation]:
        """One sampled BGR uint8 frame (every sampled frame, in order) -> its faces, by person."""
        self.counts["frames"] += 1
        colours = colour_histograms(frame)
        first = self._colours is None
        cut = not first and cut_distance(self._colours, colours) > self.cut_threshold
        self._colours = colours
        sources: dict[int, str] = {}
        if cut:
            self.counts["cut"] += 1
            for person in self._people:
                person.tracker, person.failed = None, False
        failed = False
        for person in self._people:
            if person.active:
                box = person.tracker.locate(frame)
                if box is None or visible_share(box, person.size) < MIN_VISIBLE:
                    self._lose(person, sources, by_place=True)
                    failed = True
                else:
                    person.box = box
                    sources[person.id] = "track"
        failed |= self._separate(frame, sources)
        self._since_detection += 1
        if first or cut or failed or not sources:
            self._detect(frame, sources)
        elif self._since_detection >= self.detect_every and not self._quick_look(frame):
            self._detect(frame, sources)
        else:
            self.counts["track"] += 1
        observations = [FaceObservation(p.id, p.box, sources[p.id])
                        for p in self._people if p.active]
        if self.faces == "largest" and observations:
            observations = [max(observations, key=lambda o: o.box.area)]
        if not observations:
            self.counts["no face"] += 1
        return observations

    def _quick_look(self, frame: np.ndarray) -> bool:
        """Rule 1's cadence check at half resolution (a quarter of the detector's work):
        True when it finds exactly the tracked faces, each where its tracker has it (IoU
        >= ``restart_iou``); anything else (a new face, a missed one, a drifted tracker)
        calls for the full detection. Faces under ``QUICK_LOOK_PX``, and every check after
        ``QUICK_LOOKS_IN_A_ROW`` quick looks, get the full one."""
        self._since_detection = 0
        active = [p for p in self._people if p.active]
        if (self._quick_looks >= QUICK_LOOKS_IN_A_ROW
                or min(min(p.box.w, p.box.h) for p in active) < QUICK_LOOK_PX):
            return False
        self._quick_looks += 1
        self.counts["quick look"] += 1
        height, width = frame.shape[:2]
        small = cv2.resize(frame, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        boxes = [extend_box(Box(2 * b.x, 2 * b.y, 2 * b.w, 2 * b.h), self.extend_px, width,
                            height) for b in self.detector.detect(small)]
        boxes = deduplicate([b for b in boxes if b.w > 1 and b.h > 1], self.duplicate_iou,
                            self.nested)
        if len(boxes) != len(active):
            return False
        overlaps = np.array([[iou(p.box, b) for b in boxes] for p in active])
        if len(assign(overlaps, overlaps >= self.restart_iou)) != len(active):
            return False
        for person in active:  # as a matching full detection would (rules 3 and 5)
            person.misses = 0
            person.remember(appearance(frame, person.box))
        return True

    def _lose(self, person: _Person, sources: dict[int, str], by_place: bool) -> None:
        """A tracker failure: the person is inactive; ``by_place``: rule 3 may find it there."""
        person.tracker, person.failed = None, by_place
        sources.pop(person.id, None)
        self.counts["lost"] += 1

    def _separate(self, frame: np.ndarray, sources: dict[int, str]) -> bool:
        """Two trackers on one face (rule 2): the one whose box looks less like its person
        is lost, and not found again by place (it sits on someone else's face)."""
        separated = False
        tracked = [p for p in self._people if p.id in sources]
        for a, b in combinations(tracked, 2):
            if a.active and b.active and self._one_face(a.box, b.box):
                worse = min((a, b), key=lambda p: similarity(p.descriptor,
                                                             appearance(frame, p.box)))
                self._lose(worse, sources, by_place=False)
                separated = True
        return separated

    def _one_face(self, box: Box, other: Box) -> bool:
        """Rule 7: boxes that overlap strongly or lie mostly one inside the other."""
        return (iou(box, other) > self.duplicate_iou or inside_share(box, other) > self.nested
                or inside_share(other, box) > self.nested)

    def _detect(self, frame: np.ndarray, sources: dict[int, str]) -> None:
        """Rules 3, 5 and 7: match detections by place, then by appearance, else new persons."""
        self.counts["detect"] += 1
        self._since_detection = self._quick_looks = 0
        height, width = frame.shape[:2]
        boxes = [extend_box(b, self.extend_px, width, height) for b in self.detector.detect(frame)]
        boxes = deduplicate([b for b in boxes if b.w > 1 and b.h > 1], self.duplicate_iou,
                            self.nested)
        boxes.sort(key=lambda b: (b.x, b.y))  # new persons are numbered left to right
        placed = [p for p in self._people if p.active or p.failed]
        overlaps = np.array([[iou(p.box, b) for b in boxes] for p in placed]).reshape(
            len(placed), len(boxes))
        eligible = overlaps >= self.match_iou
        descriptors = {j: appearance(frame, box) for j, box in enumerate(boxes)}
        for i, person in enumerate(placed):
            for j, box in enumerate(boxes):
                if _inside(person.box.center, box) and _inside(box.center, person.box):
                    eligible[i, j] = True
                if similarity(person.descriptor, descriptors[j]) < self.same_similarity:
                    eligible[i, j] = False  # another face in the same place (a missed cut)
        matched = {}
        for i, j in assign(overlaps, eligible):
            matched[j] = placed[i]
            if placed[i].failed:
                self.counts["recovered"] += 1
        for person in placed:
            person.failed = False
            if person.active and person not in matched.values():
                here = appearance(frame, person.box)
                if similarity(person.descriptor, here) >= self.relink_similarity:
                    continue  # the detector missed it, but the tracker still holds the face
                person.misses += 1
                if person.misses >= self.miss_limit:
                    person.tracker = None
                    del sources[person.id]
                    self.counts["dropped"] += 1
        tracked = [p.box for p in self._people if p.active and p not in matched.values()]
        rest = [j for j, box in enumerate(boxes) if j not in matched and not any(
            self._one_face(box, other) for other in tracked)]  # rule 7 against the trackers
        inactive = [p for p in self._people if not p.active and p not in matched.values()]
        scores = np.array([[similarity(p.descriptor, descriptors[j]) for j in rest]
                           for p in inactive]).reshape(len(inactive), len(rest))
        for i, k in assign(scores, scores >= self.relink_similarity):
            matched[rest[k]] = inactive[i]
            self.counts["relinked"] += 1
        for j in sorted([*matched, *rest]):
            box, person = boxes[j], matched.get(j)
            if person is None:
                person = _Person(len(self._people) + 1, box, descriptors[j])
                self._people.append(person)
                self.counts["new"] += 1
            else:
                person.remember(descriptors[j])
                if person.active and iou(person.box, box) >= self.restart_iou:
                    person.misses = 0  # the tracker holds the face: keep its box (rule 3)
                    continue
            person.box, person.size, person.misses = box, (box.w, box.h), 0
            person.tracker = FaceTracker(self.tracker_name, box, self.min_face_px)
            person.tracker.start(frame, box)
            sources[person.id] = "detect"
