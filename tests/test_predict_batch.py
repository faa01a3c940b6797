"""`fer predict` over many videos is resumable and shardable (issue 13, item 5).

Real processes on sample_data videos with a tiny run folder: one uninterrupted run is the
reference; a run SIGKILLed after a few videos and re-run reuses what it finished and ends
equal to it; three shards started at once end equal to it too.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_predict import MAX_FRAMES, make_run

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ["F001_happy", "F002_sad", "M001_angry", "M002_surprise", "F003_fear", "M003_disgust"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict[str, Path]:
    from fercli.features.backbones import build_feature_extractor

    base = tmp_path_factory.mktemp("batch")
    feature_dim = build_feature_extractor("small-cnn", weights=None).feature_dim
    run = make_run(base / "work", "lstm-small", "lstm", {"units": 8}, (MAX_FRAMES, feature_dim))
    folder = base / "videos"
    folder.mkdir()
    for name in VIDEOS:
        shutil.copy(ROOT / "sample_data" / f"{name}_tex.avi", folder / f"{name}.avi")
    listing = base / "videos.txt"  # a list file, as a cluster job would get
    listing.write_text("# debate videos\n" + "".join(f"videos/{n}.avi\n" for n in VIDEOS))
    return {"run": run, "list": listing, "base": base}


def predict_args(batch: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fercli.cli", "predict", str(batch["list"]),
            "--run", str(batch["run"]), "--out", str(out), *extra]


def run_predict(batch: dict, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(predict_args(batch, out, *extra), capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def outputs(out: Path) -> dict:
    """Summary rows and every prediction.json, without wall-clock timings."""
    with (out / "summary.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    predictions = {}
    for path in sorted(out.glob("*/prediction.json")):
        result = json.loads(path.read_text())
        result.pop("timing")
        predictions[path.parent.name] = result
    return {"summary": summary, "predictions": predictions}


@pytest.fixture(scope="module")
def reference(batch) -> dict:
    out = batch["base"] / "reference"
    run_predict(batch, out)
    return outputs(out)


def test_reference_classified_every_video(reference):
    assert [Path(r["video"]).stem for r in reference["summary"]] == VIDEOS
    assert {r["status"] for r in reference["summary"]} == {"ok"}


def test_killed_batch_resumes_at_the_first_unfinished_video(batch, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(predict_args(batch, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while len(list((out / "records").glob("[!.]*.json"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no record to kill after"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.stem for p in (out / "records").glob("[!.]*.json"))
    assert 2 <= len(finished) < len(VIDEOS), finished
    before = {name: (out / name / "prediction.json").read_bytes() for name in finished}

    rerun = run_predict(batch, out)
    assert (f"predict: {len(finished)} of {len(VIDEOS)} videos already done"
            in rerun.stderr), rerun.stderr
    for name, content in before.items():  # finished videos were not redone
        assert (out / name / "prediction.json").read_bytes() == content
    assert outputs(out) == reference

    again = run_predict(batch, out)  # everything recorded: nothing loads, nothing is redone
    assert f"predict: {len(VIDEOS)} of {len(VIDEOS)} videos already done" in again.stderr


def test_three_shards_at_once_equal_one_process(batch, reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(predict_args(batch, out, "--shard", f"{k}/3"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env) for k in (1, 2, 3)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    assert outputs(out) == reference


def test_two_workers_equal_one_process(batch, reference, tmp_path):
    """--workers 2 predicts two videos at once (each worker loads the models once); the
    outputs and the summary equal one process's."""
    result = run_predict(batch, tmp_path / "out", "--workers", "2")
    assert outputs(tmp_path / "out") == reference
    assert all(f"{name}: " in result.stderr for name in VIDEOS)  # a line per video


def test_ctrl_c_stops_the_workers_and_the_rerun_completes(batch, reference, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) during --workers 2 over
    the videos listed four times: exit 130 without a traceback, the finished videos
    recorded, no temporary file and no worker left; the re-run does only the rest, and
    every copy's outputs equal one process's for that video."""
    import support

    listing = batch["base"] / "four-times.txt"
    listing.write_text("".join(f"videos/{n}.avi\n" for n in VIDEOS) * 4)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fercli.cli", "predict", str(listing), "--run",
            str(batch["run"]), "--out", str(out), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    while not list((out / "records").glob("[!.]*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no record to stop after"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 1.0  # multiprocessing's resource tracker: a moment later
    while support.live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert support.live_group_members(proc.pid) == []
    assert not [p for p in out.rglob(".*tmp*") if p.is_file()]
    finished = list((out / "records").glob("[!.]*.json"))
    assert 1 <= len(finished) < 4 * len(VIDEOS)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert (f"predict: {len(finished)} of {4 * len(VIDEOS)} videos already done"
            in rerun.stderr), rerun.stderr
    written = outputs(out)
    assert len(written["predictions"]) == 4 * len(VIDEOS)
    for name, result in written["predictions"].items():
        assert result == reference["predictions"][name.split("-")[0]]
    rows = {row["video"]: row for row in reference["summary"]}
    assert all(row == rows[row["video"]] for row in written["summary"])
