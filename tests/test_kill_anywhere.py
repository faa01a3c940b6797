"""Kill anywhere: each stage is SIGKILLed at seeded times and at file events, re-run until it
completes, and its artifacts are compared with those of an uninterrupted run (issue 7).

Every stage runs as a real `python -m fercli.cli <stage>` process on a slice of sample_data
(configured like tests/test_pipeline.py). A module fixture runs the pipeline once,
uninterrupted, snapshotting the work directory before and after each stage. Killed runs
start from a copy of the "before" snapshot at the same absolute path as the reference run,
so records and manifests (which hold absolute paths) compare too.

Kill points, per stage, in one chain: seeded delays spread over the work the stage has
left (timed from the reference run, from taking the stage lock to exiting) and file
events: a temporary file being written, a new item record, all records present but no
manifest yet, and for training an epoch checkpointed, and a fold's last epoch
checkpointed but the fold not yet marked finished. A kill hits the main process only (as
`kill -9 PID` or the OOM killer would) and the next attempt starts at once, while the
killed run's workers may still be running; they must exit by themselves. An attempt that
completes before its trigger fires is checked like a final run, and the chain goes on from
a fresh copy.

Deterministic stages (index ... extract) must end identical to the reference run: byte for
byte, PNGs and features.h5 included (Agg PNGs carry no timestamp; h5py writes no object
times unless asked), except records without their `seconds`, manifests without
`finished`, and lossless clips compared by size and decoded pixels (see clip_content).
After every kill, each file already under its final name must equal the reference: nothing
half-written is ever published. Training is not bit-reproducible across a resume on CPU, so
cv-train and finalize are checked for what resuming promises: the next epoch after the last
checkpoint, each epoch logged once, every checkpoint loadable, one latest checkpoint, and
early stopping and learning-rate cuts where an uninterrupted run would make them, given the
logged accuracies.

The kill-point table goes to $FER_KILL_TABLE (default <tmp>/kill_table.md).
Cost: about 6 minutes on 2 cores.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import support
from support import kill_group, live_group_members

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                 reason="needs Linux /proc to follow worker processes")]

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, PATIENCE = 4, 2
SETTINGS = [*support.small_pipeline(EPOCHS, PATIENCE),  # one more epoch to kill in
            f"finalize.max_epochs={EPOCHS}"]
DETERMINISTIC = ["index", "split", "detect", "track", "trim", "augment", "extract"]
TRAINING = ["cv-train", "finalize"]
KILL_TABLE = Path(os.environ.get("FER_KILL_TABLE",
                                 Path(tempfile.gettempdir()) / "kill_table.md"))
POLL_S = 0.002
ORPHAN_EXIT_S = 5.0  # engine._worker_init: at once on Linux, else within a second


# --------------------------------------------------------------------------- processes
def start(stage: str, workdir: Path, log: Path) -> subprocess.Popen:
    """The stage in its own process group, so its workers can be followed after a kill."""
    args = [sys.executable, "-m", "fercli.cli", stage]
    for setting in [f"workdir={workdir}", *SETTINGS]:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as handle:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=handle,
                                start_new_session=True)


def wait_orphans_gone(pgid: int, timeout: float) -> None:
    """A killed run's workers must exit by themselves (engine._worker_init)."""
    deadline = time.monotonic() + timeout
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            pytest.fail(f"workers of the killed pid {pgid} still ran {timeout} s later")
        time.sleep(0.05)


# --------------------------------------------------------------------------- stage folder
def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and "tmp" in path.name


def is_lock(path: Path) -> bool:
    return path.name.startswith(".lock")


def temp_files(stage_dir: Path) -> set[tuple[str, int]]:
    """(path, inode) of temporary files: a name reused by a new writer counts as new."""
    found = set()
    for folder, _, names in os.walk(stage_dir):
        for name in names:
            path = Path(folder, name)
            if is_temp(path):
                try:
                    found.add((str(path.relative_to(stage_dir)), path.stat().st_ino))
                except FileNotFoundError:
                    pass
    return found


def n_records(stage_dir: Path) -> int:
    try:
        return sum(1 for p in (stage_dir / "records").iterdir()
                   if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return 0


def lock_pid(stage_dir: Path) -> int | None:
    try:
        return json.loads((stage_dir / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def states(stage_dir: Path) -> dict[str, dict]:
    """Every training folder's state.json (cv-train and finalize), by folder name."""
    out = {}
    for path in stage_dir.glob("runs/*/*/state.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return out


def state_epochs(stage_dir: Path) -> dict[str, int]:
    return {fold: state["epoch"] for fold, state in states(stage_dir).items()}


CLIP_SUFFIXES = (".mkv", ".avi")
_REFERENCE_CLIPS: dict[Path, bytes] = {}


def clip_content(path: Path) -> bytes:
    """A lossless clip as compared: its size and decoded pixels. FFmpeg's Matroska muxer
    writes a random SegmentUID (and a CRC over it) into every file, and OpenCV passes no
    muxer options (-fflags +bitexact) through, so two identical runs differ in those bytes."""
    from fercli.vision.clipio import read_clip

    frames = read_clip(path)
    return f"{path.stat().st_size}:{frames.shape}:".encode() + hashlib.sha256(frames).digest()


def without_clip_hashes(value):
    """JSON with the sha256 of clip files left out (see clip_content)."""
    if isinstance(value, dict):
        clip = str(value.get("path", "")).endswith(CLIP_SUFFIXES)
        return {k: without_clip_hashes(v) for k, v in value.items()
                if not (clip and k == "sha256")}
    if isinstance(value, list):
        return [without_clip_hashes(v) for v in value]
    return value


def normalised(path: Path, rel: str) -> bytes:
    """File content as compared: records without their timing, manifests without their
    time, clips by pixels; everything else byte for byte."""
    if rel.endswith(CLIP_SUFFIXES):
        return clip_content(path)
    data = path.read_bytes()
    if rel == "manifest.json" or (rel.startswith("records/") and rel.endswith(".json")):
        content = json.loads(data)
        content.pop("finished" if rel == "manifest.json" else "seconds", None)
        if any(str(o["path"]).endswith(CLIP_SUFFIXES) for o in content.get("outputs", [])) \
                or any(str(o["path"]).endswith(CLIP_SUFFIXES) for item in
                       content.get("items", {}).values() for o in item.get("outputs", [])):
            content.pop("output_hash", None)  # a hash over the clips' sha256
        return json.dumps(without_clip_hashes(content), sort_keys=True).encode()
    return data


def reference_content(path: Path, rel: str) -> bytes:
    if path not in _REFERENCE_CLIPS:
        _REFERENCE_CLIPS[path] = normalised(path, rel)
    return _REFERENCE_CLIPS[path]


def published_files(stage_dir: Path) -> dict[str, Path]:
    """Files under their final names (no temporary files, no lock files)."""
    return {p.relative_to(stage_dir).as_posix(): p for p in sorted(stage_dir.rglob("*"))
            if p.is_file() and not is_temp(p) and not is_lock(p)}


def differences(stage_dir: Path, reference: Path, complete: bool,
                contents: bool = True) -> list[str]:
    """Files that differ from the reference (by content unless not ``contents``); with
    ``complete``, also files missing and temporary or lock files left behind."""
    mine, ref = published_files(stage_dir), published_files(reference)
    problems = [f"extra: {rel}" for rel in mine if rel not in ref]
    if contents:
        problems += [f"differs: {rel}" for rel, path in mine.items()
                     if rel in ref and normalised(path, rel) != reference_content(ref[rel], rel)]
    if complete:
        problems += [f"missing: {rel}" for rel in ref if rel not in mine]
        problems += [f"left behind: {p.relative_to(stage_dir)}" for p in stage_dir.rglob("*")
                     if p.is_file() and (is_temp(p) or is_lock(p))]
    return problems


# --------------------------------------------------------------------------- kill points
@dataclass
class Attempt:
    """One process of the stage, and what it found when it started (to tell new events
    from old ones, and to place timed kills within the work it has left)."""

    proc: subprocess.Popen
    stage_dir: Path
    n_items: int
    work_s: float  # uninterrupted, from taking the stage lock, for the work left
    started: float = field(default_factory=time.monotonic)
    locked_at: float | None = None  # when it was first seen holding the stage lock
    records: int = 0
    temps: set = field(default_factory=set)
    epochs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.records = n_records(self.stage_dir)
        self.temps = temp_files(self.stage_dir)
        self.epochs = state_epochs(self.stage_dir)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def holds_lock(self) -> bool:
        return lock_pid(self.stage_dir) == self.proc.pid


Trigger = Callable[[Attempt], bool]


def at_fraction(fraction: float) -> tuple[str, Trigger]:
    """Kill at a seeded point of the work left, timed from taking the stage lock."""
    def fire(a: Attempt) -> bool:
        if a.locked_at is None and a.holds_lock():
            a.locked_at = time.monotonic()
        return a.locked_at is not None and time.monotonic() - a.locked_at >= fraction * a.work_s

    return f"{fraction:.0%} into its work", fire


EVENTS: dict[str, Trigger] = {
    "temp file": lambda a: bool(temp_files(a.stage_dir) - a.temps),
    "new record": lambda a: n_records(a.stage_dir) > a.records,
    "finalizing": lambda a: (a.holds_lock() and n_records(a.stage_dir) >= a.n_items
                             and not (a.stage_dir / "manifest.json").exists()),
    "epoch saved": lambda a: any(e > a.epochs.get(k, 0)
                                 for k, e in state_epochs(a.stage_dir).items()),
    # a fold's last epoch (all epochs, or EarlyStopping's stop) is checkpointed; the fold
    # is not marked finished yet
    "last epoch saved": lambda a: any(
        not s.get("finished") and (s["epoch"] >= EPOCHS or s.get("es_wait", 0) >= PATIENCE)
        for s in states(a.stage_dir).values()),
}


def kill_plan(stage: str) -> list[tuple[str, Trigger]]:
    """Seeded points in time, then file events: one chain of kills and re-runs."""
    rng = random.Random(f"kill-anywhere:{stage}")
    if stage in TRAINING:  # early, so the events still find a fold's epochs to kill in
        events = ["epoch saved", "temp file", "last epoch saved", "finalizing"]
        timed = [at_fraction(rng.uniform(0.1, 0.4))]
    else:
        events = ["temp file", "new record", "temp file", "finalizing"]
        timed = [at_fraction(rng.random()) for _ in range(2)]
    return [*timed, *((name, EVENTS[name]) for name in events)]


@dataclass
class KillPoint:
    trigger: str
    at_s: float
    records: int
    new_temps: list[str]  # temporary files this attempt had open: killed mid-write
    epochs: dict


@dataclass
class Segment:
    """Attempts from a fresh copy of the work dir until one completes."""

    kills: list[KillPoint] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # stderr of every attempt, in order


def kill_chain(chain: "Chain", stage: str, logs: Path, after_kill: Callable[[], None],
               verify: Callable[[Segment], None]) -> list[Segment]:
    """Start the stage, SIGKILL it when the next trigger fires, start it again at once; an
    attempt that completes first is verified, and its trigger tried once more from a fresh
    copy. Last, run it to completion and verify."""
    stage_dir = chain.work / stage
    timeout = 120 + 10 * chain.seconds[stage]
    plan = [(name, trigger, 1) for name, trigger in kill_plan(stage)]
    plan.append(("end", lambda a: False, 0))
    segments, killed = [Segment()], []
    try:
        for k, (name, trigger, retries) in enumerate(plan):
            log = logs / f"{stage}-{k}.log"
            attempt = Attempt(start(stage, chain.work, log), stage_dir, chain.n_items[stage],
                              chain.work_left(stage))
            killed.append(attempt.proc.pid)
            while attempt.proc.poll() is None and not trigger(attempt):
                assert attempt.elapsed < timeout, f"{stage} attempt {k} hangs"
                time.sleep(POLL_S)
            attempt.proc.send_signal(signal.SIGKILL)  # no effect once it has exited
            at, code = attempt.elapsed, attempt.proc.wait()
            segments[-1].logs.append(log.read_text(errors="replace"))
            if code == -signal.SIGKILL:
                segments[-1].kills.append(KillPoint(
                    name, at, n_records(stage_dir),
                    sorted(p for p, _ in temp_files(stage_dir) - attempt.temps),
                    state_epochs(stage_dir)))
                after_kill()
                continue
            assert code == 0, f"{stage} attempt {k} exited {code}:\n{segments[-1].logs[-1]}"
            verify(segments[-1])
            if name != "end":
                segments.append(Segment())
                chain.fresh_copy(stage)
                if retries:  # a short window the polling missed, or a run faster than planned
                    plan.insert(k + 1, (name, trigger, retries - 1))
        for pid in killed:
            wait_orphans_gone(pid, ORPHAN_EXIT_S)
    finally:
        for pid in killed:
            kill_group(pid)  # a failed test leaves nothing running in the next one's files
    return [s for s in segments if s.logs]


# --------------------------------------------------------------------------- fixtures
@dataclass
class Chain:
    """The uninterrupted pipeline: per stage, the work dir before and after it, its run
    time and its startup time (until it holds the stage lock)."""

    work: Path  # the one absolute path every run of every stage uses
    before: dict[str, Path] = field(default_factory=dict)
    after: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)
    n_items: dict[str, int] = field(default_factory=dict)
    n_epochs: dict[str, int] = field(default_factory=dict)

    def fresh_copy(self, stage: str) -> Path:
        """The work dir as it was before `stage` ran, at the shared path."""
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.before[stage], self.work, symlinks=True)
        return self.work

    def work_left(self, stage: str) -> float:
        """Seconds of work (after startup) an uninterrupted run would still do."""
        stage_dir = self.work / stage
        if stage in TRAINING:
            done = sum(state_epochs(stage_dir).values()) / self.n_epochs[stage]
        else:
            done = n_records(stage_dir) / self.n_items[stage]
        return (self.seconds[stage] - self.startup[stage]) * max(0.0, 1.0 - done)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    base = tmp_path_factory.mktemp("kill-anywhere")
    result = Chain(base / "work")
    result.work.mkdir()
    for stage in DETERMINISTIC + TRAINING:
        result.before[stage] = base / f"before-{stage}"
        shutil.copytree(result.work, result.before[stage], symlinks=True)
        started = time.monotonic()
        proc = start(stage, result.work, base / f"{stage}.log")
        while proc.poll() is None and lock_pid(result.work / stage) != proc.pid:
            time.sleep(POLL_S)
        result.startup[stage] = time.monotonic() - started
        assert proc.wait(timeout=600) == 0, (base / f"{stage}.log").read_text()[-3000:]
        result.seconds[stage] = time.monotonic() - started
        manifest = json.loads((result.work / stage / "manifest.json").read_text())
        result.n_items[stage] = len(manifest["items"])
        result.n_epochs[stage] = sum(state_epochs(result.work / stage).values())
        result.after[stage] = base / f"after-{stage}"
        shutil.copytree(result.work, result.after[stage], symlinks=True)
    return result


@pytest.fixture(scope="module")
def table():
    """Rows of the kill-point table, written out when the module is done."""
    rows: list[str] = []
    yield rows
    text = "\n".join(["| stage | uninterrupted | kill points | of which mid-write | "
                      "completed runs checked | result |",
                      "|---|---:|---:|---:|---:|---|", *rows]) + "\n"
    KILL_TABLE.write_text(text)
    print("\n" + text)


def record(table: list, chain: Chain, stage: str, segments: list[Segment], result: str,
           seconds: float) -> list[KillPoint]:
    kills = [kill for segment in segments for kill in segment.kills]
    for kill in kills:
        print(f"{stage}: killed at {kill.trigger} ({kill.at_s:.2f} s): {kill.records} "
              f"records, epochs {kill.epochs}, writing {kill.new_temps}")
    table.append(f"| {stage} | {chain.seconds[stage]:.1f} s | {len(kills)} | "
                 f"{sum(bool(k.new_temps) for k in kills)} | {len(segments)} | {result} "
                 f"({seconds:.0f} s) |")
    return kills


# --------------------------------------------------------------------------- deterministic
@pytest.mark.parametrize("stage", DETERMINISTIC)
def test_killed_stage_ends_byte_identical(stage, chain, table, tmp_path):
    started = time.monotonic()
    work = chain.fresh_copy(stage)
    reference = chain.after[stage] / stage

    def nothing_half_written():
        problems = differences(work / stage, reference, complete=False)
        assert not problems, f"{stage} just after a kill: {problems[:10]}"

    def identical(segment: Segment):
        problems = differences(work / stage, reference, complete=True)
        assert not problems, f"{stage} after {len(segment.kills)} kills: {problems[:20]}"
        for upstream in DETERMINISTIC[:DETERMINISTIC.index(stage)]:
            assert not differences(work / upstream, chain.before[stage] / upstream, True)

    segments = kill_chain(chain, stage, tmp_path, nothing_half_written, identical)
    result = "identical (clips by pixels)" if stage in ("track", "augment") else "byte-identical"
    kills = record(table, chain, stage, segments, result, time.monotonic() - started)
    # split does almost nothing (one item, < 1 s): under load only a few kills can land
    wanted = 2 if stage == "split" else 4
    assert len(kills) >= wanted, f"{stage}: only {len(kills)} of 6 planned kills landed"


# --------------------------------------------------------------------------- training
def csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def check_checkpoints(stage_dir: Path) -> None:
    """Every published model file loads; state.json names a latest file that exists."""
    from fercli.learning.training import load_model

    for state_path in stage_dir.glob("runs/*/*/state.json"):
        state = json.loads(state_path.read_text())
        assert (state_path.parent / state["latest"]).is_file(), state_path
    for path in stage_dir.rglob("*.keras"):
        if not is_temp(path):
            load_model(path)  # raises ArtifactError for a truncated file


def early_stop_epoch(val_accuracy: list[float], patience: int) -> int | None:
    """Epoch (from 1) where Keras EarlyStopping on val accuracy stops, if it does."""
    best, wait = None, 0
    for epoch, value in enumerate(val_accuracy, 1):
        wait += 1
        if best is None or value > best:
            best, wait = value, 0
        elif wait >= patience and epoch > 1:
            return epoch
    return None


def plateau_rates(val_accuracy: list[float], rate: float, factor: float,
                  patience: int) -> list[float]:
    """Learning rate after each epoch under Keras ReduceLROnPlateau (min_delta 1e-4)."""
    best, wait, out = None, 0, []
    for value in val_accuracy:
        if best is None or value - 1e-4 > best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                rate, wait = rate * factor, 0
        out.append(rate)
    return out


def first_resume(logs: list[str], fold: str) -> int | None:
    for log in logs:
        match = re.search(rf"resuming {re.escape(fold)} at epoch (\d+)", log)
        if match:
            return int(match.group(1))
    return None


def verify_training(stage: str, chain: Chain, segment: Segment) -> None:
    stage_dir = chain.work / stage
    reference = chain.after[stage] / stage
    problems = [p for p in differences(stage_dir, reference, complete=True, contents=False)
                if not re.search(r"/latest-e\d+\.keras$", p)]  # the stop epoch may differ
    assert not problems, f"{stage}: {problems}"  # same run name, files, no leftovers
    params = json.loads((reference / "manifest.json").read_text())["params"]
    final_epochs = {}
    for state_path in sorted(stage_dir.glob("runs/*/*/state.json")):
        fold, state = state_path.parent, json.loads(state_path.read_text())
        assert state["finished"], fold
        final_epochs[fold.name] = state["epoch"]
        log = csv_rows(fold / "log.csv")
        assert [int(r["epoch"]) for r in log] == list(range(1, state["epoch"] + 1)), fold
        assert [p.name for p in fold.glob("latest-e*.keras")] == \
            [f"latest-e{state['epoch']:04d}.keras"], fold
        if stage == "cv-train":
            assert state["epoch"] == params["train"]["epochs"], fold
        elif fold.name.startswith("es-fold"):
            fin = params["finalize"]
            accuracy = [float(r["val_accuracy"]) for r in log]
            stop = early_stop_epoch(accuracy, fin["patience"])
            assert state["epoch"] == (stop or fin["max_epochs"]), (fold, accuracy)
            rates = plateau_rates(accuracy, params["train"]["learning_rate"],
                                  fin["lr_factor"], fin["lr_patience"])
            assert [float(r["learning_rate"]) for r in log] == pytest.approx(rates, rel=1e-6)
    check_checkpoints(stage_dir)  # model.keras and best.keras included
    run_root = next(stage_dir.glob("runs/*"))
    if stage == "cv-train":  # the summary and mean curve cover every fold and epoch
        assert len(csv_rows(run_root / "mean_curve.csv")) == EPOCHS
        assert len(csv_rows(run_root / "summary.csv")) == chain.n_items[stage]
    else:
        assert json.loads((run_root / "model.json").read_text())["epochs"] == \
            final_epochs["final"]
    for k, kill in enumerate(segment.kills):
        for fold, epoch in kill.epochs.items():
            if epoch < final_epochs[fold]:  # the next attempt that trains it resumes
                assert first_resume(segment.logs[k + 1:], fold) == epoch + 1, (kill, fold)


@pytest.mark.parametrize("stage", TRAINING)
def test_killed_training_resumes_at_the_next_epoch(stage, chain, table, tmp_path):
    started = time.monotonic()
    stage_dir = chain.fresh_copy(stage) / stage
    segments = kill_chain(chain, stage, tmp_path, lambda: check_checkpoints(stage_dir),
                          lambda segment: verify_training(stage, chain, segment))
    kills = record(table, chain, stage, segments, "resumed at the next epoch, every epoch "
                   "logged once", time.monotonic() - started)
    epochs = {e for kill in kills for e in kill.epochs.values()}
    assert len(kills) >= 4 and len(epochs) >= 2, kills  # killed at several epochs
