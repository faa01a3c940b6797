"""tf.data input pipelines for the models in `fercli.learning.models`, the row selection per fold,
and the device set-up (strategy, mixed precision).

Both pipelines bound their memory, so a dataset larger than memory trains (the thesis's
own generator for raw clips, thesis 3.2.5): clips are decoded when the model needs them;
features are held in memory when they fit a budget and otherwise streamed in windows read
ahead on a thread (`feature_dataset`). Elements are
``({"features" | "clip": ..., "mask": ...}, onehot)`` with the names of the models'
inputs. The row order is reshuffled every epoch from ``(seed, epoch)``, so a run is
reproducible and still sees a new order each epoch (thesis 3.2.3: shuffled, seeded).

Masks come as float32 0/1 (the models cast them to bool on entry): Keras's first step
under MirroredStrategy averages one batch over the replicas, which fails for bool tensors.
"""
from __future__ import annotations

import atexit
import functools
import itertools
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from ..core.errors import ArtifactError, ConfigError, InputError
from ..features.featurestore import FeatureStore, aligned_empty, input_memory_budget
from ..vision.clipio import iter_clip

STRATEGIES = ("auto", "default", "mirrored")
BLOCK_BYTES = 4 << 20  # neighbouring rows read together when a store streams (shuffle unit)

# A Python call of an input pipeline (`_host_call`) that is still running, or starts, when
# the interpreter tears its threads down hangs the exit: TensorFlow's thread inside it can
# no longer take the GIL, and the dataset iterator's destructor waits for that thread. So
# at exit the calls return at once (an empty epoch or window), and the exit waits until
# none has run for `EXIT_QUIET_S` (the pipelines' buffers are full or their epochs over).
EXIT_QUIET_S, EXIT_LIMIT_S = 0.3, 5.0
_EXITING = threading.Event()
_CALLS = {"inside": 0, "last": float("-inf")}
_CALLS_LOCK = threading.Lock()


def _host_call(function, on_exit):
    """``function`` for `tf.numpy_function`, counted for the exit; ``on_exit()`` answers
    instead once the interpreter exits."""
    def call(*args):
        with _CALLS_LOCK:
            _CALLS["inside"] += 1
        try:
            return on_exit() if _EXITING.is_set() else function(*args)
        finally:
            with _CALLS_LOCK:
                _CALLS["inside"] -= 1
                _CALLS["last"] = time.monotonic()
    return call


@atexit.register
def _quiet_pipelines() -> None:
    _EXITING.set()
    deadline = time.monotonic() + EXIT_LIMIT_S
    while time.monotonic() < deadline:
        with _CALLS_LOCK:
            if not _CALLS["inside"] and time.monotonic() - _CALLS["last"] >= EXIT_QUIET_S:
                return
        time.sleep(0.01)


def epoch_order(rows: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The rows in the order of one epoch: a permutation drawn from (seed, epoch)."""
    if not shuffle:
        return rows
    return np.random.default_rng([seed, epoch]).permutation(rows)


def _batched(dataset: tf.data.Dataset, size: int, batch_size: int) -> tf.data.Dataset:
    """Batch (the last batch may be short) and tell Keras how many steps an epoch has."""
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(size))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _runs(sizes: np.ndarray, limit: int) -> list[slice]:
    """Consecutive runs of items whose ``sizes`` sum to at most ``limit`` (one item at least)."""
    runs, first, total = [], 0, 0
    for k, size in enumerate(sizes):
        if k > first and total + size > limit:
            runs.append(slice(first, k))
            first, total = k, 0
        total += int(size)
    if len(sizes):
        runs.append(slice(first, len(sizes)))
    return runs


def streaming_windows(rows: np.ndarray, row_bytes: np.ndarray, shuffle: bool, seed: int,
                      epoch: int, window_bytes: int, batch_size: int = 1,
                      block_bytes: int = BLOCK_BYTES) -> list[np.ndarray]:
    """One epoch of a store larger than the memory budget: windows of rows, each read in one
    go and served in the order given; their concatenation is the epoch's order.

    Unshuffled: ``rows`` in their order. Shuffled: the rows in storage order are cut into
    blocks of about ``block_bytes`` of neighbouring rows (at most a sixteenth of a window),
    the blocks are permuted, consecutive blocks of that permutation form a window of at
    most ``window_bytes``, and each window's rows are permuted, all drawn from ``(seed,
    epoch)``. Every row still comes once per epoch, in a new order, but a batch draws from
    the (about 16) blocks of its window rather than from the whole store, so neighbours in
    the store (an item's augmented copies, one subject's items) share a batch more often
    than under a full permutation. Windows then end on whole batches (a window's last
    ``len % batch_size`` rows move to the next), so no batch spans two windows; a window
    may so exceed ``window_bytes`` by less than one batch of rows.
    """
    rows = np.asarray(rows, np.int64)
    row_bytes = np.asarray(row_bytes, np.int64)
    if not shuffle:
        windows = [rows[run] for run in _runs(row_bytes, window_bytes)]
    else:
        rng = np.random.default_rng([seed, epoch])
        block_bytes = min(block_bytes, max(1, window_bytes // 16))  # 16 blocks a window
        by_storage = np.argsort(rows, kind="stable")
        blocks = [by_storage[run] for run in _runs(row_bytes[by_storage], block_bytes)]
        blocks = [blocks[k] for k in rng.permutation(len(blocks))]
        sizes = np.array([row_bytes[block].sum() for block in blocks])
        windows = [rng.permutation(rows[np.concatenate(blocks[run])])
                   for run in _runs(sizes, window_bytes)]
    order = np.concatenate(windows)
    ends = np.cumsum([len(window) for window in windows])
    ends = np.unique(np.append(ends[:-1] // batch_size * batch_size, len(order)))
    return [order[start:end] for start, end in zip(np.append(0, ends[:-1]), ends)
            if end > start]


class _BlockReader:
    """Reads the windows' `FrameBlock`s on a background thread, one window ahead.

    `next_window` hands a window over without keeping it, so besides the window that
    TensorFlow serves (sharing the block's aligned memory, no copy), at most two exist: one
    waiting in the queue, one being read. The thread stops when the reader is closed or
    dropped (it holds no reference to the reader) and at exit; an error on it is raised to
    the consumer.
    """

    def __init__(self, store_path: str | Path, windows: list[np.ndarray], max_frames: int):
        self._windows = windows
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._served = 0
        self._thread = threading.Thread(
            target=self._read, args=(store_path, windows, max_frames, self._queue, self._stop),
            name="fercli-feature-reader", daemon=True)
        self._thread.start()

    @staticmethod
    def _read(store_path, windows, max_frames, out: queue.Queue, stop: threading.Event):
        def put(item) -> bool:
            while not (stop.is_set() or _EXITING.is_set()):
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            with FeatureStore(store_path) as store:
                for window in windows:
                    if not put((window, store.read_block(window, max_frames))):
                        return
        except BaseException as exc:  # noqa: BLE001 - raised again on the consumer's side
            put(exc)

    @property
    def done(self) -> bool:
        return self._served == len(self._windows)

    def next_window(self):
        """(frames, starts, counts, rows) of the next window, its rows in serving order;
        None when the epoch is over (or the interpreter exits)."""
        if self.done:
            return None
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if _EXITING.is_set():
                    return None
        if isinstance(item, BaseException):
            raise item
        self._served += 1
        order, block = item
        where = np.searchsorted(block.rows, order)
        return block.frames, block.starts[where], block.counts[where], order

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


def _half_as_bits(array: np.ndarray) -> np.ndarray:
    """float16 frames as their uint16 bit patterns (a view, no copy): TensorFlow then runs
    no float16 kernel, whose oneDNN notice ("DT_HALF only on platforms with AVX-512") is
    printed at ERROR level on every CPU without AVX-512; `_to_float32` decodes them."""
    return array.view(np.uint16) if array.dtype == np.float16 else array


def _to_float32(values: tf.Tensor) -> tf.Tensor:
    """float32 of stored features; uint16 holds IEEE half bit patterns (`_half_as_bits`),
    widened by looking each pattern up in a 65,536-entry float32 table (numpy's exact
    float16 -> float32, NaN payloads and subnormals included): one gather per batch, about
    half the time of widening with integer ops."""
    if values.dtype != tf.uint16:
        return tf.cast(values, tf.float32)
    return tf.gather(tf.constant(_half_table()), tf.cast(values, tf.int32))


@functools.cache
def _half_table() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(
        np.float32)


def _widened(block) -> np.ndarray:
    """A block's float16 frames as float32 in a 64-byte aligned buffer (shared with
    TensorFlow, not copied), widened in slices; the float16 frames are released."""
    frames = aligned_empty(block.frames.shape, np.float32)
    for start in range(0, len(frames), 1 << 16):
        frames[start:start + (1 << 16)] = block.frames[start:start + (1 << 16)]
    block.frames = None
    return frames


def _cpu_tensor(array: np.ndarray) -> tf.Tensor:
    """``array`` as a tensor in host memory, sharing its buffer (DLPack) when it is
    64-byte aligned (`FrameBlock` frames are) and copied otherwise."""
    with tf.device("/CPU:0"):
        if array.flags.c_contiguous and array.ctypes.data % 64 == 0:
            try:
                return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
            except (AttributeError, TypeError, ValueError, RuntimeError,
                    tf.errors.OpError):
                pass
        return tf.constant(array)


def feature_dataset(store_path: str | Path, rows: np.ndarray, max_frames: int,
                    batch_size: int, shuffle: bool, seed: int = 0,
                    baseline: bool = False,
                    memory_mb: float | None = None) -> tf.data.Dataset:
    """Batches of ({"features": (B, T, F) float32, "mask": (B, T) 0/1}, onehot (B, C)),
    plus "baseline" (B, F), each row's neutral-onset features, when ``baseline``.

    Memory: when the rows' frames (the first ``max_frames`` of each, in the store's dtype,
    float16 as `fer extract` writes them) fit `fercli.features.featurestore.input_memory_budget`
    (``memory_mb``), they are read here, once, in storage order, and held for every epoch
    (as float32 when the float16 and float32 copies fit the budget together, so batches
    need no widening); the order is then `epoch_order`'s. Otherwise they stream in
    windows of a quarter of the budget (`streaming_windows`: shuffled block-wise), read
    one window ahead on a background thread, so the pipeline holds at most about the
    budget in frames.

    Speed: Python runs once per epoch (held) or per window (streamed), through
    `tf.numpy_function`; each batch is one gather, the padding and mask and the cast to
    float32 in TensorFlow ops, so no per-row or per-batch Python competes with training for
    the GIL. (Not `tf.data.Dataset.from_generator`: once one had been iterated, every later
    training step of the process took about 30% more CPU, TensorFlow 2.21.) Fewer rows
    than ``batch_size`` give one short batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise InputError("no sequences selected for this dataset",
                         path=store_path, hint="Check the split and `fer extract` output.")
    with FeatureStore(store_path) as store:
        feature_dim, n_store = store.feature_dim, len(store)
        outside = rows[(rows < 0) | (rows >= n_store)]
        if outside.size:
            raise InputError(f"row {int(outside[0])} is outside the store's {n_store} rows",
                             path=store_path, hint="Re-run the training stage.")
        store_dtype = store.dtype
        dtype = tf.uint16 if store_dtype == np.float16 else tf.as_dtype(store_dtype)
        row_bytes = store.held_frames(rows, max_frames) * store.frame_bytes
        budget = input_memory_budget(memory_mb)
        unique = np.unique(rows)
        held_bytes = int((store.held_frames(unique, max_frames) * store.frame_bytes).sum())
        held = held_bytes <= budget
        # float16 held as float32 when both fit at once (the moment of widening): no
        # widening in every batch
        widen_once = held and store_dtype == np.float16 and 3 * held_bytes <= budget
        block = store.read_block(unique, max_frames) if held else None
        with tf.device("/CPU:0"):
            onehot = tf.constant(store.onehot.astype(np.float32))
            baselines = tf.constant(store.baselines.astype(np.float32)) if baseline else None
    steps = tf.range(max_frames, dtype=tf.int64)
    epochs = itertools.count()

    def assemble(frames, starts, counts, batch_rows):
        """One batch from a block's frames: gather, zero padding, mask, float32."""
        mask = steps[None, :] < counts[:, None]
        padding = tf.shape(frames, out_type=tf.int64)[0] - 1  # the block's zero row
        index = tf.where(mask, starts[:, None] + steps[None, :], padding)
        inputs = {"features": _to_float32(tf.gather(frames, index)),
                  "mask": tf.cast(mask, tf.float32)}
        if baseline:
            inputs["baseline"] = tf.gather(baselines, batch_rows)
        return inputs, tf.gather(onehot, batch_rows)

    if held:
        frames = _cpu_tensor(_widened(block) if widen_once else _half_as_bits(block.frames))
        start_of, count_of = np.zeros(n_store, np.int64), np.zeros(n_store, np.int64)
        start_of[block.rows], count_of[block.rows] = block.starts, block.counts
        with tf.device("/CPU:0"):
            start_of, count_of = tf.constant(start_of), tf.constant(count_of)
        del block
        next_order = _host_call(lambda: epoch_order(rows, shuffle, seed, next(epochs)),
                                lambda: np.zeros(0, np.int64))

        def epoch_batches(_):
            order = tf.numpy_function(next_order, [], tf.int64, stateful=True)
            order = tf.ensure_shape(order, (None,))
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

        dataset = tf.data.Dataset.range(1).flat_map(epoch_batches)
        dataset = dataset.map(lambda batch_rows: assemble(
            frames, tf.gather(start_of, batch_rows), tf.gather(count_of, batch_rows),
            batch_rows))
    else:
        reading: dict = {}  # the epoch being read: its number and `_BlockReader`
        lock = threading.Lock()
        empty = (_half_as_bits(np.zeros((1, feature_dim), store_dtype)),
                 *[np.zeros(0, np.int64)] * 3)

        def start_epoch():
            epoch = next(epochs)
            plan = streaming_windows(rows, row_bytes, shuffle, seed, epoch, budget // 4,
                                     batch_size)
            with lock:  # a new pass ends the one before (an iterator dropped mid-epoch)
                if reading:
                    reading.pop("reader").close()
                reading.update(epoch=epoch, reader=_BlockReader(store_path, plan, max_frames))
            return np.array([epoch, len(plan)], np.int64)

        def next_window(epoch):
            with lock:
                reader = reading.get("reader")
                if reader is None or reading["epoch"] != epoch:
                    raise RuntimeError("a streamed feature dataset was iterated twice at "
                                       "once; iterate it one pass at a time")
            window = reader.next_window()
            if reader.done:
                with lock:
                    if reading.get("reader") is reader:
                        reading.clear()
                reader.close()
            return empty if window is None else (_half_as_bits(window[0]), *window[1:])

        start_epoch = _host_call(start_epoch, lambda: np.zeros(2, np.int64))
        next_window = _host_call(next_window, lambda: empty)

        def epoch_windows(_):
            plan = tf.numpy_function(start_epoch, [], tf.int64, stateful=True)
            epoch, count = plan[0], plan[1]
            return tf.data.Dataset.range(count).map(lambda _: read_window(epoch))

        def read_window(epoch):
            frames, starts, counts, order = tf.numpy_function(
                next_window, [epoch], (dtype, tf.int64, tf.int64, tf.int64), stateful=True)
            return (tf.ensure_shape(frames, (None, feature_dim)),
                    *(tf.ensure_shape(t, (None,)) for t in (starts, counts, order)))

        def window_batches(frames, starts, counts, order):
            return tf.data.Dataset.from_tensor_slices((starts, counts, order)).batch(
                batch_size).map(lambda *batch: assemble(frames, *batch))

        dataset = tf.data.Dataset.range(1).flat_map(epoch_windows).flat_map(window_batches)
    n_batches = -(-len(rows) // batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(n_batches))
    # tf.data's default graph rewrites serialise the dataset, which copies the held frames
    # (the store a second time in memory); this pipeline needs none of them.
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def load_clip(path: str | Path, first: int, last: int, max_frames: int,
              size: tuple[int, int] | None, color: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frames first..last (inclusive) of a face clip: (max_frames, H, W, C) uint8 + mask.

    Frames are RGB (colour) or one channel (grey), resized with area interpolation when
    ``size`` (H, W) differs, truncated or zero-padded to ``max_frames``; decoding stops
    at the last frame needed.
    """
    frames = []
    for index, frame in enumerate(iter_clip(path, color)):
        if index < first:
            continue
        if index > last or len(frames) == max_frames:
            break
        if size is not None and frame.shape[:2] != tuple(size):
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if color else frame[..., None])
    expected = min(last - first + 1, max_frames)
    if len(frames) < expected:
        raise ArtifactError(f"the clip ends before its kept frame {first + len(frames)} "
                            f"(kept range {first}..{last})",
                            path=path, hint="Re-run `fer track` and `fer trim` for it.")
    clip = np.zeros((max_frames, *frames[0].shape), np.uint8)
    clip[:len(frames)] = frames
    mask = np.zeros(max_frames, bool)
    mask[:len(frames)] = True
    return clip, mask


def _online_augmenter(online_augment):
    """``clip, seed -> clip`` for clips in [0, 1]; fercli.vision.augment is imported only here.

    ``True`` takes the thesis's ranges (``OnlineAugment()``); an ``OnlineAugment`` built
    from the configuration is used as it is.
    """
    if online_augment is True:
        try:
            from ..vision.augment import OnlineAugment
        except ImportError as exc:
            raise ConfigError("online augmentation needs fercli.vision.augment.OnlineAugment, "
                              f"which this installation lacks ({exc})",
                              hint="Turn online augmentation off or update fercli.") from None
        online_augment = OnlineAugment()
    return lambda clip, seed: online_augment.tf_augment_sequence(clip, seed, max_value=1.0)


def clip_dataset(clips: Sequence[tuple[str | Path, int, int, int]], n_classes: int,
                 max_frames: int, size: tuple[int, int], color: bool, batch_size: int,
                 shuffle: bool, seed: int = 0,
                 online_augment=False) -> tf.data.Dataset:
    """Batches of ({"clip": (B, T, H, W, C) float32 in [0, 1], "mask": (B, T) 0/1}, onehot).

    ``clips`` holds (path, first, last, label_index) with the kept frame range of each
    trimmed clip. Clips are decoded in parallel (OpenCV releases the GIL), in a
    deterministic order. With ``online_augment`` (True for the thesis's ranges, or a
    `fercli.vision.augment.OnlineAugment`) every sequence is transformed with one set of random
    parameters for all its frames (thesis 3.2.5), drawn from a seed unique to the element
    and the epoch; padded frames stay zero.
    """
    if not clips:
        raise InputError("no clips selected for this dataset",
                         hint="Check the split and the `fer trim` output.")
    for path, first, last, label in clips:
        if not Path(path).is_file():
            raise ArtifactError("the face clip is missing", path=path,
                                hint="Re-run `fer track`.")
        if not 0 <= first <= last or not 0 <= label < n_classes:
            raise InputError(f"bad clip entry: frames {first}..{last}, label {label} "
                             f"of {n_classes}", path=path, hint="Re-run `fer trim`.")
    augment = _online_augmenter(online_augment) if online_augment else None
    height, width = size
    channels = 3 if color else 1
    onehot = np.eye(n_classes, dtype=np.float32)
    epochs = itertools.count()

    def generate():
        epoch = next(epochs)
        order = epoch_order(np.arange(len(clips)), shuffle, seed, epoch)
        for position, index in enumerate(order):
            yield index, np.array([seed, epoch * len(clips) + position], np.int64)

    def read(index):
        path, first, last, label = clips[int(index)]
        clip, mask = load_clip(path, first, last, max_frames, (height, width), color)
        return clip, mask, onehot[label]

    def to_inputs(index, element_seed):
        clip, mask, label = tf.numpy_function(read, [index], (tf.uint8, tf.bool, tf.float32),
                                              stateful=False)
        clip = tf.ensure_shape(clip, (max_frames, height, width, channels))
        mask = tf.cast(tf.ensure_shape(mask, (max_frames,)), tf.float32)
        clip = tf.cast(clip, tf.float32) / 255.0
        if augment is not None:
            clip = augment(clip, element_seed) * mask[:, None, None, None]
        return {"clip": clip, "mask": mask}, tf.ensure_shape(label, (n_classes,))

    signature = (tf.TensorSpec((), tf.int64), tf.TensorSpec((2,), tf.int64))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    dataset = dataset.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _batched(dataset, len(clips), batch_size)


def _fold_parts(store: FeatureStore, n_folds: int) -> list[str]:
    """The fold names of the split; a store written for another split is an error."""
    parts = [f"fold-{k}" for k in range(n_folds)]
    foreign = sorted({p for p in store.parts if p.startswith("fold-")} - set(parts))
    if foreign:
        raise ArtifactError(f"the feature store has rows of {', '.join(foreign)}, but the "
                            f"split has {n_folds} folds", path=store.path,
                            hint="Re-run `fer extract` after changing the split.")
    return parts


def training_rows(store: FeatureStore, fold: int, n_folds: int,
                  with_augmented: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) rows of one cross-validation run (thesis 3.2.3).

    Train: the other folds, with their offline-augmented rows when asked. Validation:
    this fold's original rows only, since augmentation is for training data alone.
    Test and unassigned rows are never in either.
    """
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold {fold} does not exist; the split has folds 0..{n_folds - 1}")
    parts = _fold_parts(store, n_folds)
    validation = store.select([parts[fold]], with_augmented=False)
    train = store.select(parts[:fold] + parts[fold + 1:], with_augmented=with_augmented)
    if validation.size == 0 or train.size == 0:
        raise InputError(f"fold {fold} leaves {train.size} training and {validation.size} "
                         "validation sequences", path=store.path,
                         hint="Every fold needs sequences: check the split and `fer extract`.")
    return train, validation


def final_rows(store: FeatureStore, with_augmented: bool = True) -> np.ndarray:
    """Rows of every fold: the training data of the final model (thesis 3.2.3)."""
    folds = sorted({part for part in store.parts if part.startswith("fold-")})
    return store.select(folds, with_augmented=with_augmented)


def test_rows(store: FeatureStore) -> np.ndarray:
    """The original test rows; the test set is never augmented."""
    return store.select(["test"], with_augmented=False)


def distribution_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """How to spread training over devices.

    ``auto``: MirroredStrategy when more than one GPU is visible, else the default
    strategy; ``mirrored``: MirroredStrategy over every GPU, or over the logical CPUs when
    there is no GPU; ``default``: one device. Build and compile the model inside
    ``strategy.scope()`` and batch with the global batch size (per replica x replicas).
    """
    if kind not in STRATEGIES:
        raise ConfigError(f"unknown distribution strategy {kind!r}",
                          hint=f"Use one of: {', '.join(STRATEGIES)}.")
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "default" or (kind == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def describe_devices() -> list[str]:
    """One line per physical device plus the library versions and precision policy."""
    lines = []
    for device in tf.config.list_physical_devices():
        line = device.name.removeprefix("/physical_device:")
        if device.device_type == "GPU":
            details = tf.config.experimental.get_device_details(device)
            capability = details.get("compute_capability")
            line += f" {details.get('device_name', '')}"
            if capability:
                line += f" (compute capability {'.'.join(map(str, capability))})"
        lines.append(line)
    logical = tf.config.list_logical_devices()
    lines.append(f"{len(logical)} logical devices: "
                 + ", ".join(d.name.removeprefix("/device:") for d in logical))
    lines.append(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, precision policy "
                 f"{keras.config.dtype_policy().name}")
    return lines


def enable_mixed_precision(flag: bool) -> str:
    """Set Keras's global policy; call it before building the model.

    mixed_float16 pays off on GPUs with tensor cores only; the models keep a float32
    softmax and Keras wraps the optimizer in loss scaling.
    """
    policy = "mixed_float16" if flag else "float32"
    keras.config.set_dtype_policy(policy)
    return policy

