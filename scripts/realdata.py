"""Preprocessing checked on real faces: the development copies of ``../shared/DATA.md``.

For each dataset found under ``$FER_DATA`` the pipeline runs with its preset and defaults,
and one line says what a researcher would check first: items indexed and failed, trim's
anomalies, clips whose last frame was cut (the apex, on neutral -> apex data), frame-0
spikes in the motion score (a jumping first crop), frames kept.

- ``ckplus-videos``: the two real CK+ sequences as videos (S501_001, S503_001; anger),
  through trim;
- ``ckplus48``: CK+48's 48x48 crops (preset ckplus48: detector none, onset-apex), through
  extract, all 309 sequences of the six classes: nothing is trained here, so the acceptance
  subjects are preprocessed too (``scripts/accuracy.py``, which trains, leaves them out);
- ``jaffe``: JAFFE's stills as one-frame items, through cv-train, finalize, evaluate and
  the report.

    FER_DATA=/path/to/dev-copies python scripts/realdata.py [--work realdata-work]

Without FER_DATA it says so in one line and exits 0. Never commit the data or the work
folder (licences forbid redistribution).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from accuracy import ACCEPTANCE_SUBJECTS, DATASETS, machine, run_cli  # noqa: E402

console = Console()
CKPLUS_VIDEOS = {"1543684773.avi": "S501_001", "1543684810.avi": "S503_001"}
# A frame-0 score this many times the largest of frames 1-4 is a jump of the first crop.
SPIKE_FACTOR = 2.0


def ckplus_videos_root(data: Path, work: Path) -> Path | None:
    """The two CK+ videos as `anger/S501_001.avi` (folder-per-label), by symlink."""
    root = work / "ckplus-videos-data" / "anger"
    sources = [(data / "datasets" / name, seq) for name, seq in CKPLUS_VIDEOS.items()]
    if not all(path.is_file() for path, _ in sources):
        return None
    root.mkdir(parents=True, exist_ok=True)
    for path, sequence in sources:
        link = root / f"{sequence}.avi"
        if not link.exists():
            link.symlink_to(path)
    return root.parent


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []


def trim_figures(workdir: Path) -> dict:
    """Anomalies, last frame cut, frame-0 spikes and frames kept, from trim's outputs."""
    manifest = json.loads((workdir / "trim" / "manifest.json").read_text())
    done = [r for r in manifest["items"].values() if r["status"] == "done"]
    spikes = 0
    for record in done:
        scores = [float(r["score"]) for r in read_csv(workdir / record["outputs"][0]["path"])]
        if len(scores) >= 5 and scores[0] > SPIKE_FACTOR * max(max(scores[1:5]), 1e-6):
            spikes += 1
    info = [r["info"] for r in done]
    shapes: dict[str, int] = {}
    for i in info:
        shapes[i.get("shape") or i["status"]] = shapes.get(i.get("shape") or i["status"], 0) + 1
    return {"clips": len(done),
            "anomalies": sum(i["status"] == "anomaly" for i in info),
            "last_frame_cut": sum(i["last"] < i["n_frames"] - 1 for i in info),
            "frame0_spikes": spikes,
            "frames_kept": sum(i["n_kept"] for i in info),
            "frames": sum(i["n_frames"] for i in info),
            "shapes": shapes}


def failed(workdir: Path, stage: str) -> int:
    path = workdir / stage / "manifest.json"
    if not path.is_file():
        return 0
    return sum(r["status"] == "failed" for r in json.loads(path.read_text())["items"].values())


def check(name: str, root: Path, settings: list[str], until: str, work: Path) -> dict:
    from fercli import api
    from fercli.reporting.report import write_report

    workdir = work / name
    console.rule(f"{name}: {root} -> {workdir} (until {until})")
    started = time.time()
    config = api.load_config(None, [f"workdir={workdir}", f"index.root={root}", *settings])
    api.run_pipeline(config, until=until, console=console)
    if until == "evaluate":
        write_report(workdir, workdir / "report")
    stages = [s for s in ("index", "detect", "track", "trim", "extract", "cv-train",
                          "finalize", "evaluate") if (workdir / s / "manifest.json").is_file()]
    row = {"dataset": name, "indexed": len(read_csv(workdir / "index" / "index.csv")),
           "excluded": len(read_csv(workdir / "index" / "excluded.csv")),
           "failed": {s: failed(workdir, s) for s in stages}, **trim_figures(workdir),
           "seconds": round(time.time() - started)}
    if until == "evaluate":
        summary = read_csv(workdir / "evaluate" / "summary.csv")
        row["test"] = {r["target"]: {"n": int(r["n"]), "accuracy": float(r["accuracy"]),
                                     "uar": float(r["uar"])} for r in summary}
        row["report"] = str(workdir / "report" / "report.html")
    return row


COLUMNS = ("dataset", "indexed", "excluded", "failed", "anomalies", "last frame cut",
           "frame-0 spikes", "frames kept", "shapes")


def cells(r: dict) -> list[str]:
    """One dataset's row under COLUMNS, for the console table and the Markdown file."""
    failures = ", ".join(f"{s} {n}" for s, n in r["failed"].items() if n) or "0"
    return [r["dataset"], str(r["indexed"]), str(r["excluded"]), failures,
            f"{r['anomalies']}/{r['clips']}", str(r["last_frame_cut"]),
            str(r["frame0_spikes"]), f"{r['frames_kept']}/{r['frames']}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["shapes"].items()))]


def markdown(rows: list[dict]) -> str:
    """The README's "Real data" table."""
    lines = [f"Measured on {machine()}.", "",
             "| " + " | ".join((*COLUMNS, "test accuracy / UAR")) + " |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        tests = "; ".join(f"{t['accuracy']:.3f} / {t['uar']:.3f} (n {t['n']})"
                          for t in r.get("test", {}).values()) or "-"
        lines.append("| " + " | ".join((*cells(r), tests)) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "realdata-work")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args()
    data = os.environ.get("FER_DATA")
    if not data:
        console.print("realdata: skipped: FER_DATA is not set (point it at the development "
                      "copies of ../shared/DATA.md)")
        return 0
    data = Path(data)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    videos = ckplus_videos_root(data, args.work)
    if videos:
        runs.append(("ckplus-videos", videos, [
            "index.preset=folder-per-label", "index.classes=[angry]",
            f"index.exclude_subjects=[{', '.join(ACCEPTANCE_SUBJECTS)}]", "split.folds=2",
            "split.test_fraction=0"], "trim"))
    for name, until, extra in (("ckplus48", "extract", []),
                               ("jaffe", "evaluate", ["split.folds=4",
                                                      "split.test_fraction=0.2"])):
        folder, settings = DATASETS[name]
        if until == "extract":  # no training: every subject, the acceptance set included
            settings = [s for s in settings if not s.startswith("index.exclude_subjects")]
        if (data / folder).is_dir():
            runs.append((name, data / folder, [*settings, *extra], until))
    if not runs:
        console.print(f"realdata: skipped: no development copy found under {data}")
        return 0
    rows = [check(*run, args.work) for run in runs]
    table = Table(title=f"Real data ({machine()})")
    for column in (*COLUMNS, "s"):
        table.add_column(column)
    for r in rows:
        table.add_row(*cells(r), str(r["seconds"]))
    console.print(table)
    for r in rows:
        for target, scores in r.get("test", {}).items():
            console.print(f"{r['dataset']}: test {target}: n {scores['n']}, accuracy "
                          f"{scores['accuracy']:.3f}, UAR {scores['uar']:.3f}; "
                          f"report {r['report']}")
    (args.work / "realdata.json").write_text(json.dumps(rows, indent=2))
    (args.work / "realdata.md").write_text(markdown(rows))
    console.print(f"realdata: {args.work / 'realdata.json'}, {args.work / 'realdata.md'}")
    return 0 if not any(np.sum(list(r["failed"].values())) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
