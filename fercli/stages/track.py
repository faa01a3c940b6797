"""`fer track`: follow the detected face through the video, crop, resize, store losslessly.

Frames before the detection frame are dropped (they are neutral onset frames, and the clip
then starts at a confirmed face). A lost face is re-detected for ``track.redetect_tries``
frames before the item fails with the frame number (thesis 3.2.1, paper 000 sec. 2.2).
Every frame is cut from one sub-pixel box track, optionally smoothed (``track.smooth``).
With ``detect.detector: none`` the frames are face crops already: each is resized whole,
with no tracker (source 'full').
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core.engine import Context, Item, ItemOutput, Stage
from ..core.errors import ItemError
from ..core.workspace import atomic_write_text
from ..vision.clipio import CODECS, ClipWriter, write_boxes_csv
from ..vision.detect import Box, Detection, detector_from_params
from ..vision.media import iter_frames
from ..vision.track import compare_trackers, full_frames, track_faces

CLIP_SUFFIX = {name: codec.suffix for name, codec in CODECS.items()}


class TrackStage(Stage):
    name = "track"
    help = ("Track each detected face (MedianFlow by default), crop and resize it, and "
            "write a lossless clip plus per-frame boxes.")
    upstream = ("detect",)
    cpu_parallel = True
    sections = ("track", "detect")  # detect params drive re-detection

    def list_items(self, ctx: Context) -> list[Item]:
        return ctx.upstream_item_list("detect")

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        params, detect_params = ctx.params["track"], ctx.params["detect"]
        info = item.payload
        detection = Detection(info["frame"], Box(*info["box"]), Box(*info["raw_box"]))
        clip = ctx.stage.path("clips", item.id + CLIP_SUFFIX[params["codec"]])
        boxes_csv = ctx.stage.path("boxes", f"{item.id}.csv")
        clip.parent.mkdir(parents=True, exist_ok=True)
        boxes_csv.parent.mkdir(parents=True, exist_ok=True)
        fps = info.get("fps") or 25.0
        rows = []
        sources = {"track": 0, "redetect": 0, "hold": 0, "detect": 0, "full": 0}
        if detect_params["detector"] == "none":  # already face crops: nothing to track
            faces = full_frames(iter_frames(info["path"]), params["size"], params["color"])
        else:
            faces = track_faces(iter_frames(info["path"]), detection,
                                tracker_name=params["tracker"], size=params["size"],
                                color=params["color"],
                                detector=detector_from_params(detect_params),
                                redetect_tries=params["redetect_tries"],
                                extend_px=detect_params["extend_px"], smooth=params["smooth"])
        with ClipWriter(clip, params["size"], params["color"], fps, params["codec"]) as writer:
            for tracked in faces:
                writer.write(tracked.face)
                rows.append(tracked.row)
                sources[tracked.source] += 1
        if not rows:
            raise ItemError("no frames were tracked", path=info["path"])
        write_boxes_csv(boxes_csv, rows)
        return ItemOutput([clip, boxes_csv], info={
            "path": info["path"], "fps": fps, "first_frame": rows[0][0],
            "n_frames": len(rows), "redetections": sources["redetect"],
            "held_frames": sources["hold"]})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["item_id", "status", "first_frame", "n_frames", "redetections",
                         "held_frames", "reason"])
        for r in records:
            i = r.get("info", {})
            writer.writerow([r["id"], r["status"], i.get("first_frame", ""),
                             i.get("n_frames", ""), i.get("redetections", ""),
                             i.get("held_frames", ""), r.get("reason", "")])
        path = ctx.stage.path("tracks.csv")
        atomic_write_text(path, buffer.getvalue())
        return [path]


def run_comparison(ctx: Context, tracker_names: list[str], limit: int,
                   console: Console) -> Path:
    """`fer track --compare`: paper 000 Table 1 (tracker, failed samples, time) + frames/s."""
    detections = ctx.upstream_items("detect")
    videos = [rec["info"]["path"] for rec in detections.values()][:limit]
    detect_params = ctx.params["detect"]
    rows = compare_trackers(videos, tracker_names, detector_from_params(detect_params),
                            read_frames=iter_frames, size=ctx.params["track"]["size"],
                            frames_allowed=detect_params["frames_allowed"],
                            extend_px=detect_params["extend_px"],
                            redetect_tries=ctx.params["track"]["redetect_tries"])
    failures = [(row["tracker"], *f) for row in rows for f in row.pop("failures")]
    table = Table(title=f"Tracker comparison on {len(videos)} items (paper 000 Table 1)")
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    for tracker, video, reason in failures:
        console.print(f"[yellow]{tracker}[/] failed on {video}: {reason}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = ctx.stage.path("compare", "trackers.csv")
    atomic_write_text(path, buffer.getvalue())
    console.print(f"wrote {path}")
    return path
