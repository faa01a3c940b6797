"""A full disk (ENOSPC, simulated in the writers): the stage stops at once with one line that
names the file, keeps the items finished before, and leaves no partial or temporary file.

Stopping is deliberate: every later item would fail the same way, and a failed record per
item would only hide the one real cause. Costs ~5 s.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from conftest import write_video

import fercli.stages.track as track_module
from fercli.core.config import load_config
from fercli.core.engine import run_stage
from fercli.stages import PIPELINE
from fercli.vision.clipio import ClipWriter

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [f"index.root={ROOT / 'sample_data'}", "index.classes=[happy, sad]",
            "index.exclude_subjects=[F003, F004, M003, M004]", "track.size=64"]
NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*tmp*") if p.is_file()]


def test_full_disk_while_writing_a_record_stops_index(fer, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for k in range(6):
        write_video(data / f"F00{k}_happy_tex.avi")
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # atomic_write_bytes syncs each file before renaming it into place
        calls.append(fd)
        if len(calls) == 4:
            raise NO_SPACE
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    line = error_line(fer("index", data, "-j", "1"), 1)
    records = tmp_path / "work/index/records"
    assert line == (f"Error: {records / 'F003_happy_tex.json'}: no space left on device while "
                    "writing. Free disk space and run the same command again (finished items "
                    "are kept)")
    assert sorted(p.stem for p in records.glob("*.json")) == \
        ["F000_happy_tex", "F001_happy_tex", "F002_happy_tex"]
    assert not temp_files(tmp_path / "work") and not (tmp_path / "work/index/.lock").exists()

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    result = fer("index", data, "-j", "1")
    assert result.exit_code == 0 and "3 items already done, 3 to do" in result.output


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("disk-full") / "work"
    cfg = load_config(None, [f"workdir={workdir}", *SETTINGS])
    for stage in ("index", "detect"):
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    return workdir


class FillsUpOnThirdClip(ClipWriter):
    """The disk fills up after a few frames of the third clip."""

    opened: list[Path] = []

    def write(self, frame):
        if len(self.opened) == 3 and self.frames_written == 5:
            raise NO_SPACE
        super().write(frame)

    def __enter__(self):
        self.opened.append(self.path)
        return super().__enter__()


def test_full_disk_inside_a_clip_stops_track_and_keeps_finished_clips(fer, detected,
                                                                      tmp_path, monkeypatch):
    work = Path(shutil.copytree(detected, tmp_path / "work"))
    args = ["track", "-j", "1", "--set", f"workdir={work}"] + \
        [arg for setting in SETTINGS for arg in ("--set", setting)]
    FillsUpOnThirdClip.opened = []
    monkeypatch.setattr(track_module, "ClipWriter", FillsUpOnThirdClip)
    line = error_line(fer(*args), 1)
    first, second, third = FillsUpOnThirdClip.opened
    assert line == (f"Error: {third}: no space left on device while writing. Free disk space "
                    "and run the same command again (finished items are kept)")
    assert not third.exists() and not temp_files(work)
    assert sorted((work / "track/clips").iterdir()) == sorted([first, second])
    records = sorted(p.stem for p in (work / "track/records").glob("*.json"))
    assert records == sorted([first.stem, second.stem])  # the stage stopped at the third
    assert not (work / "track/manifest.json").exists()

    monkeypatch.setattr(track_module, "ClipWriter", ClipWriter)
    result = fer(*args)
    assert result.exit_code == 0 and "2 items already done, 6 to do" in result.output


def test_full_disk_in_a_writer_that_names_no_file(fer, detected, tmp_path, monkeypatch):
    """A bare OSError (e.g. from write()) still stops the stage, naming the item."""
    work = Path(shutil.copytree(detected, tmp_path / "work"))
    args = ["track", "-j", "1", "--set", f"workdir={work}"] + \
        [arg for setting in SETTINGS for arg in ("--set", setting)]
    written, real = [], track_module.write_boxes_csv

    def write_boxes_csv(path, rows):
        written.append(path)
        if len(written) == 2:
            raise NO_SPACE
        real(path, rows)

    monkeypatch.setattr(track_module, "write_boxes_csv", write_boxes_csv)
    line = error_line(fer(*args), 1)
    item = written[1].stem
    assert line == (f"Error: {work / 'track'} (item {item}): no space left on device while "
                    "writing. Free disk space and run the same command again (finished items "
                    "are kept)")
    assert len(list((work / "track/records").glob("*.json"))) == 1
