"""`fer fuse`: late fusion of the softmax outputs of finalized runs (thesis 3.2.6).

Methods: ``average`` of the scores, ``weighted`` average with each run's CV accuracy (mean
over folds at the mean curve's best epoch) as its weight (thesis eq. 3.2), and ``max``
(class-wise maximum, renormalised).
Every combination is scored on the runs' cross-validation outputs (so a combination can be
chosen without touching the test set) and on the test set: the thesis's Table 3.7.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..core import layout
from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.errors import ConfigError, MissingUpstreamError
from ..core.layout import cv_probability_files, finalized_runs
from ..core.workspace import read_json, write_csv
from ..learning.fusion import fuse_scores, fusion_name


class FuseStage(Stage):
    name = "fuse"
    help = "Late fusion (average, weighted, max) of finalized runs: the fusion table."
    # No engine upstream: it fuses every finalized run on disk (several experiments live
    # side by side), whatever the current train config; those runs are its source files.
    sections = ("fuse",)
    shardable = False

    def source_fingerprint(self, config: Config) -> str | None:
        """Finalized runs live side by side on disk: their outputs are this stage's input."""
        digest = hashlib.sha256()
        for run, info in finalized_runs(config.workdir).items():
            digest.update(f"{run}:{info.get('test_accuracy')}:{info.get('epochs')};".encode())
        return digest.hexdigest()[:16]

    def list_items(self, ctx: Context) -> list[Item]:
        runs = finalized_runs(ctx.workdir)
        if not runs:
            raise MissingUpstreamError("no finalized run",
                                       path=layout.finalize_runs_dir(ctx.workdir),
                                       hint="Run `fer finalize` first")
        params = ctx.params["fuse"]
        names = params["runs"] or sorted(runs)
        missing = [r for r in names if r not in runs]
        if missing:
            raise ConfigError(f"fuse.runs: no finalized run {', '.join(missing)}; "
                              f"available: {', '.join(runs) or 'none'}")
        if params["combinations"]:
            combos = [tuple(c) for c in params["combinations"]]
        else:
            combos = [c for k in range(2, min(params["max_size"], len(names)) + 1)
                      for c in itertools.combinations(names, k)]
        if not combos:  # one model is the common first experiment: nothing to fuse
            return []
        fingerprint = {r: runs[r] for r in names}
        return [Item(hashlib.sha256("+".join(c).encode()).hexdigest()[:12],
                     {r: fingerprint[r].get("test_accuracy") for r in c},
                     {"runs": list(c)}) for c in combos]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        from ..learning.evaluation import (
            load_probabilities,
            save_probabilities,
            unweighted_average_recall,
        )

        runs = item.payload["runs"]
        classes = layout.read_classes(ctx.workdir)
        cv = [_concat([load_probabilities(p, classes)
                       for p in cv_probability_files(ctx.workdir, r)]) for r in runs]
        test = [load_probabilities(layout.finalize_run_dir(ctx.workdir, r) / "test_probs.csv",
                                   classes) for r in runs]
        weights = [read_json(layout.cv_run_dir(ctx.workdir, r) / "run.json", "run.json")
                   ["cv_accuracy"] for r in runs]
        cv, test = _align(cv), _align(test)
        files, rows = [], []
        for method in ctx.params["fuse"]["methods"]:
            row = {"combination": " + ".join(runs), "method": method, "runs": len(runs)}
            for split, tables in (("cv", cv), ("test", test)):
                fused = fuse_scores([t.probs for t in tables], method, weights)
                predicted = fused.argmax(1)
                row[f"{split}_accuracy"] = float(np.mean(predicted == tables[0].labels))
                row[f"{split}_uar"] = unweighted_average_recall(tables[0].labels, predicted,
                                                                len(classes))
                if split == "test":
                    out = ctx.stage.path("fusions", fusion_name(tuple(runs), method),
                                         "test_probs.csv")
                    save_probabilities(replace(tables[0], probs=fused), out, classes)
                    files.append(out)
            rows.append(row)
        return ItemOutput(files, info={"runs": runs, "weights": weights, "rows": rows})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        rows = [row for r in done_records(records) for row in r["info"]["rows"]]
        rows.sort(key=lambda r: (-r["cv_accuracy"], r["combination"], r["method"]))
        table_csv = ctx.stage.path("fusion_table.csv")
        write_csv(table_csv, ["combination", "method", "runs", "cv_accuracy", "cv_uar",
                              "test_accuracy", "test_uar"], rows)
        if not records:
            runs = ctx.params["fuse"]["runs"] or sorted(finalized_runs(ctx.workdir))
            console.print(f"fuse: skipped: {len(runs)} finalized run ({', '.join(runs)}); "
                          "fusion needs two or more (finalize another model, e.g. "
                          "--set train.model=lstm)")
            return [table_csv]
        table = Table(title="Late fusion (thesis Table 3.7), sorted by CV accuracy")
        for col in ("combination", "method", "CV acc", "CV UAR", "test acc", "test UAR"):
            table.add_column(col)
        for row in rows[:20]:
            table.add_row(row["combination"], row["method"], f"{row['cv_accuracy']:.3f}",
                          f"{row.get('cv_uar', float('nan')):.3f}",
                          f"{row['test_accuracy']:.3f}",
                          f"{row.get('test_uar', float('nan')):.3f}")
        console.print(table)
        return [table_csv]


_FIELDS = ("names", "items", "subjects", "labels", "probs")


def _concat(tables):
    """One table from several (the folds' validation outputs of a run)."""
    return replace(tables[0], **{f: [v for t in tables for v in getattr(t, f)]
                                 for f in _FIELDS[:3]},
                   labels=np.concatenate([t.labels for t in tables]),
                   probs=np.concatenate([t.probs for t in tables]))


def _align(tables):
    """Restrict every table to the names all share, in one order."""
    common = sorted(set.intersection(*(set(t.names) for t in tables)))
    out = []
    for t in tables:
        order = {n: i for i, n in enumerate(t.names)}
        idx = [order[n] for n in common]
        out.append(replace(t, **{f: [getattr(t, f)[i] for i in idx] for f in _FIELDS[:3]},
                           labels=t.labels[idx], probs=t.probs[idx]))
    return out
