"""`fer verify`: re-hash every file the manifests record; `--repair` makes the damage redoable.

Each manifest lists the stage's outputs and every item's outputs with size and SHA-256
(fercli.core.workspace.file_entry). A file that is gone, has another size (truncated, or grown)
or another hash (altered) no longer is what later stages consumed. Repair never edits an
artifact: it deletes the damaged files, the records of the items that wrote them and the
stage manifest, under the stage lock, so the next `fer run` redoes exactly those items and
re-finalizes the stage (the engine reuses every other record). A stage without a manifest
(killed, or shards still running) is checked through its item records instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.markup import escape
from rich.table import Table

from .errors import ArtifactError, InputError
from .workspace import StageDir, check_item_id, file_sha256

OUTSIDE = "outside the workdir"
DAMAGED = ("missing", "truncated", "altered")  # what repair deletes and redoes


@dataclass(frozen=True)
class Damage:
    stage: str
    item: str | None  # None: a stage-level output, or the manifest itself
    path: str  # relative to the workdir, as recorded
    problem: str  # missing | truncated | altered | unreadable | outside the workdir
    detail: str = ""


@dataclass
class Verification:
    checked: int = 0  # recorded files looked at
    stages: list[str] = field(default_factory=list)  # stages that record anything
    damages: list[Damage] = field(default_factory=list)


def recorded_entries(sdir: StageDir) -> list[tuple[str | None, dict]]:
    """(item or None, {path, size, sha256}) of every output the stage records: from the
    manifest, or from the item records when there is none. Raises ArtifactError when the
    manifest is not valid JSON."""
    manifest = sdir.read_manifest()
    if manifest is None:
        return record_entries(sdir)
    entries: list[tuple[str | None, dict]] = [(None, e) for e in manifest.get("outputs", [])]
    for item_id, record in manifest.get("items", {}).items():
        entries += [(item_id, e) for e in record.get("outputs", [])]
    return entries


def record_entries(sdir: StageDir) -> list[tuple[str | None, dict]]:
    return [(item_id, entry) for item_id in sdir.record_ids()
            for entry in (sdir.read_record(item_id) or {}).get("outputs", [])]


def check_entry(workdir: Path, entry: dict) -> tuple[str, str] | None:
    """(problem, detail) when the file differs from its record, else None."""
    path = (workdir / entry["path"]).resolve()
    if not path.is_relative_to(workdir.resolve()):
        return OUTSIDE, "recorded path leaves the work directory; not touched"
    if not path.is_file():
        return "missing", ""
    size = path.stat().st_size
    if size != entry["size"]:
        problem = "truncated" if size < entry["size"] else "altered"
        return problem, f"{size} bytes, recorded {entry['size']}"
    if file_sha256(path) != entry["sha256"]:
        return "altered", "same size, SHA-256 differs"
    return None


def _safe_id(item_id: str | None) -> bool:
    """A hand-edited manifest must not make repair delete a record outside the stage."""
    try:
        return item_id is None or check_item_id(item_id) == item_id
    except InputError:
        return False


def verify_workdir(workdir: Path, stage_names: list[str],
                   progress: Callable[[str], None] | None = None) -> Verification:
    """Check every recorded file of the given stages (in pipeline order); ``progress`` is
    told each file's path before it is hashed."""
    result = Verification()
    for name in stage_names:
        sdir = StageDir(workdir, name)
        if not sdir.root.is_dir():
            continue
        try:
            entries = recorded_entries(sdir)
        except ArtifactError as exc:
            result.damages.append(Damage(name, None, _relative(sdir.manifest_path, workdir),
                                         "unreadable", exc.detail))
            entries = record_entries(sdir)
        if entries:
            result.stages.append(name)
        for item_id, entry in entries:
            if progress:
                progress(entry["path"])
            result.checked += 1
            found = check_entry(workdir, entry) if _safe_id(item_id) else \
                (OUTSIDE, "item id is not a safe file name; not touched")
            if found:
                result.damages.append(Damage(name, item_id, entry["path"], *found))
    return result


def repair(workdir: Path, damages: list[Damage]) -> list[str]:
    """Delete damaged files, their items' records and the stage manifests; say what went.

    Takes each stage's lock, so a running stage is never repaired under its feet. A damaged
    file inside a training folder also loses that folder's ``state.json``, else the fold
    would count itself finished and never rewrite the file. Nothing outside the workdir
    is ever deleted.
    """
    done = []
    for name in dict.fromkeys(d.stage for d in damages):
        sdir = StageDir(workdir, name)
        files = [d for d in damages if d.stage == name and d.problem in DAMAGED]
        items = sorted({d.item for d in files if d.item is not None})
        with sdir.lock():
            for damage in files:
                path = workdir / damage.path
                path.unlink(missing_ok=True)
                if damage.item is not None:
                    (path.parent / "state.json").unlink(missing_ok=True)
            for item_id in items:
                sdir.remove_record(item_id)
            sdir.remove_manifest()
        records = f" and the records of {', '.join(items)}" if items else ""
        redo = "those items and its outputs" if items else "its outputs from the item records"
        done.append(f"{name}: removed {len(files)} damaged file(s), the manifest{records}; "
                    f"`fer {name}` redoes {redo}")
    return done


def check_stage_outputs(workdir: Path, stage_names: list[str]) -> None:
    """Cheap guard before a stage runs: the stage-level files of its upstream stages exist
    with the recorded size, so a truncated feature store stops the stage with one error
    instead of failing every item."""
    for name in stage_names:
        manifest = StageDir(workdir, name).read_manifest() or {}
        for entry in manifest.get("outputs", []):
            path = workdir / entry["path"]
            size = path.stat().st_size if path.is_file() else None
            if size == entry["size"]:
                continue
            problem = f"is missing, yet `fer {name}` recorded it" if size is None else \
                f"is {size} bytes, `fer {name}` wrote {entry['size']} (truncated or altered)"
            raise ArtifactError(problem, path=path,
                                hint=f"Run `fer verify --repair`, then `fer {name}`")


def damage_table(damages: list[Damage]) -> Table:
    table = Table(title=f"fer verify: {len(damages)} damaged")
    for column in ("stage", "item", "file", "problem", "detail"):
        table.add_column(column, overflow="fold")
    for d in damages:
        table.add_row(*(escape(text) for text in (d.stage, d.item or "(stage)", d.path,
                                                   d.problem, d.detail)))
    return table


def _relative(path: Path, workdir: Path) -> str:
    return path.relative_to(workdir).as_posix()
