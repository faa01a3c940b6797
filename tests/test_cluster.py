"""The cluster examples (examples/slurm, examples/sge) and multi-device training.

Cheap checks first: every script parses (bash -n), every `fer` command and option they use
exists, array task ids map to the right --shard K/N and --fold K, and submit.sh chains the
jobs with dependencies (sbatch/qsub replaced by stubs that log their arguments).

Then the scripts run for real, as array tasks would: three `fer detect` shards (the SLURM
script) and three `fer track` shards (the SGE script) started at once over one work
directory give the artifacts of a single-process run; two CV folds run as concurrent
processes complete `fer cv-train`; and `fer cv-train` under train.strategy=mirrored trains
on two logical CPU devices (the multi-GPU code path, issue 8). About 90 s in all.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fercli.core.config import load_config
from fercli.core.engine import run_stage
from fercli.stages import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p for p in (*EXAMPLES.glob("slurm/*"), *EXAMPLES.glob("sge/*"))
                 if p.suffix in (".sh", ".sbatch", ".sge"))
FER = Path(sys.executable).parent / "fer"
N_SHARDS = 3
SETTINGS = {
    "index": {"root": str(ROOT / "sample_data"),
              "exclude_subjects": ["F003", "F004", "M002", "M003", "M004"]},
    "split": {"folds": 2, "test_subjects": ["F001"]},
    # huffyuv .avi clips are byte-reproducible; FFV1 .mkv headers carry a random segment
    # UID, so their sha256 differs run to run even for identical frames
    "track": {"size": 64, "codec": "huffyuv"},
    "augment": {"methods": ["flip"]},
    "extract": {"backbone": "small-cnn", "weights": None, "max_frames": 16,
                "augmented": False},
    "train": {"model": "lstm", "model_params": {"units": 8}, "epochs": 1, "batch_size": 4,
              "augmented": False, "tensorboard": False},
}
# Splits the CPU into two logical devices before TensorFlow starts, then runs `fer`.
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fercli.cli import main
sys.argv = ["fer", *sys.argv[1:]]
main()
"""


# --------------------------------------------------------------------------- script text
def fer_calls(script: Path) -> list[list[str]]:
    """Every `"$FER" ...` command line of a script, continuation lines joined, as words."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        match = re.search(r'"\$FER" (.*)', line)
        if match:
            command = match.group(1).split("||")[0].split("|")[0].split(")")[0]
            calls.append(shlex.split(command))
    return calls


def stages_of(submit: Path) -> list[str]:
    return re.search(r'^STAGES="([^"]+)"', submit.read_text(), re.M).group(1).split()


def test_every_script_parses():
    assert len(SCRIPTS) == 10
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert script.read_text().startswith("#!/usr/bin/env bash\n"), script.name


def test_every_fer_command_and_option_the_scripts_use_exists(runner, monkeypatch):
    from fercli.cli import app

    monkeypatch.setenv("COLUMNS", "200")  # no wrapped option names in the help text
    used: dict[tuple[str, ...], set[str]] = {}
    for script in SCRIPTS:
        stages = stages_of(script.parent / "submit.sh")
        for words in fer_calls(script):
            command = tuple(w for w in words[:2] if not w.startswith("-")
                            and not w.startswith("$")) if words[0] != "$STAGE" else ()
            options = {w for w in words if w.startswith("--")}
            for name in ([(s,) for s in stages] if words[0] == "$STAGE" else [command]):
                used.setdefault(name, set()).update(options)
    assert {("detect",), ("extract",), ("cv-train",), ("finalize",), ("report",),
            ("config", "show"), ("index",), ("split",)} <= set(used)
    for command, options in used.items():
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, f"fer {' '.join(command)}: {result.output}"
        for option in options:
            assert option in result.output, f"`fer {' '.join(command)}` has no {option}"


# --------------------------------------------------------------------------- task numbering
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
{body}
"""


def stub(folder: Path, name: str, body: str = "") -> Path:
    path = folder / name
    path.write_text(STUB.format(body=body))
    path.chmod(0o755)
    return path


def run_script(script: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_array_task_ids_map_to_shards_and_folds(tmp_path):
    log = tmp_path / "calls.log"
    fake_fer = stub(tmp_path, "fer", 'exit "${STUB_EXIT:-0}"')
    base = {"FER": str(fake_fer), "CONFIG": "/data/fer.yaml", "STUB_LOG": str(log)}
    slurm, sge = EXAMPLES / "slurm", EXAMPLES / "sge"
    cases = [  # script, task env, expected fer arguments
        (slurm / "stage_array.sbatch", {"SLURM_ARRAY_TASK_ID": "1", "NSHARDS": "3"},
         "--shard 1/3"),
        (slurm / "stage_array.sbatch", {"SLURM_ARRAY_TASK_ID": "3",
                                        "SLURM_ARRAY_TASK_COUNT": "3"}, "--shard 3/3"),
        (sge / "stage_array.sge", {"SGE_TASK_ID": "1", "SGE_TASK_LAST": "4"}, "--shard 1/4"),
        (slurm / "cv_fold_array.sbatch", {"SLURM_ARRAY_TASK_ID": "0"}, "--fold 0"),
        (sge / "cv_fold_array.sge", {"SGE_TASK_ID": "1"}, "--fold 0"),
        (sge / "cv_fold_array.sge", {"SGE_TASK_ID": "5"}, "--fold 4"),
    ]
    for script, env, expected in cases:
        log.unlink(missing_ok=True)
        result = run_script(script, {**base, **env}, "track")
        assert result.returncode == 0, result.stderr
        assert expected in log.read_text(), (script.name, env, log.read_text())
        assert "--config /data/fer.yaml" in log.read_text()
    # some items failed (exit 6): the chain goes on; any other failure stops it
    for exit_code, slurm_rc, sge_rc in ((6, 0, 0), (1, 1, 100)):
        env = {**base, "STUB_EXIT": str(exit_code), "NSHARDS": "2"}
        assert run_script(slurm / "stage_array.sbatch", {**env, "SLURM_ARRAY_TASK_ID": "1"},
                          "detect").returncode == slurm_rc
        assert run_script(sge / "stage_array.sge", {**env, "SGE_TASK_ID": "1"},
                          "detect").returncode == sge_rc
    assert run_script(sge / "cv_fold_array.sge", {**base, "STUB_EXIT": "1",
                                                  "SGE_TASK_ID": "1"}).returncode == 100
    missing = run_script(slurm / "stage_array.sbatch", {**base, "NSHARDS": "2"}, "detect")
    assert missing.returncode != 0 and "array job" in missing.stderr


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_submit_chains_the_jobs_with_dependencies(tmp_path, scheduler):
    log = tmp_path / "calls.log"
    counter = ('n=$(($(cat "$STUB_LOG.n" 2>/dev/null || echo 100) + 1)); '
               'echo $n > "$STUB_LOG.n"; ')
    stub(tmp_path, "sbatch", counter + 'echo "$n;cluster1"')
    stub(tmp_path, "qsub", counter + 'case "$*" in *" -t "*) echo "$n.1-3:1";; '
                                     '*) echo "$n";; esac')
    config = tmp_path / "fer.yaml"
    config.write_text("split:\n  folds: 4\n")
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "FER": str(FER),
           "STUB_LOG": str(log)}
    result = subprocess.run(["bash", str(EXAMPLES / scheduler / "submit.sh"), str(config),
                             "3"], env={**os.environ, **env}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 8  # prepare, 5 stage arrays, folds, finish
    stages = ["detect", "track", "trim", "augment", "extract"]
    if scheduler == "slurm":
        assert "--dependency" not in calls[0] and calls[0].endswith("prepare.sbatch")
        for n, (call, stage) in enumerate(zip(calls[1:6], stages, strict=True), start=101):
            assert f"--dependency=afterok:{n} --array=1-3" in call
            assert call.endswith(f"stage_array.sbatch {stage}")
        assert "--dependency=afterok:106 --array=0-3 " in calls[6]  # folds 0..3
        assert "--dependency=afterok:107 " in calls[7] and calls[7].endswith("finish.sbatch")
    else:
        assert "-hold_jid" not in calls[0] and calls[0].endswith("prepare.sge")
        for n, (call, stage) in enumerate(zip(calls[1:6], stages, strict=True), start=101):
            assert f"-hold_jid {n} -t 1-3" in call and call.endswith(f"stage_array.sge {stage}")
        assert "-hold_jid 106 -t 1-4 " in calls[6]  # task ids 1..4 are folds 0..3
        assert "-hold_jid 107 " in calls[7] and calls[7].endswith("finish.sge")
    assert (tmp_path / "logs").is_dir()


# --------------------------------------------------------------------------- real array runs
def write_config(path: Path, workdir: Path) -> Path:
    path.write_text(yaml.safe_dump({"workdir": str(workdir), **SETTINGS}))
    return path


def start_tasks(script: Path, config: Path, task_variable: str, task_ids, *args: str):
    """Array tasks as the scheduler would start them: all at once, one process each."""
    env = {**os.environ, "FER": str(FER), "CONFIG": str(config), "NSHARDS": str(N_SHARDS),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return [subprocess.Popen(["bash", str(script), *args],
                             env={**env, task_variable: str(task)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for task in task_ids]


def wait_all(processes) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def manifest(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """One work directory made by array tasks, one by a single process."""
    root = tmp_path_factory.mktemp("cluster")
    single, sharded = root / "single" / "work", root / "sharded" / "work"
    configs = {}
    for workdir in (single, sharded):
        workdir.parent.mkdir()
        configs[workdir] = write_config(workdir.parent / "fer.yaml", workdir)
        cfg = load_config(configs[workdir], [])
        for stage in ("index", "split"):
            run_stage(PIPELINE[stage], cfg, PIPELINE)
    cfg = load_config(configs[single], [])
    for stage in ("detect", "track"):
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    tasks = range(1, N_SHARDS + 1)
    wait_all(start_tasks(EXAMPLES / "slurm/stage_array.sbatch", configs[sharded],
                         "SLURM_ARRAY_TASK_ID", tasks, "detect"))
    wait_all(start_tasks(EXAMPLES / "sge/stage_array.sge", configs[sharded],
                         "SGE_TASK_ID", tasks, "track"))
    return {"single": single, "sharded": sharded, "config": configs[sharded]}


def test_concurrent_shards_give_the_single_process_artifacts(sharded):
    single, work = sharded["single"], sharded["sharded"]
    assert (work / "detect/detections.csv").read_bytes() == \
        (single / "detect/detections.csv").read_bytes()
    for stage in ("detect", "track"):
        one, many = manifest(single, stage), manifest(work, stage)
        assert len(many["items"]) == 18 and all(r["status"] == "done"
                                                for r in many["items"].values())
        assert many["output_hash"] == one["output_hash"], stage
    clips = {workdir: {i: [o["sha256"] for o in r["outputs"]]
                       for i, r in manifest(workdir, "track")["items"].items()}
             for workdir in (single, work)}
    assert clips[work] == clips[single]
    assert all(len(hashes) == 2 for hashes in clips[work].values())  # clip + boxes
    assert not list((work / "detect").glob(".lock*"))  # every shard released its lock


@pytest.fixture(scope="module")
def extracted(sharded) -> dict:
    cfg = load_config(sharded["config"], [])
    for stage in ("trim", "augment", "extract"):
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    return sharded


@pytest.mark.slow
def test_concurrent_fold_tasks_complete_cv_train(extracted):
    work = extracted["sharded"]
    wait_all(start_tasks(EXAMPLES / "slurm/cv_fold_array.sbatch", extracted["config"],
                         "SLURM_ARRAY_TASK_ID", (0, 1)))
    folds = manifest(work, "cv-train")["items"]
    assert sorted(folds) == ["fold-0", "fold-1"]
    assert all(r["status"] == "done" for r in folds.values())
    run = folds["fold-0"]["info"]["run"]
    assert (work / "cv-train/runs" / run / "run.json").is_file()


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_devices(extracted, tmp_path):
    """train.strategy=mirrored with the CPU split in two: the multi-GPU code path."""
    wrapper = tmp_path / "two_cpus.py"
    wrapper.write_text(TWO_CPUS)
    args = [sys.executable, str(wrapper), "cv-train", "--config", str(extracted["config"]),
            "--set", "train.strategy=mirrored", "--set", "train.batch_size=3"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    folds = manifest(extracted["sharded"], "cv-train")["items"]
    assert manifest(extracted["sharded"], "cv-train")["params"]["train"]["strategy"] == \
        "mirrored"
    for fold in ("fold-0", "fold-1"):
        info = folds[fold]["info"]
        devices = json.loads((extracted["sharded"] / "cv-train/runs" / info["run"] / fold
                              / "devices.json").read_text())
        assert "2 logical devices: CPU:0, CPU:1" in devices
        assert info["epochs"] == 1 and info["train_rows"] > 0
