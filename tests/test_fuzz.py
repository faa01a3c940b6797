"""Fuzz test of the CLI (issue 15, item 6): odd `--set` values and damaged artifacts.

Every outcome must be exit 0 or a known exit code (fercli/core/errors.py) with exactly one
`Error:` line, the last one on stderr, and never a traceback, a hang or a memory-limit
kill. Cases are drawn from a fixed seed (FER_FUZZ_SEED), so a failure names its run id
and replays; FER_FUZZ_SCALE (default 1) multiplies the number of cases for a longer
local run.

* config: for every key of fercli.core.config.SCHEMA / GLOBAL_SCHEMA, values of wrong and edge
  types and ranges (YAML tags, anchors and alias bombs, NaN/inf, huge numbers and strings,
  control characters, unicode, bytes that are not UTF-8) and malformed keys, run through
  `fer config show --set key=value`; a value it accepts must also load back from the YAML
  it prints (`fer config show -c printed.yaml`, same output). Some run as `fer status`
  on a real work directory, and a sample as real `python -m fercli.cli` processes.
* stage settings: a stage command on a small real work directory with a random setting at
  the edge of its range (cheap values only: no 1024-pixel clips).
* artifacts: for every artifact kind a work directory (sample_data through `fer run`,
  training included) gets copies with the file truncated (0, 1, half, len-1 bytes),
  bytes flipped, a digit changed or junk appended; then `fer status`, `fer verify`, the
  stage itself and the stage that reads the artifact (its record for that item removed,
  as if it had been interrupted before it, or --force); for the first damage of each
  kind also `fer verify --repair`, `fer run --until <stage>` and `fer verify`, which
  must then succeed.

Runs happen in a driver process (this file run as a script) under a memory limit
(RLIMIT_AS), many in-process through typer's CliRunner (a non-SystemExit exception there
is a traceback) to save start-up time; the parent watches each run's time and restarts
the driver after a hang or crash. The counts go to <pytest basetemp>/fuzz_counts.json and
.md (and $FER_FUZZ_REPORT when set) and are printed (pytest -s).
Cost on 2 busy cores: config ~30 s (no TensorFlow, left in the quick tier); the work
directory ~45 s, stage settings ~35 s and artifacts ~90 s (marked slow).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("FER_FUZZ_SEED", "150006"))
SCALE = float(os.environ.get("FER_FUZZ_SCALE", "1"))
KNOWN_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 130}
MEMORY_LIMIT = 8 * 2**30  # address space: TensorFlow maps ~2 GiB on import, runs here peak ~3.9
RUN_TIMEOUT_S = 60.0  # one command on the small work directory takes at most ~20 s
SETTINGS = [  # tests/data/make_bad.py's SMALL_PIPELINE, one epoch, through finalize
    f"index.root={ROOT / 'sample_data'}", "index.exclude_subjects=[F003, F004, M004]",
    "index.classes=[happy, sad, surprise]", "split.folds=2", "split.test_fraction=0.2",
    "track.size=64", "augment.methods=[flip]", "extract.backbone=small-cnn",
    "extract.max_frames=40", "train.epochs=1", "train.batch_size=8", "train.tensorboard=false",
    "train.model_params={dense_units: [16]}", "finalize.max_epochs=1", "finalize.patience=1",
    "finalize.lr_patience=1",
]


def settings(workdir: Path | str, *extra: str) -> list[str]:
    args: list[str] = []
    for setting in [f"workdir={workdir}", *SETTINGS, *extra]:
        args += ["--set", setting]
    return args


# =========================================================================== the driver
# `python tests/test_fuzz.py --driver RUNS.json RESULTS.jsonl START` runs RUNS[START:],
# appending a "start" and an "end" line per run to RESULTS, so the parent knows which run
# hung or crashed. A run: {"id", "argv", "setup": [op, ...], "cleanup": [path, ...],
# "subprocess": bool, "roundtrip": bool, "timeout": s}.

def _apply(op: list) -> None:
    kind, path = op[0], Path(op[1])
    if kind == "copytree":
        if not Path(op[2]).exists():
            shutil.copytree(path, op[2], symlinks=True)
    elif kind == "remove":
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    elif kind == "truncate":
        os.truncate(path, op[2])
    elif kind == "flip":  # [offset, xor mask] pairs, offsets modulo the size
        data = bytearray(path.read_bytes())
        for offset, mask in op[2]:
            if data:
                data[offset % len(data)] ^= mask
        path.write_bytes(bytes(data))
    elif kind == "digit":  # one decimal digit changed to another: still parses, other value
        data = bytearray(path.read_bytes())
        digits = [k for k, b in enumerate(data) if 48 <= b <= 57]
        if digits:
            k = digits[op[2] % len(digits)]
            data[k] = 48 + (data[k] - 48 + 1 + op[3] % 9) % 10
        path.write_bytes(bytes(data))
    elif kind == "append":
        with open(path, "ab") as handle:
            handle.write(bytes.fromhex(op[2]))
    elif kind == "write":
        path.write_text(op[2], encoding="utf-8")
    elif kind == "write_hex":
        path.write_bytes(bytes.fromhex(op[2]))
    else:
        raise ValueError(f"unknown setup op {op!r}")


def _summary(stdout: str, stderr: str) -> dict:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"errors": [line for line in lines if line.startswith("Error:")][:3],
            "last": lines[-1] if lines else "",
            "traceback": "Traceback (most recent call last)" in stdout + stderr,
            "stdout_tail": stdout[-600:], "stderr_tail": stderr[-1500:]}


def _vm_peak_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _invoke(runner, app, run: dict) -> dict:
    if run.get("subprocess"):
        args = [sys.executable, "-m", "fercli.cli", *run["argv"]]
        try:
            done = subprocess.run(args, capture_output=True, timeout=run["timeout"])
        except subprocess.TimeoutExpired as exc:
            return {"hang": True, "exit": None,
                    **_summary((exc.stdout or b"").decode("utf-8", "replace"),
                               (exc.stderr or b"").decode("utf-8", "replace"))}
        out = {"exit": done.returncode, "exception": None,
               **_summary(done.stdout.decode("utf-8", "replace"),
                          done.stderr.decode("utf-8", "replace"))}
        if done.returncode < 0:
            out["signal"] = -done.returncode
        return out
    result = runner.invoke(app, run["argv"], catch_exceptions=True)
    out = {"exit": result.exit_code, "exception": None, **_summary(result.stdout,
                                                                    result.stderr)}
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        out["exception"] = type(exc).__name__
        out["traceback_text"] = "".join(traceback.format_exception(*result.exc_info))[-4000:]
    return out


def driver(runs_path: str, results_path: str, start: int) -> None:
    spec = json.loads(Path(runs_path).read_text())
    os.chdir(spec["cwd"])  # no fer.yaml here: every setting comes from --set
    import typer.testing

    from fercli.cli import app

    if hasattr(typer.testing, "_get_command"):  # typer rebuilds the command per invoke (60 ms)
        command = typer.testing._get_command(app)
        typer.testing._get_command = lambda _app: command
    runner = typer.testing.CliRunner()
    with open(results_path, "a", encoding="utf-8") as results:
        def emit(record: dict) -> None:
            results.write(json.dumps(record) + "\n")
            results.flush()

        for i, run in enumerate(spec["runs"][start:], start):
            emit({"i": i, "event": "start"})
            os.write(2, f"\n=== fuzz run {i}\n".encode())  # splits the fd-2 log per run
            for op in run.get("setup", []):
                _apply(op)
            started = time.perf_counter()
            out = _invoke(runner, app, run)
            out["seconds"] = round(time.perf_counter() - started, 3)
            if run.get("roundtrip") and out["exit"] == 0:
                text = out.pop("stdout_full", None)
                out["roundtrip"] = _roundtrip(runner, app, run, spec["cwd"], text)
            out["vm_peak_kb"] = _vm_peak_kb()
            emit({"i": i, "event": "end", **out})
            for path in run.get("cleanup", []):
                _apply(["remove", path])


def _roundtrip(runner, app, run: dict, cwd: str, text: str | None) -> dict:
    """The YAML that `config show` printed must load back to the same configuration."""
    first = runner.invoke(app, run["argv"], catch_exceptions=True).stdout
    body = first.split("\n", 1)[1] if first.startswith("# config file:") else first
    path = Path(cwd) / "roundtrip.yaml"
    path.write_text(body, encoding="utf-8")
    again = runner.invoke(app, ["config", "show", "-c", str(path)], catch_exceptions=True)
    second = again.stdout.split("\n", 1)[1] if again.stdout.startswith("#") else again.stdout
    out = {"exit": again.exit_code, "same": second == body, **_summary(again.stdout,
                                                                       again.stderr)}
    if again.exception is not None and not isinstance(again.exception, SystemExit):
        out["exception"] = type(again.exception).__name__
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["--driver"]:
    driver(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    sys.exit(0)

# =========================================================================== the parent
import pytest  # noqa: E402  (the driver above runs without pytest)

from fercli.core.config import GLOBAL_SCHEMA, SCHEMA, Param  # noqa: E402
from fercli.stages import PIPELINE  # noqa: E402

COUNTS: dict = {"seed": SEED, "scale": SCALE, "runs": 0, "by_kind": Counter(),
                "exit_codes": Counter(), "tracebacks": 0, "hangs": 0, "memory_kills": 0,
                "crashes": 0, "failures": [], "seconds": {}, "max_vm_peak_mib": 0,
                "damaged_copies": 0}


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def execute(runs: list[dict], folder: Path, label: str) -> list[dict]:
    """Run ``runs`` in driver processes under the limits; one outcome per run."""
    folder.mkdir(parents=True, exist_ok=True)
    cwd = folder / "cwd"
    cwd.mkdir(exist_ok=True)
    spec, results = folder / f"{label}.runs.json", folder / f"{label}.results.jsonl"
    log = folder / f"{label}.fd2.log"
    spec.write_text(json.dumps({"cwd": str(cwd), "runs": runs}))
    results.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
    outcomes: dict[int, dict] = {}
    offset, start = 0, 0
    while start < len(runs):
        with open(log, "ab") as err:
            proc = subprocess.Popen([sys.executable, __file__, "--driver", str(spec),
                                     str(results), str(start)], stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, cwd=cwd, preexec_fn=_limit_memory,
                                    start_new_session=True)
        current, since = None, 0.0
        while True:
            done = proc.poll()
            with open(results, encoding="utf-8") as handle:
                handle.seek(offset)
                chunk = handle.read()
            complete = chunk[:chunk.rfind("\n") + 1]
            offset += len(complete.encode("utf-8"))
            for line in complete.splitlines():
                record = json.loads(line)
                if record["event"] == "start":
                    current, since = record["i"], time.monotonic()
                else:
                    outcomes[record["i"]] = record
                    current = None
            if done is not None:
                break
            if current is not None and time.monotonic() - since > runs[current]["timeout"]:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                outcomes[current] = {"i": current, "hang": True, "exit": None}
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers of a killed run, if any
        if current is not None and current not in outcomes:  # died inside a run
            outcomes[current] = {"i": current, "crash": proc.returncode, "exit": None}
        elif done is not None and done != 0 and current is None and len(outcomes) < len(runs):
            pytest.fail(f"fuzz driver exited {done} between runs; see {log}")
        start = max(outcomes, default=-1) + 1
    fd2 = _split_fd2(log.read_text(encoding="utf-8", errors="replace"))
    for i, outcome in outcomes.items():
        outcome["fd2_traceback"] = "Traceback (most recent call last)" in fd2.get(i, "")
        if outcome["fd2_traceback"]:
            outcome["fd2_tail"] = fd2[i][-3000:]
    return [outcomes[i] for i in range(len(runs))]


def _split_fd2(text: str) -> dict[int, str]:
    parts: dict[int, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("=== fuzz run "):
            current = int(line.split()[-1])
            parts.setdefault(current, "")
        elif current is not None:
            parts[current] += line + "\n"
    return parts


def problems(run: dict, outcome: dict) -> list[str]:
    """What is wrong with one outcome; [] when it keeps every rule."""
    found = []
    if outcome.get("hang"):
        return [f"no result within {run['timeout']} s (hang)"]
    if outcome.get("crash") is not None:
        return [f"the driver died in this run (exit status {outcome['crash']}: memory limit "
                f"or a crash in native code)"]
    if outcome.get("exception"):
        found.append(f"traceback: {outcome['exception']}\n{outcome.get('traceback_text', '')}")
    if outcome.get("traceback"):
        found.append("'Traceback' in the output")
    if outcome.get("fd2_traceback"):
        found.append(f"'Traceback' on stderr (a worker?):\n{outcome.get('fd2_tail', '')}")
    if outcome.get("signal"):
        found.append(f"killed by signal {outcome['signal']}")
    code = outcome["exit"]
    if code not in KNOWN_EXIT_CODES:
        found.append(f"exit code {code} is not a known one")
    if run.get("expect") is not None and code not in run["expect"]:
        found.append(f"exit code {code}, expected {run['expect']}")
    if code == 0 and outcome["errors"]:
        found.append(f"exit 0 with an error line: {outcome['errors'][0]}")
    if code not in (0, None) and not outcome.get("exception"):
        if len(outcome["errors"]) != 1:
            found.append(f"{len(outcome['errors'])} `Error:` lines, expected one")
        elif outcome["last"] != outcome["errors"][0]:
            found.append(f"the last stderr line is not the `Error:` line: {outcome['last']!r}")
    trip = outcome.get("roundtrip")
    if trip is not None and (trip["exit"] != 0 or not trip["same"] or trip.get("exception")):
        found.append(f"the printed config does not load back the same: exit {trip['exit']}, "
                     f"same={trip['same']}, {trip.get('exception') or trip['errors']}")
    return found


def record(runs: list[dict], outcomes: list[dict], seconds: float, label: str) -> list[str]:
    failures = []
    for run, outcome in zip(runs, outcomes):
        COUNTS["runs"] += 1
        COUNTS["by_kind"][run["kind"]] += 1
        COUNTS["exit_codes"]["hang" if outcome.get("hang") else "crash"
                             if outcome.get("crash") is not None else outcome["exit"]] += 1
        COUNTS["hangs"] += bool(outcome.get("hang"))
        COUNTS["crashes"] += outcome.get("crash") is not None
        COUNTS["tracebacks"] += bool(outcome.get("exception") or outcome.get("traceback")
                                     or outcome.get("fd2_traceback"))
        COUNTS["memory_kills"] += outcome.get("exception") == "MemoryError"
        COUNTS["max_vm_peak_mib"] = max(COUNTS["max_vm_peak_mib"],
                                        outcome.get("vm_peak_kb", 0) // 1024)
        found = problems(run, outcome)
        if found:
            argv = " ".join(repr(a) if " " in a or not a.isprintable() else a
                            for a in run["argv"])
            argv = argv if len(argv) <= 600 else argv[:600] + "..."
            message = (f"[seed {SEED}] run {run['id']}: fer {argv}\n  " + "\n  ".join(found)
                       + f"\n  setup: {run.get('setup', [])}\n  stderr: "
                       + outcome.get("stderr_tail", "")[-800:])
            failures.append(message)
            COUNTS["failures"].append(message)
    COUNTS["seconds"][label] = round(seconds, 1)
    _write_counts()
    return failures


REPORT_PATHS: list[Path] = []


def _write_counts() -> None:
    counts = {**COUNTS, "by_kind": dict(COUNTS["by_kind"]),
              "exit_codes": {str(k): v for k, v in sorted(COUNTS["exit_codes"].items(),
                                                          key=lambda kv: str(kv[0]))}}
    lines = [f"fuzz (seed {SEED}, scale {SCALE}): {counts['runs']} runs "
             f"({', '.join(f'{k} {v}' for k, v in counts['by_kind'].items())}); "
             f"{counts['damaged_copies']} damaged work-directory copies",
             "exit codes: " + ", ".join(f"{k}: {v}" for k, v in counts["exit_codes"].items()),
             f"tracebacks {counts['tracebacks']}, hangs {counts['hangs']}, memory-limit kills "
             f"{counts['memory_kills']}, crashes {counts['crashes']}; largest address "
             f"space {counts['max_vm_peak_mib']} MiB of the {MEMORY_LIMIT >> 20} MiB limit",
             "seconds: " + ", ".join(f"{k} {v}" for k, v in counts["seconds"].items())]
    for path in REPORT_PATHS:
        path.with_suffix(".json").write_text(json.dumps(counts, indent=1))
        path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


@pytest.fixture(scope="module", autouse=True)
def report_paths(tmp_path_factory):
    REPORT_PATHS.append(tmp_path_factory.getbasetemp() / "fuzz_counts.json")
    if os.environ.get("FER_FUZZ_REPORT"):
        REPORT_PATHS.append(Path(os.environ["FER_FUZZ_REPORT"]))
    yield


def check(runs: list[dict], folder: Path, label: str) -> None:
    started = time.monotonic()
    outcomes = execute(runs, folder, label)
    failures = record(runs, outcomes, time.monotonic() - started, label)
    assert not failures, f"{len(failures)} of {len(runs)} fuzz runs broke the rules:\n" + \
        "\n".join(failures[:8])


def n(count: float) -> int:
    return max(1, round(count * SCALE))


# =========================================================================== config values
def alias_bomb(levels: int) -> str:
    parts = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    for k in range(1, levels):
        parts.append(f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


GENERIC_VALUES = [
    "", " ", "null", "~", "true", "false", "yes", "off", "0", "-1", "1", "2", "3.5",
    "-0.0", "1e3", "1.0e+3", "123456789012345678901234567890",
    "-123456789012345678901234567890", "9" * 5000, "1.0e+400", "-1.0e+400", ".nan", ".inf",
    "-.inf", "nan", "inf", "0x1F", "0o17", "0b101", "1_000", "+1", ".5", "1:30", "[]",
    "[1, 2]", "[a, a]", "[a, b]", "[[a, b], [c, d]]", "[null]", "[.nan]", "[.inf]", "[[]]",
    "[{a: 1}]", "{}", "{a: 1}", "{a: {b: [1, 2]}}", "{1: a}", "{a: 1, a: 2}", "{? [a]: 1}",
    "{'': 1}", "{a: .nan}", "{a: null}", "{a: [b, [c]]}", "{a: 2001-12-14}",
    "!!python/object/apply:os.system [echo pwned]", "!!python/name:os.system",
    "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "!!str 5", "!!int 5", "!!float 5", "!!bool yes",
    "!!map {a: 1}", "!!omap [a: 1]", "!!pairs [a: 1, a: 2]", "!unknown x", "!!int x",
    "&a [*a]", "&a {b: *a}", "[&x a, *x, *x]", "*undefined", alias_bomb(9),
    "[" * 30 + "]" * 30, "{a: " * 25 + "1" + "}" * 25, "[unclosed", "{", "a: b: c",
    "'quoted", '"\\u0000"', "\x00", "a\x00b", "\x1b[31mred", "[bold]markup[/bold]",
    "[red]x", "ünïcødé 😀", "\u202eRTL", "a\nb", "---", "...", "--- a\n--- b", "- a\n- b",
    "#comment", "a # comment", "%YAML 1.1\n--- a", "<<: {a: 1}", "{<<: {a: 1}}",
    "{<<: *x}", "x" * 100_000, "a" * (1 << 20) + "a", "/dev/null", "/proc/self/mem", "/",
    ".", "..", "~/x", "../../etc/passwd", "a" * 300, "a/" * 3000, "\udcff", "\ud800",
    "ok\udcfe", "=", "a=b", "'a=b'",
]


def typed_values(p: Param) -> list[str]:
    """Values aimed at one key's declaration: its bounds and just past them, its choices
    and near misses, wrong element types for lists and mappings."""
    vals: list[str] = []
    numeric = int in p.types or float in p.types
    if numeric:
        for bound in (p.min, p.max):
            if bound is None:
                continue
            vals += [repr(bound), repr(float(bound)), repr(bound - 1), repr(bound + 1),
                     repr(bound - 1e-9), repr(bound + 1e-9)]
            if float(bound).is_integer():
                vals += [str(int(bound)), f"{int(bound)}.0"]
        vals += ["1.5", "true", "'3'", "[3]"]
    if p.choices:
        for choice in p.choices:
            text = str(choice).lower() if isinstance(choice, bool) else str(choice)
            vals += [text, text.upper(), f"' {text}'", text + "x"]
    if bool in p.types:
        vals += ["true", "True", "TRUE", "on", "1", "'true'"]
    if list in p.types:
        elems = list(p.item_choices or ("a", "b", "c"))
        vals += ["[" + ", ".join(elems) + "]", f"[{elems[0]}, {elems[0]}]", f"[{elems[0]}, 1]",
                 f"[[{elems[0]}]]", "[[a, b], [c, d]]", "[[a, b], [a, b]]", "[[a], []]",
                 "[[a, a], [b]]", "[" + ", ".join(f"x{k}" for k in range(20000)) + "]",
                 f"{elems[0]}", "[]", "[.avi, avi]", "[F001]", "[NOPE]"]
    if dict in p.types:
        vals += ["{x: 1}", "{units: 0}", "{units: -1}", "{layers: 100000}",
                 "{dropout: 1.5}", "{dropout: [0.1, .nan]}", "{activation: nope}",
                 "{dense_units: []}", "{filters: [8, 0]}", "{units: [a, 1]}",
                 "{units: {min: 1, max: 0}}", "{units: {min: 1, max: 10, step: 0}}",
                 "{units: {min: 1, max: 10, step: 100}}", "{units: {min: 0, max: 1, "
                 "sampling: log}}", "{units: {min: 1, max: 2, sampling: nope}}",
                 "{learning_rate: {min: 0, max: 1}}", "{learning_rate: [2.0]}",
                 "{batch_size: [0]}", "{batch_size: [1, 2.0]}", "{units: []}",
                 "{units: {min: -1.0e+13, max: 1}}", "{units: {min: .nan, max: 1}}",
                 "{joy: happy}", "{joy: [happy]}", "{units: {min: 1}}", "{a: {b: {c: 1}}}"]
    if str in p.types:
        vals += ["''", "' '", "x" * 1000, "a\tb", "\\", "{a}"]
    return vals


BAD_KEYS = ["nope=1", "split.nope=1", "split=1", "split", "split.folds.x=1", ".folds=1",
            "split.=1", "=1", "workdir.x=1", "seed.x=1", "index=[a]", "index={root: x}",
            "index={nope: x}", " split.folds = 3", "split..folds=3", "SPLIT.FOLDS=3",
            "split.folds=3=4", "split.folds", "split.fol\x00ds=3", "split.fo\nlds=3", "a\nb=1",
            "spl\udcffit.folds=3", "a" * 5000 + "=1", "train.model_params.units=3",
            "tune.space.units=[1, 2]"]

COMBOS = [  # settings that pass alone and may clash together (config._check_rules)
    "split.method=stratified", "split.test_subjects=[F001]", "split.fold_subjects=[[a], [b]]",
    "detect.detector=yunet", "detect.model_path=/nope.onnx", "trim.score=openface",
    "trim.openface_dir=/nope", "trim.shape=onset-apex", "trim.anomaly_last_frames=5",
    "trim.min_frames_end=20", "trim.anomaly_last_frames=0", "augment.copies=3",
    "augment.methods=[flip]", "augment.copies=null", "train.max_frames=200",
    "extract.max_frames=50", "train.model=lrcn", "train.model=lstm", "fuse.runs=[a, b]",
    "fuse.combinations=[[a, c]]", "fuse.runs=null", "index.preset=ckplus48",
    "index.preset=ckplus", "index.preset=regex", "index.pattern=(?P<label>", "seed=0",
    "split.seed=4294967295", "workdir=", "workdir=/", "train.learning_rate=1",
    "tune.space={learning_rate: [0.5, 1.0]}", "tune.space={batch_size: [4096, 4097]}",
]


def all_keys() -> list[tuple[str, Param]]:
    keys = [(key, p) for key, p in GLOBAL_SCHEMA.items()]
    for section, params in SCHEMA.items():
        keys += [(f"{section}.{key}", p) for key, p in params.items()]
    return keys


def config_runs(rng: random.Random) -> list[dict]:
    runs = []

    def add(kind: str, argv: list[str], **extra) -> None:
        runs.append({"id": f"{kind}-{len(runs)}", "kind": kind, "argv": argv,
                     "timeout": 30.0, **extra})

    for key, p in all_keys():
        values = typed_values(p) + rng.sample(GENERIC_VALUES, n(10))
        for value in values:
            add("config", ["config", "show", "--set", f"{key}={value}"], roundtrip=True)
    for bad in BAD_KEYS:
        add("config", ["config", "show", "--set", bad], roundtrip=True)
    for _ in range(n(80)):
        add("config", ["config", "show", *[a for s in rng.sample(COMBOS, rng.randint(2, 5))
                                            for a in ("--set", s)]], roundtrip=True)
    return runs


def config_file_runs(rng: random.Random, folder: Path) -> list[dict]:
    """`fer config show -c FILE` on the file `fer config init` writes, damaged."""
    import yaml

    from fercli.core.config import defaults

    text = yaml.safe_dump(defaults(), sort_keys=False).encode()
    runs = []
    for k in range(n(60)):
        data = bytearray(text)
        how = rng.choice(["truncate", "flip", "digit", "line", "append"])
        if how == "truncate":
            data = data[:rng.randrange(len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        elif how == "digit":
            digits = [i for i, b in enumerate(data) if 48 <= b <= 57]
            data[rng.choice(digits)] = rng.randrange(48, 58)
        elif how == "line":  # one line replaced by an odd value, indentation kept
            lines = bytes(data).split(b"\n")
            at = rng.randrange(len(lines))
            key = lines[at].split(b":")[0]
            lines[at] = key + b": " + rng.choice(GENERIC_VALUES[:90]).encode("utf-8",
                                                                             "surrogatepass")
            data = bytearray(b"\n".join(lines))
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        path = folder / f"config-{k}.yaml"
        runs.append({"id": f"config-file-{k}-{how}", "kind": "config-file",
                     "argv": ["config", "show", "-c", str(path)], "timeout": 30.0,
                     "setup": [["write_hex", str(path), bytes(data).hex()]]})
    return runs


def subprocess_runs(rng: random.Random) -> list[dict]:
    """Real processes: argv bytes that are not UTF-8, stdout and stderr not terminals."""
    runs = []
    picks = ["\udcff", "a\nb", "[bold]x[/bold]", "ünïcødé 😀", ".nan", alias_bomb(9),
             "x" * 100_000, "&a [*a]", "{a: 2001-12-14}"]
    keys = [key for key, _ in all_keys()]
    for value in picks[:n(len(picks))]:
        key = rng.choice(keys)
        runs.append({"id": f"process-{len(runs)}", "kind": "process", "subprocess": True,
                     "argv": ["config", "show", "--set", f"{key}={value}"], "timeout": 30.0})
    for value in ["/tmp/\udcff", "/dev/null", "/proc/self/mem", "a/" * 3000]:
        runs.append({"id": f"process-{len(runs)}", "kind": "process", "subprocess": True,
                     "argv": ["status", "--set", f"workdir={value}"], "timeout": 30.0})
    return runs


# =========================================================================== tests: config
def test_config_values_fuzz(tmp_path):
    rng = random.Random(SEED)
    runs = config_runs(rng) + config_file_runs(rng, tmp_path) + subprocess_runs(rng)
    check(runs, tmp_path, "config")


# =========================================================================== the work dir
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """sample_data through `fer run` (training, fuse, evaluate, report): ~45 s."""
    folder = tmp_path_factory.mktemp("fuzz")
    workdir = folder / "base"
    runs = [{"id": "build", "kind": "build", "argv": ["run", *settings(workdir)],
             "timeout": 400.0, "expect": [0]},
            {"id": "build-verify", "kind": "build", "argv": ["verify", *settings(workdir)],
             "timeout": 60.0, "expect": [0]}]
    check(runs, folder / "driver", "build")
    return workdir


# =========================================================================== stage settings
STAGE_SETTINGS = {  # cheap values at the edges of each stage's keys
    "split": ["split.folds=13", "split.folds=1000", "split.test_fraction=0.0",
              "split.test_fraction=0.9", "split.method=stratified", "split.test_subjects=[F001]",
              "split.test_subjects=[NOPE]", "split.test_subjects=[]",
              "split.fold_subjects=[[F001], [F002]]", "split.fold_subjects=[[NOPE], [X]]",
              "split.seed=4294967295", "split.seed=0", "index.classes=[happy]"],
    "detect": ["detect.min_size=4096", "detect.min_size=1", "detect.frames_allowed=1",
               "detect.extend_px=1000", "detect.min_neighbors=0", "detect.min_neighbors=100",
               "detect.scale_factor=2", "detect.detector=none",
               "detect.detector=yunet", "detect.model_path=/dev/null"],
    "track": ["track.size=16", "track.size=17", "track.color=false", "track.codec=huffyuv",
              "track.redetect_tries=0", "track.smooth=0", "track.smooth=0.99",
              "track.tracker=kcf", "track.tracker=mosse", "track.redetect_tries=1000"],
    "trim": ["trim.min_frames_end=10000", "trim.anomaly_last_frames=10000",
             "trim.threshold_ratio=1", "trim.threshold_ratio=1.0e-9", "trim.max_cut_ratio=0",
             "trim.max_cut_ratio=0.999", "trim.shape=onset-apex",
             "trim.shape=onset-apex-offset", "trim.overrides=/nope.csv",
             "trim.overrides=/dev/null", "trim.overrides=/proc/self/status",
             "trim.plot_examples=0", "trim.min_frames_end=0"],
    "augment": ["augment.methods=[saltpepper]", "augment.methods=[rot-8, contrast17]",
                "augment.copies=1", "augment.methods=[histeq, gray]", "seed=4294967295"],
    "extract": ["extract.max_frames=1", "extract.batch_size=1", "extract.dtype=float32",
                "extract.backbone=nope", "extract.backbone=/dev/null",
                "extract.backbone=/nope.keras", "extract.weights=null", "extract.weights=nope",
                "extract.weights=/dev/null", "extract.layer=nope", "extract.augmented=false"],
    "cv-train": ["train.model=lstm", "train.model=cnn1d", "train.model_params={nope: 1}",
                 "train.model_params={units: 0}", "train.model_params={layers: 0}",
                 "train.model_params={dropout: 1.0}", "train.model_params={activation: nope}",
                 "train.model_params={dense_units: []}", "train.learning_rate=1",
                 "train.batch_size=4096", "train.max_frames=1", "train.identity=onset",
                 "train.class_weight=none", "train.model_params={units: 100000000}",
                 "train.model_params={l2: 1000000.0}", "train.model=c3d", "train.clip_size=8"],
}


def stage_runs(rng: random.Random, base: Path, folder: Path) -> list[dict]:
    runs = []
    for k in range(n(40)):  # `fer status` reads every manifest against odd settings
        key, p = rng.choice(all_keys())
        value = rng.choice(typed_values(p) + GENERIC_VALUES[:60])
        runs.append({"id": f"status-{k}", "kind": "status", "timeout": 30.0,
                     "argv": ["status", *settings(base, f"{key}={value}")]})
    for value in ["/nope/x", "a\x00b", "/dev/null", "/proc/self/mem", "a/" * 3000,
                  str(base / "index" / "index.csv"), str(base / "index" / "index.csv") + "/x",
                  "a" * 300, "\udcff"]:
        for command in ("status", "verify", "split"):
            runs.append({"id": f"workdir-{len(runs)}", "kind": "status", "timeout": 30.0,
                         "argv": [command, *settings(base, f"workdir={value}")]})
    budget = {"split": 4, "detect": 2, "track": 2, "trim": 3, "augment": 1, "extract": 2,
              "cv-train": 3}
    for stage, count in budget.items():
        for k in range(n(count)):
            chosen = rng.sample(STAGE_SETTINGS[stage], rng.randint(1, 2))
            copy = folder / f"stage-{stage}-{k}"
            argv = [stage, *settings(copy, *chosen), "-j", "1"] if stage != "cv-train" else \
                ["cv-train", *settings(copy, *chosen), "--fold", "0"]
            runs.append({"id": f"stage-{stage}-{k}", "kind": "stage", "timeout": RUN_TIMEOUT_S,
                         "argv": argv, "setup": [["copytree", str(base), str(copy)]],
                         "cleanup": [str(copy)]})
    return runs


@pytest.mark.slow
def test_stage_settings_fuzz(base, tmp_path):
    rng = random.Random(SEED + 1)
    check(stage_runs(rng, base, tmp_path), tmp_path / "driver", "stages")


# =========================================================================== artifacts
# kind -> (glob under the work directory, consumers, mutations per kind at scale 1).
# A consumer is (stage, how): "item" removes that stage's record of the damaged item and
# its manifest (as if it was interrupted before the item), "finish" only its manifest (it
# then gathers the items' files), "force" passes --force, "fold" runs `cv-train --fold 0`
# without its fold-0 record, None runs the stage as it is.
ARTIFACTS = {
    "index manifest": ("index/manifest.json", [("index", None), ("split", "force")], 3),
    "index record": ("index/records/*.json", [("index", None), ("detect", "item")], 3),
    "index.csv": ("index/index.csv", [("split", "force"), ("extract", "item")], 3),
    "classes.json": ("index/classes.json", [("split", "force"), ("extract", "item")], 3),
    "excluded.csv": ("index/excluded.csv", [("index", None), ("report", None)], 2),
    "stats.csv": ("index/stats.csv", [("report", None)], 2),
    "lengths.png": ("index/lengths.png", [("report", None)], 2),
    "split manifest": ("split/manifest.json", [("split", None), ("augment", "item")], 2),
    "splits.json": ("split/splits.json", [("augment", "item"), ("cv-train", "fold")], 3),
    "split record": ("split/records/splits.json", [("split", None)], 2),
    "detect record": ("detect/records/*.json", [("detect", None), ("track", "item")], 3),
    "detections.csv": ("detect/detections.csv", [("track", "item")], 2),
    "track clip": ("track/clips/*.mkv", [("trim", "item"), ("augment", "item")], 4),
    "track boxes": ("track/boxes/*.csv", [("trim", "item")], 3),
    "tracks.csv": ("track/tracks.csv", [("report", None)], 2),
    "track record": ("track/records/*.json", [("track", None), ("trim", "item")], 3),
    "trim scores": ("trim/scores/*.csv", [("trim", None), ("augment", "item")], 2),
    "trim.csv": ("trim/trim.csv", [("augment", "item")], 2),
    "trim record": ("trim/records/*.json", [("trim", None), ("augment", "item")], 3),
    "augment clip": ("augment/clips/*.mkv", [("extract", "item")], 3),
    "augment manifest": ("augment/manifest.json", [("augment", None), ("extract", "item")], 2),
    "extract npy": ("extract/items/*_tex.npy", [("extract", "finish")], 3),
    "extract baseline": ("extract/items/*.baseline.npy", [("extract", "finish")], 2),
    "features.h5": ("extract/features.h5", [("cv-train", "fold")], 3),
    "extract manifest": ("extract/manifest.json", [("extract", None), ("cv-train", "fold")], 2),
    "cv-train checkpoint": ("cv-train/runs/*/fold-0/latest-*.keras", [("cv-train", "fold")], 2),
    "cv-train best": ("cv-train/runs/*/fold-0/best.keras", [("cv-train", "fold")], 2),
    "cv-train state": ("cv-train/runs/*/fold-0/state.json", [("cv-train", "fold")], 2),
    "cv-train log": ("cv-train/runs/*/fold-0/log.csv", [("cv-train", "fold")], 2),
    "cv-train val_probs": ("cv-train/runs/*/fold-0/val_probs.csv", [("fuse", "force")], 2),
    "cv-train summary": ("cv-train/runs/*/summary.csv", [("report", None)], 2),
    "cv-train run.json": ("cv-train/runs/*/run.json", [("fuse", "force")], 2),
    "finalize model": ("finalize/runs/*/model.keras", [("predict", None)], 2),
    "finalize model.json": ("finalize/runs/*/model.json", [("fuse", "force")], 2),
    "finalize test_probs": ("finalize/runs/*/test_probs.csv", [("evaluate", "force")], 2),
    "finalize classes": ("finalize/runs/*/classes.json", [("evaluate", "force")], 2),
    "finalize versions": ("finalize/runs/*/versions.json", [("report", None)], 2),
    "finalize config": ("finalize/runs/*/config.yaml", [("predict", None)], 2),
    "fuse table": ("fuse/fusion_table.csv", [("evaluate", "force")], 2),
    "evaluate summary": ("evaluate/summary.csv", [("report", None)], 2),
}
MUTATIONS = ["truncate0", "truncate1", "truncate_half", "truncate_last", "flip1", "flip8",
             "digit", "append"]


def mutate(rng: random.Random, path: Path, kind: str) -> list:
    size = path.stat().st_size
    if kind.startswith("truncate"):
        length = {"truncate0": 0, "truncate1": 1, "truncate_half": size // 2,
                  "truncate_last": max(size - 1, 0)}[kind]
        return ["truncate", str(path), length]
    if kind.startswith("flip"):
        count = 1 if kind == "flip1" else 8
        return ["flip", str(path), [[rng.randrange(max(size, 1)), rng.randrange(1, 256)]
                                    for _ in range(count)]]
    if kind == "digit":
        return ["digit", str(path), rng.randrange(1 << 30), rng.randrange(9)]
    return ["append", str(path), bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))
                                       ).hex()]


def item_of(path: Path) -> str:
    name = path.name
    for suffix in (".baseline.npy", ".npy", ".json", ".mkv", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def consumer_run(stage: str, how: str | None, copy: Path, item: str, run_name: str,
                 video: Path) -> tuple[list[list], list[str]]:
    """Setup ops and argv for the stage that reads a damaged file of ``item``."""
    if stage == "predict":
        return [], ["predict", str(video), "--run", run_name, "--out", str(copy / "predict"),
                    *settings(copy)]
    if stage == "report":
        return [], ["report", *settings(copy)]
    setup: list[list] = []
    argv = [stage, *settings(copy)]
    if how == "item":
        setup = [["remove", str(copy / stage / "records" / f"{item}.json")],
                 ["remove", str(copy / stage / "manifest.json")]]
    elif how == "finish":
        setup = [["remove", str(copy / stage / "manifest.json")]]
    elif how == "fold":
        setup = [["remove", str(copy / "cv-train" / "records" / "fold-0.json")],
                 ["remove", str(copy / "cv-train" / "manifest.json")]]
        argv += ["--fold", "0"]
    elif how == "force":
        argv.append("--force")
    if stage not in ("cv-train", "finalize", "fuse", "evaluate"):
        argv += ["-j", "1"]
    return setup, argv


def artifact_runs(rng: random.Random, base: Path, folder: Path) -> list[dict]:
    runs = []
    run_name = next((base / "finalize" / "runs").iterdir()).name
    video = ROOT / "sample_data" / "F001_happy_tex.avi"
    for kind, (pattern, consumers, count) in ARTIFACTS.items():
        files = sorted(base.glob(pattern))
        assert files, f"the work directory has no {kind} ({pattern})"
        item_stages = [stage for stage, how in consumers if how == "item"]
        if item_stages:  # damage an item that the consumer has a record of
            files = [f for f in files if (base / item_stages[0] / "records"
                                          / f"{item_of(f)}.json").is_file()] or files
        for k, how in enumerate(rng.sample(MUTATIONS, min(n(count), len(MUTATIONS)))):
            target = rng.choice(files)
            copy = folder / f"{kind.replace(' ', '_')}-{k}"
            damaged = copy / target.relative_to(base)
            group = f"{kind}/{how}/{target.relative_to(base)}"
            ops = [["copytree", str(base), str(copy)], mutate(rng, target, how)]
            ops[1][1] = str(damaged)
            commands: list[tuple[list[list], list[str], list[int] | None]] = [
                ([], ["status", *settings(copy)], None),
                ([], ["verify", *settings(copy)], None)]
            if k == 0:  # repair and re-run: the work directory completes again
                last = max((PIPELINE_ORDER.index(s) for s, _ in consumers
                            if s in PIPELINE_ORDER), default=0)
                own = PIPELINE_ORDER.index(target.relative_to(base).parts[0])
                until = PIPELINE_ORDER[max(last, own)]
                commands += [([], ["verify", "--repair", *settings(copy)], [0]),
                             ([], ["run", "--until", until, *settings(copy)], [0]),
                             ([], ["verify", *settings(copy)], [0])]
            else:  # the stages that read the damaged file
                for stage, mode in consumers:
                    setup, argv = consumer_run(stage, mode, copy, item_of(target), run_name,
                                               video)
                    commands.append((setup, argv, None))
            for j, (setup, argv, expect) in enumerate(commands):
                runs.append({"id": f"{group}#{j}", "kind": "artifact", "argv": argv,
                             "setup": (ops if j == 0 else []) + setup, "expect": expect,
                             "timeout": RUN_TIMEOUT_S if argv[0] != "run" else 240.0,
                             "cleanup": [str(copy)] if j == len(commands) - 1 else []})
            COUNTS["damaged_copies"] += 1
    return runs


PIPELINE_ORDER = list(PIPELINE)


@pytest.mark.slow
def test_artifact_fuzz(base, tmp_path):
    rng = random.Random(SEED + 2)
    check(artifact_runs(rng, base, tmp_path), tmp_path / "driver", "artifacts")
