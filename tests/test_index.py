import csv
import io
import json
from pathlib import Path

import pytest
from conftest import write_sequence, write_video

from fercli.core.config import load_config
from fercli.core.errors import InputError
from fercli.stages.index import make_item_ids, scan_dataset


def read_index(workdir: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((workdir / "index/index.csv").read_text())))


def test_index_videos(fer, bu_videos, tmp_path):
    result = fer("index", bu_videos)
    assert result.exit_code == 0, result.output
    rows = read_index(tmp_path / "work")
    assert len(rows) == 18
    row = next(r for r in rows if r["item_id"] == "F003_sad_tex")
    assert (row["subject"], row["label"], row["kind"]) == ("F003", "sad", "video")
    assert (row["n_frames"], row["fps"], row["width"], row["height"]) == ("7", "25.0", "64", "48")
    assert {r["label"] for r in rows} == {"happy", "sad", "angry"}  # "Angry" canonicalised
    assert json.loads((tmp_path / "work/index/classes.json").read_text())[0] == "angry"
    png = (tmp_path / "work/index/lengths.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    stats = (tmp_path / "work/index/stats.csv").read_text()
    assert "class,happy,6" in stats


def test_index_png_sequences_ckplus_layout(fer, tmp_path):
    root = tmp_path / "CK+"
    for subject, seq, code in [("S005", "001", 3), ("S010", "002", 5), ("S011", "001", None)]:
        write_sequence(root / "cohn-kanade-images" / subject / seq, n_frames=5,
                       prefix=f"{subject}_{seq}_")
        if code is not None:
            label_dir = root / "Emotion" / subject / seq
            label_dir.mkdir(parents=True)
            (label_dir / f"{subject}_{seq}_00000005_emotion.txt").write_text(
                f"   {code:.7e}\n")
    result = fer("index", root, "--set", "index.preset=ckplus")
    assert result.exit_code == 0, result.output
    rows = read_index(tmp_path / "work")
    assert [(r["item_id"], r["subject"], r["label"], r["kind"], r["n_frames"])
            for r in rows] == [("S005_001", "S005", "disgust", "sequence", "5"),
                               ("S010_002", "S010", "happy", "sequence", "5")]
    excluded = (tmp_path / "work/index/excluded.csv").read_text()
    assert "S011/001,unlabelled (no Emotion file)" in excluded


def test_index_folder_per_label(fer, tmp_path):
    root = tmp_path / "ckplus-redist"
    write_sequence(root / "happy" / "S005_001", n_frames=4)
    write_sequence(root / "sadness" / "S006_002", n_frames=3)
    write_sequence(root / "contempt" / "S007_001", n_frames=3)
    result = fer("index", root, "--set", "index.preset=folder-per-label")
    assert result.exit_code == 0, result.output
    rows = read_index(tmp_path / "work")
    assert [(r["subject"], r["label"]) for r in rows] == [("S005", "happy"), ("S006", "sad")]
    assert "1 files left out" in result.output


def test_index_from_csv(fer, tmp_path):
    root = tmp_path / "data"
    write_video(root / "clips" / "a.avi")
    write_video(root / "clips" / "b.avi")
    listing = tmp_path / "labels.csv"
    listing.write_text("path,subject,label\nclips/a.avi,P1,happiness\nclips/b.avi,P2,fear\n"
                       "clips/missing.avi,P3,sad\n")
    result = fer("index", root, "--set", "index.preset=csv", "--set", f"index.csv={listing}")
    assert result.exit_code == 0, result.output
    rows = read_index(tmp_path / "work")
    assert [(r["item_id"], r["label"]) for r in rows] == [("P1_a", "happy"), ("P2_b", "fear")]


def test_bad_inputs_fail_alone(fer, bu_videos, tmp_path):
    (bu_videos / "F009_happy_tex.avi").write_bytes(b"not a video at all")  # corrupt
    (bu_videos / "F010_sad_tex.avi").write_bytes(b"")                       # zero bytes
    write_video(bu_videos / "holiday.avi")                                  # no pattern
    write_video(bu_videos / "F011_bored_tex.avi")                           # unknown label
    write_sequence(bu_videos / "M020_fear_tex", n_frames=5, skip=3)         # gap
    (bu_videos / "empty_dir").mkdir()
    result = fer("index", bu_videos)
    assert result.exit_code == 6
    out = result.output
    assert "F009_happy_tex.avi: cannot open the video" in out
    assert "F010_sad_tex.avi: video file is empty (0 bytes)" in out
    assert "frame 3 is missing" in out
    assert "Traceback" not in out
    rows = read_index(tmp_path / "work")
    assert len(rows) == 18  # every good item indexed
    excluded = (tmp_path / "work/index/excluded.csv").read_text()
    assert "holiday.avi,name does not match the `bu4dfe` pattern" in excluded
    assert "F011_bored_tex.avi,\"label 'bored' is not one of the classes" in excluded
    status = fer("status")
    assert "up to date" in status.output and "3" in status.output


def test_exclude_subjects(fer, bu_videos, tmp_path):
    result = fer("index", bu_videos, "--set", "index.exclude_subjects=[F001, M003]")
    assert result.exit_code == 0
    assert {r["subject"] for r in read_index(tmp_path / "work")} == {"F002", "F003", "M001",
                                                                      "M002"}


def test_empty_or_missing_root_is_one_line(fer, tmp_path):
    (tmp_path / "empty").mkdir()
    result = fer("index", tmp_path / "empty")
    assert result.exit_code == 3
    assert "no videos or frame-sequence folders found" in result.output
    result = fer("index", tmp_path / "nowhere")
    assert result.exit_code == 3 and "dataset folder not found" in result.output
    result = fer("split")
    assert result.exit_code == 4 and "Run `fer index` first" in result.output


def test_item_ids_are_safe_names():
    ids = make_item_ids(["F001/Happy/take 1.avi", "F001/Sad/tåke 2.avi"], ["F001", "F001"])
    assert ids == ["F001_Happy_take_1", "F001_Sad_t_ke_2"]
    assert make_item_ids(["cohn-kanade-images/S005/001", "cohn-kanade-images/S005/002"],
                         ["S005", "S005"]) == ["S005_001", "S005_002"]


def test_nested_bu4dfe_layout(tmp_path):
    root = tmp_path / "nested"
    write_video(root / "F001" / "Happy" / "clip.avi")
    write_video(root / "M002" / "Surprise" / "clip.avi")
    cfg = load_config(None, [f"index.root={root}"])
    items, excluded = scan_dataset(cfg["index"])
    assert [(i["id"], i["subject"], i["label"]) for i in items] == [
        ("F001_Happy_clip", "F001", "happy"), ("M002_Surprise_clip", "M002", "surprise")]
    assert excluded == []


def test_unset_root_is_config_error():
    with pytest.raises(Exception, match="index.root is not set"):
        scan_dataset(load_config(None, [])["index"])


def test_path_escape_in_csv_is_excluded(tmp_path):
    root = tmp_path / "data"
    write_video(root / "a.avi")
    write_video(tmp_path / "outside.avi")
    listing = tmp_path / "l.csv"
    listing.write_text("path,subject,label\n../outside.avi,P1,happy\na.avi,P2,sad\n")
    cfg = load_config(None, [f"index.root={root}", "index.preset=csv", f"index.csv={listing}"])
    items, excluded = scan_dataset(cfg["index"])
    assert [i["id"] for i in items] == ["P2_a"]
    assert excluded[0].reason == "path escapes index.root"
    with pytest.raises(InputError):
        from fercli.core.workspace import check_item_id
        check_item_id("../etc")
