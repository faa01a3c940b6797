"""Messy folders and refusals of the operating system (issue 15): outputs never become
inputs, links are followed once, and every OS error is one line with its exit code.

CI runs as root, which reads and writes everything: the permission cases run `fer` with the
capabilities that override file permissions dropped (setpriv), as a normal user would be.
"""
from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fercli.api import load_config, run_pipeline, status
from fercli.core.errors import access_error

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
FAST = ["split.folds=2", "split.test_fraction=0.2", "track.size=48"]
ACCESS_EXIT = 8


def fer(*args: str, without_root_powers: bool = False, prefix: tuple[str, ...] = ()):
    """`fer ARGS` as a real process; optionally as root without its permission override."""
    command = [*prefix, sys.executable, "-m", "fercli.cli", *map(str, args)]
    if without_root_powers and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is missing: cannot drop root's file powers")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def one_error_line(result, code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def excluded(workdir: Path) -> dict[str, str]:
    with (workdir / "index" / "excluded.csv").open() as handle:
        return {row["path"]: row["reason"] for row in csv.DictReader(handle)}


def dataset(tmp_path: Path, subjects=("F001", "M001"), labels=("happy", "sad")) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    for subject in subjects:
        for label in labels:
            shutil.copy(SAMPLE / f"{subject}_{label}_tex.avi", root)
    return root


# --------------------------------------------------------------------------- outputs
def test_a_work_folder_inside_the_dataset_is_never_indexed(tmp_path):
    """`root: .` with `workdir: work`: the tracked clips must not come back as items and
    index must stay up to date after every stage."""
    root = dataset(tmp_path, subjects=("F001", "F002", "M001", "M002"))
    config = load_config(None, [f"index.root={root}", f"workdir={root / 'work'}", *FAST])
    run_pipeline(config, until="track")
    assert len(list((root / "work" / "track").rglob("*.mkv"))) == 8
    states = status(config)
    assert [states[s].status for s in ("index", "split", "detect", "track")] == \
        ["up to date"] * 4
    assert states["index"].n_items == 8
    assert not any(path.startswith("work") for path in excluded(root / "work"))

    # Another run's work folder left in the dataset is listed, not read.
    shutil.copytree(root / "work" / "track", root / "old-run" / "track")
    other = load_config(None, [f"index.root={root}", f"workdir={tmp_path / 'w2'}", *FAST])
    run_pipeline(other, until="index")
    assert status(other)["index"].n_items == 8
    left_out = excluded(tmp_path / "w2")  # the old run and the first run's stage folders
    assert {"old-run/track/", "work/index/", "work/track/"} <= set(left_out)
    assert set(left_out.values()) == {"fercli work folder: outputs are never indexed"}


# --------------------------------------------------------------------------- links
def test_folder_links_are_followed_once_and_dangling_links_listed(tmp_path):
    elsewhere = dataset(tmp_path)  # the real files live outside the dataset root
    root = tmp_path / "root"
    root.mkdir()
    (root / "subjects").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(root, target_is_directory=True)  # a loop
    (root / "F009_happy_tex.avi").symlink_to(tmp_path / "gone.avi")  # dangling
    workdir = tmp_path / "work"
    run_pipeline(load_config(None, [f"index.root={root}", f"workdir={workdir}"]),
                 until="index")
    with (workdir / "index" / "index.csv").open() as handle:
        rels = sorted(row["rel"] for row in csv.DictReader(handle))
    assert rels == [f"subjects/{s}_{label}_tex.avi" for s in ("F001", "M001")
                    for label in ("happy", "sad")]
    assert excluded(workdir) == {
        "F009_happy_tex.avi": "dangling symbolic link; fix or remove it",
        "subjects/back/": "link to a folder already indexed (a link loop or a second "
                          "link); read once"}


# --------------------------------------------------------------------------- OS errors
def test_read_only_work_folder_is_one_line(tmp_path):
    root = dataset(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    workdir.chmod(0o555)
    try:
        line = one_error_line(fer("index", root, "--set", f"workdir={workdir}",
                                  without_root_powers=True), ACCESS_EXIT)
    finally:
        workdir.chmod(0o755)
    assert line.startswith(f"Error: {workdir}/index") and "permission denied" in line
    assert "chmod" in line


def test_read_only_stage_folder_and_lock(tmp_path):
    root = dataset(tmp_path)
    workdir = tmp_path / "work"
    assert fer("index", root, "--set", f"workdir={workdir}").returncode == 0
    (workdir / "split").mkdir()
    (workdir / "split").chmod(0o555)
    try:
        line = one_error_line(fer("split", "--set", f"workdir={workdir}",
                                  without_root_powers=True), ACCESS_EXIT)
    finally:
        (workdir / "split").chmod(0o755)
    assert f"{workdir}/split/.lock: permission denied" in line


def test_work_path_that_is_a_file(tmp_path):
    root = dataset(tmp_path)
    (tmp_path / "work").write_text("not a folder")
    line = one_error_line(fer("index", root, "--set", f"workdir={tmp_path / 'work'}"),
                          ACCESS_EXIT)
    assert str(tmp_path / "work") in line
    assert "is a file, not a folder" in line or "not a folder" in line


def test_read_only_file_system_is_one_line(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is missing: cannot mount a read-only file system")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip("no mount namespace here: cannot mount a read-only file system")
    root = dataset(tmp_path)
    mount = tmp_path / "ro"
    mount.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {mount} && exec {sys.executable} -m fercli.cli "
              f"index {root} --set workdir={mount / 'work'}")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = one_error_line(result, ACCESS_EXIT)
    assert "read-only file system" in line and "--set workdir=" in line


def test_unreadable_dataset_folders_are_listed_and_the_rest_indexed(tmp_path):
    """A dataset root with a folder this user may not read (e.g. `lost+found`)."""
    root = dataset(tmp_path)
    (root / "lost+found").mkdir()
    (root / "lost+found").chmod(0)
    workdir = tmp_path / "work"
    try:
        result = fer("index", root, "--set", f"workdir={workdir}", without_root_powers=True)
    finally:
        (root / "lost+found").chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert excluded(workdir) == {
        "lost+found/": "folder is not readable (permission denied); its files are not indexed"}


def test_unreadable_video_is_not_called_corrupt(tmp_path):
    root = dataset(tmp_path)
    (root / "M001_sad_tex.avi").chmod(0)
    workdir = tmp_path / "work"
    try:
        result = fer("index", root, "--set", f"workdir={workdir}", without_root_powers=True)
    finally:
        (root / "M001_sad_tex.avi").chmod(0o644)
    one_error_line(result, 6)  # the item failed alone; the others are indexed
    assert ("failed M001_sad_tex: " in result.stderr and "file is not readable (permission "
            "denied), not damaged" in result.stderr), result.stderr
    assert "codec" not in result.stderr


@pytest.mark.parametrize(("code", "words"), [
    (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
    (errno.ENOTDIR, "not a folder"), (errno.EISDIR, "is a folder"),
    (errno.ELOOP, "link loop"), (errno.ENOSPC, "no space left")])
def test_every_os_error_names_its_path_and_a_remedy(code, words):
    error = access_error(OSError(code, os.strerror(code), "/data/x"))
    text = str(error)
    assert text.startswith("/data/x: ") and words in text and ". " in text


# --------------------------------------------------------------------------- messages
def test_when_every_item_failed_no_one_is_told_the_others_are_complete():
    from fercli.core.engine import StageResult, raise_if_failed
    from fercli.core.errors import ItemsFailedError

    for failed, words in ((3, "no item succeeded"), (1, "the other items are complete")):
        result = StageResult("detect", skipped=False, n_items=3, n_failed=failed,
                             failures=[("F001_happy", "no face")] * failed)
        with pytest.raises(ItemsFailedError, match=words):
            raise_if_failed(result)


def test_no_face_hint_names_the_setting_that_looks_further():
    import numpy as np

    from fercli.core.errors import ItemError
    from fercli.vision.detect import detect_first_face, make_detector

    blank = [np.zeros((120, 160, 3), np.uint8)] * 12
    with pytest.raises(ItemError, match=r"no face found in the first 10 frames.*"
                                        r"detect\.frames_allowed"):
        detect_first_face(blank, make_detector("haar"), frames_allowed=10)
