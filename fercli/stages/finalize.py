"""`fer finalize`: the final model, trained on all training subjects (thesis 3.2.3).

Each fold is re-run with EarlyStopping (patience 10) and ReduceLROnPlateau (factor 0.5,
patience 5) on validation accuracy, and its stop epoch recorded; the final model is then
trained on every fold for the mean of those epochs, saved with its config and classes,
and applied to the held-out test set (softmax per item in test_probs.csv).

The stop epoch is, by default, the epoch EarlyStopping found best (``finalize.epochs_from:
best``), i.e. where training stopped minus the patience; ``stopped`` takes the epoch where
training actually stopped, a literal reading of the thesis.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.versions import write_versions
from ..core.workspace import atomic_path, atomic_write_json, atomic_write_text, read_json
from .cv_train import (
    CvTrainStage,
    TrainingData,
    build_fn,
    prepare_devices,
    train_fold,
    train_params,
)
from .extract import ExtractStage
from .split import load_splits


class FinalizeStage(Stage):
    name = "finalize"
    help = ("Early-stopped fold runs fix the epoch count; train the final model on all "
            "training subjects and predict the test set.")
    sections = ("train", "finalize")

    def upstreams(self, config: Config) -> tuple[str, ...]:
        return ("cv-train", *CvTrainStage().upstreams(config))

    def params(self, config: Config) -> dict:
        return {"train": train_params(config), "finalize": config["finalize"]}

    def item_params(self, params: dict) -> dict:
        return {"train": {k: v for k, v in params["train"].items() if k != "tensorboard"},
                "finalize": params["finalize"]}

    def list_items(self, ctx: Context) -> list[Item]:
        n_folds = len(load_splits(ctx.workdir)["items"]["folds"])
        return [Item(f"es-fold-{k}", ctx.upstream_hashes, {"fold": k}) for k in range(n_folds)]

    def _run(self, ctx: Context) -> str:
        manifest = ctx.upstream["cv-train"].read_manifest()
        return next(r["info"]["run"] for r in manifest["items"].values() if r.get("info"))

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        params, fin = ctx.params["train"], ctx.params["finalize"]
        run_dir = ctx.stage.path("runs", self._run(ctx), item.id)
        data = TrainingData(ctx.workdir, params)
        result, _, _ = train_fold(data, params, item.payload["fold"], run_dir,
                                  fin["max_epochs"], early_stopping=fin)
        stopped = result.stopped_epoch or result.epochs_run
        return ItemOutput([run_dir / "log.csv"], info={
            "fold": item.payload["fold"], "best_epoch": result.best_epoch,
            "stopped_epoch": stopped, "best_val_accuracy": result.best_val_accuracy})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        """Train the final model on every fold (resumable like a fold) and predict test."""
        from ..learning.training import load_model, train_resumable

        params, fin = ctx.params["train"], ctx.params["finalize"]
        done = done_records(records)
        if not done:
            console.print("[red]finalize: every early-stopped fold failed; no final model[/]")
            return []
        key = "best_epoch" if fin["epochs_from"] == "best" else "stopped_epoch"
        fold_epochs = [r["info"][key] for r in done]
        epochs = max(1, int(round(float(np.mean(fold_epochs)))))
        run = self._run(ctx)
        run_root = ctx.stage.path("runs", run)
        final_dir = run_root / "final"
        strategy, devices = prepare_devices(params)
        data = TrainingData(ctx.workdir, params)
        batch = params["batch_size"] * strategy.num_replicas_in_sync
        console.print(f"finalize: fold stop epochs ({key}) {fold_epochs} -> final model "
                      f"trains {epochs} epochs on all {data.n_folds} folds")
        with strategy.scope():
            train_resumable(final_dir, build_fn(data, params),
                            data.dataset(data.final_rows(), batch_size=batch, shuffle=True,
                                         seed=params["seed"], training=True),
                            None, epochs=epochs, seed=params["seed"],
                            tensorboard=params["tensorboard"],
                            class_weight=data.class_weight(data.final_rows()))
        state = read_json(final_dir / "state.json", "state.json")
        model_path = run_root / "model.keras"
        with atomic_path(model_path) as tmp:
            shutil.copyfile(final_dir / state["latest"], tmp)
        model = load_model(model_path)
        test_rows = data.test_rows()
        test_csv = run_root / "test_probs.csv"
        outputs = [model_path]
        info = {"run": run, "model": params["model"], "epochs": epochs,
                "fold_epochs": fold_epochs, "epochs_from": fin["epochs_from"],
                "train_rows": int(len(data.final_rows())), "classes": data.classes,
                "input_shape": list(data.input_shape), "devices": devices,
                "backbone": None if data.clip else ExtractStage().params(ctx.config)["extract"],
                "clip_size": params["clip_size"] if data.clip else None,
                "color": params["color"], "max_frames": params["max_frames"],
                "min_frames": data.shortest(data.final_rows()),
                "identity": data.identity}
        if len(test_rows):
            info["test_accuracy"], info["test_uar"] = data.write_probabilities(
                model, test_rows, test_csv, batch)
            info["test_rows"] = int(len(test_rows))
            outputs.append(test_csv)
            console.print(f"finalize: test accuracy {info['test_accuracy']:.3f}, UAR "
                          f"{info['test_uar']:.3f} on {len(test_rows)} items -> {test_csv}")
        model_json = run_root / "model.json"
        atomic_write_json(model_json, info)
        config_yaml = run_root / "config.yaml"
        atomic_write_text(config_yaml, yaml.safe_dump(ctx.config.data, sort_keys=False))
        classes_json = run_root / "classes.json"
        atomic_write_json(classes_json, data.classes)
        return outputs + [model_json, config_yaml, classes_json, write_versions(run_root)]
