"""The HDF5 feature store that temporal models train on (thesis 3.2.3-3.2.4).

One file holds every sequence (original and augmented rows) as a flat ``frames`` array
(total_frames x feature_dim, chunked, lzf-compressed) plus ``offsets``; per-row metadata
(``names``, ``items``, ``subjects``, ``labels`` one-hot in classes.json order, ``augment``
method, split ``part``, the neutral-onset ``baselines`` and ``onsets``, see
fercli.features.identity) is small and read whole. A sequence is padded or truncated to
``max_frames`` on read, with a mask marking its real frames. `FeatureStore.read_block`
reads many rows at once into one `FrameBlock` (runs of adjacent rows in one read each, in
storage order, so every chunk is decompressed about once); the training input
(`fercli.learning.datasets.feature_dataset`) holds the whole store in such a block when it fits its
memory budget and streams blocks of it otherwise. The thesis's per-fold files
(``fold-<i>-features-<n>.h5``) are views of this store: `export_fold` writes one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import ArtifactError, ConfigError
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


INPUT_MEMORY_ENV = "FERCLI_INPUT_MEMORY_MB"
DEFAULT_INPUT_MEMORY_MB = 4096  # feature frames held by one training input pipeline at most
SPAN_BYTES = 8 << 20  # one read covers at most this much: other threads get the GIL between


def input_memory_budget(memory_mb: float | None = None) -> int:
    """Bytes of feature frames `fercli.learning.datasets.feature_dataset` may hold at once.

    ``memory_mb`` when given, else ``$FERCLI_INPUT_MEMORY_MB``, else the smaller of
    `DEFAULT_INPUT_MEMORY_MB` and a quarter of the machine's physical memory (not of the
    memory free now, so the same machine always takes the same path and row order).
    """
    if memory_mb is None:
        value = os.environ.get(INPUT_MEMORY_ENV, "").strip()
        if value:
            try:
                memory_mb = float(value)
            except ValueError:
                raise ConfigError(f"${INPUT_MEMORY_ENV} must be a number of MB, not "
                                  f"{value!r}") from None
    if memory_mb is not None:
        if not np.isfinite(memory_mb) or memory_mb < 0:
            raise ConfigError(f"the input memory budget must be >= 0 MB, not {memory_mb}")
        return int(memory_mb * (1 << 20))
    budget = DEFAULT_INPUT_MEMORY_MB << 20
    try:
        budget = min(budget, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (AttributeError, OSError, ValueError):
        pass
    return int(budget)


@dataclass
class FrameBlock:
    """The frames of some rows held in memory, in the store's dtype.

    ``rows`` (sorted, unique) are store rows; row ``rows[k]`` has ``counts[k]`` frames (at
    most the ``max_frames`` it was read for) at ``frames[starts[k]:starts[k] + counts[k]]``.
    The last row of ``frames`` is zeros: `gather` points padding there.
    """
    rows: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    frames: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes

    def gather(self, rows: np.ndarray, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, max_frames, F) features in the store's dtype, zero-padded or truncated, and
        the (n, max_frames) boolean mask, for held ``rows`` in the order given: one
        vectorised gather, no per-row Python."""
        where = np.searchsorted(self.rows, rows)
        if np.any(where >= len(self.rows)) or np.any(self.rows[np.minimum(
                where, len(self.rows) - 1)] != rows):
            raise KeyError("rows not held by this block")
        steps = np.arange(max_frames)
        mask = steps < self.counts[where, None]
        index = np.where(mask, self.starts[where, None] + steps, len(self.frames) - 1)
        return np.take(self.frames, index, axis=0), mask


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary
    (TensorFlow can then share it instead of copying)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)


def frame_spans(offsets: np.ndarray, rows: np.ndarray, max_frames: int | None,
                span_frames: int) -> list[tuple[int, int, int]]:
    """Reads covering sorted ``rows``: (first row position, end row position, frames) per
    run of rows whose needed frames (the first ``max_frames``) lie back to back in the
    store, each at most ``span_frames`` long unless one row alone is longer."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    if max_frames is not None:
        counts = np.minimum(counts, max_frames)
    spans, first, size = [], 0, 0
    for k in range(len(rows)):
        if k > first and (starts[k] != starts[k - 1] + counts[k - 1]
                          or size + counts[k] > span_frames):
            spans.append((first, k, size))
            first, size = k, 0
        size += int(counts[k])
    if len(rows):
        spans.append((first, len(rows), size))
    return spans


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

    def held_frames(self, rows: np.ndarray, max_frames: int | None = None) -> np.ndarray:
        """Frames of each row that a read for ``max_frames`` keeps (all when None)."""
        lengths = self.lengths[np.asarray(rows, np.int64)]
        return lengths if max_frames is None else np.minimum(lengths, max_frames)

    @property
    def dtype(self) -> np.dtype:
        """The frames' dtype on disk (float16 as `fer extract` writes them)."""
        return self._file["frames"].dtype

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame in the store's dtype."""
        return self.feature_dim * self.dtype.itemsize

    def read_block(self, rows: np.ndarray, max_frames: int | None = None) -> FrameBlock:
        """The first ``max_frames`` frames (all when None) of ``rows`` in one `FrameBlock`.

        Rows are read in storage order, a run of back-to-back rows in one read of at most
        `SPAN_BYTES` straight into the block (no intermediate copy), so each chunk is
        decompressed about once (the chunk cache keeps the one a row boundary shares).
        """
        rows = np.unique(np.asarray(rows, np.int64))
        counts = self.held_frames(rows, max_frames)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        source = self._file["frames"]
        frames = aligned_empty((int(counts.sum()) + 1, self.feature_dim), source.dtype)
        frames[-1] = 0
        span_frames = max(1, SPAN_BYTES // self.frame_bytes)
        for first, _end, size in frame_spans(self.offsets, rows, max_frames, span_frames):
            if size:
                at, to = int(starts[first]), int(self.offsets[rows[first]])
                source.read_direct(frames, np.s_[to:to + size], np.s_[at:at + size])
        return FrameBlock(rows, starts, counts, frames)

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
