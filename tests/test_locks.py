"""Stage locks between real `fer` processes: who holds it, dead owners, concurrent shards.

Costs ~15 s: index + detect of 12 sample clips in-process, then `fer` subprocesses.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fercli.core.config import load_config
from fercli.core.engine import run_stage
from fercli.core.workspace import StageLock
from fercli.stages import PIPELINE
from fercli.vision.clipio import read_clip

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [f"index.root={ROOT / 'sample_data'}", "index.classes=[happy, sad, surprise]",
            "index.exclude_subjects=[F003, F004, M003, M004]", "track.size=64"]


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> Path:
    """A workdir whose `detect` is done: `fer track` can start."""
    workdir = tmp_path_factory.mktemp("locks") / "work"
    cfg = load_config(None, [f"workdir={workdir}", *SETTINGS])
    for stage in ("index", "detect"):
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    return workdir


@pytest.fixture
def work(detected, tmp_path) -> Path:
    return Path(shutil.copytree(detected, tmp_path / "work"))


# `fer` whose first tracked item waits until every process in the barrier folder got there:
# proof that shards really run at the same time (a shard alone fails after 60 s).
WITH_BARRIER = """
import os, sys, time
from pathlib import Path
import fercli.stages.track as track
real, waited = track.TrackStage.process_item, []
def process_item(self, ctx, item):
    if not waited:
        folder = Path(os.environ["BARRIER"])
        (folder / str(os.getpid())).touch()
        deadline = time.time() + 60
        while len(list(folder.iterdir())) < int(os.environ["PARTIES"]):
            if time.time() > deadline:
                raise RuntimeError("the other shard never ran alongside this one")
            time.sleep(0.01)
        waited.append(True)
    return real(self, ctx, item)
track.TrackStage.process_item = process_item
from fercli.cli import main
main()
"""


def fer(work: Path, *args: str, barrier: Path | None = None) -> subprocess.Popen:
    """A real `fer` process on ``work`` (one worker: two shards share the 2 cores)."""
    entry = ["-m", "fercli.cli"] if barrier is None else ["-c", WITH_BARRIER]
    command = [sys.executable, *entry, *args, "-j", "1"]
    for setting in [f"workdir={work}", *SETTINGS]:
        command += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BARRIER": str(barrier), "PARTIES": "2"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_process_names_the_holder_and_exits_5(work):
    with StageLock(work / "track/.lock", "stage `track`"):
        holder = json.loads((work / "track/.lock").read_text())
        code, output = finish(fer(work, "track"))
    assert code == 5, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {work / 'track/.lock'}: stage `track` is locked by pid "
                      f"{os.getpid()} on {socket.gethostname()} since {holder['since']}. Wait "
                      "for it to finish; if that process is gone (another host), delete the "
                      "lock file"]
    assert "Traceback" not in output
    assert not (work / "track/records").exists()  # it did nothing


def test_lock_of_a_dead_process_is_taken_over_but_not_one_from_another_host(work):
    lock = work / "track/.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    elsewhere = {"pid": 1, "host": "another-node", "since": "2024-01-01 00:00:00",
                 "what": "stage `track`"}
    lock.write_text(json.dumps(elsewhere))
    code, output = finish(fer(work, "track"))
    assert code == 5 and "locked by pid 1 on another-node" in output, output

    lock.write_text(json.dumps({**elsewhere, "pid": dead_pid(),
                                "host": socket.gethostname()}))
    code, output = finish(fer(work, "track"))
    assert code == 0, output
    assert not lock.exists()
    assert len(list((work / "track/records").glob("*.json"))) == 12


def test_two_shards_run_at_once_and_equal_one_process(work, tmp_path):
    single = Path(shutil.copytree(work, tmp_path / "single"))
    assert finish(fer(single, "track"))[0] == 0
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    shards = [fer(work, "track", "--shard", f"{k}/2", barrier=barrier) for k in (1, 2)]
    results = [finish(proc) for proc in shards]
    assert [code for code, _ in results] == [0, 0], results
    assert not any("locked" in output for _, output in results)
    assert len(list(barrier.iterdir())) == 2  # both held their shard lock at once

    assert (work / "track/tracks.csv").read_text() == (single / "track/tracks.csv").read_text()
    for boxes in sorted((single / "track/boxes").glob("*.csv")):
        assert (work / "track/boxes" / boxes.name).read_text() == boxes.read_text()
    clips = sorted((single / "track/clips").glob("*.mkv"))
    assert len(clips) == 12
    for clip in clips:
        assert np.array_equal(read_clip(work / "track/clips" / clip.name), read_clip(clip))
    manifest = json.loads((work / "track/manifest.json").read_text())
    reference = json.loads((single / "track/manifest.json").read_text())
    assert manifest["items"].keys() == reference["items"].keys()
    assert manifest["params_hash"] == reference["params_hash"]
