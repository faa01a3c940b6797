"""detect -> track -> trim on real face videos through real OpenCV."""
import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from conftest import write_face_video, write_sequence

from fercli.core.config import SCHEMA, load_config
from fercli.core.engine import run_stage, stage_states
from fercli.stages import PIPELINE
from fercli.vision.clipio import read_clip
from fercli.vision.detect import Box, Detection
from fercli.vision.media import iter_frames
from fercli.vision.track import track_faces

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def run_all(fer, root, *extra):
    results = {}
    for stage in ("index", "split", "detect", "track", "trim"):
        args = [stage, *(["--set", f"index.root={root}"] if stage == "index" else []),
                "--set", "split.folds=2", "--set", "split.test_fraction=0.25", *extra]
        results[stage] = fer(*args)
    return results


def test_every_item_detected_tracked_trimmed(fer, face_videos, tmp_path):
    results = run_all(fer, face_videos)
    for stage, result in results.items():
        assert result.exit_code == 0, (stage, result.output)
    work = tmp_path / "work"
    assert {r["status"] for r in rows(work / "detect/detections.csv")} == {"done"}
    clips = sorted((work / "track/clips").glob("*.mkv"))
    assert len(clips) == 8
    trims = rows(work / "trim/trim.csv")
    assert len(trims) == 8
    for t in trims:
        assert int(t["first"]) > 0 and int(t["last"]) < int(t["n_frames"]) - 1  # cut both ends
    clip = read_clip(clips[0])
    assert clip.shape[1:] == (160, 160, 3)
    assert (work / "trim/lengths_before_after.png").read_bytes()[:4] == b"\x89PNG"
    status = fer("status", "--set", "split.folds=2", "--set", "split.test_fraction=0.25")
    table = status.output
    for stage in ("detect", "track", "trim"):
        line = next(line for line in table.splitlines() if f" {stage} " in line)
        assert "up to date" in line
    # second run: nothing to do
    again = fer("track", "--set", "split.folds=2")
    assert "track: up to date (8 items)" in again.output
    # a forced re-track writes byte-identical clips (no random container UID)
    hashes = {clip.name: hashlib.sha256(clip.read_bytes()).hexdigest() for clip in clips}
    redone = fer("track", "--force", "--set", "split.folds=2")
    assert redone.exit_code == 0, redone.output
    assert {clip.name: hashlib.sha256(clip.read_bytes()).hexdigest() for clip in clips} == hashes


def test_clip_decodes_bit_exactly_to_the_tracked_faces(fer, face_videos, tmp_path):
    for color in ("true", "false"):
        work = tmp_path / f"work-{color}"
        run_all(fer, face_videos, "--set", f"workdir={work}", "--set", f"track.color={color}")
        detection = rows(work / "detect/detections.csv")[0]
        box = Box(*(int(detection[k]) for k in "xywh"))
        expected = [t.face for t in track_faces(
            iter_frames(face_videos / f"{detection['item_id']}.avi"),
            Detection(int(detection["frame"]), box, box), "medianflow", 160, color == "true",
            smooth=SCHEMA["track"]["smooth"].default)]
        clip = read_clip(work / "track/clips" / f"{detection['item_id']}.mkv",
                         color=color == "true")
        assert clip.shape[0] == len(expected)
        assert np.array_equal(clip, np.stack(expected))


def test_bad_items_fail_alone_with_reasons(fer, face_videos, tmp_path):
    blank = face_videos / "M005_fear_tex.avi"
    write_face_video(blank, n_frames=12, faces=0)                      # no face
    write_face_video(face_videos / "M006_fear_tex.avi", faces=2)       # two faces
    (face_videos / "M007_fear_tex.avi").write_bytes(
        (face_videos / "F001_happy_tex.avi").read_bytes()[:3000])      # truncated
    write_sequence(face_videos / "M008_fear_tex", n_frames=5, skip=3)  # missing frame
    results = run_all(fer, face_videos)
    assert results["index"].exit_code == 6
    assert "frame 3 is missing" in results["index"].output
    assert results["detect"].exit_code == 6
    detect_out = results["detect"].output
    assert "M005_fear_tex: " in detect_out and "no face found in the first" in detect_out
    assert "2 faces found in the first" in detect_out
    assert "Traceback" not in detect_out
    assert results["track"].exit_code == 0 and results["trim"].exit_code == 0
    assert len(rows(tmp_path / "work/trim/trim.csv")) == 8  # the good ones are complete
    index_rows = {r["item_id"] for r in rows(tmp_path / "work/index/index.csv")}
    # a truncated MJPG file keeps its readable frames or fails at index; never crashes
    assert "M008_fear_tex" not in index_rows


def test_killed_track_resumes_with_remaining_items(face_videos, tmp_path):
    for k in range(4):  # more items so the kill lands midway
        write_face_video(face_videos / f"F01{k}_fear_tex.avi", n_frames=60)
    cfg = load_config(None, [f"workdir={tmp_path / 'work'}", f"index.root={face_videos}"])
    for stage in ("index", "detect"):
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fercli.cli", "track", "--set",
           f"workdir={tmp_path / 'work'}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = tmp_path / "work/track/records"
    deadline = time.time() + 120
    def finished():
        return [p for p in records.glob("*.json") if not p.name.startswith(".")]

    while time.time() < deadline and len(finished()) < 4:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(finished())
    assert 4 <= done_before < 12
    clips = tmp_path / "work/track/clips"
    for clip in clips.glob("[!.]*.mkv"):  # a clip under its final name is whole
        assert len(read_clip(clip)) >= 50
    result = run_stage(PIPELINE["track"], cfg, PIPELINE)
    assert result.n_reused == done_before and result.n_processed == 12 - done_before
    assert stage_states(cfg, PIPELINE)["track"].status == "up to date"
    assert not list(clips.glob(".*"))  # no temp file left behind


def test_trim_shape_auto_picks_each_course_per_clip(fer, tmp_path):
    """CK+-like clips (end at the apex) keep their end; BU-4DFE-like ones go through
    Algorithm 1; trim.csv and the summary line say which course each clip got."""
    from fercli.sampledata import generate_sample_data

    root = tmp_path / "mixed"
    generate_sample_data(root, n_subjects=1, n_frames=40, shape="onset-apex")  # F001_*
    offset = generate_sample_data(tmp_path / "offset", n_subjects=2, n_frames=72)
    for path in offset:
        if path.name.startswith("M001"):
            path.rename(root / path.name)
    for stage in ("index", "detect", "track", "trim"):
        result = fer(stage, *(["--set", f"index.root={root}"] if stage == "index" else []))
        assert result.exit_code == 0, (stage, result.output)
    trims = {t["item_id"]: t for t in rows(tmp_path / "work/trim/trim.csv")}
    assert len(trims) == 12
    for item_id, t in trims.items():
        last, n_frames = int(t["last"]), int(t["n_frames"])
        if item_id.startswith("F001"):
            assert (t["shape"], t["status"]) == ("onset-apex", "trimmed"), t
            assert last == n_frames - 1 and int(t["first"]) > 0  # apex kept, onset cut
        else:
            assert (t["shape"], t["status"]) == ("onset-apex-offset", "trimmed"), t
            assert last <= n_frames - 11  # Algorithm 1's ten tail frames at least
    assert "12 trimmed; shape 6 onset-apex-offset, 6 onset-apex" in " ".join(
        result.output.split())


def write_crop_sequences(root: Path) -> Path:
    """CK+48-like 48x48 grey face crops: label/Sxxx_yyy/ folders, one a single still."""
    from conftest import astronaut_face

    face = cv2.cvtColor(cv2.resize(astronaut_face()[30:230, 20:190], (48, 48)),
                        cv2.COLOR_BGR2GRAY)
    for subject, label, n_frames in (("S010_001", "anger", 8), ("S011_002", "happy", 8),
                                     ("S012_001", "sadness", 1)):
        folder = root / label / subject
        folder.mkdir(parents=True)
        for k in range(n_frames):
            crop = face.copy()
            crop[32:40, 14:34] = np.clip(crop[32:40, 14:34] + 12 * k, 0, 255)  # "mouth"
            cv2.imwrite(str(folder / f"{subject}_{k + 1:08d}.png"), crop)
    return root


def test_detector_none_takes_face_crops_whole(fer, tmp_path):
    root = write_crop_sequences(tmp_path / "crops")
    common = ["--set", "detect.detector=none", "--set", "track.size=48",
              "--set", "track.color=false", "--set", "index.preset=folder-per-label"]
    for stage in ("index", "detect", "track", "trim"):
        result = fer(stage, *(["--set", f"index.root={root}"] if stage == "index" else []),
                     *common)
        assert result.exit_code == 0, (stage, result.output)
    work = tmp_path / "work"
    detections = rows(work / "detect/detections.csv")
    assert [(d["frame"], d["x"], d["y"], d["w"], d["h"]) for d in detections] == [
        ("0", "0", "0", "48", "48")] * 3
    boxes = rows(work / "track/boxes/anger_S010_001.csv")
    assert {b["source"] for b in boxes} == {"full"} and len(boxes) == 8
    clip = read_clip(work / "track/clips/anger_S010_001.mkv", color=False)
    assert clip.shape == (8, 48, 48)
    still = next(t for t in rows(work / "trim/trim.csv") if t["item_id"] == "sadness_S012_001")
    assert (still["status"], still["shape"], still["n_kept"]) == ("still", "", "1")
    assert "1 still" in result.output
