"""`fer index`: the dataset table (item, subject, label, source, frames, fps, size).

Reads the layouts of DATA.md as they come: a folder of videos, of frame-sequence folders,
of many sequences whose frames share one folder (CK+48), or of still images (JAFFE,
FER2013-style folders); subject and label parsed from the relative path (presets for
BU-4DFE names, folder-per-label redistributions, CK+48 and the official CK+ tree with its
Emotion/ label files), or an explicit CSV. Files that cannot become items (name does not
match, unknown label, excluded subject, unlabelled CK+ sequence) are listed in
``excluded.csv`` with the reason.

An item is one of four kinds (``kind`` in index.csv), each read by ``media.iter_frames``
from the record's ``path``:

- ``video``: a video file; ``sequence``: a folder that is one frame sequence;
- ``frames``: one sequence grouped out of a folder holding many (``index.group``); its
  ``path`` is a frame list ``work/index/frames/<item>.frames`` naming the images in order,
  its ``rel`` is ``<folder>/<sequence>`` (e.g. ``anger/S010_004``);
- ``image``: one still image, a one-frame item (``index.stills``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..core.config import DEFAULT_SYNONYMS, Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.errors import ConfigError, InputError, ItemError
from ..core.workspace import (
    StageDir,
    atomic_write_json,
    atomic_write_text,
    check_item_id,
    write_csv,
)
from ..vision.media import (
    FRAME_LIST_SUFFIX,
    IMAGE_EXTENSIONS,
    check_frame_numbers,
    frame_list_text,
    printable,
    probe,
)

# Relative-path patterns per preset; the first that matches wins. A grouped sequence is
# matched as `<folder>/<sequence>`, a still as its file's relative path.
PRESET_PATTERNS = {
    # M042_happy_tex.avi, or <subject>/<expression>/<anything> (DATA.md, BU-4DFE)
    "bu4dfe": [r"(?:^|/)(?P<subject>[FM]\d{3})_(?P<label>[A-Za-z]+)(?:_[^/]*)?(?:\.\w+)?$",
               r"(?:^|/)(?P<subject>[FM]\d{3})/(?P<label>[A-Za-z]+)(?:/|$)"],
    # <label>/<subject>_<rest>... e.g. happy/S005_001/ (CK+ redistributions)
    "folder-per-label": [r"^(?P<label>[^/]+)/(?P<subject>[^/_.]+)"],
    # CK+48 (DATA.md): <emotion>/Sxxx_yyy_000000NN.png, grouped into <emotion>/Sxxx_yyy
    "ckplus48": [r"(?:^|/)(?P<label>[^/]+)/(?P<subject>S\d+)_\d+$"],
}
# Default `index.group` per preset: file name -> sequence key (and frame number).
PRESET_GROUPS = {
    "ckplus48": r"^(?P<sequence>S\d+_\d+)_(?P<frame>\d+)\.\w+$",
}
# CK+ emotion codes (DATA.md): 0 neutral ... 7 surprise.
CKPLUS_CODES = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness",
                "surprise"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
_DIGITS = re.compile(r"(\d+)")


@dataclass
class Candidate:
    path: Path  # video, sequence folder, image, or (kind "frames") the folder of the group
    rel: str
    kind: str  # "video" | "sequence" | "frames" | "image"
    frames: list[str] = field(default_factory=list)  # kind "frames": file names in order
    numbers: list[int] | None = None  # their frame numbers, where index.group gives them


@dataclass
class Excluded:
    rel: str
    reason: str


def natural_key(name: str) -> list:
    """Name order with digit runs compared as numbers (frame_9 before frame_10)."""
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(name)]


def _walk(root: Path, video_extensions: list[str], excluded: list[Excluded] | None = None,
          skip: tuple[Path, ...] = ()) -> tuple[list[Candidate], dict[Path, list[Path]]]:
    """Video files, and the image files of every folder (root included) that holds some.

    Folder links are followed, each real folder once (so a link loop ends); hidden names,
    the work folder (``skip``) and any other fercli stage folder are never read, so outputs
    never become inputs. Dangling links, unreadable folders, link loops and other runs'
    stage folders are listed in ``excluded`` with their reason.
    """
    extensions = {e.lower() for e in video_extensions}
    skip_real = {p.resolve() for p in skip}
    videos, images, seen = [], {}, set()
    left_out = excluded if excluded is not None else []

    def unreadable(exc: OSError) -> None:
        why = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
        left_out.append(Excluded(_rel(root, Path(exc.filename)) + "/",
                                 f"folder is not readable ({why}); its files are not indexed"))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        here = Path(folder)
        real = here.resolve()
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if real in seen:
            left_out.append(Excluded(_rel(root, here) + "/", "link to a folder already "
                                     "indexed (a link loop or a second link); read once"))
            dirs[:] = []
            continue
        seen.add(real)
        if here != root and real in skip_real:  # this run's own work folder: silently
            dirs[:] = []
            continue
        if here != root and _is_stage_folder(here, files, dirs):
            left_out.append(Excluded(_rel(root, here) + "/", "fercli work folder: outputs "
                                     "are never indexed"))
            dirs[:] = []
            continue
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if not path.exists():
                left_out.append(Excluded(_rel(root, path), "dangling symbolic link; fix or "
                                         "remove it"))
                continue
            if not path.is_file():
                continue
            suffix = path.suffix.lower()
            if suffix in extensions:
                videos.append(Candidate(path, _rel(root, path), "video"))
            elif suffix in IMAGE_EXTENSIONS:
                images.setdefault(here, []).append(path)
    return sorted(videos, key=lambda c: c.rel), images


def _is_stage_folder(folder: Path, files: list[str], dirs: list[str]) -> bool:
    """A fercli stage folder: a manifest of ours, or per-item records (a killed run)."""
    if "records" in dirs and any((folder / "records").glob("*.json")):
        return True
    if "manifest.json" not in files:
        return False
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"stage", "params_hash"} <= manifest.keys()


def _rel(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return "" if rel == "." else rel


def find_candidates(root: Path, video_extensions: list[str],
                    excluded: list[Excluded] | None = None,
                    skip: tuple[Path, ...] = ()) -> list[Candidate]:
    """Every video file and every folder below root that directly holds images, by path."""
    videos, images = _walk(root, video_extensions, excluded, skip)
    folders = [Candidate(f, _rel(root, f), "sequence") for f in images if f != root]
    return sorted(videos + folders, key=lambda c: c.rel)


def _group_frames(root: Path, folder: Path, files: list[Path], rx: re.Pattern,
                  excluded: list[Excluded]) -> list[Candidate]:
    """Split one folder's images into sequences by ``index.group`` (named group
    ``sequence``; optional ``frame`` numbers the frames, else name order)."""
    groups: dict[str, list[tuple[int | None, str]]] = {}
    for path in files:
        match = rx.search(path.name)
        if match is None:
            excluded.append(Excluded(_rel(root, path), "file name does not match index.group"))
            continue
        frame = match.groupdict().get("frame")
        groups.setdefault(match.group("sequence"), []).append(
            (int(frame) if frame is not None and frame.isdigit() else None, path.name))
    base = _rel(root, folder)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda m: (m[0] if m[0] is not None else -1, natural_key(m[1])))
        numbers = [n for n, _ in members]
        out.append(Candidate(folder, f"{base}/{key}" if base else key, "frames",
                             [name for _, name in members],
                             None if None in numbers else numbers))
    return out


def _image_candidates(root: Path, files: list[Path]) -> list[Candidate]:
    return [Candidate(p, _rel(root, p), "image") for p in files]


def canonical_label(raw: str, synonyms: dict[str, str]) -> str:
    key = raw.strip().lower()
    return synonyms.get(key, key)


def make_item_ids(rels: list[str], subjects: list[str],
                  files: list[bool] | None = None) -> list[str]:
    """Ids from relative paths: common parent folders and extension dropped, '/' -> '_',
    and the subject prefixed where the remaining path does not already name it.

    ``files`` says which rels are files (only their extension is dropped); without it a
    dot in the last name is taken for an extension.
    """
    if files is None:
        files = ["." in Path(rel).name[1:] for rel in rels]
    parts = [Path(rel).with_suffix("").parts if is_file and "." in Path(rel).name[1:]
             else Path(rel).parts for rel, is_file in zip(rels, files)]
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


def _layout_candidates(root: Path, params: dict, compiled: list[re.Pattern],
                       excluded: list[Excluded], skip: tuple[Path, ...]) -> list[Candidate]:
    """Videos plus the image folders read as sequences, grouped sequences or stills.

    ``index.group`` set (or the preset's): every image folder is split into sequences.
    ``index.stills`` true: every image is an item; false: a folder of images is one
    sequence; auto: a folder is one sequence when its path matches the pattern, else its
    images are items when their names match it (JAFFE, ``<label>/<image>``).
    """
    videos, images = _walk(root, params["video_extensions"], excluded, skip)
    group = params["group"] or PRESET_GROUPS.get(params["preset"])
    stills = params["stills"]
    if group and stills is True:
        raise ConfigError("index.stills is true but index.group groups images into "
                          "sequences", hint="Set one of them: index.stills=false or "
                          "index.group=null")
    group_rx = _compile_group(group) if group else None
    out = list(videos)
    for folder, files in images.items():
        rel = _rel(root, folder)
        as_sequence = group_rx is None and folder != root and (
            stills is False or stills == "auto" and (
                any(rx.search(rel) for rx in compiled) or
                not any(rx.search(_rel(root, p)) for rx in compiled for p in files)))
        if as_sequence:  # its frames are checked when it is read (one failed item)
            out.append(Candidate(folder, rel, "sequence"))
            continue
        if stills is False and group_rx is None:
            continue  # images directly in the root: no sequence folder
        named = []
        for path in files:  # names OpenCV would crash on, or a frame list cannot hold
            if printable(path.name) != path.name or "\n" in path.name:
                excluded.append(Excluded(printable(_rel(root, path)),
                                         "file name is not valid UTF-8; rename it"))
            else:
                named.append(path)
        if group_rx is not None:
            out += _group_frames(root, folder, named, group_rx, excluded)
        else:
            out += _image_candidates(root, named)
    return sorted(out, key=lambda c: c.rel)


def scan_dataset(params: dict, skip: tuple[Path, ...] = ()) -> tuple[list[dict],
                                                                    list[Excluded]]:
    """Pure scan of the dataset root: items to index and files left out, with reasons;
    ``skip``: folders never read (the work folder, when it lies inside the root)."""
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
    elif preset == "ckplus":
        candidates = [c for c in find_candidates(root, params["video_extensions"],
                                                      excluded, skip)
                      if not c.rel.startswith("Emotion/")]
        for cand in candidates:
            if printable(cand.rel) != cand.rel:  # OpenCV would crash on the name
                excluded.append(Excluded(printable(cand.rel), "file name is not valid UTF-8; "
                                         "rename it"))
                continue
            label = _ckplus_label(root, cand.rel)
            subject = Path(cand.rel).parts[-2] if len(Path(cand.rel).parts) >= 2 else ""
            if label is None:
                excluded.append(Excluded(cand.rel, "unlabelled (no Emotion file)"))
                continue
            labelled.append((cand, subject, label))
    else:
        if preset == "regex" and not params["pattern"]:
            raise ConfigError("index.pattern is not set for preset `regex`",
                              hint="Give a regex with (?P<label>...) and, where the names "
                                   "carry one, (?P<subject>...)")
        patterns = PRESET_PATTERNS.get(preset) or [params["pattern"] or ""]
        compiled = [_compile(p) for p in patterns]
        for cand in _layout_candidates(root, params, compiled, excluded, skip):
            if printable(cand.rel) != cand.rel:  # OpenCV would crash on the name
                excluded.append(Excluded(printable(cand.rel), "file name is not valid UTF-8; "
                                         "rename it"))
                continue
            match = next((m for rx in compiled if (m := rx.search(cand.rel))), None)
            if match is None:
                excluded.append(Excluded(cand.rel, f"name does not match the `{preset}` "
                                         "pattern"))
                continue
            labelled.append((cand, match.groupdict().get("subject") or "",
                             match.group("label")))

    if not labelled and not excluded:
        raise InputError("no videos or frame-sequence folders found", path=root,
                         hint="Check index.root and index.video_extensions")
    kept = []
    for cand, subject, raw_label in labelled:
        label = canonical_label(raw_label, synonyms)
        if subject and subject in excluded_subjects:
            excluded.append(Excluded(cand.rel, f"subject {subject} is in exclude_subjects"))
        elif label not in classes:
            excluded.append(Excluded(cand.rel, f"label {raw_label!r} is not one of the "
                                     f"classes ({', '.join(classes)})"))
        else:
            kept.append((cand, subject, label))
    ids = make_item_ids([c.rel for c, _, _ in kept], [s for _, s, _ in kept],
                        [c.kind in ("video", "image") for c, _, _ in kept])
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
        item = {"id": item_id, "subject": subject or item_id, "label": label,
                "kind": cand.kind, "path": str(cand.path), "rel": cand.rel}
        if cand.kind == "frames":
            item["frames"] = cand.frames
            item["numbers"] = cand.numbers
        items.append(item)
    return items, excluded


def _compile_regex(key: str, pattern: str, group: str, needs: str,
                   hint: str | None = None) -> re.Pattern:
    """``pattern`` compiled, with the named ``group`` it must have (``needs`` says which)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key} is not a valid regex: {exc}") from None
    if group not in rx.groupindex:
        raise ConfigError(f"{key} needs the named group {needs}", hint=hint)
    return rx


def _compile(pattern: str) -> re.Pattern:
    return _compile_regex("index.pattern", pattern, "label", "(?P<label>...) (and "
                          "(?P<subject>...) where the names carry a subject)")


def _compile_group(pattern: str) -> re.Pattern:
    return _compile_regex("index.group", pattern, "sequence", "(?P<sequence>...) (optional: "
                          "(?P<frame>...) for the frame number)",
                          hint=r"e.g. '^(?P<sequence>S\d+_\d+)_(?P<frame>\d+)\.png$'")


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
            kind = "sequence" if path.is_dir() else \
                "image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"
            out.append((Candidate(path, path.relative_to(root).as_posix(), kind),
                        row["subject"].strip(), row["label"]))
    return out


def _listing_digest(files: list[Path]) -> dict:
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(os.fsencode(p.name) + f":{st.st_size}:{st.st_mtime_ns};".encode())
    return {"listing": digest.hexdigest()[:16]}


def source_fingerprint(path: Path, frames: list[str] | None = None) -> dict:
    """Cheap identity of a source: size and mtime, over all frames for a sequence (a
    folder, or the files ``frames`` of a group in ``path``)."""
    if frames is not None:
        return _listing_digest([path / name for name in frames])
    if path.is_dir():
        return _listing_digest(sorted(path.iterdir()))
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _item_fingerprint(item: dict) -> dict:
    """Source identity of a scanned item; a group's adds its frame numbers (the order and
    the gap check depend on them)."""
    found = source_fingerprint(Path(item["path"]), item.get("frames"))
    if item["kind"] == "frames":
        found["numbers"] = item["numbers"]
    return found


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
        items, excluded = scan_dataset(self.params(config)["index"], (config.workdir,))
        listing = [(i["rel"], _item_fingerprint(i)) for i in items]
        listing += [(e.rel, e.reason) for e in excluded]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]

    def list_items(self, ctx: Context) -> list[Item]:
        items, _ = scan_dataset(ctx.params["index"], (ctx.workdir,))
        return [Item(i["id"], {**_item_fingerprint(i), "rel": i["rel"],
                               "subject": i["subject"], "label": i["label"]}, i)
                for i in items]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        """Probe the source; a grouped sequence first gets its frame list, which later
        stages read through ``iter_frames`` like any other source."""
        payload, files = item.payload, []
        path = Path(payload["path"])
        if payload["kind"] == "frames":
            path = self._write_frame_list(ctx, item)
            files = [path]
        info = probe(path, ctx.params["index"]["sequence_fps"])
        return ItemOutput(files, info={**{k: payload[k] for k in
                                          ("subject", "label", "kind", "rel")},
                                       "path": str(path),
                                       "n_frames": info.n_frames, "fps": info.fps,
                                       "width": info.width, "height": info.height})

    @staticmethod
    def _write_frame_list(ctx: Context, item: Item) -> Path:
        payload = item.payload
        folder = Path(payload["path"])
        names = payload["frames"]
        if payload.get("numbers") is not None:  # a repeated or missing number fails
            names = check_frame_numbers(list(zip(payload["numbers"], names)),
                                        folder / Path(payload["rel"]).name)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ItemError(f"frame file {missing[0]!r} is gone", path=folder,
                            hint="Restore it or re-run `fer index`")
        target = ctx.stage.path("frames", item.id + FRAME_LIST_SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, frame_list_text([folder / n for n in names]))
        return target

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..reporting.plots import plot_lengths

        done = done_records(records)
        rows = [{"item_id": r["id"], **{k: r["info"][k] for k in INDEX_COLUMNS[1:]}}
                for r in done]
        classes = ctx.params["index"]["classes"]
        out = ctx.stage
        index_csv = out.path("index.csv")
        write_csv(index_csv, INDEX_COLUMNS, rows)
        classes_json = out.path("classes.json")
        atomic_write_json(classes_json, classes)
        # scanned again (a walk of the folder): the stage object keeps no state between calls
        excluded = scan_dataset(ctx.params["index"], (ctx.workdir,))[1]
        excluded_csv = out.path("excluded.csv")
        write_csv(excluded_csv, ["path", "reason"],
                  [{"path": e.rel, "reason": e.reason} for e in excluded])
        stats_csv = out.path("stats.csv")
        write_csv(stats_csv, ["group", "value", "items"], dataset_stats(rows, classes))
        lengths_png = out.path("lengths.png")
        plot_lengths({r["item_id"]: r["n_frames"] for r in rows}, lengths_png,
                     title=f"Frame lengths of {len(rows)} indexed items")
        _report(console, rows, excluded, classes)
        return [index_csv, classes_json, excluded_csv, stats_csv, lengths_png]


INDEX_COLUMNS = ["item_id", "subject", "label", "kind", "n_frames", "fps", "width", "height",
                 "rel", "path"]


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
