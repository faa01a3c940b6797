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

from pathlib import Path

import numpy as np
from rich.console import Console

from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.layout import load_splits
from ..inference.runs import write_run_folder
from ..learning.experiment import (
    TrainingData,
    extract_section,
    train_final_model,
    train_fold,
    train_params,
    training_upstreams,
)


class FinalizeStage(Stage):
    name = "finalize"
    help = ("Early-stopped fold runs fix the epoch count; train the final model on all "
            "training subjects and predict the test set.")
    sections = ("train", "finalize")

    def upstreams(self, config: Config) -> tuple[str, ...]:
        return ("cv-train", *training_upstreams(config))

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

    @staticmethod
    def _convert(run_root: Path, console: Console) -> None:
        """LiteRT graphs of the run now, so `fer predict` starts without TensorFlow (its
        cache, rebuilt by predict whenever model.keras changes; not a stage output)."""
        from ..inference.runs import read_run
        from ..inference.runtime import CACHE_DIR, attach_runtime

        run = attach_runtime(read_run(run_root))
        if run.runtime_note:
            console.print(f"[yellow]finalize: {run.runtime_note}[/]")
        else:
            console.print(f"finalize: LiteRT graphs for `fer predict` in {run_root / CACHE_DIR}")

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        """Train the final model on every fold (resumable like a fold) and predict test."""
        from ..learning.training import load_model

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
        data = TrainingData(ctx.workdir, params)
        console.print(f"finalize: fold stop epochs ({key}) {fold_epochs} -> final model "
                      f"trains {epochs} epochs on all {data.n_folds} folds")
        checkpoint, batch, devices = train_final_model(data, params, epochs, run_root / "final")
        info = {"run": run, "model": params["model"], "epochs": epochs,
                "fold_epochs": fold_epochs, "epochs_from": fin["epochs_from"],
                "train_rows": int(len(data.final_rows())), "classes": data.classes,
                "input_shape": list(data.input_shape), "devices": devices,
                "backbone": None if data.clip else extract_section(ctx.config),
                "clip_size": params["clip_size"] if data.clip else None,
                "color": params["color"], "max_frames": params["max_frames"],
                "min_frames": data.shortest(data.final_rows()),
                "identity": data.identity}
        test_rows, test_csv = data.test_rows(), run_root / "test_probs.csv"
        if len(test_rows):
            info["test_accuracy"], info["test_uar"] = data.write_probabilities(
                load_model(checkpoint), test_rows, test_csv, batch)
            info["test_rows"] = int(len(test_rows))
            console.print(f"finalize: test accuracy {info['test_accuracy']:.3f}, UAR "
                          f"{info['test_uar']:.3f} on {len(test_rows)} items -> {test_csv}")
        model, *described = write_run_folder(run_root, checkpoint, info, ctx.config.data,
                                             data.classes)
        self._convert(run_root, console)
        return [model, *([test_csv] if len(test_rows) else []), *described]
