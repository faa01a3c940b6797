"""The work directory: atomic writes, file hashes, per-item records, manifests and locks.

Layout: ``<workdir>/<stage>/`` holds ``manifest.json`` (written last, when every item has
a record), ``records/<item>.json`` (one file per finished item, so shards of an array job
never share a writer) and the stage's artifacts. Everything is written under a temporary
name in the same folder and renamed into place, so a killed process never leaves a
half-written file under a name a later stage would read.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import ArtifactError, DiskFullError, FerError, InputError, LockError

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]{0,199}$")


# --------------------------------------------------------------------------- atomic I/O
def remove_temp_files(root: Path, pids: set[int] | None = None) -> int:
    """Delete the temporary files of ``atomic_path`` under ``root``: all, or those written
    by ``pids`` (killed workers); returns how many."""
    if not root.is_dir():
        return 0
    leftovers = [p for p in root.rglob(".*tmp*") if p.is_file()
                 and (pids is None or any(f".{pid}." in p.name for pid in pids))]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename into place on success.

    The suffix is kept so writers that pick a format by extension (cv2.VideoWriter,
    h5py, matplotlib) still work. On any exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name lets an interrupted run remove exactly its own leftovers.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.",
                                    suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FerError("the writer produced no file", path=path)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give it a normal file's mode
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise disk_full(path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_full(path: object) -> DiskFullError:
    return DiskFullError("no space left on device while writing", path=path,
                         hint="Free disk space and run the same command again (finished "
                              "items are kept)")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def csv_text(columns: Sequence[str], rows: Iterable[Sequence | Mapping]) -> str:
    """A CSV table with its header; a row is a sequence, or a mapping read by the columns
    (missing keys give empty cells, keys outside the columns are left out)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns] if isinstance(row, Mapping) else row)
    return buffer.getvalue()


def write_csv(path: str | Path, columns: Sequence[str],
              rows: Iterable[Sequence | Mapping]) -> Path:
    """Write a CSV table atomically (see csv_text)."""
    atomic_write_text(path, csv_text(columns, rows))
    return Path(path)


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON, turning a hand-edited or truncated file into a one-line error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} is not valid JSON ({exc})", path=path,
                            hint="Delete it, or re-run the stage with --force") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """Read a UTF-8 text artifact (CSV), turning a damaged one into a one-line error."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{what} is not valid UTF-8 text (byte {exc.start})", path=path,
                            hint="Delete it, or re-run the stage with --force") from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path, root: Path) -> dict[str, Any]:
    """What a manifest records of one output: path relative to the workdir, size, hash."""
    return {"path": path.resolve().relative_to(root).as_posix(),
            "size": path.stat().st_size, "sha256": file_sha256(path)}


def check_item_id(item_id: str, source: object = None) -> str:
    """Item ids become file names: refuse anything that could escape the work directory."""
    if not SAFE_ID.match(item_id) or ".." in item_id:
        raise InputError(f"item id {item_id!r} is not a safe file name", path=source,
                         hint="Rename the file or folder (letters, digits, _ . + - only)")
    return item_id


# --------------------------------------------------------------------------- locks
def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageLock:
    """An exclusive lock file; a lock left by a dead process on this host is taken over."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "what": self.label}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or (holder.get("host") == info["host"]
                                      and not pid_alive(int(holder.get("pid", -1)))):
                    # Dead owner: rename first so two takers cannot both delete a fresh lock.
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(self.path, self.path.with_suffix(f".stale-{os.getpid()}"))
                        os.unlink(self.path.with_suffix(f".stale-{os.getpid()}"))
                    continue
                raise LockError(
                    f"{self.label} is locked by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')}", path=self.path,
                    hint="Wait for it to finish; if that process is gone (another host), "
                         "delete the lock file") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            self.held = True
            return
        raise LockError("could not take the lock", path=self.path, hint="Try again")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # empty/garbled lock: its writer died before finishing it

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "StageLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- stage folders
class StageDir:
    """One stage's folder: manifest, per-item records, artifacts."""

    def __init__(self, workdir: Path, name: str):
        self.workdir = workdir
        self.name = name
        self.root = workdir / name
        self.records_dir = self.root / "records"
        self.manifest_path = self.root / "manifest.json"

    def path(self, *parts: str) -> Path:
        """A path inside the stage folder; never outside it."""
        target = self.root.joinpath(*parts).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise InputError(f"path {'/'.join(parts)!r} escapes the stage folder",
                             path=self.root, hint="Rename the offending item")
        return target

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        manifest = read_json(self.manifest_path, "manifest")
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION:
            raise ArtifactError("manifest has an unknown format", path=self.manifest_path,
                                hint=f"Re-run `fer {self.name} --force`")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def remove_manifest(self) -> None:
        self.manifest_path.unlink(missing_ok=True)

    def record_path(self, item_id: str) -> Path:
        return self.records_dir / f"{item_id}.json"

    def read_record(self, item_id: str) -> dict | None:
        path = self.record_path(item_id)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged record only means the item is redone
        return record if isinstance(record, dict) else None

    def write_record(self, record: dict) -> None:
        atomic_write_json(self.record_path(record["id"]), record)

    def remove_record(self, item_id: str) -> None:
        self.record_path(item_id).unlink(missing_ok=True)

    def record_ids(self) -> list[str]:
        if not self.records_dir.is_dir():
            return []
        return sorted(p.stem for p in self.records_dir.glob("*.json")
                      if not p.name.startswith("."))

    def remove_temp_files(self, pids: set[int] | None = None) -> int:
        """Delete temporary files a killed run left: all of them (call only while holding the
        stage lock with no shards running: a shard's temp file may be in use), or only those
        written by ``pids`` (this process and its killed workers)."""
        return remove_temp_files(self.root, pids)

    def lock(self, shard: tuple[int, int] | None = None,
             only: list[str] | None = None) -> StageLock:
        """The stage's lock; a shard or an item subset (e.g. one CV fold per job) has its
        own, so array jobs over disjoint items run side by side."""
        if shard is not None:
            return StageLock(self.root / f".lock-shard-{shard[0]}-of-{shard[1]}",
                             f"stage `{self.name}` shard {shard[0]}/{shard[1]}")
        if only:
            key = "+".join(sorted(only))
            return StageLock(self.root / f".lock-items-{key}", f"stage `{self.name}` {key}")
        return StageLock(self.root / ".lock", f"stage `{self.name}`")
