"""`fer report`: one self-contained HTML page (and a Markdown summary) of a work directory.

Everything the stages wrote that a researcher looks at: dataset statistics, the split,
tracker and trim summaries, CV curves per run, the fusion table, test metrics, confusion
matrices and the error analysis. Images are embedded as data URIs, so the page can be
mailed or archived alone; the Markdown summary links the PNGs in the work directory.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

from ..core import layout
from ..core.workspace import atomic_write_text, read_text

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f2f2f2}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}.muted{color:#777}
"""


class Report:
    """Collects sections as HTML and Markdown side by side."""

    def __init__(self, workdir: Path, out_dir: Path):
        self.workdir = workdir
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []
        self.images: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(text + "\n")

    def image(self, path: Path, caption: str) -> None:
        if not path.is_file():
            return
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f'<figure><img alt="{html.escape(caption)}" '
                         f'src="data:image/png;base64,{data}"><figcaption class="muted">'
                         f"{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}]({Path(os.path.relpath(path, self.out_dir)).as_posix()})\n")
        self.images.append(path)

    def table(self, rows: list[dict], columns: list[str] | None = None,
              limit: int = 40) -> None:
        if not rows:
            self.text("(nothing)")
            return
        columns = columns or list(rows[0])
        shown = rows[:limit]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>"
                                        for c in columns) + "</tr>" for r in shown)
        more = f"<p class='muted'>{len(rows) - limit} more rows in the CSV</p>" \
            if len(rows) > limit else ""
        self.html.append(f"<table><tr>{head}</tr>{body}</table>{more}")
        self.md.append("| " + " | ".join(columns) + " |")
        self.md.append("|" + "---|" * len(columns))
        self.md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |"
                    for r in shown]
        self.md.append("")

    def csv_table(self, path: Path, columns: list[str] | None = None, limit: int = 40) -> None:
        if path.is_file():
            self.table(read_csv(path), columns, limit)

    def render_html(self, title: str) -> str:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>{''.join(self.html)}</body></html>\n")


def _fmt(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number.is_integer() and "." not in str(value):
        return str(value)
    return f"{number:.3f}"


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(read_text(path, path.name))))


def build_report(workdir: Path, out_dir: Path) -> Report:
    w = workdir
    rep = Report(w, out_dir)
    rep.heading("Dataset")
    if (w / "index/stats.csv").is_file():
        stats = read_csv(w / "index/stats.csv")
        rep.table([r for r in stats if r["group"] == "class"], ["value", "items"])
        rep.text(f"{sum(r['group'] == 'subject' for r in stats)} subjects; excluded files: "
                 f"{len(read_csv(w / 'index/excluded.csv'))} (see index/excluded.csv)")
    rep.image(w / "index/lengths.png", "Frame lengths (paper 000 Figure 1)")
    if (w / "split/splits.json").is_file():
        rep.heading("Subject-independent split")
        splits = json.loads((w / "split/splits.json").read_text())
        rows = [{"part": "test", "subjects": " ".join(splits["subjects"]["test"]),
                 "items": len(splits["items"]["test"])}]
        rows += [{"part": f"fold {k}", "subjects": " ".join(s), "items": len(i)}
                 for k, (s, i) in enumerate(zip(splits["subjects"]["folds"],
                                                splits["items"]["folds"]))]
        rep.table(rows)
    if (w / "track/tracks.csv").is_file():
        rep.heading("Detection and tracking")
        tracks = read_csv(w / "track/tracks.csv")
        failed = [r for r in tracks if r["status"] != "done"]
        redetect = sum(int(r["redetections"] or 0) for r in tracks)
        rep.text(f"{len(tracks) - len(failed)} of {len(tracks)} items tracked; "
                 f"{redetect} re-detections.")
        if failed:
            rep.table(failed, ["item_id", "reason"])
        rep.csv_table(w / "track/compare/trackers.csv")
    if (w / "trim/trim.csv").is_file():
        rep.heading("Neutral-frame trimming (thesis Algorithm 1)")
        trims = read_csv(w / "trim/trim.csv")
        statuses = {s: sum(r["status"] == s for r in trims) for s in {r["status"] for r in trims}}
        rep.text(", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
        rep.image(w / "trim/lengths_before_after.png", "Lengths before and after trimming "
                  "(thesis Figure 3.4)")
        for png in sorted((w / "trim/plots").glob("*.png"))[:2]:
            rep.image(png, f"Score curve {png.stem} (thesis Figure 3.3)")
    rep.image(w / "augment/preview.png", "Augmentation preview (thesis Figure 3.8)")
    runs = sorted((w / "cv-train/runs").glob("*/run.json"))
    if runs:
        rep.heading("Cross-validation")
        rep.table([json.loads(p.read_text()) for p in runs],
                  ["run", "model", "folds", "epochs", "cv_epoch", "cv_accuracy", "cv_uar",
                   "optimistic_mean_best_val_accuracy"])
        rep.text("CV accuracy and UAR: mean over folds at one epoch, the mean curve's best. "
                 "The optimistic figure averages each fold's own best epoch.")
        for p in runs:
            rep.image(p.parent / "mean_curve.png", f"{p.parent.name}: mean CV curve")
    if (w / "fuse/fusion_table.csv").is_file():
        rep.heading("Late fusion (thesis Table 3.7)")
        rep.csv_table(w / "fuse/fusion_table.csv", limit=25)
    if (w / "evaluate/summary.csv").is_file():
        rep.heading("Test set")
        rep.csv_table(w / "evaluate/summary.csv")
        for target in read_csv(w / "evaluate/summary.csv"):
            folder = w / "evaluate/targets" / target["target"]
            rep.heading(target["target"], 3)
            rep.csv_table(folder / "per_class.csv")
            rep.image(folder / "confusion.png", "Confusion matrix and normalised "
                      "(thesis Figure 3.12)")
            rep.image(folder / "confidence.png", "Confidence of correct predictions "
                      "(thesis 3.3.2)")
            rep.image(folder / "per_subject.png", "Accuracy per test subject")
            rep.image(folder / "human_per_class.png", "Human ground truth (thesis Figure 3.25)")
            rep.image(folder / "model_vs_human.png", "Model vs human per class")
            rep.text("Misclassified items (thesis Figure 3.29):")
            rep.csv_table(folder / "errors.csv")
    return rep


def write_report(workdir: Path, out_dir: Path | None = None) -> tuple[Path, Path, int]:
    """Write report.html and report.md; returns their paths and the number of figures."""
    out_dir = out_dir or layout.report_dir(workdir)
    rep = build_report(workdir, out_dir)
    title = f"fercli report: {workdir}"
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, rep.render_html(title))
    atomic_write_text(md_path, f"# {title}\n" + "\n".join(rep.md) + "\n")
    return html_path, md_path, len(rep.images)
