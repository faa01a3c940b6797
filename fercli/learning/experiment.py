"""One training experiment's data and folds, shared by cv-train, finalize and tune.

The rows come from the feature store (feature models) or the lossless clips (clip
models); a fold trains on the other folds and validates on its own original rows (thesis
3.2.3). Importing this module does not import TensorFlow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import layout
from ..core.config import (
    CLIP_MODELS,
    MODEL_LEARNING_RATES,
    THESIS_LEARNING_RATE,
    Config,
    params_hash,
)
from ..core.layout import load_splits
from ..core.workspace import read_json, write_csv


def training_upstreams(config: Config) -> tuple[str, ...]:
    """The stages whose outputs a run of this config trains on."""
    if is_clip_model(config["train"]["model"]):
        return ("trim", "augment", "split") if config["train"]["augmented"] \
            else ("trim", "split")
    return ("extract", "split")


def extract_section(config: Config) -> dict:
    """The `extract` section with a backbone model file (from `fer pretrain`) resolved."""
    section = dict(config["extract"])
    backbone = Path(section["backbone"]).expanduser()
    if backbone.suffix in (".keras", ".h5", ".hdf5"):
        section["backbone"] = str(config.resolve_path(backbone))
    return section


def is_clip_model(model: str) -> bool:
    return model in CLIP_MODELS


class ClipTable:
    """The lossless clips as training rows, with the same fields as a FeatureStore."""

    def __init__(self, workdir: Path, with_augmented: bool):
        trim = layout.done_items(workdir, "trim")
        index = {r["item_id"]: r for r in layout.read_index(workdir)}
        splits = load_splits(workdir)
        part = {i: "test" for i in splits["items"]["test"]}
        part.update({i: f"fold-{k}" for k, f in enumerate(splits["items"]["folds"]) for i in f})
        self.classes = layout.read_classes(workdir)
        rows = [(item, item, "", rec["info"]["clip"], rec["info"]["first"], rec["info"]["last"])
                for item, rec in sorted(trim.items())]
        augmented = layout.done_items(workdir, "augment", required=False) \
            if with_augmented else {}
        for item, rec in sorted(augmented.items()):
            for method, out in zip(rec["info"]["methods"], rec["outputs"]):
                rows.append((f"{item}@{method}", item, method, str(workdir / out["path"]),
                             0, rec["info"]["n_frames"] - 1))
        self.names = np.array([r[0] for r in rows], dtype=object)
        self.items = np.array([r[1] for r in rows], dtype=object)
        self.augment = np.array([r[2] for r in rows], dtype=object)
        self.subjects = np.array([index[r[1]]["subject"] for r in rows], dtype=object)
        self.labels = np.array([self.classes.index(index[r[1]]["label"]) for r in rows])
        self.parts = np.array([part.get(r[1], "unassigned") for r in rows], dtype=object)
        self.clips = [(r[3], r[4], r[5]) for r in rows]

    def __len__(self) -> int:
        return len(self.names)

    def select(self, parts: list[str], with_augmented: bool) -> np.ndarray:
        keep = np.isin(self.parts, parts)
        if not with_augmented:
            keep &= self.augment == ""
        return np.flatnonzero(keep)


class TrainingData:
    """Rows, datasets and input shape of one run, from the feature store or the clips."""

    def __init__(self, workdir: Path, params: dict):
        from ..features.featurestore import FeatureStore

        self.params = params
        self.clip = is_clip_model(params["model"])
        self.identity = False  # set below for feature models (fercli.features.identity)
        self.max_frames = params["max_frames"]
        self.n_folds = len(load_splits(workdir)["items"]["folds"])
        if self.clip:
            self.table = ClipTable(workdir, params["augmented"])
            channels = 3 if params["color"] else 1
            self.input_shape = (self.max_frames, params["clip_size"], params["clip_size"],
                                channels)
        else:
            from ..features.identity import use_identity

            self.store_path = layout.features_h5(workdir)
            self.table = FeatureStore(self.store_path)
            self.input_shape = (self.max_frames, self.table.feature_dim)
            originals = self.table.augment == ""
            self.identity = self.table.baselines is not None and use_identity(
                params["identity"], self.table.onsets[originals])
        self.classes = list(self.table.classes)

    def fold_rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        from ..learning.datasets import training_rows

        return training_rows(self.table, fold, self.n_folds, self.params["augmented"])

    def final_rows(self) -> np.ndarray:
        from ..learning.datasets import final_rows

        return final_rows(self.table, self.params["augmented"])

    def test_rows(self) -> np.ndarray:
        from ..learning.datasets import test_rows

        return test_rows(self.table)

    def shortest(self, rows: np.ndarray) -> int:
        """Frames in the shortest of these rows (a model of stills has seen 1-frame items)."""
        if self.clip:
            lengths = [self.table.clips[r][2] - self.table.clips[r][1] + 1 for r in rows]
        else:
            lengths = self.table.lengths[rows]
        return int(min(lengths, default=1))

    def dataset(self, rows: np.ndarray, *, batch_size: int, shuffle: bool, seed: int,
                training: bool = False):
        from ..learning.datasets import clip_dataset, feature_dataset

        if not self.clip:
            return feature_dataset(self.store_path, rows, self.max_frames, batch_size,
                                   shuffle=shuffle, seed=seed, baseline=self.identity)
        clips = [(*self.table.clips[i], int(self.table.labels[i])) for i in rows]
        size = self.params["clip_size"]
        return clip_dataset(clips, len(self.classes), self.max_frames, (size, size),
                            self.params["color"], batch_size, shuffle=shuffle, seed=seed,
                            online_augment=training and self.params["online_augment"])

    def class_weight(self, rows: np.ndarray) -> dict[int, float] | None:
        """``train.class_weight`` for these training rows (None: unweighted)."""
        from ..learning.training import balanced_class_weights

        if self.params["class_weight"] == "none":
            return None
        return balanced_class_weights(self.table.labels[rows], len(self.classes))

    def write_probabilities(self, model, rows: np.ndarray, path: Path,
                            batch_size: int) -> tuple[float, float]:
        """Softmax of every row as CSV (name, subject, label, pred, one column per class);
        returns (accuracy, UAR)."""
        from ..learning.evaluation import unweighted_average_recall
        from ..learning.training import predict_batches

        probs = predict_batches(model, self.dataset(rows, batch_size=batch_size,
                                                    shuffle=False, seed=0))
        labels = self.table.labels[rows]
        write_csv(path, ["name", "item", "subject", "label", "pred", *self.classes],
                  ([self.table.names[row], self.table.items[row], self.table.subjects[row],
                    self.classes[labels[i]], self.classes[int(np.argmax(probs[i]))],
                    *(f"{p:.6f}" for p in probs[i])] for i, row in enumerate(rows)))
        predicted = np.argmax(probs, axis=1)
        return (float(np.mean(predicted == labels)),
                unweighted_average_recall(labels, predicted, len(self.classes)))


def train_params(config: Config) -> dict:
    """The `train` section resolved: sequence length and colour filled in."""
    params = dict(config["train"])
    params["max_frames"] = params["max_frames"] or config["extract"]["max_frames"]
    if params["learning_rate"] is None:
        params["learning_rate"] = MODEL_LEARNING_RATES.get(params["model"],
                                                           THESIS_LEARNING_RATE)
    params["color"] = config["track"]["color"]
    params["seed"] = config["seed"]
    return params


def run_name(config: Config, params: dict, upstream_hashes: dict) -> str:
    """<model>-<features>-<hash of parameters and inputs>, e.g. cnn1d-minixception-3f2a9c1d."""
    if is_clip_model(params["model"]):
        source = f"clips{params['clip_size']}"
    else:
        source = Path(config["extract"]["backbone"]).stem.split("-")[0]
    digest = params_hash([params, upstream_hashes])[:8]
    return f"{params['model']}-{source}-{digest}"


def build_fn(data: TrainingData, params: dict):
    from ..learning.models import build_model, compile_model

    def build():
        model = build_model(params["model"], params["model_params"], data.input_shape,
                            len(data.classes), baseline=data.identity)
        return compile_model(model, params["learning_rate"])

    return build


def train_fold(data: TrainingData, params: dict, fold: int, run_dir: Path, epochs: int,
               early_stopping: dict | None = None):
    """Train on the other folds, validate on ``fold`` (resumable); -> (result, batch, devices)."""
    from ..learning.training import train_resumable

    strategy, devices = prepare_devices(params)
    train_rows, val_rows = data.fold_rows(fold)
    batch = params["batch_size"] * strategy.num_replicas_in_sync  # global batch
    seed = params["seed"] + fold
    with strategy.scope():
        result = train_resumable(
            run_dir, build_fn(data, params),
            data.dataset(train_rows, batch_size=batch, shuffle=True, seed=seed, training=True),
            data.dataset(val_rows, batch_size=batch, shuffle=False, seed=seed),
            epochs=epochs, seed=seed, tensorboard=params["tensorboard"],
            early_stopping=early_stopping, class_weight=data.class_weight(train_rows))
    return result, batch, devices


def train_final_model(data: TrainingData, params: dict, epochs: int,
                      final_dir: Path) -> tuple[Path, int, list[str]]:
    """Train on every fold for ``epochs`` (resumable like a fold); -> (checkpoint, global
    batch size, device lines)."""
    from .training import train_resumable

    strategy, devices = prepare_devices(params)
    batch = params["batch_size"] * strategy.num_replicas_in_sync
    rows = data.final_rows()
    with strategy.scope():
        train_resumable(final_dir, build_fn(data, params),
                        data.dataset(rows, batch_size=batch, shuffle=True,
                                     seed=params["seed"], training=True),
                        None, epochs=epochs, seed=params["seed"],
                        tensorboard=params["tensorboard"], class_weight=data.class_weight(rows))
    state = read_json(final_dir / "state.json", "state.json")
    return final_dir / state["latest"], batch, devices


def prepare_devices(params: dict):
    """Strategy (all GPUs when several) and precision; returns (strategy, device lines)."""
    from ..learning.datasets import describe_devices, distribution_strategy, enable_mixed_precision

    enable_mixed_precision(params["mixed_precision"])
    strategy = distribution_strategy(params["strategy"])
    return strategy, describe_devices()
