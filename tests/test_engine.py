"""The resumable engine: up-to-date skip, per-item resume, staleness, locks, shards."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_video

import fercli.stages.index as index_module
from fercli.core.config import load_config
from fercli.core.engine import run_stage, stage_states
from fercli.core.errors import LockError
from fercli.core.workspace import StageLock, atomic_path
from fercli.stages import PIPELINE
from fercli.vision.media import probe as real_probe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def probes(monkeypatch):
    """Count the per-item work of `fer index` (one probe per video)."""
    calls = []
    real = index_module.probe

    def counting(path, fps):
        calls.append(Path(path).name)
        return real(path, fps)

    monkeypatch.setattr(index_module, "probe", counting)
    return calls


def _cfg(tmp_path, root, *extra):
    return load_config(None, [f"workdir={tmp_path / 'work'}", f"index.root={root}", *extra])


def test_second_run_does_no_work(tmp_path, bu_videos, probes, fer):
    cfg = _cfg(tmp_path, bu_videos)
    first = run_stage(PIPELINE["index"], cfg, PIPELINE)
    assert len(probes) == 18 and first.n_processed == 18
    second = run_stage(PIPELINE["index"], cfg, PIPELINE)
    assert second.skipped and len(probes) == 18      # the per-item work ran once
    result = fer("index", bu_videos, "--set", f"workdir={tmp_path / 'work'}")
    assert "index: up to date (18 items)" in result.output


def test_param_change_reruns_stage_and_marks_downstream_stale(tmp_path, bu_videos, probes):
    cfg = _cfg(tmp_path, bu_videos, "split.folds=2")
    run_stage(PIPELINE["index"], cfg, PIPELINE)
    run_stage(PIPELINE["split"], cfg, PIPELINE)
    states = stage_states(cfg, PIPELINE)
    assert states["index"].status == states["split"].status == "up to date"

    changed = _cfg(tmp_path, bu_videos, "split.folds=2", "index.exclude_subjects=[F001]")
    states = stage_states(changed, PIPELINE)
    assert states["index"].status == "stale"
    assert "index.exclude_subjects [] -> ['F001']" in states["index"].reason
    assert states["split"].status == "stale" and "upstream `index` is stale" in \
        states["split"].reason
    # a change in split only leaves index alone
    split_only = _cfg(tmp_path, bu_videos, "split.folds=3")
    states = stage_states(split_only, PIPELINE)
    assert states["index"].status == "up to date" and states["split"].status == "stale"
    assert "split.folds 2 -> 3" in states["split"].reason

    n = len(probes)
    run_stage(PIPELINE["index"], changed, PIPELINE)
    assert len(probes) == n  # same videos, same fingerprints: records reused
    assert stage_states(changed, PIPELINE)["split"].reason == "upstream `index` changed"


def test_new_source_file_makes_index_stale(tmp_path, bu_videos, probes):
    cfg = _cfg(tmp_path, bu_videos)
    run_stage(PIPELINE["index"], cfg, PIPELINE)
    write_video(bu_videos / "M009_fear_tex.avi")
    state = stage_states(cfg, PIPELINE)["index"]
    assert state.status == "stale" and state.reason == "source files changed"
    n = len(probes)
    run_stage(PIPELINE["index"], cfg, PIPELINE)
    assert probes[n:] == ["M009_fear_tex.avi"]  # only the new video is probed


def test_interrupted_index_resumes_without_corrupt_files(tmp_path, bu_videos, probes,
                                                         monkeypatch):
    cfg = _cfg(tmp_path, bu_videos)
    real = real_probe

    def dies_after_five(path, fps):
        if len(probes) == 5:
            raise KeyboardInterrupt  # what a kill looks like to the loop
        probes.append(Path(path).name)
        return real(path, fps)

    monkeypatch.setattr(index_module, "probe", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_stage(PIPELINE["index"], cfg, PIPELINE)
    stage_dir = tmp_path / "work/index"
    assert not (stage_dir / "manifest.json").exists()
    assert not (stage_dir / "index.csv").exists()
    assert len(list((stage_dir / "records").glob("*.json"))) == 5
    assert stage_states(cfg, PIPELINE)["index"].status == "incomplete"
    assert not (stage_dir / ".lock").exists()

    monkeypatch.setattr(index_module, "probe", lambda p, f: (probes.append(Path(p).name),
                                                             real(p, f))[1])
    result = run_stage(PIPELINE["index"], cfg, PIPELINE)
    assert result.n_reused == 5 and result.n_processed == 13
    assert len(probes) == 18 and len(set(probes)) == 18  # nothing done twice
    assert len((stage_dir / "index.csv").read_text().splitlines()) == 19


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    for i in range(40):
        write_video(data / f"F{i:03d}_happy_tex.avi", n_frames=30, size=(320, 240))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fer = [sys.executable, "-m", "fercli.cli"]

    def run(workdir, kill_after=None):
        cmd = [*fer, "index", str(data), "--set", f"workdir={workdir}"]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if kill_after is None:
            return proc.wait(timeout=300)
        records = Path(workdir) / "index" / "records"
        deadline = time.time() + 120
        while time.time() < deadline and len(list(records.glob("*.json"))) < kill_after:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None

    assert run(tmp_path / "ref") == 0
    run(tmp_path / "killed", kill_after=10)
    killed = tmp_path / "killed/index"
    assert not (killed / "index.csv").exists()
    assert run(tmp_path / "killed") == 0  # stale lock of the dead pid is taken over
    assert not list(killed.rglob(".*tmp*"))  # a temp file the kill left is cleaned up
    for name in ("index.csv", "classes.json", "excluded.csv", "stats.csv"):
        ref = (tmp_path / "ref/index" / name).read_text().replace(str(tmp_path / "ref"), "")
        got = (killed / name).read_text().replace(str(tmp_path / "killed"), "")
        assert ref == got, name


def test_lock_blocks_a_second_writer_and_dead_lock_is_taken_over(tmp_path, bu_videos):
    cfg = _cfg(tmp_path, bu_videos)
    lock_path = tmp_path / "work/index/.lock"
    holder = StageLock(lock_path, "stage `index`")
    holder.acquire()
    # simulate another live process on this host
    info = json.loads(lock_path.read_text())
    info["pid"] = os.getppid()
    lock_path.write_text(json.dumps(info))
    with pytest.raises(LockError, match=r"locked by pid \d+ on .* since"):
        run_stage(PIPELINE["index"], cfg, PIPELINE)
    # a dead pid on this host: taken over
    info["pid"] = 2 ** 22 + 12345
    lock_path.write_text(json.dumps(info))
    assert run_stage(PIPELINE["index"], cfg, PIPELINE).n_processed == 18
    assert not lock_path.exists()


def test_shards_combine_and_status_shows_union(tmp_path, bu_videos, probes):
    cfg = _cfg(tmp_path, bu_videos)
    first = run_stage(PIPELINE["index"], cfg, PIPELINE, shard=(1, 3))
    assert first.n_processed == 6 and not first.complete
    state = stage_states(cfg, PIPELINE)["index"]
    assert state.status == "incomplete" and state.n_done == 6
    run_stage(PIPELINE["index"], cfg, PIPELINE, shard=(3, 3))
    assert stage_states(cfg, PIPELINE)["index"].n_done == 12
    last = run_stage(PIPELINE["index"], cfg, PIPELINE, shard=(2, 3))
    assert last.complete and len(probes) == 18
    assert stage_states(cfg, PIPELINE)["index"].status == "up to date"


def test_force_redoes_the_stage(tmp_path, bu_videos, probes):
    cfg = _cfg(tmp_path, bu_videos)
    run_stage(PIPELINE["index"], cfg, PIPELINE)
    run_stage(PIPELINE["index"], cfg, PIPELINE, force=True)
    assert len(probes) == 36


def test_parallel_workers_give_the_same_table(tmp_path, bu_videos):
    one = _cfg(tmp_path / "a", bu_videos)
    two = _cfg(tmp_path / "b", bu_videos)
    run_stage(PIPELINE["index"], one, PIPELINE)
    run_stage(PIPELINE["index"], two, PIPELINE, workers=2)
    assert (one.workdir / "index/index.csv").read_text() == \
        (two.workdir / "index/index.csv").read_text()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_invalid_manifest_is_a_one_line_error(fer, bu_videos, tmp_path):
    assert fer("index", bu_videos).exit_code == 0
    (tmp_path / "work/index/manifest.json").write_text("{ not json")
    result = fer("status")
    assert result.exit_code == 7
    assert "manifest.json: manifest is not valid JSON" in result.output
    assert "Delete it, or re-run the stage with --force" in result.output
