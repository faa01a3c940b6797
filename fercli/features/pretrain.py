"""Fine-tune a spatial backbone on still face images (``fer pretrain``, thesis 3.2.4).

The thesis fine-tunes its frame-level extractors on FER2013 before training any temporal
network, in phases:

1. the backbone frozen, a new classifier searched with KerasTuner's Bayesian optimisation:
   1-2 Dense layers of 256/512/1024 units, each followed by Dropout 0.2-0.9, SGD,
   categorical cross-entropy, validation accuracy as the objective;
2. the last 1-2 convolution blocks unfrozen and trained with a small learning rate.

Our choices where the sources leave a gap: phase 1 uses SGD with momentum 0.9 (the thesis
names SGD only); phase 2 uses Adam at 1e-5, the setting seed 002 (sec. 3.7) reports for
VGG16 on FER2013: Adam's step per weight is bounded by the learning rate whatever the
gradient scale, so the gradients of a fresh head cannot push pretrained filters far.
Class weights are sklearn's "balanced" weights (seed 002 sec. 3.5: FER2013's disgust is
1.5% of the training rows). Online augmentation follows the thesis's ImageDataGenerator
settings (Figure 3.9): horizontal flip, rotation +-10 deg, zoom 0.9-1.1, shifts +-10%,
brightness x0.4-1.5; its shear of 0.15 degrees is left out as it moves no pixel visibly.
EarlyStopping watches validation accuracy and ReduceLROnPlateau validation loss, as in the
thesis's setup list. Seed 002 (sec. 4.2) found batch size 4 better than 32 on FER2013;
small batches are slow, so the batch size is the caller's choice.

Images stay 48x48 (or as stored) in memory; tf.data resizes each batch to the network's
size, so FER2013 never sits upscaled in memory. The saved model embeds its pixel
normalisation and takes 0..255 RGB/gray pixels, so ``fer extract`` can use it by path; its
last hidden Dense layer is the ``dense`` feature layer (1024 units in the thesis).
"""
from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fercli.core.config import DEFAULT_SYNONYMS, THESIS_CLASSES
from fercli.core.errors import ConfigError, InputError
from fercli.core.workspace import atomic_path, atomic_write_json, read_json, write_csv
from fercli.features.backbones import (
    FER2013_LABELS,
    BackboneSpec,
    build_backbone_model,
    get_spec,
    normalisation_layer_class,
    training_base,
    unfreeze_last_blocks,
)
from fercli.reporting.plots import new_figure, save_figure

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# tf.io.decode_image reads PNG, JPEG, BMP and GIF; TIFF (JAFFE ships .tiff) goes through OpenCV.
OPENCV_ONLY = r".*\.tiff?"
# FER2013's Usage column -> our split; the thesis reports test results on PrivateTest
# (Table 3.5's supports are PrivateTest's counts, Table 3.3).
FER2013_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "publictest": "val", "test": "test",
                 "testing": "test", "privatetest": "test"}
HEAD_UNITS = (256, 512, 1024)
MODEL_FILE = "model.keras"
TUNER_PROJECT = "tuner"


# --------------------------------------------------------------------------- data
@dataclass
class ImageSplit:
    """One split: gray pixels in memory (CSV) or image files (folders), plus class indices."""

    labels: np.ndarray
    pixels: np.ndarray | None = None  # (N, H, W) uint8
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSplit:
        return ImageSplit(self.labels[index],
                          None if self.pixels is None else self.pixels[index],
                          None if self.paths is None else [self.paths[i] for i in index])


@dataclass
class StillImages:
    """A still-image FER dataset mapped onto a class list and split three ways."""

    classes: list[str]
    splits: dict[str, ImageSplit]
    dropped: dict[str, int] = field(default_factory=dict)  # labels not in the class list
    split_rule: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {c: int(np.sum(part.labels == i)) for i, c in enumerate(self.classes)}
                for name, part in self.splits.items()}


def canonical_label(name: str) -> str:
    """Label spelling used across fercli (anger -> angry, happiness -> happy, ...)."""
    key = name.strip().lower()
    return DEFAULT_SYNONYMS.get(key, key)


def read_fer2013_csv(path: Path) -> tuple[np.ndarray, list[str], list[str] | None]:
    """Gray images (N,S,S) uint8, label names and Usage values of a FER2013-format CSV."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "emotion" not in fields or "pixels" not in fields:
            raise InputError("is not a FER2013 CSV (columns emotion,pixels[,Usage] needed, "
                             f"found {', '.join(reader.fieldnames or [])})", path=path)
        usage_key = fields.get("usage")
        images, labels, usages, bad = [], [], [], []
        for line, row in enumerate(reader, start=2):
            values = np.fromstring(row[fields["pixels"]] or "", dtype=np.uint8, sep=" ")
            side = math.isqrt(len(values))
            code = (row[fields["emotion"]] or "").strip()
            if side == 0 or side * side != len(values) or code not in {
                    str(i) for i in range(len(FER2013_LABELS))}:
                bad.append(line)
                continue
            images.append(values.reshape(side, side))
            labels.append(FER2013_LABELS[int(code)])
            usages.append((row[usage_key] or "").strip().lower() if usage_key else "")
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise InputError(f"{len(bad)} row(s) have no square pixel list or no emotion code "
                         f"0-6 (line {shown}). Fix or remove them", path=path)
    if not images:
        raise InputError("holds no image rows", path=path)
    if len({image.shape for image in images}) > 1:
        raise InputError("rows hold images of different sizes", path=path)
    return np.stack(images), labels, usages if usage_key else None


def scan_image_folders(root: Path) -> tuple[list[str], list[str], list[str] | None]:
    """Image paths, label names and split names of ``<label>/<images>`` folders.

    Also reads the common ``train/<label>``, ``test/<label>`` (and ``val``) layout.
    """
    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in subfolders if p.name.lower() in SPLIT_FOLDERS]
    groups = ([(SPLIT_FOLDERS[d.name.lower()], label_dir) for d in split_dirs
               for label_dir in sorted(p for p in d.iterdir() if p.is_dir())]
              if split_dirs else [("", label_dir) for label_dir in subfolders])
    paths, labels, splits = [], [], []
    for split, label_dir in groups:
        for image in images_in(label_dir):
            paths.append(str(image))
            labels.append(canonical_label(label_dir.name))
            splits.append(split)
    if not paths:
        raise InputError(f"holds no images ({', '.join(IMAGE_SUFFIXES)}) in label "
                         "sub-folders", path=root,
                         hint="Arrange it as <label>/<image> or train/<label>/<image>")
    return paths, labels, splits if split_dirs else None


def load_still_images(data_path: str | Path, classes: list[str] | None = None, *,
                      seed: int = 42, val_fraction: float = 0.1,
                      test_fraction: float = 0.1) -> StillImages:
    """Read a FER2013 CSV or label folders and map them onto ``classes``.

    Rows whose label is not in ``classes`` are dropped and counted (FER2013's neutral,
    with the thesis's 6 classes). Splits given by the data (Usage column, split folders)
    are kept; missing validation or test parts are carved from the training part,
    stratified by class with ``seed``.
    """
    path = Path(data_path).expanduser()
    classes = [canonical_label(c) for c in (classes or THESIS_CLASSES)]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(f"pretrain classes {classes} must be at least 2 distinct labels")
    if path.is_dir():
        paths, names, given = scan_image_folders(path)
        pixels = None
        stat = [Path(p).stat() for p in paths]
        fingerprint = {"path": str(path.resolve()), "files": len(paths),
                       "bytes": sum(s.st_size for s in stat)}
    elif path.is_file():
        pixels, names, given = read_fer2013_csv(path)
        paths = None
        fingerprint = {"path": str(path.resolve()), "bytes": path.stat().st_size,
                       "mtime_ns": path.stat().st_mtime_ns}
    else:
        raise InputError("does not exist", path=path,
                         hint="Pass a FER2013 CSV or a folder of label sub-folders")
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([name in index for name in names], bool)
    dropped: dict[str, int] = {}
    for name, kept in zip(names, keep):
        if not kept:
            dropped[name] = dropped.get(name, 0) + 1
    labels = np.array([index.get(name, -1) for name in names], np.int64)
    everything = ImageSplit(labels, pixels, paths).subset(np.flatnonzero(keep))
    split_of = (np.array([FER2013_USAGE.get(u, SPLIT_FOLDERS.get(u, "train")) for u in given])
                if given is not None else np.full(len(names), "train"))[keep]
    splits = {name: everything.subset(np.flatnonzero(split_of == name))
              for name in ("train", "val", "test")}
    rule = ["splits as given by the data"] if given is not None else []
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if len(splits[name]) == 0:
            splits["train"], splits[name], how = _carve(splits["train"], fraction, seed)
            rule.append(f"{name}: {fraction:.0%} of train, {how}")
    missing = [c for i, c in enumerate(classes) if not np.any(splits["train"].labels == i)]
    if missing:
        raise InputError(f"class(es) {', '.join(missing)} have no training images", path=path,
                         hint="Remove them from the class list or add images")
    return StillImages(classes, splits, dropped, "; ".join(rule), fingerprint)


def _carve(part: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit, str]:
    """Hold out ``fraction`` of ``part``: stratified by class when every class allows it."""
    from sklearn.model_selection import train_test_split

    order = np.arange(len(part))
    try:
        kept, held = train_test_split(order, test_size=fraction, random_state=seed,
                                      stratify=part.labels)
        how = "stratified"
    except ValueError:  # a class with a single image cannot be stratified
        kept, held = train_test_split(order, test_size=fraction, random_state=seed)
        how = "random (a class is too small to stratify)"
    return part.subset(np.sort(kept)), part.subset(np.sort(held)), how


# --------------------------------------------------------------------------- tf.data
def augmentation(seed: int):
    """Online augmentation on 0..255 batches (thesis Figure 3.9's list, minus shear)."""
    import keras
    import tensorflow as tf

    layers = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(10 / 360, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3),
    ], name="augmentation")

    def apply(images):
        images = layers(images, training=True)
        brightness = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], 0.4, 1.5)
        return tf.clip_by_value(images * brightness, 0.0, 255.0)

    return apply


def _read_with_opencv(path: bytes, channels) -> np.ndarray:
    """(H, W, channels) uint8 of an image file tf.io cannot decode (TIFF), RGB order."""
    import cv2

    image = cv2.imread(path.decode(), cv2.IMREAD_GRAYSCALE if channels == 1
                       else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path.decode()}: cannot be decoded")
    if channels == 1:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def make_dataset(part: ImageSplit, n_classes: int, size: tuple[int, int, int],
                 batch_size: int, *, shuffle_seed: int | None = None, augment=None):
    """Batches of (0..255 float pixels at ``size``, one-hot labels), resized on the fly."""
    import tensorflow as tf

    height, width, channels = size
    targets = tf.one_hot(part.labels, n_classes)
    if part.pixels is not None:
        data = tf.data.Dataset.from_tensor_slices((part.pixels[..., None], targets))
    else:
        def read(path, target):
            image = tf.cond(
                tf.strings.regex_full_match(tf.strings.lower(path), OPENCV_ONLY),
                lambda: tf.numpy_function(_read_with_opencv, [path, channels], tf.uint8),
                lambda: tf.io.decode_image(tf.io.read_file(path), channels=channels,
                                           expand_animations=False))
            return tf.ensure_shape(image, (None, None, channels)), target

        data = tf.data.Dataset.from_tensor_slices((part.paths, targets)).map(
            read, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_seed is not None:
        data = data.shuffle(len(part), seed=shuffle_seed, reshuffle_each_iteration=True)

    def fit_size(image, target):
        image = tf.image.resize(tf.cast(image, tf.float32), (height, width))
        if channels == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        image.set_shape((height, width, channels))
        return image, target

    data = data.map(fit_size, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        data = data.map(lambda images, target: (augment(images), target),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- model
def build_classifier(base, spec: BackboneSpec, size: tuple[int, int, int], n_classes: int,
                     head: list[tuple[int, float]], name: str):
    """pixels -> normalisation -> base (inference-mode BatchNorm) -> reduce -> head -> softmax.

    ``head``: (units, dropout rate) per hidden Dense layer. BatchNorm layers of the base
    stay in inference mode even once unfrozen (base called with training=False).
    """
    import keras

    inputs = keras.Input(size, name="image")
    x = normalisation_layer_class()(spec.normalisation, name="normalisation")(inputs)
    x = base(x, training=False)
    if spec.feature_layer(None).reduce == "flatten":
        x = keras.layers.Flatten(name="features_flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="features_gap")(x)
    for i, (units, rate) in enumerate(head, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
        x = keras.layers.Dropout(rate, name=f"head_dropout_{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _callbacks(patience: int, console, label: str) -> list:
    import keras

    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience,
                                      restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                          patience=max(1, patience // 2), min_lr=1e-7)]
    if console is not None:
        callbacks.append(_epoch_logger(console, label))
    return callbacks


def _epoch_logger(console, label: str):
    """A callback that prints one line per epoch through ``console`` (rich or not)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __deepcopy__(self, memo):  # KerasTuner deep-copies callbacks; a console cannot be
            return EpochLog()

        def on_epoch_end(self, epoch, logs=None):
            shown = ", ".join(f"{key} {value:.4f}" for key, value in (logs or {}).items()
                              if key in ("loss", "accuracy", "val_loss", "val_accuracy"))
            console.print(f"{label} epoch {epoch + 1}: {shown}")

    return EpochLog()


# --------------------------------------------------------------------------- outputs
def write_classification_report(path: Path, y_true: np.ndarray, y_pred: np.ndarray,
                                classes: list[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support plus averages (as thesis Table 3.5)."""
    from sklearn.metrics import classification_report

    report = classification_report(y_true, y_pred, labels=list(range(len(classes))),
                                   target_names=classes, output_dict=True, zero_division=0)
    rows = []
    for name, values in report.items():
        if isinstance(values, dict):
            rows.append([name, *(round(float(values[k]), 4) for k in
                                 ("precision", "recall", "f1-score")), int(values["support"])])
    rows.append(["accuracy", "", "", round(float(np.mean(y_true == y_pred)), 4), len(y_true)])
    write_csv(path, ["class", "precision", "recall", "f1", "support"], rows)
    return report


def write_confusion(csv_path: Path, png_path: Path, y_true: np.ndarray, y_pred: np.ndarray,
                    classes: list[str], title: str) -> np.ndarray:
    """Confusion matrix as CSV (rows: true class) and as counts + row-normalised PNG."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    write_csv(csv_path, ["true\\predicted", *classes],
               [[c, *map(int, row)] for c, row in zip(classes, matrix)])
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    figure = new_figure(11, 4.8)
    for axes, values, fmt, heading in zip(figure.subplots(1, 2), (matrix, shares),
                                          ("{:d}", "{:.2f}"), ("counts", "share of true")):
        axes.imshow(values, cmap="Blues", vmin=0)
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{title}: {heading}")
        peak = values.max() if values.size else 0
        for (row, col), value in np.ndenumerate(values):
            axes.text(col, row, fmt.format(value), ha="center", va="center", fontsize=8,
                      color="white" if peak and value > peak / 2 else "black")
    save_figure(figure, png_path)
    return matrix


def write_history(csv_path: Path, png_path: Path, history: dict[str, list[float]],
                  title: str) -> None:
    """Fine-tuning curves (as thesis Figure 3.11): loss and accuracy, train and validation."""
    keys = [k for k in ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")
            if k in history]
    epochs = len(history.get("loss", []))
    write_csv(csv_path, ["epoch", *keys],
               [[e + 1, *(round(float(history[k][e]), 6) for k in keys)] for e in range(epochs)])
    figure = new_figure(10, 3.8)
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                axes.plot(range(1, epochs + 1), history[key], style, marker="o", label=key)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"{title}: {metric}")
        axes.legend(fontsize="small")
    save_figure(figure, png_path)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as people read them (KerasTuner's 0.1 steps give 0.30000000000000004)."""
    return {key: round(value, 4) if isinstance(value, float) else value
            for key, value in values.items()}


def write_trials(path: Path, tuner) -> list[dict[str, Any]]:
    """The tuner's trials, best first: id, status, val_accuracy, best epoch, hyperparameters.

    Ties go to the earlier trial, so the best trial is the same after a resumed search.
    """
    trials = []
    for trial in tuner.oracle.trials.values():
        score = None if trial.score is None else round(float(trial.score), 4)
        trials.append({"trial": trial.trial_id, "status": trial.status, "val_accuracy": score,
                       "best_epoch": trial.best_step, **_rounded(trial.hyperparameters.values)})
    trials.sort(key=lambda t: (t["val_accuracy"] is None, -(t["val_accuracy"] or 0),
                               t["trial"]))
    columns = ["trial", "status", "val_accuracy", "best_epoch", "dense_layers",
               "units_1", "dropout_1", "units_2", "dropout_2"]
    columns += sorted({k for t in trials for k in t} - set(columns))
    write_csv(path, columns, [[t.get(c, "") for c in columns] for t in trials])
    return trials


# --------------------------------------------------------------------------- run
def _check_setup(out_dir: Path, setup: dict[str, Any]) -> None:
    """Refuse to resume a tuner search that was started on different data or settings."""
    path = out_dir / "tuner_setup.json"
    if (out_dir / TUNER_PROJECT).exists() and path.is_file():
        before = read_json(path, "tuner setup")
        changed = sorted(k for k in set(before) | set(setup) if before.get(k) != setup.get(k))
        if changed:
            raise ConfigError(f"{out_dir} holds a tuner search with other {', '.join(changed)}. "
                              "Use another output folder, or delete it to start over")
    atomic_write_json(path, setup)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)


def _search_classifier(base, spec: BackboneSpec, size, n_classes: int, train, val,
                       class_weight: dict[int, float], out_dir: Path, *, trials: int,
                       epochs: int, learning_rate: float, patience: int, seed: int, console):
    """Phase 1 (thesis 3.2.4): Bayesian search over the classifier head, base frozen.

    Returns the best trial's trained model and a summary of the search.
    """
    import keras
    import keras_tuner

    model_name = f"fer_{spec.name.replace('-', '_')}"

    def build(hp):
        layers = hp.Int("dense_layers", 1, 2)
        head = [(hp.Choice(f"units_{i}", list(HEAD_UNITS)),
                 hp.Float(f"dropout_{i}", 0.2, 0.9, step=0.1)) for i in range(1, layers + 1)]
        model = build_classifier(base, spec, size, n_classes, head, model_name)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_tuner.BayesianOptimization(
        build, objective="val_accuracy", max_trials=trials, seed=seed, overwrite=False,
        directory=str(out_dir), project_name=TUNER_PROJECT)
    _say(console, f"phase 1: classifier search, {trials} trial(s), base frozen")
    tuner.search(train, validation_data=val, epochs=epochs, class_weight=class_weight,
                 shuffle=False, callbacks=_callbacks(patience, console, "phase 1"), verbose=0)
    trial_rows = write_trials(out_dir / "tuner_trials.csv", tuner)
    best = tuner.oracle.get_trial(trial_rows[0]["trial"])
    summary = {"trials": len(trial_rows), "optimizer": "sgd(momentum=0.9)",
               "learning_rate": learning_rate,
               "best_hyperparameters": _rounded(best.hyperparameters.values),
               "best_val_accuracy": round(float(best.score), 4)}
    with warnings.catch_warnings():  # the checkpoint's SGD slots are not needed any more
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.load_model(best)
    _say(console, f"best classifier: {summary['best_hyperparameters']} "
                  f"(val_accuracy {summary['best_val_accuracy']})")
    return model, summary


def _fine_tune(model, base, spec: BackboneSpec, train, val, class_weight: dict[int, float],
               out_dir: Path, *, blocks: int, epochs: int, learning_rate: float,
               patience: int, console) -> dict[str, Any]:
    """Phase 2 (thesis 3.2.4): the last ``blocks`` convolution blocks trained with Adam."""
    import keras

    trainable = unfreeze_last_blocks(base, spec, blocks)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    _say(console, f"phase 2: fine-tuning the last {blocks} block(s) ({trainable} weighted "
                  f"layers), Adam lr {learning_rate:g}")
    history = model.fit(train, validation_data=val, epochs=epochs, class_weight=class_weight,
                        shuffle=False, verbose=0,
                        callbacks=_callbacks(patience, console, "phase 2")).history
    write_history(out_dir / "finetune_history.csv", out_dir / "finetune_history.png",
                  history, f"{spec.name} fine-tuning")
    return {"unfrozen_blocks": blocks, "trainable_layers": trainable, "optimizer": "adam",
            "learning_rate": learning_rate, "epochs_run": len(history["loss"]),
            "best_val_accuracy": round(float(max(history["val_accuracy"])), 4)}


def _evaluate(model, test, y_true: np.ndarray, classes: list[str], out_dir: Path,
              outputs: dict[str, str], title: str) -> dict[str, Any]:
    """Test-part probabilities, per-class report and confusion matrix (thesis Table 3.5)."""
    probabilities = model.predict(test, verbose=0)
    y_pred = probabilities.argmax(axis=1)
    write_csv(out_dir / outputs["test_predictions"], ["true", "predicted", *classes],
               [[classes[t], classes[p], *(round(float(v), 6) for v in row)]
                for t, p, row in zip(y_true, y_pred, probabilities)])
    report = write_classification_report(out_dir / outputs["classification_report"],
                                         y_true, y_pred, classes)
    write_confusion(out_dir / outputs["confusion_matrix"],
                    out_dir / outputs["confusion_matrix_png"], y_true, y_pred, classes, title)
    return {"accuracy": round(float(np.mean(y_true == y_pred)), 4),
            "macro_f1": round(float(report["macro avg"]["f1-score"]), 4),
            "images": len(y_true)}


def run_pretrain(data_path: str | Path, out_dir: str | Path, *, backbone: str = "vgg16",
                 weights: str | None = "default", classes: list[str] | None = None,
                 trials: int = 20, epochs_head: int = 20, epochs_finetune: int = 30,
                 unfreeze_blocks: int = 2, batch_size: int = 32,
                 image_size: int | None = None, seed: int = 42,
                 learning_rate_head: float = 1e-2, learning_rate_finetune: float = 1e-5,
                 patience: int = 5, cache_dir: str | Path | None = None,
                 console=None) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``data_path`` and write model, reports and summary.

    ``weights``: as for ``build_feature_extractor`` (``default``: the backbone's own).
    ``image_size``: square input side (None: the backbone's). ``unfreeze_blocks`` 0 or
    ``epochs_finetune`` 0 skips phase 2. The KerasTuner project lives in
    ``out_dir/tuner`` and is resumed (finished trials are not run again). Returns the
    summary written to ``out_dir/summary.json``.
    """
    import keras
    from sklearn.utils.class_weight import compute_class_weight

    for name, value, low in (("trials", trials, 1), ("epochs_head", epochs_head, 1),
                             ("epochs_finetune", epochs_finetune, 0),
                             ("unfreeze_blocks", unfreeze_blocks, 0),
                             ("batch_size", batch_size, 1)):
        if value < low:
            raise ConfigError(f"pretrain.{name} must be at least {low}, not {value}")
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = get_spec(backbone)
    size = ((image_size, image_size, spec.channels) if image_size else spec.input_size)
    base = training_base(build_backbone_model(spec, weights, input_size=size,
                                              cache_dir=cache_dir), spec)  # fails fast
    base.trainable = False
    data = load_still_images(data_path, classes, seed=seed)
    classes = data.classes
    counts = data.counts()
    _say(console, f"pretrain {spec.name}: " + ", ".join(
        f"{name} {len(part)}" for name, part in data.splits.items())
        + (f" images (dropped: {data.dropped})" if data.dropped else " images"))
    _check_setup(out_dir, {"backbone": spec.name, "weights": weights, "classes": classes,
                           "image_size": list(size), "data": data.fingerprint,
                           "seed": seed, "batch_size": batch_size, "epochs_head": epochs_head,
                           "learning_rate_head": learning_rate_head})

    keras.utils.set_random_seed(seed)
    train_labels = data.splits["train"].labels
    weights_per_class = compute_class_weight("balanced", classes=np.arange(len(classes)),
                                             y=train_labels)
    class_weight = {i: float(w) for i, w in enumerate(weights_per_class)}
    train = make_dataset(data.splits["train"], len(classes), size, batch_size,
                         shuffle_seed=seed, augment=augmentation(seed))
    val = make_dataset(data.splits["val"], len(classes), size, batch_size)
    test = make_dataset(data.splits["test"], len(classes), size, batch_size)

    model, phase1 = _search_classifier(
        base, spec, size, len(classes), train, val, class_weight, out_dir, trials=trials,
        epochs=epochs_head, learning_rate=learning_rate_head, patience=patience, seed=seed,
        console=console)
    outputs = {"model": MODEL_FILE, "classification_report": "classification_report.csv",
               "confusion_matrix": "confusion_matrix.csv",
               "confusion_matrix_png": "confusion_matrix.png",
               "test_predictions": "test_predictions.csv", "trials": "tuner_trials.csv"}
    phase2: dict[str, Any] = {"unfrozen_blocks": 0, "epochs_run": 0}
    if unfreeze_blocks and epochs_finetune:
        phase2 = _fine_tune(model, base, spec, train, val, class_weight, out_dir,
                            blocks=unfreeze_blocks, epochs=epochs_finetune,
                            learning_rate=learning_rate_finetune, patience=patience,
                            console=console)
        outputs.update(history="finetune_history.csv", history_png="finetune_history.png")
    test_scores = _evaluate(model, test, data.splits["test"].labels, classes, out_dir, outputs,
                            f"{spec.name} test")
    with atomic_path(out_dir / MODEL_FILE) as temporary, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept")
        model.save(temporary)
    dense = [layer for layer in model.layers if layer.name.startswith("head_dense_")][-1]
    summary = {
        "backbone": spec.name, "weights": weights, "classes": classes,
        "input_size": list(size), "normalisation": spec.normalisation,
        "data": {**data.fingerprint, "split_rule": data.split_rule, "counts": counts,
                 "dropped_labels": data.dropped},
        "class_weight": {classes[i]: round(w, 4) for i, w in class_weight.items()},
        "phase1": phase1, "phase2": phase2, "test": test_scores,
        "feature_layer": {"name": "dense", "keras_layer": dense.name, "dim": dense.units},
        "files": outputs, "seconds": round(time.time() - started, 1)}
    atomic_write_json(out_dir / "summary.json", summary)
    _say(console, f"test accuracy {summary['test']['accuracy']:.3f}, macro F1 "
                  f"{summary['test']['macro_f1']:.3f}; model: {out_dir / MODEL_FILE}")
    return summary

