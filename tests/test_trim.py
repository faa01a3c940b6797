"""Algorithm 1 (thesis 3.2.1) branch by branch, the score sources and the trim plots."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fercli.core.errors import ConfigError, ItemError
from fercli.reporting.plots import (
    new_figure,
    plot_lengths,
    plot_lengths_before_after,
    plot_score_curve,
    save_figure,
)
from fercli.vision.trim import (
    TrimResult,
    apply_override,
    ends_at_apex,
    falls_after_start,
    load_overrides,
    motion_scores,
    openface_scores,
    trim_clip,
    trim_onset,
    trim_range,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def curve(n: int, base: float, *segments: tuple[int, int, float]) -> list[float]:
    """A score curve of ``n`` frames at ``base`` with [start, stop) segments set to a value."""
    scores = np.full(n, base)
    for start, stop, value in segments:
        scores[start:stop] = value
    return scores.tolist()


# --- Algorithm 1 -------------------------------------------------------------------------
# Defaults: threshold 50% of max, max_frames = floor(n/2), 10 tail frames always cut,
# anomaly when the first maximum is in the last 20 frames.


def test_low_onset_is_cut_up_to_the_first_frame_at_threshold():
    # n=100, max 1.0 at frame 20, threshold 0.5, max_frames 50.
    # Start (l.7): frames 0-19 score 0.1 < 0.5 -> cut; i=20 scores 1.0 -> stop.
    # End (l.13): i=0-9 cut by the 10-frame minimum; i=10 is frame 89 = 0.6 >= 0.5 -> stop.
    # Both stopped at i=20 with 30 cut < 50 -> keep 20..89.
    scores = curve(100, 0.6, (0, 20, 0.1), (20, 50, 1.0))
    assert trim_range(scores) == TrimResult(20, 89, "trimmed", 0.5, 1.0, 20, 10)


def test_low_offset_is_cut_beyond_the_ten_frame_minimum():
    # n=80, max 1.0 at frame 5; frame 0 scores 0.9 -> start stops at once.
    # End: frames 79..50 (i=0-29) score 0.2 < 0.5 -> cut; i=30 is frame 49 = 0.9 -> stop.
    # 30 cut < max_frames 40 -> keep 0..49.
    scores = curve(80, 0.9, (5, 6, 1.0), (50, 80, 0.2))
    assert trim_range(scores) == TrimResult(0, 49, "trimmed", 0.5, 1.0, 0, 30)


def test_ten_tail_frames_are_cut_even_when_their_score_is_high():
    # n=50, max 1.0 at frame 10; the tail 40-49 scores 0.95 (above threshold) but i < 10
    # forces the cut (l.13); i=10 is frame 39 = 0.8 -> stop. Start stops at i=0 (0.8).
    scores = curve(50, 0.8, (10, 11, 1.0), (40, 50, 0.95))
    assert trim_range(scores) == TrimResult(0, 39, "trimmed", 0.5, 1.0, 0, 10)


def test_a_score_equal_to_the_threshold_is_kept():
    # Frame 0 scores exactly 0.5 = threshold: "less than" is strict, so nothing is cut at
    # the start; the end loses its 10 frames, frame 29 (1.0) stops it.
    scores = curve(40, 1.0, (0, 1, 0.5))
    result = trim_range(scores)
    assert (result.first, result.last) == (0, 29)


def test_a_stopped_side_never_resumes():
    # Frame 3 (0.9) stops the start side; the low frames 4-9 after it stay.
    # The end cuts its 10 frames (30..39) and stops at frame 29 (0.9).
    scores = curve(40, 0.9, (0, 3, 0.1), (4, 10, 0.1), (12, 13, 1.0))
    assert trim_range(scores) == TrimResult(3, 29, "trimmed", 0.5, 1.0, 3, 10)


def test_half_of_the_clip_at_most_is_cut():
    # n=40, max_frames 20; frames 0-14 and 20-39 are low, the peak 15-19 is 1.0.
    # Both sides cut one frame per iteration: after i=9 the count is 20 >= 20 -> exit (l.18),
    # although both sides would go on (15 and 20 low frames). Keep 10..29.
    scores = curve(40, 0.1, (15, 20, 1.0))
    assert trim_range(scores) == TrimResult(10, 29, "trimmed", 0.5, 1.0, 10, 10)


def test_cap_is_checked_before_every_cut():
    # n=42, max_frames 21; low 0-13 and 16-41, peak 14-15 (not in the last 20 = 22..41).
    # After i=9 the count is 20 < 21. i=10: the start cuts frame 10 (count 21); the end
    # side may not cut frame 31, which would make 22 > 50%, so the loop exits. Reading the
    # cap only once per iteration (l.18) would also cut frame 31: last would be 30.
    scores = curve(42, 0.1, (14, 16, 1.0))
    assert trim_range(scores) == TrimResult(11, 31, "trimmed", 0.5, 1.0, 11, 10)


def test_max_cut_ratio_zero_cuts_nothing():
    scores = curve(40, 0.1, (15, 20, 1.0))
    assert trim_range(scores, max_cut_ratio=0.0) == TrimResult(0, 39, "trimmed", 0.5, 1.0, 0, 0)


def test_maximum_in_the_last_twenty_frames_is_an_anomaly_kept_whole():
    # n=60: the maximum (1.0) at frame 45 lies in frames 40..59 -> anomaly, nothing cut.
    scores = curve(60, 0.3, (0, 10, 0.1), (45, 46, 1.0))
    assert trim_range(scores) == TrimResult(0, 59, "anomaly", 0.5, 1.0, 0, 0)


def test_maximum_just_before_the_last_twenty_frames_is_trimmed():
    # Peak at frame 39, one frame before the anomaly window 40..59.
    scores = curve(60, 0.3, (0, 10, 0.1), (39, 40, 1.0))
    result = trim_range(scores)
    assert result.status == "trimmed"
    # Start: 0-9 low -> cut, frame 10 (0.3) is below 0.5 too ... up to the peak at 39.
    # End: everything below 0.5 as well, so the 30-frame cap decides: i=0-14 both cut.
    assert (result.first, result.last) == (15, 44)


def test_the_first_of_equal_maxima_decides_the_anomaly_rule():
    scores = curve(60, 0.8, (10, 11, 1.0), (50, 51, 1.0))
    assert trim_range(scores).status == "trimmed"


def test_clips_no_longer_than_the_anomaly_window_are_anomalies():
    assert trim_range(curve(15, 0.1, (5, 8, 1.0))).status == "anomaly"


def test_a_very_short_clip_keeps_more_than_half():
    # anomaly rule off, n=5, max_frames 2: i=0 cuts frame 0 (start) and 4 (end) -> cap.
    assert trim_range([0, 0, 1, 0, 0], anomaly_last_frames=0) == TrimResult(
        1, 3, "trimmed", 0.5, 1.0, 1, 1)
    # n=1: max_frames 0, the single frame always stays.
    assert trim_range([1.0], anomaly_last_frames=0) == TrimResult(0, 0, "trimmed", 0.5, 1.0,
                                                                  0, 0)


def test_all_zero_scores_are_flat_and_kept_whole():
    assert trim_range([0.0] * 50) == TrimResult(0, 49, "flat", 0.0, 0.0, 0, 0)


@pytest.mark.parametrize("scores", [[], [0.1, float("nan"), 0.3]])
def test_unusable_scores_are_rejected(scores):
    with pytest.raises(ValueError):
        trim_range(scores)


def test_override_keeps_the_chosen_range():
    assert apply_override(60, 5, 40) == TrimResult(5, 40, "override", None, None, 5, 19)


@pytest.mark.parametrize("first,last", [(-1, 10), (20, 10), (0, 60)])
def test_override_outside_the_clip_fails_the_item(first, last):
    with pytest.raises(ItemError, match="60 frames"):
        apply_override(60, first, last)


# --- expression courses (trim.shape) -----------------------------------------------------


def test_onset_apex_cuts_the_neutral_onset_and_keeps_the_apex_at_the_end():
    # n=30, CK+-like: neutral 0-9 (0.1), rising 10-14 (0.4), apex 15-29 (1.0). Threshold 0.5:
    # frames 0-14 are below it, the cap floor(30 x 0.5) = 15 allows all 15 cuts.
    scores = curve(30, 1.0, (0, 10, 0.1), (10, 15, 0.4))
    assert trim_onset(scores) == TrimResult(15, 29, "trimmed", 0.5, 1.0, 15, 0, "onset-apex")
    # Algorithm 1 refuses this clip: its maximum lies in the last 20 frames.
    assert trim_range(scores).status == "anomaly"


def test_onset_apex_never_cuts_the_end_and_respects_the_cap():
    # The apex (frame 20) fades to 0.3 by the end: still nothing goes at the end.
    scores = curve(40, 0.3, (0, 12, 0.1), (12, 20, 0.8), (20, 21, 1.0), (21, 30, 0.8))
    result = trim_onset(scores)
    assert (result.first, result.last, result.n_cut_end) == (12, 39, 0)
    # A long neutral onset is capped at floor(n x max_cut_ratio) frames.
    long_onset = curve(20, 1.0, (0, 16, 0.0))
    assert trim_onset(long_onset).first == 10
    assert trim_onset(long_onset, max_cut_ratio=0.25).first == 5


def test_onset_apex_anomaly_is_a_curve_that_falls_instead_of_rising():
    # Maximum in the first frames, the end back below the threshold: flagged, kept whole.
    falling = curve(30, 0.1, (0, 4, 0.2), (4, 6, 1.0))
    assert falls_after_start(falling)
    assert trim_onset(falling) == TrimResult(0, 29, "anomaly", 0.5, 1.0, 0, 0, "onset-apex")
    # A maximum at the very end is what onset-apex clips are for: never an anomaly here.
    rising = curve(30, 0.1, (25, 30, 0.8), (29, 30, 1.0))
    assert not falls_after_start(rising) and trim_onset(rising).status == "trimmed"
    # An early maximum with the expression still on at the end is a rise, not a fall.
    early_but_held = curve(30, 0.7, (0, 3, 0.1), (5, 6, 1.0))
    assert trim_onset(early_but_held).status == "trimmed"


def test_ends_at_apex_reads_the_median_of_the_last_three_frames():
    assert ends_at_apex(curve(20, 0.1, (10, 20, 1.0)))
    assert ends_at_apex(curve(20, 0.1, (10, 19, 1.0)))  # one dip at the last frame
    assert not ends_at_apex(curve(20, 0.1, (10, 18, 1.0)))


def test_auto_chooses_onset_apex_for_a_clip_that_ends_at_the_apex():
    scores = curve(30, 1.0, (0, 10, 0.1), (10, 15, 0.4))
    result = trim_clip(scores, "auto")
    assert result == trim_onset(scores)
    assert (result.shape, result.status, result.last) == ("onset-apex", "trimmed", 29)


def test_auto_chooses_algorithm_1_for_a_clip_that_returns_to_neutral():
    scores = curve(100, 0.6, (0, 20, 0.1), (20, 50, 1.0), (80, 100, 0.1))
    result = trim_clip(scores, "auto")
    assert result.shape == "onset-apex-offset"
    assert result == replace(trim_range(scores), shape="onset-apex-offset")
    assert result.n_cut_end >= 10


def test_auto_flags_only_clips_that_fit_neither_course():
    # A spike 15 frames before the end, back to neutral after it: not ended at the apex,
    # and Algorithm 1 refuses a maximum in the last 20 frames.
    late_spike = curve(60, 0.1, (44, 47, 1.0))
    assert trim_clip(late_spike, "auto").status == "anomaly"
    # Each course alone: a CK+-like clip is an anomaly only for Algorithm 1 ...
    ck = curve(30, 1.0, (0, 10, 0.1))
    assert trim_clip(ck, "onset-apex-offset").status == "anomaly"
    assert trim_clip(ck, "auto").status == "trimmed"
    # ... and a clip that peaks early and falls is one only for onset-apex.
    bu = curve(80, 0.1, (10, 30, 1.0))
    assert trim_clip(bu, "onset-apex").status == "anomaly"
    assert trim_clip(bu, "auto").status == "trimmed"


@pytest.mark.parametrize("shape", ["auto", "onset-apex-offset", "onset-apex"])
def test_a_one_frame_clip_is_a_still_kept_whole(shape):
    assert trim_clip([0.0], shape) == TrimResult(0, 0, "still", 0.0, 0.0, 0, 0)
    assert trim_clip([2.0], shape).status == "still"


@pytest.mark.parametrize("shape", ["auto", "onset-apex-offset", "onset-apex"])
def test_a_clip_too_short_for_a_course_is_kept_whole_and_not_flagged(shape):
    # CK+48 keeps the last 3 (apex) frames: a noisy early maximum must not read as a fall.
    result = trim_clip([0.9, 0.1, 0.2], shape)
    assert (result.first, result.last, result.status) == (0, 2, "short")
    assert trim_clip([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], shape).status != "short"


def test_forced_shapes_and_a_bad_shape():
    scores = curve(100, 0.6, (0, 20, 0.1), (20, 50, 1.0))
    assert trim_clip(scores, "onset-apex-offset").shape == "onset-apex-offset"
    assert trim_clip(scores, "onset-apex").n_cut_end == 0
    assert trim_clip([0.0] * 6, "onset-apex").status == "flat"
    with pytest.raises(ValueError, match="onset-apex"):
        trim_clip(scores, "apex")


# --- OpenFace scores ---------------------------------------------------------------------

OPENFACE_HEADER = ("frame, face_id, timestamp, confidence, success, AU01_r, AU02_r, AU45_r, "
                   "AU01_c, AU45_c")


def write_openface(tmp_path, header, rows):
    path = tmp_path / "M042_happy_tex.csv"
    path.write_text("\n".join([header, *(", ".join(map(str, row)) for row in rows)]) + "\n")
    return path


def test_openface_scores_average_au_intensities_without_blink(tmp_path):
    path = write_openface(tmp_path, OPENFACE_HEADER, [
        (1, 0, 0.00, 0.98, 1, 1.0, 2.0, 5.0, 1, 1),   # mean(1, 2) = 1.5; with AU45 2.67
        (2, 0, 0.04, 0.00, 0, 3.0, 3.0, 0.0, 0, 0),   # no face -> 0
        (3, 0, 0.08, 0.97, 1, 0.5, 0.0, 0.0, 0, 0),   # mean(0.5, 0) = 0.25
    ])
    np.testing.assert_allclose(openface_scores(path), [1.5, 0.0, 0.25])


def test_openface_csv_without_au_intensities_names_the_way_out(tmp_path):
    path = write_openface(tmp_path, "frame, success, AU45_r, AU01_c", [(1, 1, 0.5, 1)])
    with pytest.raises(ItemError, match="AU intensity") as caught:
        openface_scores(path)
    assert "M042_happy_tex.csv" in str(caught.value)
    assert "trim.score=motion" in str(caught.value)


def test_openface_missing_file_and_bad_number(tmp_path):
    with pytest.raises(ItemError, match="not found"):
        openface_scores(tmp_path / "absent.csv")
    path = write_openface(tmp_path, OPENFACE_HEADER, [
        (1, 0, 0.0, 0.9, 1, 1.0, 2.0, 0.0, 1, 0),
        (2, 0, 0.0, 0.9, 1, "n/a", 2.0, 0.0, 1, 0),
    ])
    with pytest.raises(ItemError, match="line 3: AU01_r"):
        openface_scores(path)


# --- overrides ---------------------------------------------------------------------------


def test_overrides_from_csv_and_yaml(tmp_path):
    csv_path = tmp_path / "overrides.csv"
    csv_path.write_text("item_id,first,last\nM042_happy,5,80\n\nF001_sad, 0, 60\n")
    assert load_overrides(csv_path) == {"M042_happy": (5, 80), "F001_sad": (0, 60)}
    yaml_path = tmp_path / "overrides.yaml"
    yaml_path.write_text("M042_happy: [5, 80]\n'001': [0, 3]\n")
    assert load_overrides(yaml_path) == {"M042_happy": (5, 80), "001": (0, 3)}


@pytest.mark.parametrize("name,text,expected", [
    ("o.csv", "item_id,first,last\nM042_happy,5,80\nF001_sad,x,60\n", "line 3: 'x'"),
    ("o.csv", "item,start,end\nM042_happy,5,80\n", "line 1: header"),
    ("o.csv", "item_id,first,last\nA,1,2\nA,3,4\n", "line 3: item 'A' appears twice"),
    ("o.yaml", "M042_happy: [80, 5]\n", "key 'M042_happy': range [80, 5]"),
    ("o.yaml", "M042_happy: 5\n", "key 'M042_happy': expected [first, last]"),
    ("o.yaml", "001: [0, 3]\n", "key 1 is not a string"),
    ("o.yaml", "M042_happy: [5, 80\n", "line 2: not valid YAML"),
    ("o.yaml", "- [5, 80]\n", "expected a mapping"),
    ("o.json", "{}", "unknown overrides format"),
])
def test_invalid_overrides_name_file_place_and_expectation(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_overrides(path)
    message = str(caught.value)
    assert expected in message
    assert name in message
    assert "item_id" in message  # the hint says what a valid file looks like


# --- motion scores -----------------------------------------------------------------------


def synthetic_face(rng, expression: float, size: int = 48) -> np.ndarray:
    """A BGR face-like image whose 'mouth' brightens with ``expression`` in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size]
    face = 90 + 60 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (2 * (size / 4) ** 2))
    face[int(size * 0.65):int(size * 0.8), int(size * 0.3):int(size * 0.7)] += 80 * expression
    noisy = face + rng.normal(0, 3, face.shape)
    gray = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def test_motion_scores_peak_where_frames_leave_the_reference():
    rng = np.random.default_rng(0)
    frames = (synthetic_face(rng, 1.0 if 10 <= k <= 20 else 0.0) for k in range(40))
    scores = motion_scores(frames)
    assert scores.shape == (40,)
    assert 10 <= int(np.argmax(scores)) <= 20
    changed, still = scores[10:21], np.concatenate([scores[:10], scores[21:]])
    assert changed.min() > 5 * still.max()


def test_motion_scores_then_algorithm_1_cut_a_neutral_apex_neutral_clip():
    # 100 frames: neutral, rise over 15-30, apex 30-70, fall over 70-85, neutral. Half the
    # apex intensity is reached near frames 22.5 and 77.5, so about 23 + 22 frames go (< 50).
    rng = np.random.default_rng(1)
    intensity = np.clip(np.minimum(np.arange(100) - 15, 85 - np.arange(100)) / 15, 0, 1)
    result = trim_range(motion_scores(synthetic_face(rng, a) for a in intensity))
    assert result.status == "trimmed"
    assert 20 <= result.first <= 25 and 75 <= result.last <= 80


def test_motion_scores_reject_empty_and_mixed_size_clips():
    rng = np.random.default_rng(2)
    with pytest.raises(ItemError, match="no frames"):
        motion_scores([])
    frames = [synthetic_face(rng, 0.0), synthetic_face(rng, 0.0), synthetic_face(rng, 0.0, 40)]
    with pytest.raises(ItemError, match="frame 2 is 40x40"):
        motion_scores(frames, n_reference=2)


# --- plots -------------------------------------------------------------------------------


def assert_single_png(folder, name):
    assert [p.name for p in folder.iterdir()] == [name]
    data = (folder / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_score_curve_plots(tmp_path):
    scores = curve(100, 0.6, (0, 20, 0.1), (20, 50, 1.0))
    plot_score_curve(scores, trim_range(scores), "M042_happy", tmp_path / "trimmed.png")
    assert_single_png(tmp_path, "trimmed.png")
    override = tmp_path / "override"
    plot_score_curve(scores, apply_override(100, 3, 97), "M042_happy", override / "o.png")
    assert_single_png(override, "o.png")
    with pytest.raises(ValueError, match="does not fit"):
        plot_score_curve(scores[:50], trim_range(scores), "short", tmp_path / "bad.png")


def test_length_plots(tmp_path):
    rng = np.random.default_rng(3)
    before = rng.integers(69, 143, size=600)
    lengths = {f"video{k}": int(n) for k, n in enumerate(before)}
    plot_lengths(lengths, tmp_path / "a" / "lengths.png", bins=[100, 110, 115, 120])
    assert_single_png(tmp_path / "a", "lengths.png")
    plot_lengths([7], tmp_path / "b" / "one.png")
    assert_single_png(tmp_path / "b", "one.png")
    after = (before * rng.uniform(0.45, 0.8, size=600)).astype(int)
    plot_lengths_before_after(before.tolist(), after.tolist(), tmp_path / "c" / "ba.png")
    assert_single_png(tmp_path / "c", "ba.png")


def test_failed_save_leaves_no_file(tmp_path):
    figure = new_figure(2, 2)
    with pytest.raises(ValueError):
        save_figure(figure, tmp_path / "figure.unknownformat")
    assert list(tmp_path.iterdir()) == []
