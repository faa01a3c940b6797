"""detect -> track -> trim on real face videos through real OpenCV."""
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import write_face_video, write_sequence

from fercli.config import load_config
from fercli.engine import run_stage, stage_states
from fercli.media import iter_frames
from fercli.stages import PIPELINE
from fercli.vision.clipio import read_clip
from fercli.vision.detect import Box, Detection
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


def test_clip_decodes_bit_exactly_to_the_tracked_faces(fer, face_videos, tmp_path):
    for color in ("true", "false"):
        work = tmp_path / f"work-{color}"
        run_all(fer, face_videos, "--set", f"workdir={work}", "--set", f"track.color={color}")
        detection = rows(work / "detect/detections.csv")[0]
        box = Box(*(int(detection[k]) for k in "xywh"))
        expected = [t.face for t in track_faces(
            iter_frames(face_videos / f"{detection['item_id']}.avi"),
            Detection(int(detection["frame"]), box, box), "medianflow", 160, color == "true")]
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
