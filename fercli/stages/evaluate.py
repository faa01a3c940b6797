"""`fer evaluate`: test-set metrics, confusion matrices and error analysis (thesis 3.3).

Each target is an item: a finalized run (its test_probs.csv) or a fusion written by
`fer fuse` (run+run@method). By default every finalized run and the fusion with the best
cross-validation accuracy are evaluated; `evaluate.human` adds the human-vs-model
comparison of thesis 3.3.1.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core import layout
from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.errors import ConfigError, MissingUpstreamError
from ..core.layout import finalized_runs
from ..core.workspace import file_sha256, read_text, write_csv


def probability_files(workdir: Path) -> dict[str, Path]:
    """Every evaluable target: finalized runs and written fusions -> test_probs.csv."""
    targets = {run: layout.finalize_run_dir(workdir, run) / "test_probs.csv"
               for run in finalized_runs(workdir)}
    for path in sorted(layout.fusions_dir(workdir).glob("*/test_probs.csv")):
        targets[path.parent.name] = path
    return {name: path for name, path in targets.items() if path.is_file()}


def best_fusion(workdir: Path) -> str | None:
    table = layout.fusion_table_csv(workdir)
    if not table.is_file():
        return None
    rows = list(csv.DictReader(io.StringIO(read_text(table, "fusion_table.csv"))))
    if not rows:
        return None
    best = rows[0]  # the table is sorted by CV accuracy
    return best["combination"].replace(" + ", "+") + f"@{best['method']}"


class EvaluateStage(Stage):
    name = "evaluate"
    help = ("Test-set accuracy, UAR, per-class scores, confusion matrices, per-subject "
            "accuracy and the error-analysis table for runs and fusions.")
    sections = ("evaluate",)  # like fuse: reads every finalized run and fusion on disk

    def params(self, config: Config) -> dict:
        section = dict(config["evaluate"])
        if section["human"]:
            section["human"] = str(config.resolve_path(section["human"]))
        return {"evaluate": section}

    def source_fingerprint(self, config: Config) -> str | None:
        digest = hashlib.sha256()
        for name, path in probability_files(config.workdir).items():
            digest.update(f"{name}:{file_sha256(path)};".encode())
        human = self.params(config)["evaluate"]["human"]
        if human and Path(human).is_file():
            digest.update(Path(human).read_bytes())
        return digest.hexdigest()[:16]

    def list_items(self, ctx: Context) -> list[Item]:
        files = probability_files(ctx.workdir)
        if not files:
            raise MissingUpstreamError("no finalized run with test probabilities",
                                       path=layout.finalize_runs_dir(ctx.workdir),
                                       hint="Run `fer finalize` first")
        targets = ctx.params["evaluate"]["targets"]
        if targets is None:
            targets = sorted(finalized_runs(ctx.workdir))
            fusion = best_fusion(ctx.workdir)
            if fusion in files:
                targets.append(fusion)
        unknown = [t for t in targets if t not in files]
        if unknown:
            raise ConfigError(f"evaluate.targets: nothing to evaluate for "
                              f"{', '.join(unknown)}; available: {', '.join(files) or 'none'}")
        return [Item(t, file_sha256(files[t]), {"probs": str(files[t])}) for t in targets]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        from ..learning.evaluation import (
            evaluate,
            human_evaluation,
            load_human_annotations,
            load_probabilities,
            write_evaluation,
            write_human_evaluation,
        )

        classes = layout.read_classes(ctx.workdir)
        probs = load_probabilities(item.payload["probs"], classes)
        out_dir = ctx.stage.path("targets", item.id)
        result = evaluate(probs, classes)
        files = write_evaluation(result, classes, out_dir, title=item.id)
        info = {k: result[k] for k in ("n", "accuracy", "uar", "weighted_recall", "macro_f1")}
        human = ctx.params["evaluate"]["human"]
        if human:
            annotations = load_human_annotations(human, classes,
                                                 known=set(probs.items) | set(probs.names))
            human_result = human_evaluation(annotations, probs, classes)
            files += write_human_evaluation(human_result, classes, out_dir, title=item.id)
            info["human_accuracy"] = human_result["accuracy"]
            info["human_agreement"] = human_result["agreement"]
        return ItemOutput(files, info=info)

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        done = done_records(records)
        columns = ["target", "n", "accuracy", "uar", "weighted_recall", "macro_f1"]
        rows = [{"target": r["id"], **{c: r["info"][c] for c in columns[1:]}} for r in done]
        rows.sort(key=lambda row: -row["accuracy"])
        summary = write_csv(ctx.stage.path("summary.csv"), columns, rows)
        table = Table(title="Test set (held-out subjects)")
        for col in ("target", "n", "accuracy", "UAR", "macro F1"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["target"], str(row["n"]), f"{row['accuracy']:.3f}",
                          f"{row['uar']:.3f}", f"{row['macro_f1']:.3f}")
        console.print(table)
        return [summary]
