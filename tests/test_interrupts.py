"""Ctrl-C, SIGTERM and SIGHUP on a real `fer track` with worker processes (issue 15).

The first stop signal records every finished item, removes temporary files, releases the
lock and exits 130 within 2 s; a second one exits at once, workers included; the re-run
redoes nothing that finished.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import live_group_members

from fercli.api import load_config, run_pipeline

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [f"index.root={ROOT / 'sample_data'}", "split.folds=2", "split.test_fraction=0.2",
            "track.size=96"]
EXIT_LIMIT_S = 2.0
SLACK_S = 0.5  # process start-up noise on a loaded CI machine


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("interrupts") / "work"
    run_pipeline(load_config(None, [f"workdir={workdir}", *SETTINGS]), until="detect")
    return workdir


def start_track(workdir: Path, log: Path, workers: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "fercli.cli", "track", "--workers", str(workers)]
    for setting in [f"workdir={workdir}", *SETTINGS]:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as handle:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=handle,
                                start_new_session=True)  # a terminal signals the whole group


def wait_for_records(records: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(list(records.glob("*.json"))) >= n):
        assert proc.poll() is None, "track ended before it could be interrupted"
        assert time.monotonic() < deadline, "track wrote no record in 120 s"
        time.sleep(0.02)


def assert_group_gone(pgid: int) -> None:
    """Workers are killed before the exit; multiprocessing's resource tracker leaves when
    it reads end-of-file from the exited parent, a moment later."""
    deadline = time.monotonic() + 1.0
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not live_group_members(pgid), "a process of the interrupted run lives on"


def fresh_copy(detected: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    subprocess.run(["cp", "-a", str(detected), str(workdir)], check=True)
    return workdir


def clips(track_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in track_dir.rglob("*.mkv") if not p.name.startswith(".")}


@pytest.mark.parametrize(("sig", "workers"), [
    (signal.SIGINT, 2), (signal.SIGTERM, 2), (signal.SIGHUP, 2), (signal.SIGINT, 1)],
    ids=["ctrl-c", "sigterm", "sighup", "ctrl-c-in-process"])
def test_first_stop_signal_records_finished_items_and_exits_130(detected, tmp_path, sig,
                                                                 workers):
    workdir = fresh_copy(detected, tmp_path)
    track_dir, log = workdir / "track", tmp_path / "track.log"
    proc = start_track(workdir, log, workers)
    wait_for_records(track_dir / "records", proc, 2)
    os.killpg(proc.pid, sig)
    sent = time.monotonic()
    code = proc.wait(timeout=30)
    took = time.monotonic() - sent
    stderr = log.read_text()

    assert code == 130, stderr
    assert took < EXIT_LIMIT_S + SLACK_S, f"exit took {took:.2f} s"
    assert "Traceback" not in stderr and "Interrupted" in stderr, stderr
    assert_group_gone(proc.pid)
    leftovers = [p.name for p in track_dir.rglob(".*") if p.is_file()]
    assert leftovers == [], leftovers  # no temporary file, no lock
    recorded = {p.stem for p in (track_dir / "records").glob("*.json")}
    assert clips(track_dir) <= recorded, "a published clip has no record: it would be redone"

    before = {name: (track_dir / "records" / f"{name}.json").read_bytes() for name in recorded}
    rerun = subprocess.run([sys.executable, "-m", "fercli.cli", "track",
                            *sum((["--set", s] for s in [f"workdir={workdir}", *SETTINGS]), [])],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"track: {len(recorded)} items already done" in rerun.stderr
    for name, content in before.items():  # nothing finished was redone
        assert (track_dir / "records" / f"{name}.json").read_bytes() == content


def test_second_ctrl_c_exits_at_once_with_its_workers(detected, tmp_path):
    workdir = fresh_copy(detected, tmp_path)
    log = tmp_path / "track.log"
    proc = start_track(workdir, log, workers=2)
    wait_for_records(workdir / "track" / "records", proc, 1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    code = proc.wait(timeout=30)
    took = time.monotonic() - sent
    assert code == 130, log.read_text()
    assert took < 1.0 + SLACK_S, f"second Ctrl-C took {took:.2f} s"
    assert "Traceback" not in log.read_text()
    assert_group_gone(proc.pid)
