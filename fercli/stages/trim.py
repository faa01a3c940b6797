"""`fer trim`: cut neutral onset/offset frames with the thesis's Algorithm 1 (3.2.1).

The clip itself is not re-encoded: the kept frame range is recorded per item, and later
stages read only those frames. Score source ``motion`` measures how far each frame of the
tracked face moved away from the onset face (see vision.trim.motion_scores); ``openface``
reads AU intensities as the thesis did. ``trim.shape`` says which expression course the
cut assumes (vision.trim.trim_clip): Algorithm 1 for onset-apex-offset clips, the onset
only for onset-apex ones (CK+), or per clip (auto); the course used goes into trim.csv.
Anomalies (clips that fit no course) are kept whole and listed in anomalies.csv;
``trim.overrides`` applies manual decisions. 1-frame clips (still images) stay whole.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import get_args

import numpy as np
from rich.console import Console

from ..core.config import Config
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.errors import ConfigError, InputError, ItemError
from ..core.workspace import atomic_write_text, write_csv
from ..vision.clipio import iter_clip
from ..vision.trim import (
    TrimResult,
    TrimStatus,
    apply_override,
    load_overrides,
    motion_scores,
    openface_scores,
    trim_clip,
)


def _resolved(config: Config, key: str) -> Path | None:
    value = config["trim"][key]
    return config.resolve_path(value) if value else None


class TrimStage(Stage):
    name = "trim"
    help = ("Cut neutral onset and offset frames (thesis Algorithm 1; onset only for "
            "onset-apex clips); list anomalies.")
    upstream = ("track",)
    cpu_parallel = True
    sections = ("trim",)

    def params(self, config: Config) -> dict:
        section = dict(config["trim"])
        for key in ("openface_dir", "overrides"):
            section[key] = str(_resolved(config, key)) if section[key] else None
        if section["score"] == "openface" and not section["openface_dir"]:
            raise ConfigError("trim.openface_dir is not set for trim.score=openface",
                              hint="Point it at the folder of OpenFace CSVs (<item_id>.csv)")
        return {"trim": section}

    def item_params(self, params: dict) -> dict:
        return {k: v for k, v in params["trim"].items() if k != "plot_examples"}

    def source_fingerprint(self, config: Config) -> str | None:
        """Overrides and OpenFace CSVs live outside the workdir: hash their content."""
        params = self.params(config)["trim"]
        if params["score"] == "openface" and not Path(params["openface_dir"]).is_dir():
            raise InputError("OpenFace folder not found", path=params["openface_dir"],
                             hint="Set trim.openface_dir to the folder of OpenFace CSVs "
                                  "(<item_id>.csv)")  # checked before any record is written
        digest = hashlib.sha256()
        if params["overrides"] and Path(params["overrides"]).is_file():
            digest.update(Path(params["overrides"]).read_bytes())
        if params["score"] == "openface":
            for p in sorted(Path(params["openface_dir"]).glob("*.csv")):
                st = p.stat()
                digest.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return digest.hexdigest()[:16]

    def list_items(self, ctx: Context) -> list[Item]:
        params = ctx.params["trim"]
        openface = Path(params["openface_dir"]) if params["score"] == "openface" else None
        overrides = load_overrides(params["overrides"]) if params["overrides"] else {}
        items = ctx.upstream_item_list("track")
        tracked = ctx.upstream_items("track")
        for item in items:
            clip = next(o for o in tracked[item.id]["outputs"]
                        if o["path"].endswith((".mkv", ".avi")))
            item.payload["clip"] = str(ctx.workdir / clip["path"])
            item.payload["override"] = overrides.get(item.id)
            item.fingerprint = {"track": item.fingerprint, "override": overrides.get(item.id)}
            if openface is not None:  # a CSV added or fixed later redoes its item
                item.fingerprint["openface"] = _stamp(openface / f"{item.id}.csv")
        return items

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        params = ctx.params["trim"]
        info = item.payload
        scores = self._scores(item, params)
        if info["override"] is not None:
            result = apply_override(len(scores), *info["override"])
        else:
            result = trim_clip(scores, shape=params["shape"],
                               min_frames_end=params["min_frames_end"],
                               threshold_ratio=params["threshold_ratio"],
                               max_cut_ratio=params["max_cut_ratio"],
                               anomaly_last_frames=params["anomaly_last_frames"])
        scores_csv = ctx.stage.path("scores", f"{item.id}.csv")
        atomic_write_text(scores_csv, "frame,score,kept\n" + "".join(
            f"{i},{s:.6f},{int(result.first <= i <= result.last)}\n"
            for i, s in enumerate(scores)))
        return ItemOutput([scores_csv], info={
            "clip": info["clip"], "fps": info["fps"], "n_frames": len(scores),
            "first": result.first, "last": result.last, "n_kept": result.last - result.first + 1,
            "status": result.status, "shape": result.shape, "threshold": result.threshold,
            "max_score": result.max_score})

    @staticmethod
    def _scores(item: Item, params: dict) -> np.ndarray:
        if params["score"] == "motion":
            return motion_scores(iter_clip(item.payload["clip"]))
        scores = openface_scores(Path(params["openface_dir"]) / f"{item.id}.csv")
        # OpenFace ran on the source video; the clip starts at the detection frame.
        first, n = item.payload["first_frame"], item.payload["n_frames"]
        if len(scores) < first + n:
            raise ItemError(f"OpenFace CSV has {len(scores)} rows, the clip needs frames "
                            f"{first}-{first + n - 1}",
                            path=Path(params["openface_dir"]) / f"{item.id}.csv",
                            hint="Run OpenFace on the same source video")
        return scores[first:first + n]

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..reporting.plots import plot_lengths_before_after, plot_score_curve

        done = done_records(records)
        columns = ["item_id", "status", "shape", "n_frames", "first", "last", "n_kept"]
        # shape is empty for stills, overrides and pre-shape records
        trim_csv = write_csv(ctx.stage.path("trim.csv"), columns, (
            [r["id"], r["info"]["status"], r["info"].get("shape") or "",
             *(r["info"][c] for c in columns[3:])] for r in done))
        anomalies = [r for r in done if r["info"]["status"] == "anomaly"]
        anomalies_csv = ctx.stage.path("anomalies.csv")
        atomic_write_text(anomalies_csv, "item_id,first,last,n_frames\n" + "".join(
            f"{r['id']},0,{r['info']['n_frames'] - 1},{r['info']['n_frames']}\n"
            for r in anomalies))
        lengths_png = ctx.stage.path("lengths_before_after.png")
        plot_lengths_before_after([r["info"]["n_frames"] for r in done],
                                  [r["info"]["n_kept"] for r in done], lengths_png)
        outputs = [trim_csv, anomalies_csv, lengths_png]
        examples = done[:ctx.params["trim"]["plot_examples"]]
        for r in examples + [a for a in anomalies if a not in examples]:
            scores = _read_scores(ctx.workdir / r["outputs"][0]["path"])
            info = r["info"]
            result = TrimResult(info["first"], info["last"], info["status"], info["threshold"],
                                info["max_score"], info["first"],
                                info["n_frames"] - 1 - info["last"], info.get("shape"))
            png = ctx.stage.path("plots", f"{r['id']}.png")
            plot_score_curve(scores, result, r["id"], png)
            outputs.append(png)
        statuses = {s: sum(r["info"]["status"] == s for r in done)
                    for s in get_args(TrimStatus)}
        shapes = {s: sum(r["info"].get("shape") == s for r in done)
                  for s in ("onset-apex-offset", "onset-apex")}
        before = sum(r["info"]["n_frames"] for r in done)
        after = sum(r["info"]["n_kept"] for r in done)
        shape_text = ", ".join(f"{n} {s}" for s, n in shapes.items() if n)
        console.print(f"trim: {len(done)} clips; " + ", ".join(
            f"{n} {s}" for s, n in statuses.items() if n) +
            (f"; shape {shape_text}" if shape_text else "") +
            f"; frames kept {after}/{before} ({after / max(before, 1):.0%})")
        if anomalies:
            console.print(f"[yellow]trim: {len(anomalies)} anomalies kept whole for manual "
                          f"review[/]: see {anomalies_csv} and plots/; put decisions in a file "
                          "named by trim.overrides")
        return outputs


def _stamp(path: Path) -> list[int] | None:
    """Size and mtime of a file outside the workdir, or None while it does not exist."""
    return [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None


def _read_scores(path: Path) -> np.ndarray:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return np.array([float(r["score"]) for r in rows])
