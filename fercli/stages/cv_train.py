"""`fer cv-train`: subject-independent k-fold cross-validation of one model (thesis 3.2.3).

Each fold of splits.json is an item: train on the other folds (with their augmented rows),
validate on this fold's original rows, for a fixed number of epochs (no early stopping:
the folds' curves are averaged epoch-wise). A fold resumes at the next epoch after a kill
(fercli.learning.training). Run folders name the experiment, ``runs/<model>-<features>-<hash>/``,
so several live side by side; each holds the resolved config and classes.json.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from ..core.config import MODEL_LEARNING_RATES, THESIS_LEARNING_RATE, Config, params_hash
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.workspace import atomic_write_json, atomic_write_text, read_json, read_text, write_csv
from .split import load_splits

CLIP_MODELS = ("lrcn", "c3d", "convlstm")  # as fercli.learning.models, without importing Keras


def is_clip_model(model: str) -> bool:
    return model in CLIP_MODELS


class ClipTable:
    """The lossless clips as training rows, with the same fields as a FeatureStore."""

    def __init__(self, workdir: Path, with_augmented: bool):
        trim = read_json(workdir / "trim" / "manifest.json", "trim manifest")["items"]
        index = {r["item_id"]: r for r in csv.DictReader(
            io.StringIO(read_text(workdir / "index" / "index.csv", "index.csv")))}
        splits = load_splits(workdir)
        part = {i: "test" for i in splits["items"]["test"]}
        part.update({i: f"fold-{k}" for k, f in enumerate(splits["items"]["folds"]) for i in f})
        self.classes = read_json(workdir / "index" / "classes.json", "classes.json")
        self.path = workdir / "trim"
        rows = []
        for item, rec in sorted(trim.items()):
            if rec["status"] != "done":
                continue
            info = rec["info"]
            rows.append((item, item, "", info["clip"], info["first"], info["last"]))
        if with_augmented and (workdir / "augment" / "manifest.json").is_file():
            augmented = read_json(workdir / "augment" / "manifest.json", "augment manifest")
            for item, rec in sorted(augmented["items"].items()):
                if rec["status"] != "done":
                    continue
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

            self.store_path = workdir / "extract" / "features.h5"
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


def run_name(ctx: Context, params: dict) -> str:
    """<model>-<features>-<hash of parameters and inputs>, e.g. cnn1d-minixception-3f2a9c1d."""
    if is_clip_model(params["model"]):
        source = f"clips{params['clip_size']}"
    else:
        source = Path(ctx.config["extract"]["backbone"]).stem.split("-")[0]
    digest = params_hash([params, ctx.upstream_hashes])[:8]
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


def prepare_devices(params: dict):
    """Strategy (all GPUs when several) and precision; returns (strategy, device lines)."""
    from ..learning.datasets import describe_devices, distribution_strategy, enable_mixed_precision

    enable_mixed_precision(params["mixed_precision"])
    strategy = distribution_strategy(params["strategy"])
    return strategy, describe_devices()


class CvTrainStage(Stage):
    name = "cv-train"
    help = ("Subject-independent k-fold cross-validation of one model (fixed epochs, "
            "resumable per epoch); --fold K runs one fold.")
    sections = ("train",)
    shardable = True

    def upstreams(self, config: Config) -> tuple[str, ...]:
        if is_clip_model(config["train"]["model"]):
            return ("trim", "augment", "split") if config["train"]["augmented"] \
                else ("trim", "split")
        return ("extract", "split")

    def params(self, config: Config) -> dict:
        return {"train": train_params(config)}

    def item_params(self, params: dict) -> dict:
        return {"train": {k: v for k, v in params["train"].items() if k != "tensorboard"}}

    def list_items(self, ctx: Context) -> list[Item]:
        n_folds = len(load_splits(ctx.workdir)["items"]["folds"])
        return [Item(f"fold-{k}", ctx.upstream_hashes, {"fold": k}) for k in range(n_folds)]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        from ..learning.training import load_model

        params = ctx.params["train"]
        run = run_name(ctx, params)
        run_dir = ctx.stage.path("runs", run, item.id)
        data = TrainingData(ctx.workdir, params)
        train_rows, val_rows = data.fold_rows(item.payload["fold"])
        result, batch, devices = train_fold(data, params, item.payload["fold"], run_dir,
                                            params["epochs"])
        best = load_model(run_dir / "best.keras")
        val_probs = run_dir / "val_probs.csv"
        accuracy, uar = data.write_probabilities(best, val_rows, val_probs, batch)
        atomic_write_json(run_dir / "devices.json", devices)
        return ItemOutput([run_dir / "best.keras", run_dir / "log.csv", val_probs], info={
            "run": run, "fold": item.payload["fold"], "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy, "val_accuracy_check": accuracy,
            "best_val_uar": uar, "identity": data.identity,
            "epochs": result.epochs_run, "train_rows": int(len(train_rows)),
            "val_rows": int(len(val_rows)), "val_subjects": sorted(
                set(data.table.subjects[val_rows])),
            "train_subjects": sorted(set(data.table.subjects[train_rows])),
            "devices": devices})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..learning.training import honest_cv, mean_curve, read_log
        from ..reporting.plots import plot_cv_curves

        done = done_records(records)
        if not done:
            return []
        run = done[0]["info"]["run"]
        run_root = ctx.stage.path("runs", run)
        histories = [read_log(run_root / r["id"]) for r in done]
        curve = mean_curve(histories)
        curve_csv = run_root / "mean_curve.csv"
        columns = list(curve[0]) if curve else ["epoch"]
        write_csv(curve_csv, columns, curve)
        curve_png = run_root / "mean_curve.png"
        plot_cv_curves(curve, histories, curve_png, title=f"{run}: {len(done)}-fold CV")
        summary = [{"fold": r["info"]["fold"], "best_val_accuracy": r["info"]["best_val_accuracy"],
                    "best_epoch": r["info"]["best_epoch"], "train_rows": r["info"]["train_rows"],
                    "val_rows": r["info"]["val_rows"]} for r in done]
        accs = [s["best_val_accuracy"] for s in summary]
        final_acc = curve[-1].get("val_accuracy", float("nan")) if curve else float("nan")
        summary_csv = run_root / "summary.csv"
        write_csv(summary_csv, list(summary[0]), summary)
        honest = honest_cv(curve)
        run_info = {"run": run, "model": ctx.params["train"]["model"], **honest,
                    "identity": bool(done[0]["info"].get("identity")),
                    # each fold's best epoch, chosen on its own validation data: optimistic
                    "optimistic_mean_best_val_accuracy": float(np.mean(accs)),
                    "std_best_val_accuracy": float(np.std(accs)),
                    "mean_curve_final_val_accuracy": final_acc,
                    "folds": len(done), "epochs": ctx.params["train"]["epochs"]}
        run_json = run_root / "run.json"
        atomic_write_json(run_json, run_info)
        config_yaml = run_root / "config.yaml"
        atomic_write_text(config_yaml, yaml.safe_dump(ctx.config.data, sort_keys=False))
        classes_json = run_root / "classes.json"
        atomic_write_text(classes_json, (ctx.workdir / "index" / "classes.json").read_text())
        table = Table(title=f"cv-train {run}")
        for col in ("fold", "best val acc", "best epoch", "train rows", "val rows"):
            table.add_column(col, justify="right")
        for s in summary:
            table.add_row(str(s["fold"]), f"{s['best_val_accuracy']:.3f}", str(s["best_epoch"]),
                          str(s["train_rows"]), str(s["val_rows"]))
        table.add_row("mean of fold bests (optimistic)",
                      f"{np.mean(accs):.3f} ± {np.std(accs):.3f}", "", "", "")
        console.print(table)
        console.print(f"cv-train {run}: CV accuracy {honest['cv_accuracy']:.3f}, UAR "
                      f"{honest['cv_uar']:.3f} (mean over folds at epoch {honest['cv_epoch']},"
                      " the mean curve's best)")
        console.print(f"mean curve: {curve_png}")
        return [curve_csv, curve_png, summary_csv, run_json, config_yaml, classes_json]


