"""`fer index`: the dataset table (item, subject, label, source, frames, fps, size).

Reads the layouts of DATA.md as they come: a folder of videos or of frame-sequence
folders, subject and label parsed from the relative path (presets for BU-4DFE names,
folder-per-label redistributions and the official CK+ tree with its Emotion/ label files),
or an explicit CSV. Files that cannot become items (name does not match, unknown label,
excluded subject, unlabelled CK+ sequence) are listed in ``excluded.csv`` with the reason.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import DEFAULT_SYNONYMS, Config
from ..engine import Context, Item, ItemOutput, Stage
from ..errors import ConfigError, InputError
from ..media import IMAGE_EXTENSIONS, printable, probe
from ..workspace import StageDir, atomic_write_json, atomic_write_text, check_item_id

# Relative-path patterns per preset; the first that matches wins.
PRESET_PATTERNS = {
    # M042_happy_tex.avi, or <subject>/<expression>/<anything> (DATA.md, BU-4DFE)
    "bu4dfe": [r"(?:^|/)(?P<subject>[FM]\d{3})_(?P<label>[A-Za-z]+)(?:_[^/]*)?(?:\.\w+)?$",
               r"(?:^|/)(?P<subject>[FM]\d{3})/(?P<label>[A-Za-z]+)(?:/|$)"],
    # <label>/<subject>_<rest>... e.g. happy/S005_001/ (CK+ redistributions)
    "folder-per-label": [r"^(?P<label>[^/]+)/(?P<subject>[^/_.]+)"],
}
# CK+ emotion codes (DATA.md): 0 neutral ... 7 surprise.
CKPLUS_CODES = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness",
                "surprise"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass
class Candidate:
    path: Path
    rel: str
    kind: str  # "video" | "sequence"


@dataclass
class Excluded:
    rel: str
    reason: str


def find_candidates(root: Path, video_extensions: list[str]) -> list[Candidate]:
    """Every video file and every folder that directly holds images, sorted by path."""
    extensions = {e.lower() for e in video_extensions}
    found = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_file() and path.suffix.lower() in extensions:
            found.append(Candidate(path, rel, "video"))
        elif path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                                   for p in path.iterdir()):
            found.append(Candidate(path, rel, "sequence"))
    return found


def canonical_label(raw: str, synonyms: dict[str, str]) -> str:
    key = raw.strip().lower()
    return synonyms.get(key, key)


def make_item_ids(rels: list[str], subjects: list[str]) -> list[str]:
    """Ids from relative paths: common parent folders and extension dropped, '/' -> '_',
    and the subject prefixed where the remaining path does not already name it."""
    parts = [Path(rel).with_suffix("").parts if "." in Path(rel).name[1:]
             else Path(rel).parts for rel in rels]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 for p in parts) and \
                len({p[common] for p in parts}) == 1:
            common += 1
    ids = []
    for p, subject in zip(parts, subjects):
        text = "_".join(p[common:])
        if subject and subject not in text:
            text = f"{subject}_{text}"
        ids.append(_UNSAFE.sub("_", text).strip("_.") or "item")
    return ids


def _ckplus_label(root: Path, rel: str) -> str | None:
    """Label of `cohn-kanade-images/S005/001` from `Emotion/S005/001/*_emotion.txt`."""
    subject_seq = Path(rel).parts[-2:]
    folder = root.joinpath("Emotion", *subject_seq)
    files = sorted(folder.glob("*_emotion.txt")) if folder.is_dir() else []
    if not files:
        return None
    try:
        code = int(float(files[0].read_text().strip()))
        return CKPLUS_CODES[code]
    except (ValueError, IndexError):
        raise InputError("emotion file holds no valid code 0-7", path=files[0],
                         hint="Fix or remove the file") from None


def scan_dataset(params: dict) -> tuple[list[dict], list[Excluded]]:
    """Pure scan of the dataset root: items to index and files left out, with reasons."""
    if not params["root"]:
        raise ConfigError("index.root is not set", hint="Pass --set index.root=PATH "
                          "or set it in fer.yaml")
    root = Path(params["root"]).expanduser().resolve()
    if not root.is_dir():
        raise InputError("dataset folder not found", path=root,
                         hint="Set index.root to the folder that holds the videos")
    synonyms = {**DEFAULT_SYNONYMS, **{k.lower(): v for k, v in params["synonyms"].items()}}
    classes = params["classes"]
    excluded_subjects = set(params["exclude_subjects"])
    preset = params["preset"]
    excluded: list[Excluded] = []
    labelled: list[tuple[Candidate, str, str]] = []

    if preset == "csv":
        labelled = _from_csv(root, params, excluded)
    else:
        candidates = find_candidates(root, params["video_extensions"])
        if preset == "ckplus":
            candidates = [c for c in candidates if not c.rel.startswith("Emotion/")]
        patterns = (PRESET_PATTERNS.get(preset) or [params["pattern"] or ""])
        if preset == "regex" and not params["pattern"]:
            raise ConfigError("index.pattern is not set for preset `regex`",
                              hint="Give a regex with (?P<subject>...) and (?P<label>...)")
        compiled = [_compile(p) for p in patterns] if preset != "ckplus" else []
        for cand in candidates:
            if printable(cand.rel) != cand.rel:  # OpenCV would crash on the name
                excluded.append(Excluded(printable(cand.rel), "file name is not valid UTF-8; "
                                         "rename it"))
                continue
            if preset == "ckplus":
                label = _ckplus_label(root, cand.rel)
                subject = Path(cand.rel).parts[-2] if len(Path(cand.rel).parts) >= 2 else ""
                if label is None:
                    excluded.append(Excluded(cand.rel, "unlabelled (no Emotion file)"))
                    continue
                labelled.append((cand, subject, label))
                continue
            match = next((m for rx in compiled if (m := rx.search(cand.rel))), None)
            if match is None:
                excluded.append(Excluded(cand.rel, f"name does not match the `{preset}` "
                                         "pattern"))
                continue
            labelled.append((cand, match.group("subject"), match.group("label")))

    if not labelled and not excluded:
        raise InputError("no videos or frame-sequence folders found", path=root,
                         hint="Check index.root and index.video_extensions")
    kept = []
    for cand, subject, raw_label in labelled:
        label = canonical_label(raw_label, synonyms)
        if subject in excluded_subjects:
            excluded.append(Excluded(cand.rel, f"subject {subject} is in exclude_subjects"))
        elif label not in classes:
            excluded.append(Excluded(cand.rel, f"label {raw_label!r} is not one of the "
                                     f"classes ({', '.join(classes)})"))
        else:
            kept.append((cand, subject, label))
    ids = make_item_ids([c.rel for c, _, _ in kept], [s for _, s, _ in kept])
    items, seen = [], {}
    for item_id, (cand, subject, label) in zip(ids, kept):
        try:
            check_item_id(item_id)
        except InputError:
            excluded.append(Excluded(cand.rel, f"item id {item_id!r} is not a safe file name; "
                                     "rename the file"))
            continue
        if item_id in seen:
            excluded.append(Excluded(cand.rel, f"item id {item_id!r} also used by "
                                     f"{seen[item_id]}; rename one"))
            continue
        seen[item_id] = cand.rel
        items.append({"id": item_id, "subject": subject, "label": label, "kind": cand.kind,
                      "path": str(cand.path), "rel": cand.rel})
    return items, excluded


def _compile(pattern: str) -> re.Pattern:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"index.pattern is not a valid regex: {exc}") from None
    if not {"subject", "label"} <= set(rx.groupindex):
        raise ConfigError("index.pattern needs named groups (?P<subject>...) and "
                          "(?P<label>...)")
    return rx


def _from_csv(root: Path, params: dict, excluded: list[Excluded]):
    if not params["csv"]:
        raise ConfigError("index.csv is not set for preset `csv`",
                          hint="Give a CSV with columns path,subject,label")
    csv_path = Path(params["csv"]).expanduser()
    if not csv_path.is_file():
        raise InputError("label CSV not found", path=csv_path, hint="Check index.csv")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"))))
    if rows and not {"path", "subject", "label"} <= set(rows[0]):
        raise InputError("CSV needs the columns path,subject,label", path=csv_path,
                         hint="Rename the header row")
    out = []
    for row in rows:
        path = (root / row["path"]).resolve()
        if not path.is_relative_to(root):
            excluded.append(Excluded(row["path"], "path escapes index.root"))
        elif not path.exists():
            excluded.append(Excluded(row["path"], "file listed in the CSV does not exist"))
        else:
            kind = "sequence" if path.is_dir() else "video"
            out.append((Candidate(path, path.relative_to(root).as_posix(), kind),
                        row["subject"].strip(), row["label"]))
    return out


def source_fingerprint(path: Path) -> dict:
    """Cheap identity of a source: size and mtime, over all frames for a sequence."""
    if path.is_dir():
        digest = hashlib.sha256()
        for p in sorted(path.iterdir()):
            st = p.stat()
            digest.update(os.fsencode(p.name) + f":{st.st_size}:{st.st_mtime_ns};".encode())
        return {"listing": digest.hexdigest()[:16]}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class IndexStage(Stage):
    name = "index"
    help = "Build the dataset table (subject, label, frames, fps, size) from index.root."
    cpu_parallel = True
    sections = ("index",)

    def params(self, config: Config) -> dict:
        """``index.root`` left unset means: the folder the last `fer index ROOT` used."""
        params = super().params(config)
        section = dict(params["index"])
        if not section["root"]:
            manifest = StageDir(config.workdir, self.name).read_manifest()
            if manifest:
                section["root"] = manifest["params"]["index"]["root"]
        for key in ("root", "csv"):  # relative paths are relative to the config file
            if section[key]:
                section[key] = str(config.resolve_path(section[key]))
        params["index"] = section
        return params

    def item_params(self, params: dict) -> dict:
        return {"sequence_fps": params["index"]["sequence_fps"]}  # probing uses only this

    def source_fingerprint(self, config: Config) -> str:
        items, excluded = scan_dataset(self.params(config)["index"])
        listing = [(i["rel"], source_fingerprint(Path(i["path"]))) for i in items]
        listing += [(e.rel, e.reason) for e in excluded]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]

    def list_items(self, ctx: Context) -> list[Item]:
        items, self.excluded = scan_dataset(ctx.params["index"])
        return [Item(i["id"], {**source_fingerprint(Path(i["path"])), "rel": i["rel"],
                               "subject": i["subject"], "label": i["label"]}, i)
                for i in items]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        info = probe(item.payload["path"], ctx.params["index"]["sequence_fps"])
        return ItemOutput(info={**{k: item.payload[k] for k in
                                   ("subject", "label", "kind", "rel", "path")},
                                "n_frames": info.n_frames, "fps": info.fps,
                                "width": info.width, "height": info.height})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..plots import plot_lengths

        done = [r for r in records if r["status"] == "done"]
        rows = [{"item_id": r["id"], **{k: r["info"][k] for k in INDEX_COLUMNS[1:]}}
                for r in done]
        classes = ctx.params["index"]["classes"]
        out = ctx.stage
        index_csv = out.path("index.csv")
        atomic_write_text(index_csv, _csv_text(INDEX_COLUMNS, rows))
        classes_json = out.path("classes.json")
        atomic_write_json(classes_json, classes)
        excluded = getattr(self, "excluded", None)
        if excluded is None:
            excluded = scan_dataset(ctx.params["index"])[1]
        excluded_csv = out.path("excluded.csv")
        atomic_write_text(excluded_csv, _csv_text(["path", "reason"],
                                                  [{"path": e.rel, "reason": e.reason}
                                                   for e in excluded]))
        stats_csv = out.path("stats.csv")
        atomic_write_text(stats_csv, _csv_text(["group", "value", "items"],
                                               dataset_stats(rows, classes)))
        lengths_png = out.path("lengths.png")
        plot_lengths({r["item_id"]: r["n_frames"] for r in rows}, lengths_png,
                     title=f"Frame lengths of {len(rows)} indexed items")
        _report(console, rows, excluded, classes)
        return [index_csv, classes_json, excluded_csv, stats_csv, lengths_png]


INDEX_COLUMNS = ["item_id", "subject", "label", "kind", "n_frames", "fps", "width", "height",
                 "rel", "path"]


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def dataset_stats(rows: list[dict], classes: list[str]) -> list[dict]:
    """Counts per class and per subject, and frame-length summary (paper 000 Figure 1)."""
    by_label = Counter(r["label"] for r in rows)
    by_subject = Counter(r["subject"] for r in rows)
    lengths = sorted(int(r["n_frames"]) for r in rows)
    out = [{"group": "class", "value": c, "items": by_label.get(c, 0)} for c in classes]
    out += [{"group": "subject", "value": s, "items": n} for s, n in sorted(by_subject.items())]
    if lengths:
        for name, value in (("min", lengths[0]), ("median", lengths[len(lengths) // 2]),
                            ("max", lengths[-1])):
            out.append({"group": "frames", "value": name, "items": value})
        for low, high in ((0, 100), (100, 110), (110, 115), (115, 120), (120, 10**9)):
            label = f"{low}-{high - 1}" if high < 10**9 else f">={low}"
            out.append({"group": "length", "value": label,
                        "items": sum(low <= n < high for n in lengths)})
    return out


def _report(console: Console, rows: list[dict], excluded: list[Excluded],
            classes: list[str]) -> None:
    by_label = Counter(r["label"] for r in rows)
    subjects = len({r["subject"] for r in rows})
    console.print(f"index: {len(rows)} items from {subjects} subjects; "
                  + ", ".join(f"{c} {by_label.get(c, 0)}" for c in classes))
    if excluded:
        reasons = Counter(e.reason.split(" (")[0] if "label" in e.reason else e.reason
                          for e in excluded)
        console.print(f"[yellow]index: {len(excluded)} files left out[/] (see excluded.csv): "
                      + "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)))
