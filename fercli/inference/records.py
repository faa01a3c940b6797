"""Records of finished videos, so `fer predict` over thousands of videos resumes.

Seed 004 ran ~2,800 debate videos for a day on a cluster: a job killed at its time limit,
or re-submitted, must start at the first unfinished video and never redo a finished one.
The rules are the stage engine's: one record per video under ``<out>/records/``, written
(atomically) after the video's outputs, reused when its key is unchanged. The key is
the runs (their model files' hashes), the settings that change results, and the video's
fingerprint (path, size, modification time; for a frame folder, every frame's). Shards of
an array job (``--shard K/N``) take every N-th video and share the records folder; each
rewrites the one summary of all recorded videos under a short file lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Any, Iterator

from ..core.config import params_hash
from ..core.workspace import StageLock, atomic_write_json, file_sha256, read_json

RETRIED_STATUSES = ("unreadable",)  # may be repaired (copied again, permission fixed)


def run_fingerprint(run_dir: Path, files: tuple[str, ...]) -> dict:
    """What identifies a finalized run's predictions: its model and its settings."""
    return {"name": run_dir.name, **{name: file_sha256(run_dir / name) for name in files}}


def video_fingerprint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        listing = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                         for p in path.iterdir() if p.is_file())
        return {"path": str(path.resolve()),
                "frames": hashlib.sha256(repr(listing).encode()).hexdigest()}
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class PredictRecords:
    """The records folder of one `fer predict` output folder."""

    def __init__(self, out_dir: Path, params: dict):
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / "records"
        self.params_hash = params_hash(params)

    def key(self, video: Path) -> str:
        return params_hash({"params": self.params_hash, "video": video_fingerprint(video)})

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str, video: Path) -> dict | None:
        """The record of this video with unchanged inputs, else None."""
        path = self.path(name)
        if not path.is_file():
            return None
        with contextlib.suppress(Exception):  # a damaged record means: redo the video
            record = read_json(path, "record")
            if record.get("key") == self.key(video):
                return record
        return None

    def done(self, name: str, video: Path) -> bool:
        """Finished for good: recorded, and not with a status a repair could change."""
        record = self.read(name, video)
        return record is not None and record["row"]["status"] not in RETRIED_STATUSES

    def write(self, name: str, video: Path, row: dict) -> None:
        atomic_write_json(self.path(name), {"id": name, "key": self.key(video), "row": row})

    def lock(self, shard: tuple[int, int] | None) -> StageLock:
        label = "predict" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
        suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
        return StageLock(self.out_dir / f".lock{suffix}", f"{label} into {self.out_dir}")

    @contextlib.contextmanager
    def summary_lock(self) -> Iterator[None]:
        """Shards rewrite the shared summary one at a time (read records, then write)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / ".summary.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def rows(self, videos: list[Path], names: list[str]) -> list[dict[str, Any]]:
        """Summary rows of every recorded video, in input order."""
        found = (self.read(name, video) for video, name in zip(videos, names))
        return [record["row"] for record in found if record]


def shard_of(items: list, shard: tuple[int, int] | None) -> list:
    """Every N-th item from the K-th on, as the stages shard (same K/N semantics)."""
    return items if shard is None else items[shard[0] - 1::shard[1]]

