"""Training one model in one folder, resumable at the next epoch (thesis 3.2.3).

After every epoch an ``EpochCheckpoint`` writes, each atomically and in this order: the
latest model (``latest-eNNNN.keras``, optimizer state included), the best model by
validation accuracy (``best.keras``), the CSV log of all epochs so far, and last
``state.json`` naming the epoch and the latest file. A run killed at any point restarts
from ``state.json``: the model of that epoch, the log cut to that epoch (no duplicated or
truncated rows) and ``initial_epoch`` set, so it continues at the next epoch.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.workspace import atomic_path, atomic_write_json, atomic_write_text, csv_text

LOG_COLUMNS = ["epoch", "accuracy", "loss", "val_accuracy", "val_loss", "uar", "val_uar",
               "learning_rate"]
METRIC_COLUMNS = [c for c in LOG_COLUMNS if c not in ("epoch", "learning_rate")]


@dataclass
class FoldResult:
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    stopped_epoch: int | None = None
    history: list[dict] = field(default_factory=list)


def _keras():
    import keras

    from . import models  # noqa: F401  registers the custom layers load_model needs

    return keras


def predict_batches(model, dataset) -> np.ndarray:
    """Softmax rows of every batch of ``dataset`` ((inputs, labels) pairs), in order.

    The model is called directly, eagerly: ``model.predict`` traces a new tf.function for
    every model, and cv-train predicts with one new model per fold in the same process, so
    from the fifth fold on TensorFlow warned about "retracing". Nothing is traced here."""
    return np.concatenate([np.asarray(model(inputs, training=False))
                           for inputs, *_ in dataset])


def load_model(path: Path, hint: str = "Delete it and re-run the stage that wrote it "
                                       "(with --force)"):
    """Load a saved fercli model, with a one-line error when the file is damaged."""
    from ..core.errors import ArtifactError

    keras = _keras()
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # noqa: BLE001 - keras raises many kinds for a bad file
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ArtifactError(f"model file cannot be loaded ({reason})", path=path,
                            hint=hint) from None


def read_state(run_dir: Path) -> dict | None:
    path = run_dir / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # never half-written (atomic); unreadable means start over


def read_log(run_dir: Path, up_to_epoch: int | None = None) -> list[dict]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    rows = [{k: float(v) if k != "epoch" else int(v) for k, v in r.items() if v != ""}
            for r in csv.DictReader(io.StringIO(path.read_text()))]
    return [r for r in rows if up_to_epoch is None or r["epoch"] <= up_to_epoch]


def make_epoch_checkpoint(run_dir: Path, history: list[dict], best: float,
                          extra_state: callable = None):
    keras = _keras()

    class EpochCheckpoint(keras.callbacks.Callback):
        """Latest + best model, CSV log and state after every epoch (see module doc)."""

        def __init__(self):
            super().__init__()
            self.history_rows = history
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            lr = self.model.optimizer.learning_rate
            row = {"epoch": epoch + 1,
                   **{k: float(logs[k]) for k in METRIC_COLUMNS if k in logs},
                   "learning_rate": float(np.asarray(lr))}
            self.history_rows.append(row)
            latest = run_dir / f"latest-e{epoch + 1:04d}.keras"
            with atomic_path(latest) as tmp:
                self.model.save(tmp)
            improved = row.get("val_accuracy", -1.0) > self.best
            if improved:
                self.best = row["val_accuracy"]
                with atomic_path(run_dir / "best.keras") as tmp:
                    self.model.save(tmp)
            atomic_write_text(run_dir / "log.csv", _log_text(self.history_rows))
            best_epoch = max(self.history_rows, key=lambda r: (r.get("val_accuracy", -1),
                                                               -r["epoch"]))["epoch"]
            state = {"epoch": epoch + 1, "latest": latest.name, "best_epoch": best_epoch,
                     "best_val_accuracy": self.best}
            if extra_state:
                state.update(extra_state())
            atomic_write_json(run_dir / "state.json", state)
            _remove_older_checkpoints(run_dir, latest.name)

    return EpochCheckpoint()


def _remove_older_checkpoints(run_dir: Path, latest: str) -> None:
    for old in run_dir.glob("latest-e*.keras"):
        if old.name != latest:
            old.unlink(missing_ok=True)


def _mark_finished(run_dir: Path, state: dict) -> dict:
    """Write the final state; also drop an older checkpoint that a kill between writing
    state.json and deleting it left behind."""
    state["finished"] = True
    atomic_write_json(run_dir / "state.json", state)
    if state.get("latest"):
        _remove_older_checkpoints(run_dir, state["latest"])
    return state


def _log_text(rows: list[dict]) -> str:
    return csv_text(LOG_COLUMNS, rows)


def train_resumable(run_dir: Path, build, train_ds, val_ds, *, epochs: int, seed: int,
                    early_stopping: dict | None = None, tensorboard: bool = True,
                    class_weight: dict[int, float] | None = None, log=None) -> FoldResult:
    """Fit ``build()`` for ``epochs`` (or until early stopping), resuming from run_dir.

    ``early_stopping`` (finalize): {"patience", "lr_factor", "lr_patience"} adds
    EarlyStopping and ReduceLROnPlateau on validation accuracy, their counters restored
    on resume so a restart stops where an uninterrupted run would. ``class_weight``
    (class index -> weight) scales each sequence's loss by its class's weight.
    """
    keras = _keras()
    log = log or (lambda message: print(message, file=sys.stderr))
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    state = read_state(run_dir)
    if state and state.get("finished"):
        history = read_log(run_dir)
        return _result(state, history)
    if state and state.get("stopped_epoch"):  # killed after EarlyStopping ended the run
        return _result(_mark_finished(run_dir, state), read_log(run_dir))
    if state and (run_dir / state["latest"]).is_file():
        # a damaged checkpoint is reported, not skipped: the user decides to lose the epochs
        model = load_model(run_dir / state["latest"],
                           hint=f"Delete it to restart {run_dir.name} from epoch 1")
        initial_epoch = state["epoch"]
        history = read_log(run_dir, initial_epoch)
        best = state["best_val_accuracy"]
        log(f"resuming {run_dir.name} at epoch {initial_epoch + 1}")
    else:
        model, initial_epoch, history, best, state = build(), 0, [], -1.0, {}
    callbacks = []
    stopper = None
    if early_stopping:
        stopper, plateau = _resumable_stoppers(keras, early_stopping, state)
        callbacks += [stopper, plateau]

        def number(value):
            return None if value is None else float(value)

        def extra_state():
            return {"es_wait": stopper.wait, "es_best": number(stopper.best),
                    "es_best_epoch": None if stopper.best_epoch is None
                    else stopper.best_epoch + 1,
                    "plateau_wait": plateau.wait, "plateau_best": number(plateau.best),
                    # set in the epoch EarlyStopping stops: a resume must not train on
                    "stopped_epoch": stopper.stopped_epoch + 1 if stopper.stopped_epoch
                    else None}
    else:
        extra_state = None
    # after the stoppers: the state written each epoch must include their update
    callbacks.append(make_epoch_checkpoint(run_dir, history, best, extra_state))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"),
                                                     write_graph=False))
    if initial_epoch < epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=0,
                  class_weight=class_weight,
                  shuffle=False)  # the tf.data pipeline shuffles, seeded per epoch
    state = read_state(run_dir) or {"epoch": 0, "best_epoch": 0, "best_val_accuracy": 0.0}
    if stopper is not None and stopper.stopped_epoch:
        state["stopped_epoch"] = stopper.stopped_epoch + 1
    return _result(_mark_finished(run_dir, state), read_log(run_dir))


def _resumable_stoppers(keras, params: dict, state: dict):
    """EarlyStopping and ReduceLROnPlateau on val accuracy whose counters survive a restart."""

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state.get("es_wait") is not None:
                self.wait, self.best = state["es_wait"], state["es_best"]
                if state.get("es_best_epoch"):
                    self.best_epoch = state["es_best_epoch"] - 1

    class ResumablePlateau(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state.get("plateau_wait") is not None:
                self.wait, self.best = state["plateau_wait"], state["plateau_best"]

    stopper = ResumableEarlyStopping(monitor="val_accuracy", mode="max",
                                     patience=params["patience"])
    plateau = ResumablePlateau(monitor="val_accuracy", mode="max", factor=params["lr_factor"],
                               patience=params["lr_patience"], verbose=0)
    return stopper, plateau


def _result(state: dict, history: list[dict]) -> FoldResult:
    return FoldResult(epochs_run=state["epoch"], best_epoch=state["best_epoch"],
                      best_val_accuracy=state["best_val_accuracy"],
                      stopped_epoch=state.get("stopped_epoch"), history=history)


def balanced_class_weights(labels, n_classes: int) -> dict[int, float]:
    """n / (k x n_c) per present class (scikit-learn's "balanced"; seed 002 weights the
    rare FER classes up): every class then adds the same total to the loss."""
    counts = np.bincount(np.asarray(labels, int), minlength=n_classes)
    present = counts > 0
    return {int(c): float(counts.sum() / (present.sum() * counts[c]))
            for c in range(n_classes) if present[c]}


def honest_cv(curve: list[dict]) -> dict:
    """The run's CV figure: the mean over folds at ONE epoch, the mean curve's best.

    Each fold's own best epoch is chosen on that fold's validation data, so their mean is
    optimistic; one epoch for all folds is what the final model can actually use.
    """
    scored = [row for row in curve if "val_accuracy" in row]
    if not scored:
        return {"cv_accuracy": float("nan"), "cv_uar": float("nan"), "cv_epoch": 0}
    best = max(scored, key=lambda row: (row["val_accuracy"], -row["epoch"]))
    return {"cv_accuracy": best["val_accuracy"], "cv_uar": best.get("val_uar", float("nan")),
            "cv_accuracy_std": best.get("val_accuracy_std", float("nan")),
            "cv_epoch": best["epoch"]}


def mean_curve(histories: list[list[dict]]) -> list[dict]:
    """Epoch-wise average over folds (thesis 3.2.3: results averaged across folds)."""
    n = min((len(h) for h in histories), default=0)
    out = []
    for e in range(n):
        row = {"epoch": e + 1}
        for key in METRIC_COLUMNS:
            values = [h[e][key] for h in histories if key in h[e]]
            if values:
                row[key] = float(np.mean(values))
                row[f"{key}_std"] = float(np.std(values))
        out.append(row)
    return out
