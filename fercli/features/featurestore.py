"""The HDF5 feature store that temporal models train on (thesis 3.2.3-3.2.4).

One file holds every sequence (original and augmented rows) as a flat ``frames`` array
(total_frames x feature_dim, chunked, lzf-compressed) plus ``offsets``; per-row metadata
(``names``, ``items``, ``subjects``, ``labels`` one-hot in classes.json order, ``augment``
method, split ``part``, the neutral-onset ``baselines`` and ``onsets``, see
fercli.features.identity) is small and read whole. A sequence is padded or truncated to
``max_frames`` on read, with a mask marking its real frames, so nothing ever loads the
whole dataset into memory. The thesis's per-fold files (``fold-<i>-features-<n>.h5``) are
views of this store: `export_fold` writes one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import ArtifactError
from ..core.workspace import atomic_path

STORE_VERSION = 2  # 2: baselines and onsets
_STR = h5py.string_dtype("utf-8")
META_FIELDS = ("names", "items", "subjects", "augment", "parts")


@dataclass
class Row:
    name: str       # unique row name: item id, plus "@method" for augmented rows
    item: str       # source item id
    subject: str
    label: int      # index into classes
    augment: str    # "" for the original clip
    part: str       # "test", "fold-<k>" or "unassigned"


class FeatureStoreWriter:
    """Append sequences one at a time; the file appears under its name only when closed."""

    def __init__(self, path: str | Path, feature_dim: int, classes: list[str], *,
                 dtype: str = "float16", attrs: dict | None = None,
                 chunk_rows: int | None = None):
        self.path = Path(path)
        self.feature_dim = feature_dim
        self.classes = classes
        self.dtype = np.dtype(dtype)
        self.attrs = attrs or {}
        # ~1 MiB chunks: a random sequence read decompresses little beyond its own frames
        row_bytes = feature_dim * np.dtype(dtype).itemsize
        self.chunk_rows = chunk_rows or int(np.clip((1 << 20) // max(row_bytes, 1), 8, 256))
        self.rows: list[Row] = []
        self.offsets = [0]
        self.baselines: list[np.ndarray] = []
        self.onsets: list[int] = []

    def __enter__(self) -> "FeatureStoreWriter":
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = h5py.File(self._tmp, "w")
        self._frames = self._file.create_dataset(
            "frames", shape=(0, self.feature_dim), maxshape=(None, self.feature_dim),
            dtype=self.dtype, chunks=(self.chunk_rows, self.feature_dim), compression="lzf")
        return self

    def add(self, row: Row, frames: np.ndarray, baseline: np.ndarray | None = None,
            onset: int = 0) -> None:
        """One sequence: (T, F) features, its (F,) neutral baseline (default: its first
        frame's features) and ``onset``, the frames trim cut before the kept ones."""
        if frames.ndim != 2 or frames.shape[1] != self.feature_dim:
            raise ValueError(f"{row.name}: features of shape {frames.shape}, expected "
                             f"(T, {self.feature_dim})")
        if baseline is None:
            baseline = frames[0] if len(frames) else np.zeros(self.feature_dim)
        self.baselines.append(np.asarray(baseline, np.float32).reshape(self.feature_dim))
        self.onsets.append(int(onset))
        start = self.offsets[-1]
        self._frames.resize(start + len(frames), axis=0)
        self._frames[start:] = frames.astype(self.dtype, copy=False)
        self.offsets.append(start + len(frames))
        self.rows.append(row)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._write_meta()
        finally:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)

    def _write_meta(self) -> None:
        f = self._file
        f.create_dataset("offsets", data=np.asarray(self.offsets, np.int64))
        labels = np.zeros((len(self.rows), len(self.classes)), np.uint8)
        labels[np.arange(len(self.rows)), [r.label for r in self.rows]] = 1
        f.create_dataset("labels", data=labels)
        f.create_dataset("baselines", data=np.asarray(self.baselines, np.float32).reshape(
            len(self.rows), self.feature_dim))
        f.create_dataset("onsets", data=np.asarray(self.onsets, np.int64))
        for name, attr in zip(META_FIELDS, ("name", "item", "subject", "augment", "part")):
            f.create_dataset(name, data=[getattr(r, attr) for r in self.rows], dtype=_STR)
        f.attrs["version"] = STORE_VERSION
        f.attrs["classes"] = list(self.classes)
        for key, value in self.attrs.items():
            f.attrs[key] = value


class FeatureStore:
    """Read access: metadata in memory, frames on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=16 << 20)
            f = self._file
            self.offsets = f["offsets"][:]
            self.labels = f["labels"][:].argmax(axis=1) if len(f["labels"]) else \
                np.zeros(0, int)
            self.onehot = f["labels"][:]
            meta = {name: np.array([s.decode() if isinstance(s, bytes) else s
                                    for s in f[name][:]], dtype=object)
                    for name in META_FIELDS}
            self.classes = [str(c) for c in f.attrs["classes"]]
            self.feature_dim = int(f["frames"].shape[1])
            self.attrs = dict(f.attrs)
            # stores written before version 2 have no baselines: identity normalisation off
            self.baselines = f["baselines"][:] if "baselines" in f else None
            self.onsets = f["onsets"][:] if "onsets" in f else np.zeros(len(self.offsets) - 1,
                                                                          np.int64)
        except (OSError, KeyError) as exc:
            raise ArtifactError(f"feature store is unreadable or truncated ({exc})",
                                path=self.path,
                                hint="Re-run `fer extract --force`") from None
        self.names, self.items, self.subjects = meta["names"], meta["items"], meta["subjects"]
        self.augment, self.parts = meta["augment"], meta["parts"]
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.names)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self, index: int) -> np.ndarray:
        """The real frames of one sequence, (T, F) float32."""
        return self._file["frames"][self.offsets[index]:self.offsets[index + 1]].astype(
            np.float32)

    def sequence(self, index: int, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(max_frames, F) features zero-padded or truncated, and its boolean mask."""
        real = self.frames(index)[:max_frames]
        features = np.zeros((max_frames, self.feature_dim), np.float32)
        features[:len(real)] = real
        mask = np.zeros(max_frames, bool)
        mask[:len(real)] = True
        return features, mask

    def select(self, parts: list[str], with_augmented: bool) -> np.ndarray:
        """Row indices of the given split parts; augmented rows only when asked."""
        keep = np.isin(self.parts, parts)
        if not with_augmented:
            keep &= self.augment == ""
        return np.flatnonzero(keep)


def export_fold(store: FeatureStore, rows: np.ndarray, path: str | Path,
                max_frames: int) -> Path:
    """Dense thesis-style file: features (N, T, F), masks (N, T), labels (N, C), names."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", shape=(len(rows), max_frames, store.feature_dim),
                                 dtype="float16", chunks=(1, max_frames, store.feature_dim),
                                 compression="lzf")
        masks = np.zeros((len(rows), max_frames), bool)
        for i, row in enumerate(rows):
            feats[i], masks[i] = store.sequence(int(row), max_frames)
        f.create_dataset("masks", data=masks)
        f.create_dataset("labels", data=store.onehot[rows])
        f.create_dataset("names", data=list(store.names[rows]), dtype=_STR)
        f.attrs["classes"] = store.classes
    return Path(path)
