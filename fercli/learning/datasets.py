"""tf.data input pipelines for the models in `fercli.learning.models`, the row selection per fold,
and the device set-up (strategy, mixed precision).

Both pipelines stream: one sequence is read when the model needs it, so a dataset larger
than memory trains (the thesis's own generator for raw clips, thesis 3.2.5). Elements are
``({"features" | "clip": ..., "mask": ...}, onehot)`` with the names of the models'
inputs. The row order is reshuffled every epoch from ``(seed, epoch)``, so a run is
reproducible and still sees a new order each epoch (thesis 3.2.3: shuffled, seeded).

Masks come as float32 0/1 (the models cast them to bool on entry): Keras's first step
under MirroredStrategy averages one batch over the replicas, which fails for bool tensors.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from ..core.errors import ArtifactError, ConfigError, InputError
from ..features.featurestore import FeatureStore
from ..vision.clipio import iter_clip

STRATEGIES = ("auto", "default", "mirrored")


def epoch_order(rows: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The rows in the order of one epoch: a permutation drawn from (seed, epoch)."""
    if not shuffle:
        return rows
    return np.random.default_rng([seed, epoch]).permutation(rows)


def _batched(dataset: tf.data.Dataset, size: int, batch_size: int) -> tf.data.Dataset:
    """Batch (the last batch may be short) and tell Keras how many steps an epoch has."""
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(size))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def feature_dataset(store_path: str | Path, rows: np.ndarray, max_frames: int,
                    batch_size: int, shuffle: bool, seed: int = 0,
                    baseline: bool = False) -> tf.data.Dataset:
    """Batches of ({"features": (B, T, F) float32, "mask": (B, T) 0/1}, onehot (B, C)),
    plus "baseline" (B, F), each row's neutral-onset features, when ``baseline``.

    The store is opened inside the generator, once per epoch, and read one row at a
    time; fewer rows than ``batch_size`` give one short batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise InputError("no sequences selected for this dataset",
                         path=store_path, hint="Check the split and `fer extract` output.")
    with FeatureStore(store_path) as store:
        feature_dim, n_classes = store.feature_dim, len(store.classes)
        outside = rows[(rows < 0) | (rows >= len(store))]
        if outside.size:
            raise InputError(f"row {int(outside[0])} is outside the store's {len(store)} rows",
                             path=store_path, hint="Re-run the training stage.")
    epochs = itertools.count()

    def generate():
        order = epoch_order(rows, shuffle, seed, next(epochs))
        with FeatureStore(store_path) as epoch_store:
            for row in order:
                features, mask = epoch_store.sequence(int(row), max_frames)
                inputs = {"features": features, "mask": mask.astype(np.float32)}
                if baseline:
                    inputs["baseline"] = epoch_store.baselines[row].astype(np.float32)
                yield inputs, epoch_store.onehot[row].astype(np.float32)

    inputs = {"features": tf.TensorSpec((max_frames, feature_dim), tf.float32),
              "mask": tf.TensorSpec((max_frames,), tf.float32)}
    if baseline:
        inputs["baseline"] = tf.TensorSpec((feature_dim,), tf.float32)
    signature = (inputs, tf.TensorSpec((n_classes,), tf.float32))
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return _batched(dataset, len(rows), batch_size)


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

