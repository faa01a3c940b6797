"""A real Slurm: examples/slurm/submit.sh on a one-node cluster started on this machine.

Slurm comes from Debian's packages (slurmctld, slurmd, slurm-client, munge), installed with
apt-get when `sbatch` or a daemon is missing; without apt-get (or root) the test skips with
one line. The cluster is private to the test: its own munged (own key and socket, so a
munge already running on the machine is left alone), slurmctld and slurmd in the foreground
on free ports, one node with the machine's CPUs (`slurmd -C`), proctrack/linuxproc and
task/none (no cgroups in containers), all state under one temporary folder. They are
stopped, and every job cancelled, when the module ends, whatever happened.

submit.sh then runs unchanged on a slice of sample_data (3 subjects, 2 folds, small-cnn
features, a tiny LSTM): prepare, one array of 3 shards per per-item stage, the fold array,
the finish job, chained by afterok. SBATCH_ARGS shrinks the scripts' resource requests
(4 CPUs, 16G, a GPU) to this machine's. Every job must end COMPLETED with exit code 0, and
the work directory must equal a single-process `fer run` of the same config, run beside it:
deterministic stages (index ... extract) by their item records and output file hashes
(features.h5 byte for byte); training by its results: per-epoch fold logs, validation and
test softmax and model weights (identical in practice, compared to 1e-6) and the test
metrics. Each shard's log shows it did its own share of the items.

Cost: about 2 minutes on 2 cores; installing Slurm adds about 5-10 s from a Debian mirror.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "examples" / "slurm" / "submit.sh"
FER = Path(sys.executable).parent / "fer"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = ["sbatch", "squeue", "scontrol", "sinfo", "scancel", "slurmctld", "slurmd",
            "munged"]
N_SHARDS, N_FOLDS = 3, 2
# The job scripts ask for 4 CPUs, 16G and a GPU each: one CPU and no GPU here.
SBATCH_ARGS = "--cpus-per-task=1 --mem=256M --gres=none --time=00:20:00"
SETTINGS = {  # as tests/test_cluster.py, plus finalize
    "index": {"root": str(ROOT / "sample_data"),
              "exclude_subjects": ["F003", "F004", "M002", "M003", "M004"]},
    "split": {"folds": N_FOLDS, "test_subjects": ["F001"]},
    # huffyuv: byte-reproducible clips, compared by hash (as in tests/test_cluster.py)
    "track": {"size": 64, "codec": "huffyuv"},
    "augment": {"methods": ["flip"]},
    "extract": {"backbone": "small-cnn", "weights": None, "max_frames": 16,
                "augmented": False},
    "train": {"model": "lstm", "model_params": {"units": 8}, "epochs": 2, "batch_size": 4,
              "augmented": False, "tensorboard": False},
    "finalize": {"max_epochs": 2, "patience": 1, "lr_patience": 1},
}
DETERMINISTIC = ["index", "split", "detect", "track", "trim", "augment", "extract"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
JOBS_TIMEOUT_S = 900
# a stage's summary table row: items, processed now, reused, failed, complete, time
SUMMARY = re.compile(r"│ *(?P<items>\d+) *│ *(?P<now>\d+) *│ *\d+ *│ *\d+ *│ *"
                     r"(?P<complete>yes|no) *│")


# --------------------------------------------------------------------------- install
def ensure_slurm() -> None:
    """Install Debian's Slurm and munge packages when a command is missing."""
    if all(shutil.which(c) for c in COMMANDS):
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("Slurm is not installed and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        pytest.skip(f"cannot install Slurm with apt-get: {lines[-1]}")
    missing = [c for c in COMMANDS if not shutil.which(c)]
    assert not missing, f"installed {PACKAGES} but {missing} are still missing"


# --------------------------------------------------------------------------- the cluster
def free_ports(n: int) -> list[int]:
    """n distinct ports nothing listens on (all held open while they are picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


SLURM_CONF = """\
ClusterName=fertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# a job whose dependency failed is cancelled instead of pending for ever
DependencyParameters=kill_invalid_depend
# finished jobs stay visible to `scontrol show job` (no accounting database here)
MinJobAge=3600
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def node_line(host: str) -> str:
    """This machine's NodeName line as slurmd sees the hardware (CPUs, memory)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True,
                         check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("NodeName="))
    return re.sub(r"^NodeName=\S+", f"NodeName={host}", line)


def wait_for(predicate, timeout: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                              for p in sorted(logs.glob("*.log")))
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(0.5)


def all_jobs(env: dict) -> list[dict] | None:
    """Every job and array task the controller knows, {"JobId": ..., "JobState": ...}
    each; None when the controller does not answer."""
    result = subprocess.run(["scontrol", "-o", "show", "job"], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines()
            if line.startswith("JobId=")]


def all_ended(jobs: list[dict] | None) -> bool:
    """Every job ended, or waits for one that failed (kill_invalid_depend cancels those)."""
    return bool(jobs) and all(job.get("JobState") in TERMINAL
                              or job.get("Reason") == "DependencyNeverSatisfied"
                              for job in jobs)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def cluster():
    """slurmctld + slurmd + munged, private to this test; yields the environment to use."""
    if os.geteuid() != 0:
        pytest.skip("a one-node Slurm cluster needs root (slurmd starts jobs as their user)")
    ensure_slurm()
    # short (a socket path), and searchable by all: munged insists on its socket's folder
    base = Path(tempfile.mkdtemp(prefix="fer-slurm-", dir="/tmp"))
    base.chmod(0o755)
    logs = base / "logs"
    for folder in ("state", "spool", "logs", "munge"):
        (base / folder).mkdir()
    (base / "key").mkdir(mode=0o700)
    key = base / "key" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    munge_socket = base / "munge" / "munge.socket"
    conf = base / "slurm.conf"
    ctld_port, slurmd_port = free_ports(2)
    conf.write_text(SLURM_CONF.format(
        host=host, ctld_port=ctld_port, slurmd_port=slurmd_port, socket=munge_socket,
        base=base, node=node_line(host)))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            daemons.append(subprocess.Popen([name, *args], env=env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            start_new_session=True))

    def node_idle() -> bool:
        assert all(d.poll() is None for d in daemons), "a Slurm daemon exited"
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env,
                               capture_output=True, text=True).stdout.split()
        return state == ["idle"]

    try:
        start("munged", "-F", f"--socket={munge_socket}", f"--key-file={key}",
              f"--pid-file={base}/munge/munged.pid", f"--seed-file={base}/munge/seed",
              f"--log-file={logs}/munged.log")
        wait_for(munge_socket.exists, 20, "munged's socket", logs)
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-f", str(conf), "-N", host)
        wait_for(node_idle, 60, f"node {host} idle in sinfo", logs)
        yield {"env": env, "base": base, "host": host}
    finally:
        if daemons and daemons[-1].poll() is None:  # cancel what may still run
            ids = {job["JobId"] for job in all_jobs(env) or []
                   if job.get("JobState") not in TERMINAL}
            if ids:
                subprocess.run(["scancel", *ids], env=env, capture_output=True)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not all_ended(all_jobs(env)):
                    time.sleep(1)
        for daemon in reversed(daemons):
            stop(daemon)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the runs
def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = folder / "fer.yaml"
    config.write_text(yaml.safe_dump({"workdir": str(folder / "work"), **SETTINGS}))
    return config


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> dict:
    """submit.sh on the cluster and, beside it, `fer run` in one process."""
    root = tmp_path_factory.mktemp("slurm")
    slurm_config, single_config = write_config(root / "slurm"), write_config(root / "single")
    env = {**cluster["env"], "FER": str(FER), "SBATCH_ARGS": SBATCH_ARGS,
           "TF_CPP_MIN_LOG_LEVEL": "2",
           # the checkout under test, not whatever `fercli` the interpreter would import
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    submitted = subprocess.run(["bash", str(SUBMIT), str(slurm_config), str(N_SHARDS)],
                               cwd=root / "slurm", env=env, capture_output=True, text=True,
                               timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    with open(root / "single" / "run.log", "wb") as log:
        single = subprocess.Popen([str(FER), "run", "--config", str(single_config)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = {}
    try:
        deadline = time.monotonic() + JOBS_TIMEOUT_S
        while len(seconds) < 2:
            assert time.monotonic() < deadline, f"still running: {all_jobs(env)}"
            if "slurm" not in seconds and all_ended(all_jobs(env)):
                seconds["slurm"] = time.monotonic() - started
            if "single" not in seconds and single.poll() is not None:
                seconds["single"] = time.monotonic() - started
            time.sleep(1)
        assert single.returncode == 0, (root / "single" / "run.log").read_text()[-3000:]
    finally:
        if single.poll() is None:
            single.kill()
            single.wait()
    print(f"\nsubmit.sh to the last job's end: {seconds['slurm']:.0f} s; "
          f"fer run beside it: {seconds['single']:.0f} s")
    return {"root": root, "submit_output": submitted.stdout, "jobs": all_jobs(env),
            "slurm": root / "slurm" / "work", "single": root / "single" / "work",
            "logs": root / "slurm" / "logs"}


def log_name(job: dict) -> str:
    """The job's log, as the #SBATCH --output lines name it (%x-%A_%a.out, %x-%j.out)."""
    if "ArrayJobId" in job:
        return f"{job['JobName']}-{job['ArrayJobId']}_{job['ArrayTaskId']}.out"
    return f"{job['JobName']}-{job['JobId']}.out"


def job_report(runs: dict) -> str:
    """One line per job, then the logs of the jobs that ran but did not complete."""
    lines = [f"{j['JobId']} {j.get('JobName')} task={j.get('ArrayTaskId', '-')} "
             f"{j['JobState']} exit={j.get('ExitCode')} {j.get('Reason')}"
             for j in runs["jobs"]]
    for job in runs["jobs"]:
        log = runs["logs"] / log_name(job)
        if job["JobState"] != "COMPLETED" and log.is_file():
            lines.append(f"--- {log.name}\n{log.read_text()[-2000:]}")
    return "\n".join(lines)


def test_every_job_of_the_chain_completes(runs):
    jobs = runs["jobs"]
    report = job_report(runs)
    assert all(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), report
    names = [j["JobName"] for j in jobs]
    assert sorted(set(names)) == sorted(["fer-prepare", "fer-detect", "fer-track", "fer-trim",
                                         "fer-augment", "fer-extract", "fer-cv-train",
                                         "fer-finish"]), report
    for stage in ("detect", "track", "trim", "augment", "extract"):
        tasks = sorted(int(j["ArrayTaskId"]) for j in jobs if j["JobName"] == f"fer-{stage}")
        assert tasks == list(range(1, N_SHARDS + 1)), (stage, report)
    folds = sorted(int(j["ArrayTaskId"]) for j in jobs if j["JobName"] == "fer-cv-train")
    assert folds == list(range(N_FOLDS)), report
    assert len(jobs) == 2 + 5 * N_SHARDS + N_FOLDS
    # afterok: each job started after the one it waits for ended
    ends = {}
    for j in jobs:
        ends.setdefault(j["JobName"], []).append((j["StartTime"], j["EndTime"]))
    order = ["fer-prepare", "fer-detect", "fer-track", "fer-trim", "fer-augment",
             "fer-extract", "fer-cv-train", "fer-finish"]
    for before, after in zip(order, order[1:]):
        assert max(e for _, e in ends[before]) <= min(s for s, _ in ends[after]), \
            (before, after, report)
    # one log per job and task, as the #SBATCH --output lines name them; every shard did
    # its own share of the items (its summary: items, processed now, ..., complete)
    assert sorted(p.name for p in runs["logs"].glob("*.out")) == \
        sorted(log_name(j) for j in jobs), report
    for stage in ("detect", "track", "trim", "augment", "extract"):
        summaries = [SUMMARY.search(log.read_text())
                     for log in sorted(runs["logs"].glob(f"fer-{stage}-*_*.out"))]
        assert len(summaries) == N_SHARDS and all(summaries), (stage, report)
        totals = {int(s["items"]) for s in summaries}
        done = [int(s["now"]) for s in summaries]
        assert len(totals) == 1 and sum(done) == totals.pop() and min(done) > 0, \
            (stage, done, report)
        assert "yes" in {s["complete"] for s in summaries}, (stage, report)
    finish_log = next(runs["logs"].glob("fer-finish-*.out")).read_text()
    assert "report:" in finish_log and "up to date" in finish_log, finish_log


def manifest(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / "manifest.json").read_text())


def items(workdir: Path, stage: str) -> dict:
    """The manifest's item records, the work directory's path (in some infos) as <work>."""
    text = (workdir / stage / "manifest.json").read_text().replace(str(workdir), "<work>")
    return json.loads(text)["items"]


def test_deterministic_stages_equal_a_single_process_run(runs):
    """Item records (status, output files and hashes, infos) and stage outputs equal. (The
    output hash itself covers infos that name the work directory: trim's clip path.)"""
    slurm, single = runs["slurm"], runs["single"]
    for stage in DETERMINISTIC:
        many, one = manifest(slurm, stage), manifest(single, stage)
        assert many["params_hash"] == one["params_hash"], stage
        assert all(r["status"] == "done" for r in many["items"].values()), stage
        assert items(slurm, stage) == items(single, stage), stage
        assert many["outputs"] == one["outputs"], stage
    assert len(manifest(slurm, "track")["items"]) == 18
    assert (slurm / "extract/features.h5").read_bytes() == \
        (single / "extract/features.h5").read_bytes()


def table(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return rows[0], rows[1:]


def assert_same_table(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Same header, same text cells, numbers equal within atol (observed: identical)."""
    (head_a, rows_a), (head_b, rows_b) = table(a), table(b)
    assert head_a == head_b and len(rows_a) == len(rows_b), (a, b)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for name, x, y in zip(head_a, row_a, row_b, strict=True):
            try:
                assert abs(float(x) - float(y)) <= atol, (a, name, x, y)
            except ValueError:
                assert x == y, (a, name, x, y)


def weights(model: Path) -> dict[str, np.ndarray]:
    """Every weight array of a .keras file (a zip; its own bytes carry save times)."""
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(model) as archive, \
            h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        h5.visititems(lambda name, node: arrays.__setitem__(name, node[()])
                      if isinstance(node, h5py.Dataset) else None)
    return arrays


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys(), (a, b)
    for name in wa:
        assert np.allclose(wa[name], wb[name], rtol=0, atol=atol), (a, name)


def test_training_results_equal_a_single_process_run(runs):
    """Seeded training on CPU: the fold jobs give the single process's curves, softmax,
    weights and test metrics (identical in practice; compared to 1e-6)."""
    slurm, single = runs["slurm"], runs["single"]
    for stage in ("cv-train", "finalize", "evaluate"):
        many, one = manifest(slurm, stage), manifest(single, stage)
        assert many["items"].keys() == one["items"].keys(), stage
        assert all(r["status"] == "done" for r in many["items"].values()), stage
        assert [o["path"] for o in many["outputs"]] == [o["path"] for o in one["outputs"]]
    folds = manifest(slurm, "cv-train")["items"]
    assert sorted(folds) == [f"fold-{k}" for k in range(N_FOLDS)]
    run = folds["fold-0"]["info"]["run"]
    cv, final = Path("cv-train/runs", run), Path("finalize/runs", run)
    for fold in folds:
        assert folds[fold]["info"]["epochs"] == SETTINGS["train"]["epochs"]
        for name in ("log.csv", "val_probs.csv"):
            assert_same_table(slurm / cv / fold / name, single / cv / fold / name)
        assert_same_weights(slurm / cv / fold / "best.keras", single / cv / fold / "best.keras")
    for name in ("summary.csv", "mean_curve.csv"):
        assert_same_table(slurm / cv / name, single / cv / name)
    for fold in manifest(slurm, "finalize")["items"]:  # the early-stopped fold runs
        assert_same_table(slurm / final / fold / "log.csv", single / final / fold / "log.csv")
    assert_same_table(slurm / final / "test_probs.csv", single / final / "test_probs.csv")
    assert_same_weights(slurm / final / "model.keras", single / final / "model.keras")
    # the test-set metrics follow from the predicted labels: equal as text
    assert (slurm / "evaluate/summary.csv").read_text() == \
        (single / "evaluate/summary.csv").read_text()
    assert (slurm / "report/report.html").is_file()
