"""`fer index` on layouts beyond one video or folder per item: sequences grouped out of one
folder (CK+48), still images as one-frame items (JAFFE, folder-per-label stills), and the
frame lists and images that `media.iter_frames` / `media.probe` read for them.

Every image here is a tiny flat PNG/TIFF written into tmp_path (no real faces).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercli.core.config import load_config
from fercli.core.errors import ConfigError, ItemError
from fercli.stages.index import make_item_ids, scan_dataset
from fercli.vision.media import iter_frames, probe, read_frame_list, source_kind


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def write_image(path: Path, level: int, size=(48, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size[1], size[0], 3), level, np.uint8))
    return path


# CK+48 (DATA.md): the last 3 frames of each sequence, <emotion>/Sxxx_yyy_000000NN.png,
# several sequences per emotion folder. Frame k of a sequence has grey level 10*k + base.
CK48 = {"anger": [("S010_004", 17), ("S011_004", 19)], "happy": [("S010_006", 8)],
        "contempt": [("S020_001", 5)]}


def write_ck48(root: Path) -> Path:
    for emotion, sequences in CK48.items():
        for base, (sequence, first) in enumerate(sequences):
            for k in (2, 0, 1):  # written out of order: the index must sort them
                write_image(root / emotion / f"{sequence}_{first + k:08d}.png",
                            100 * base + 10 * k + 5)
    return root


def test_ckplus48_groups_sequences_of_one_folder(fer, tmp_path):
    root = write_ck48(tmp_path / "CK+48")
    result = fer("index", root, "--set", "index.preset=ckplus48", "-j", "1")
    assert result.exit_code == 0, result.output
    assert "index: 3 items from 2 subjects; angry 2, disgust 0" in result.output
    rows = read_csv(tmp_path / "work/index/index.csv")
    assert [(r["item_id"], r["subject"], r["label"], r["kind"], r["n_frames"], r["rel"])
            for r in rows] == [
        ("anger_S010_004", "S010", "angry", "frames", "3", "anger/S010_004"),
        ("anger_S011_004", "S011", "angry", "frames", "3", "anger/S011_004"),
        ("happy_S010_006", "S010", "happy", "frames", "3", "happy/S010_006")]
    assert (rows[0]["width"], rows[0]["height"], rows[0]["fps"]) == ("48", "48", "25.0")
    excluded = read_csv(tmp_path / "work/index/excluded.csv")
    assert [(e["path"], e["reason"].split(" (")[0]) for e in excluded] == [
        ("contempt/S020_001", "label 'contempt' is not one of the classes")]

    # the record's path is what every later stage hands to iter_frames: a frame list
    listing = Path(rows[1]["path"])
    assert listing == tmp_path / "work/index/frames/anger_S011_004.frames"
    assert [p.name for p in read_frame_list(listing)] == [
        "S011_004_00000019.png", "S011_004_00000020.png", "S011_004_00000021.png"]
    levels = [int(frame[0, 0, 0]) for frame in iter_frames(rows[1]["path"])]
    assert levels == [105, 115, 125]  # frame order, not the order they were written
    manifest = json.loads((tmp_path / "work/index/manifest.json").read_text())
    assert manifest["items"]["anger_S011_004"]["outputs"][0]["path"] == \
        "index/frames/anger_S011_004.frames"


def test_contempt_is_kept_when_it_is_a_class(tmp_path):
    root = write_ck48(tmp_path / "CK+48")
    cfg = load_config(None, [f"index.root={root}", "index.preset=ckplus48",
                             "index.classes=[angry, contempt, happy]"])
    items, excluded = scan_dataset(cfg["index"])
    assert len(items) == 4 and excluded == []
    contempt = next(i for i in items if i["label"] == "contempt")
    assert (contempt["id"], contempt["subject"], contempt["frames"]) == (
        "contempt_S020_001", "S020",
        ["S020_001_00000005.png", "S020_001_00000006.png", "S020_001_00000007.png"])


def test_changed_frame_redoes_only_its_sequence(fer, tmp_path):
    root = write_ck48(tmp_path / "CK+48")
    args = ("index", root, "--set", "index.preset=ckplus48", "-j", "1")
    assert fer(*args).exit_code == 0
    assert "up to date" in fer(*args).output
    frame = root / "anger/S011_004_00000020.png"
    write_image(frame, 200)
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    result = fer(*args)
    assert result.exit_code == 0, result.output
    assert "index: 2 items already done, 1 to do" in result.output
    row = next(r for r in read_csv(tmp_path / "work/index/index.csv")
               if r["item_id"] == "anger_S011_004")
    assert [int(f[0, 0, 0]) for f in iter_frames(row["path"])] == [105, 200, 125]


def test_bad_frame_in_a_group_fails_that_item_alone(fer, tmp_path):
    root = write_ck48(tmp_path / "CK+48")
    bad = root / "anger/S011_004_00000020.png"
    bad.write_bytes(b"\x89PNG but not really")
    (root / "happy/S010_006_00000009.png").unlink()  # a gap: frames 8 and 10 remain
    result = fer("index", root, "--set", "index.preset=ckplus48", "-j", "1")
    assert result.exit_code == 6
    assert "Traceback" not in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed ")]
    assert failed == [
        f"failed anger_S011_004: {bad}: frame cannot be decoded. Replace the damaged image "
        "or exclude this item",
        f"failed happy_S010_006: {root / 'happy/S010_006'}: frame 9 is missing (gap between "
        "8 and 10). Restore the missing frames or exclude this sequence"]
    rows = read_csv(tmp_path / "work/index/index.csv")
    assert [r["item_id"] for r in rows] == ["anger_S010_004"]


def test_generic_group_pattern(fer, tmp_path):
    """Any layout: `index.group` names the sequence key; the pattern sees <folder>/<key>."""
    root = tmp_path / "takes"
    for subject, label, frames in [("P1", "happy", [3, 1, 2, 10]), ("P2", "sad", [1, 2])]:
        for n in frames:  # unpadded numbers: 10 comes after 3
            write_image(root / "all" / f"{subject}-{label}-take1-f{n}.png", n * 10)
    write_image(root / "all" / "cover.png", 0)
    result = fer("index", root, "--set", "index.preset=regex",
                 "--set", r"index.pattern=(?P<subject>P\d+)-(?P<label>[a-z]+)-take\d+$",
                 "--set", r"index.group=^(?P<sequence>.+)-f\d+\.png$", "-j", "1")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "work/index/index.csv")
    assert [(r["item_id"], r["subject"], r["label"], r["n_frames"]) for r in rows] == [
        ("P1-happy-take1", "P1", "happy", "4"), ("P2-sad-take1", "P2", "sad", "2")]
    # no `frame` group: name order, numbers compared as numbers
    assert [int(f[0, 0, 0]) for f in iter_frames(rows[0]["path"])] == [10, 20, 30, 100]
    excluded = read_csv(tmp_path / "work/index/excluded.csv")
    assert [(e["path"], e["reason"]) for e in excluded] == [
        ("all/cover.png", "file name does not match index.group")]


def test_group_regex_needs_a_sequence_group(fer, tmp_path):
    write_ck48(tmp_path / "CK+48")
    result = fer("index", tmp_path / "CK+48", "--set", r"index.group=^(S\d+)_\d+\.png$")
    assert result.exit_code == 2
    assert "index.group needs the named group (?P<sequence>...)" in result.output
    result = fer("index", tmp_path / "CK+48", "--set", "index.preset=ckplus48",
                 "--set", "index.stills=true")
    assert result.exit_code == 2 and "index.stills is true but index.group" in result.output


# --------------------------------------------------------------------------- stills
def write_jaffe(root: Path) -> Path:
    """JAFFE names (DATA.md): <subject>.<expression><take>.<number>.tiff, flat."""
    number = 1
    for subject in ["KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"]:
        for code in ["AN", "HA", "SA", "NE"]:
            for take in (1, 2):
                write_image(root / f"{subject}.{code}{take}.{number}.tiff", number % 256,
                            size=(32, 32))
                number += 1
    return root


JAFFE_PATTERN = r"^(?P<subject>[A-Z]{2})\.(?P<label>[A-Z]{2})\d+\.\d+\.tiff$"


def test_jaffe_stills_by_regex_then_split(fer, tmp_path):
    root = write_jaffe(tmp_path / "jaffe")
    (root / "README.txt").write_text("not an image\n")
    (tmp_path / "fer.yaml").write_text(f"index:\n  root: {root}\n  preset: regex\n"
                                       f"  pattern: '{JAFFE_PATTERN}'\n")
    result = fer("index", "-j", "1")
    assert result.exit_code == 0, result.output
    assert "index: 60 items from 10 subjects; angry 20, disgust 0, fear 0, happy 20, " \
        "sad 20, surprise 0" in result.output
    rows = read_csv(tmp_path / "work/index/index.csv")
    first = rows[0]
    assert (first["item_id"], first["subject"], first["label"], first["kind"],
            first["n_frames"], first["width"], first["rel"]) == (
        "KA.AN1.1", "KA", "angry", "image", "1", "32", "KA.AN1.1.tiff")
    assert Path(first["path"]) == root / "KA.AN1.1.tiff"
    excluded = read_csv(tmp_path / "work/index/excluded.csv")
    assert len(excluded) == 20 and excluded[0]["reason"].startswith(
        "label 'NE' is not one of the classes")

    # 10 subjects: a test share giving 2 test subjects, 4 folds of 2
    result = fer("split", "--set", "split.folds=4", "--set", "split.test_fraction=0.2")
    assert result.exit_code == 0, result.output
    splits = json.loads((tmp_path / "work/split/splits.json").read_text())
    assert len(splits["subjects"]["test"]) == 2
    assert [len(f) for f in splits["subjects"]["folds"]] == [2, 2, 2, 2]
    assert splits["counts"] == {"test": 12, "folds": [12, 12, 12, 12]}
    assert splits["subject_independent"] is True


def test_jaffe_with_neutral_as_a_class(tmp_path):
    root = write_jaffe(tmp_path / "jaffe")
    cfg = load_config(None, [f"index.root={root}", "index.preset=regex",
                             f"index.pattern={JAFFE_PATTERN}",
                             "index.classes=[angry, happy, neutral, sad]"])
    items, excluded = scan_dataset(cfg["index"])
    assert len(items) == 80 and excluded == []
    assert {i["kind"] for i in items} == {"image"}


def test_stills_folder_per_label(fer, tmp_path):
    """FER2013-style folders: <label>/<any image>; each image is one item."""
    root = tmp_path / "stills"
    write_image(root / "happy" / "0001.png", 10)
    write_image(root / "happy" / "0002.jpg", 20)
    write_image(root / "sad" / "0001.png", 30)
    write_image(root / "contempt" / "0001.png", 40)
    result = fer("index", root, "--set", "index.preset=folder-per-label", "-j", "1")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "work/index/index.csv")
    assert [(r["item_id"], r["label"], r["kind"], r["n_frames"]) for r in rows] == [
        ("happy_0001", "happy", "image", "1"), ("happy_0002", "happy", "image", "1"),
        ("sad_0001", "sad", "image", "1")]
    assert [e["path"] for e in read_csv(tmp_path / "work/index/excluded.csv")] == \
        ["contempt/0001.png"]


def test_folder_of_frames_stays_one_sequence_unless_stills(tmp_path):
    root = tmp_path / "redist"
    for n in (1, 2, 3):
        write_image(root / "happy" / "S005_001" / f"S005_001_{n:08d}.png", n)
    base = [f"index.root={root}", "index.preset=folder-per-label"]
    items, _ = scan_dataset(load_config(None, base)["index"])  # auto: the folder matches
    assert [(i["id"], i["kind"]) for i in items] == [("happy_S005_001", "sequence")]
    items, _ = scan_dataset(load_config(None, [*base, "index.stills=true"])["index"])
    assert [(i["id"], i["kind"], i["subject"]) for i in items] == [
        ("S005_001_00000001", "image", "S005"), ("S005_001_00000002", "image", "S005"),
        ("S005_001_00000003", "image", "S005")]
    flat = tmp_path / "flat"
    write_image(flat / "happy" / "0001.png", 1)
    items, excluded = scan_dataset(load_config(None, [f"index.root={flat}",
                                                      "index.preset=folder-per-label",
                                                      "index.stills=false"])["index"])
    assert items == [] and [(e.rel, e.reason) for e in excluded] == [
        ("happy", "name does not match the `folder-per-label` pattern")]


def test_pattern_without_subject_makes_each_item_its_own_subject(tmp_path):
    root = tmp_path / "fer2013"
    write_image(root / "happy" / "Training_1.png", 1)
    write_image(root / "sad" / "Training_2.png", 2)
    cfg = load_config(None, [f"index.root={root}", "index.preset=regex",
                             r"index.pattern=^(?P<label>[^/]+)/[^/]+\.png$"])
    items, _ = scan_dataset(cfg["index"])
    assert [(i["id"], i["subject"], i["kind"]) for i in items] == [
        ("happy_Training_1", "happy_Training_1", "image"),
        ("sad_Training_2", "sad_Training_2", "image")]


def test_ids_keep_dots_of_folders_and_groups():
    assert make_item_ids(["a/S.01", "b/x.avi"], ["", ""], [False, True]) == ["a_S.01", "b_x"]


# --------------------------------------------------------------------------- media
def test_iter_frames_and_probe_on_group_and_image(tmp_path):
    frames = [write_image(tmp_path / "data" / f"f{n}.png", 10 * n, size=(20, 10))
              for n in (1, 2, 3)]
    listing = tmp_path / "lists" / "seq.frames"
    listing.parent.mkdir()
    listing.write_text("# comment\n" + "\n".join(["../data/f3.png", str(frames[0]),
                                                  "../data/f2.png"]) + "\n")
    assert source_kind(listing) == "frames" and source_kind(frames[0]) == "image"
    assert [int(f[0, 0, 0]) for f in iter_frames(listing)] == [30, 10, 20]
    info = probe(listing, sequence_fps=30)
    assert (info.n_frames, info.fps, info.width, info.height) == (3, 30.0, 20, 10)
    still = probe(str(frames[1]), sequence_fps=25)
    assert (still.n_frames, still.fps, still.width, still.height) == (1, 25.0, 20, 10)
    assert [f.shape for f in iter_frames(frames[1])] == [(10, 20, 3)]

    frames[2].write_bytes(b"garbage")
    with pytest.raises(ItemError, match=r"f3.png: frame cannot be decoded"):
        list(iter_frames(listing))
    with pytest.raises(ItemError, match="image file not found"):
        list(iter_frames(tmp_path / "nowhere.png"))
    write_image(frames[2], 0, size=(21, 10))
    with pytest.raises(ItemError, match="f1.png: frame is 20x10, the sequence started at 21x10"):
        probe(listing)
    (tmp_path / "empty.frames").write_text("# nothing\n")
    with pytest.raises(ItemError, match="frame list names no images"):
        list(iter_frames(tmp_path / "empty.frames"))


def test_unknown_stills_value_is_refused():
    with pytest.raises(ConfigError, match="index.stills: 'sometimes' is not allowed"):
        load_config(None, ["index.stills=sometimes"])
