"""`fer cv-train`: subject-independent k-fold cross-validation of one model (thesis 3.2.3).

Each fold of splits.json is an item: train on the other folds (with their augmented rows),
validate on this fold's original rows, for a fixed number of epochs (no early stopping:
the folds' curves are averaged epoch-wise). A fold resumes at the next epoch after a kill
(fercli.learning.training). Run folders name the experiment, ``runs/<model>-<features>-<hash>/``,
so several live side by side; each holds the resolved config and classes.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from ..core import layout
from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.layout import load_splits
from ..core.versions import write_versions
from ..core.workspace import atomic_write_json, atomic_write_text, write_csv
from ..learning.experiment import (
    TrainingData,
    run_name,
    train_fold,
    train_params,
    training_upstreams,
)


class CvTrainStage(Stage):
    name = "cv-train"
    help = ("Subject-independent k-fold cross-validation of one model (fixed epochs, "
            "resumable per epoch); --fold K runs one fold.")
    sections = ("train",)
    shardable = True

    def upstreams(self, config: Config) -> tuple[str, ...]:
        return training_upstreams(config)

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
        run = run_name(ctx.config, params, ctx.upstream_hashes)
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
        atomic_write_text(classes_json, layout.classes_json(ctx.workdir).read_text())
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
        return [curve_csv, curve_png, summary_csv, run_json, config_yaml, classes_json,
                write_versions(run_root)]


