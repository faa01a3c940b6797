"""Accuracy on real faces, measured honestly: nested subject-independent evaluation.

The subjects of a dataset are dealt into ``--outer`` groups (balanced by item count). For
each group in turn, the pipeline itself (split with that group as the test set, augment,
extract, ``--inner``-fold cv-train, finalize) trains on the other subjects and predicts
the group, so every item is tested exactly once by a model that never saw its subject.
Next to fercli's result, on the same items and the same outer splits:

- a logistic-regression probe on the very features fercli's model reads (mean over the
  kept frames; plus the change from the neutral onset where the clips have one);
- the peer ``fer`` package, zero-shot on each item's apex (last) frame, through
  ``scripts/peer_fer.py`` (its own venv; ``--no-peer`` skips it).

With ``--pretrain`` (and its own ``--work``), each outer split first fine-tunes the FER2013
mini-Xception on its training subjects' frames (``fer pretrain``) and extracts with that
backbone; fercli and the probe then read the fine-tuned features.

Each line shows accuracy with a Wilson 95% interval and UAR. Preprocessing (index, detect,
track, trim) runs once in ``<work>/base`` and is copied into each outer folder, where it is
up to date; every stage resumes, so a killed run continues where it stopped.

    FER_DATA=/path/to/dev-copies python scripts/accuracy.py ckplus48 jaffe
    python scripts/accuracy.py --root DIR --set index.preset=folder-per-label [--outer 5]

Datasets (``../shared/DATA.md``): ``ckplus48`` ($FER_DATA/CK+48, without the acceptance
subjects) and ``jaffe`` ($FER_DATA/datasets/JAFFE_bakcup). Never commit the data or the
work folder.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

# DATA.md: the project's CK+ acceptance subjects, never trained or tuned on.
ACCEPTANCE_SUBJECTS = ["S052", "S055", "S074", "S106", "S111", "S113", "S124", "S125",
                       "S130", "S132"]
DATASETS = {
    "ckplus48": ("CK+48", ["index.preset=ckplus48",
                           f"index.exclude_subjects=[{', '.join(ACCEPTANCE_SUBJECTS)}]",
                           "track.color=false", "track.size=64"]),
    "jaffe": ("datasets/JAFFE_bakcup", [
        "index.preset=regex",
        r"index.pattern=^(?P<subject>[A-Z]{2})\.(?P<label>[A-Z]{2})\d+\.\d+\.tiff$",
        "track.color=false", "track.size=64"]),
}
# The peer's label names -> fercli's default classes; "neutral" matches none of them.
PEER_LABELS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
               "sad": "sad", "surprise": "surprise", "neutral": "neutral"}
console = Console()


def machine() -> str:
    """The CPU model and core count, for the README's figures."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z = 1.96)."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def uar(labels: list[str], predicted: list[str]) -> float:
    classes = sorted(set(labels))
    return float(np.mean([np.mean([p == c for t, p in zip(labels, predicted) if t == c])
                          for c in classes]))


def outer_groups(subject_counts: dict[str, int], k: int, seed: int) -> list[list[str]]:
    """Subjects dealt into k groups of about equal item counts (largest first, seeded
    order among equals), so each outer test set is a similar share of the data."""
    rng = np.random.default_rng(seed)
    subjects = sorted(subject_counts, key=lambda s: (-subject_counts[s], rng.random()))
    groups: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for subject in subjects:
        g = int(np.argmin(sizes))
        groups[g].append(subject)
        sizes[g] += subject_counts[subject]
    return [sorted(g) for g in groups if g]


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def still_frames(row: dict) -> list[Path]:
    """The image files of an index row's source, in order; [] for a video."""
    from fercli.vision.media import sequence_frames

    path = Path(row["path"])
    if row["kind"] == "image":
        return [path]
    if row["kind"] == "frames":
        lines = [Path(line.strip()) for line in path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        return [line if line.is_absolute() else path.parent / line for line in lines]
    if row["kind"] == "sequence":
        return [Path(p) for p in sequence_frames(path)]
    return []


def apex_frame(row: dict) -> str:
    """The last frame of an index row's source (the apex of a neutral -> apex sequence);
    "" for a video (no still apex frame for the peer)."""
    frames = still_frames(row)
    return str(frames[-1]) if frames else ""


def pretrained_backbone(outer: Path, index: list[dict], test_subjects: list[str],
                        args) -> Path:
    """``fer pretrain`` of the FER2013 mini-Xception on the frames of this outer split's
    training subjects only (the test subjects' faces never reach the backbone); returns
    the model file that extract then uses. Resumes: a finished one is reused."""
    from fercli.features.pretrain import MODEL_FILE, run_pretrain

    out = outer / "pretrain"
    if (out / "summary.json").is_file():
        return out / MODEL_FILE
    images = outer / "pretrain-images"
    shutil.rmtree(images, ignore_errors=True)
    for row in index:
        if row["subject"] in test_subjects:
            continue
        for n, frame in enumerate(still_frames(row)):
            link = images / row["label"] / f"{row['item_id']}_{n}{frame.suffix.lower()}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(frame.resolve())
    run_pretrain(images, out, backbone="minixception-fer2013", trials=args.pretrain_trials,
                 epochs_head=10, epochs_finetune=20, unfreeze_blocks=2, seed=args.seed,
                 console=console)
    return out / MODEL_FILE


def run_pipeline(settings: list[str], until: str) -> None:
    from fercli import api

    for result in api.run_pipeline(api.load_config(None, settings), until, console=console):
        if result.n_failed:
            console.print(f"[yellow]{result.name}: {result.n_failed} items failed[/]")


def probe_predictions(store_path: Path, identity: bool) -> dict[str, dict[str, str]]:
    """Logistic regression on the store's features, trained on the fold rows (originals
    and augmented, as fercli trains) and applied to the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fercli.features.featurestore import FeatureStore

    with FeatureStore(store_path) as store:
        means, changes = [], []
        for i in range(len(store)):
            frames = store.frames(i)
            means.append(frames.mean(axis=0))
            if store.baselines is not None:
                changes.append(frames[-3:].mean(axis=0) - store.baselines[i])
        means = np.asarray(means)
        variants = {"probe": means}
        if identity and changes:
            variants["probe+onset"] = np.hstack([means, np.asarray(changes)])
        train = np.flatnonzero(np.char.startswith(store.parts.astype(str), "fold-"))
        test = np.flatnonzero((store.parts == "test") & (store.augment == ""))
        out = {}
        for name, x in variants.items():
            model = make_pipeline(StandardScaler(), LogisticRegression(
                C=1.0, max_iter=5000, class_weight="balanced"))
            model.fit(x[train], store.labels[train])
            predicted = model.predict(x[test])
            out[name] = {str(store.items[i]): store.classes[int(p)]
                         for i, p in zip(test, predicted)}
    return out


def evaluate_dataset(name: str, root: Path, settings: list[str], args) -> dict:
    work = args.work / name
    base = work / "base"
    common = [f"index.root={root}", *settings, *args.set, f"seed={args.seed}"]
    console.rule(f"{name}: preprocessing once ({base})")
    run_pipeline([f"workdir={base}", *common, "split.test_fraction=0.0",
                  f"split.folds={args.inner}"], until="trim")
    index = read_csv(base / "index" / "index.csv")
    counts: dict[str, int] = {}
    for row in index:
        counts[row["subject"]] = counts.get(row["subject"], 0) + 1
    groups = outer_groups(counts, args.outer, args.seed)
    labels = {row["item_id"]: row["label"] for row in index}
    predictions: dict[str, dict[str, str]] = {}
    identity_used = []
    for k, test_subjects in enumerate(groups):
        outer = work / f"outer-{k}"
        if not (outer / "trim" / "manifest.json").is_file():
            shutil.rmtree(outer, ignore_errors=True)
            shutil.copytree(base, outer, ignore=shutil.ignore_patterns(
                "split", "augment", "extract", "cv-train", "finalize", "*.lock"))
        console.rule(f"{name}: outer split {k + 1}/{len(groups)}, test subjects "
                     f"{' '.join(test_subjects)}")
        backbone = ([f"extract.backbone={pretrained_backbone(outer, index, test_subjects, args)}"]
                    if args.pretrain else [])
        run_pipeline([f"workdir={outer}", *common, *backbone, f"split.folds={args.inner}",
                      f"split.test_subjects=[{', '.join(test_subjects)}]"], until="finalize")
        [model_json] = sorted((outer / "finalize" / "runs").glob("*/model.json"),
                              key=lambda p: p.stat().st_mtime)[-1:]
        info = json.loads(model_json.read_text())
        identity_used.append(bool(info.get("identity")))
        suffix = " (pretrained backbone)" if args.pretrain else ""
        model = info["model"] + suffix
        for row in read_csv(model_json.parent / "test_probs.csv"):
            predictions.setdefault(f"fercli {model}", {})[row["item"]] = row["pred"]
        for probe, preds in probe_predictions(outer / "extract" / "features.h5",
                                              bool(info.get("identity"))).items():
            predictions.setdefault(probe + suffix, {}).update(preds)
    if not args.no_peer:
        predictions["peer fer (zero-shot, apex frame)"] = peer_predictions(index, args)
    return summarise(name, labels, predictions, groups, identity_used)


def peer_predictions(index: list[dict], args) -> dict[str, str]:
    from peer_fer import run_peer

    rows = [(row["item_id"], apex_frame(row)) for row in index]
    rows = [(item, path) for item, path in rows if path]
    results = run_peer([path for _, path in rows], args.peer_venv)
    return {item: PEER_LABELS.get(result["label"], result["label"])
            for (item, _), result in zip(rows, results)}


def summarise(name: str, labels: dict[str, str], predictions: dict, groups, identity) -> dict:
    table = Table(title=f"{name}: {len(labels)} items, {len(groups)} outer subject-"
                        "independent splits, every item tested once")
    for column in ("system", "n", "accuracy", "95% CI", "UAR"):
        table.add_column(column)
    rows = []
    for system, preds in predictions.items():
        items = [i for i in labels if i in preds]
        truth = [labels[i] for i in items]
        guess = [preds[i] for i in items]
        correct = sum(t == g for t, g in zip(truth, guess))
        low, high = wilson(correct, len(items))
        row = {"system": system, "n": len(items), "accuracy": correct / max(len(items), 1),
               "ci_low": low, "ci_high": high, "uar": uar(truth, guess) if items else None}
        rows.append(row)
        table.add_row(system, str(row["n"]), f"{row['accuracy']:.3f}",
                      f"{low:.3f}-{high:.3f}", f"{row['uar']:.3f}")
    console.print(table)
    return {"dataset": name, "items": len(labels), "outer_groups": groups,
            "identity": identity, "rows": rows}


def markdown(results: list[dict]) -> str:
    lines = ["| dataset | system | n | accuracy (95% CI) | UAR |", "|---|---|---:|---|---:|"]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {result['dataset']} | {row['system']} | {row['n']} | "
                         f"{row['accuracy']:.3f} ({row['ci_low']:.3f}-{row['ci_high']:.3f}) | "
                         f"{row['uar']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help=f"any of {', '.join(DATASETS)}")
    parser.add_argument("--root", type=Path, help="your own dataset folder (with --set "
                        "index.preset=...)")
    parser.add_argument("--set", action="append", default=[], help="config override, "
                        "e.g. train.model=cnn1d (repeatable)")
    parser.add_argument("--outer", type=int, default=5, help="outer subject groups")
    parser.add_argument("--inner", type=int, default=4, help="inner CV folds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=REPO / "accuracy-work")
    parser.add_argument("--peer-venv", type=Path, default=REPO / ".venv-peer")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer package")
    parser.add_argument("--pretrain", action="store_true", help="per outer split, fine-tune "
                        "the FER2013 mini-Xception on the training subjects' frames (fer "
                        "pretrain) and extract with it; use its own --work")
    parser.add_argument("--pretrain-trials", type=int, default=3,
                        help="head-search trials of fer pretrain")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    todo = []
    if args.root:
        todo.append((args.root.name, args.root.resolve(), []))
    data = os.environ.get("FER_DATA")
    for name in args.datasets:
        if name not in DATASETS:
            console.print(f"Error: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
            return 2
        if not data:
            console.print(f"accuracy: {name} skipped: FER_DATA is not set (see DATA.md)")
            continue
        folder, settings = DATASETS[name]
        root = Path(data) / folder
        if not root.is_dir():
            console.print(f"accuracy: {name} skipped: {root} not found")
            continue
        todo.append((name, root, settings))
    if not todo:
        console.print("accuracy: nothing to measure (set FER_DATA or give --root)")
        return 0
    started = time.time()
    results = [evaluate_dataset(name, root, settings, args) for name, root, settings in todo]
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "accuracy.json").write_text(json.dumps(results, indent=2))
    (args.work / "accuracy.md").write_text(markdown(results))
    console.print(f"accuracy: {args.work / 'accuracy.md'} ({time.time() - started:.0f} s on "
                  f"{machine()})")
    return 0


def run_cli(main) -> int:
    """``main()`` with fercli's errors as one line and their exit codes (tracebacks with
    --debug); the real-data scripts share it."""
    from fercli.core.errors import FerError

    try:
        return main()
    except FerError as error:
        if "--debug" in sys.argv:
            raise
        console.print(f"Error: {error}", markup=False, highlight=False)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(run_cli(main))
