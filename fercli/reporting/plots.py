"""Figures the stages write next to their outputs (PNG via matplotlib's Agg renderer).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot:
no display is needed, no global figure registry grows over a thousand-item run, and a figure
is freed as soon as it goes out of scope.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fercli.vision.trim import TrimResult

_NICE_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_MAX_AUTO_GROUPS = 10


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg, independent of pyplot and of any display."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` atomically: a reader never sees a half-written image.

    The format follows the suffix; the image is rendered to a hidden temporary name in the
    same folder and renamed over ``path`` (``os.replace`` is atomic on one filesystem).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def plot_score_curve(
    scores: Sequence[float], result: TrimResult, title: str, path: str | Path
) -> Path:
    """Per-frame score with the threshold and the kept range, like thesis Figure 3.3."""
    values = np.asarray(scores, dtype=np.float64)
    if not 0 <= result.first <= result.last < len(values):
        raise ValueError(f"kept range {result.first}-{result.last} does not fit "
                         f"{len(values)} scores")
    frames = np.arange(len(values))
    figure = new_figure(8, 3.6)
    axes = figure.add_subplot()
    n_kept = result.last - result.first + 1
    axes.axvspan(result.first - 0.5, result.last + 0.5, color="tab:green", alpha=0.12,
                 label=f"kept {result.first}-{result.last} ({n_kept} frames)")
    cut = (frames < result.first) | (frames > result.last)
    if cut.any():
        for start, stop in ((-0.5, result.first - 0.5), (result.last + 0.5, len(values) - 0.5)):
            if stop > start:
                axes.axvspan(start, stop, color="0.6", alpha=0.25, hatch="//", linewidth=0)
        axes.plot(frames[cut], values[cut], "x", color="tab:red", markersize=4,
                  label=f"cut (start {result.n_cut_start}, end {result.n_cut_end})")
    axes.plot(frames, values, color="tab:blue", linewidth=1.4, label="score")
    if result.threshold is not None:
        axes.axhline(result.threshold, color="tab:orange", linestyle="--", linewidth=1.2,
                     label=f"threshold {result.threshold:.3g}")
    peak = int(np.argmax(values))
    axes.plot(peak, values[peak], "*", color="black", markersize=9,
              label=f"max {values[peak]:.3g} at frame {peak}")
    axes.set_xlim(-0.5, len(values) - 0.5)
    axes.set_xlabel("frame")
    axes.set_ylabel("score")
    axes.set_title(f"{title} ({result.status})")
    axes.legend(loc="best", fontsize="small", framealpha=0.9)
    return save_figure(figure, path)


def plot_lengths(
    lengths: Mapping[str, int] | Sequence[int],
    path: str | Path,
    title: str = "Frame length per video",
    bins: Sequence[int] | None = None,
) -> Path:
    """Clip lengths: (a) sorted ascending, (b) counts per length group (paper 000 Fig. 1).

    ``bins`` are the group edges (paper 000 used 100, 110, 115, 120); by default ten or
    fewer groups of a round width that spans the data.
    """
    values = _length_values(lengths)
    edges = _group_edges(values, bins)
    labels, counts = _length_groups(values, edges)
    figure = new_figure(11, 4)
    sorted_axes, groups_axes = figure.subplots(1, 2)
    ranks = np.arange(1, len(values) + 1)
    sorted_axes.fill_between(ranks, np.sort(values), step="mid", color="tab:blue", alpha=0.3)
    sorted_axes.plot(ranks, np.sort(values), drawstyle="steps-mid", color="tab:blue")
    sorted_axes.set_title("(a) frame length, sorted")
    sorted_axes.set_xlabel("video (sorted by length)")
    sorted_axes.set_ylabel("frames")
    sorted_axes.text(0.03, 0.95, _summary(values), transform=sorted_axes.transAxes,
                     va="top", fontsize="small")
    bars = groups_axes.bar(labels, counts, color="tab:blue")
    groups_axes.bar_label(bars, fontsize="small")
    _style_groups_axes(groups_axes)
    figure.suptitle(title)
    return save_figure(figure, path)


def plot_lengths_before_after(
    before: Sequence[int],
    after: Sequence[int],
    path: str | Path,
    title: str = "Frame length before and after trimming",
    bins: Sequence[int] | None = None,
) -> Path:
    """Clip lengths before vs after cutting neutral frames, like thesis Figure 3.4."""
    before_values = _length_values(before)
    after_values = _length_values(after)
    edges = _group_edges(np.concatenate([before_values, after_values]), bins)
    labels, before_counts = _length_groups(before_values, edges)
    _, after_counts = _length_groups(after_values, edges)
    figure = new_figure(11, 4)
    sorted_axes, groups_axes = figure.subplots(1, 2)
    for values, name, colour in ((before_values, "before", "tab:gray"),
                                 (after_values, "after", "tab:blue")):
        ranks = np.arange(1, len(values) + 1)
        sorted_axes.plot(ranks, np.sort(values), drawstyle="steps-mid", color=colour,
                         label=f"{name}: {_summary(values)}")
    sorted_axes.set_title("(a) frame length, sorted")
    sorted_axes.set_xlabel("video (sorted by length)")
    sorted_axes.set_ylabel("frames")
    sorted_axes.legend(loc="upper left", fontsize="small")
    positions = np.arange(len(labels))
    width = 0.4
    for offset, counts, name, colour in ((-width / 2, before_counts, "before", "tab:gray"),
                                         (width / 2, after_counts, "after", "tab:blue")):
        bars = groups_axes.bar(positions + offset, counts, width, color=colour, label=name)
        groups_axes.bar_label(bars, fontsize="x-small")
    groups_axes.set_xticks(positions, labels)
    groups_axes.legend(fontsize="small")
    _style_groups_axes(groups_axes)
    figure.suptitle(title)
    return save_figure(figure, path)


def _length_values(lengths: Mapping[str, int] | Sequence[int]) -> np.ndarray:
    values = np.asarray(list(lengths.values() if isinstance(lengths, Mapping) else lengths),
                        dtype=np.int64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("no clip lengths to plot")
    return values


def _group_edges(values: np.ndarray, bins: Sequence[int] | None) -> list[int]:
    """Group boundaries: the given ones, or multiples of a round step inside the data range."""
    if bins is not None:
        edges = [int(edge) for edge in bins]
        if any(b <= a for a, b in pairwise(edges)):
            raise ValueError(f"bins must be strictly increasing, got {edges}")
        return edges
    low, high = int(values.min()), int(values.max())
    step = next((s for s in _NICE_STEPS if (high - low) / s <= _MAX_AUTO_GROUPS),
                _NICE_STEPS[-1])
    return list(range((low // step + 1) * step, high + 1, step))


def _length_groups(values: np.ndarray, edges: list[int]) -> tuple[list[str], list[int]]:
    """Labels ``<e0``, ``e0-e1``, ..., ``>=ek`` (inclusive integer ranges) and counts."""
    if not edges:
        return ["all"], [len(values)]
    labels = [f"<{edges[0]}"]
    labels += [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in pairwise(edges)]
    labels.append(f"≥{edges[-1]}")
    groups = np.searchsorted(edges, values, side="right")
    return labels, np.bincount(groups, minlength=len(labels)).tolist()


def _style_groups_axes(axes) -> None:
    axes.set_title("(b) frame length in groups")
    axes.set_xlabel("frames")
    axes.set_ylabel("videos")
    axes.tick_params(axis="x", labelrotation=30)
    axes.margins(y=0.12)


def _summary(values: np.ndarray) -> str:
    return f"n={len(values)}, min {values.min()}, mean {values.mean():.1f}, max {values.max()}"


def plot_cv_curves(mean: Sequence[Mapping], folds: Sequence[Sequence[Mapping]],
                   path: str | Path, title: str) -> Path:
    """Accuracy and loss per epoch: each fold thin, the epoch-wise mean over folds bold
    (the thesis reports CV results as this mean curve, 3.2.3)."""
    figure = new_figure(10, 3.8)
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        for kind, colour in (("", "tab:blue"), ("val_", "tab:orange")):
            key = f"{kind}{metric}"
            for history in folds:
                epochs = [row["epoch"] for row in history if key in row]
                axes.plot(epochs, [row[key] for row in history if key in row], color=colour,
                          alpha=0.25, linewidth=0.8)
            epochs = [row["epoch"] for row in mean if key in row]
            axes.plot(epochs, [row[key] for row in mean if key in row], color=colour,
                      linewidth=2, label=f"{'validation' if kind else 'train'} (mean)")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
    figure.suptitle(title)
    return save_figure(figure, path)


# --------------------------------------------------------------------------- evaluation figures
def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path,
                   title: str) -> Path:
    """Confusion matrix in counts and row-normalised, side by side with every cell written
    in (thesis Figures 3.12 and 3.28); rows are the true class."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = 2.2 + 0.62 * len(classes)
    figure = new_figure(2 * side + 0.8, side)
    for axes, values, fmt, heading, top in zip(
            figure.subplots(1, 2), (counts, shares), ("{:d}", "{:.2f}"),
            ("counts", "normalised (share of true class)"),
            (max(int(counts.max()), 1), 1.0)):
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=top)
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
        axes.set_yticks(range(len(classes)), [f"{c} ({n})" for c, n in
                                              zip(classes, totals[:, 0])])
        axes.set_xlabel("predicted")
        axes.set_ylabel("true (n)")
        axes.set_title(heading)
        for (row, col), value in np.ndenumerate(values):
            axes.text(col, row, fmt.format(value), ha="center", va="center", fontsize=9,
                      color="white" if value > top / 2 else "black")
    figure.suptitle(f"{title} (accuracy {np.trace(counts) / max(counts.sum(), 1):.1%})")
    return save_figure(figure, path)


def _percent(value: float, _position: int) -> str:
    """Tick label of a 0-1 share as a percentage."""
    return f"{value:.0%}"


def _class_boxes(axes, values: Mapping[str, Sequence[float]]) -> None:
    """One box per class with every point jittered on top (so no separate outlier marks);
    ``n`` under every class name."""
    names = list(values)
    data = [np.asarray(values[name], dtype=np.float64) for name in names]
    filled = [i for i, column in enumerate(data) if len(column)]
    if filled:
        parts = axes.boxplot([data[i] for i in filled], positions=filled, widths=0.55,
                             showmeans=True, showfliers=False,
                             medianprops={"color": "tab:orange", "linewidth": 2},
                             meanprops={"marker": "^", "markerfacecolor": "tab:green",
                                        "markeredgecolor": "tab:green", "markersize": 6})
        parts["medians"][0].set_label("median")
        parts["means"][0].set_label("mean")
        axes.legend(loc="lower left", fontsize="x-small")
    jitter = np.random.default_rng(0)
    for i, column in enumerate(data):
        axes.plot(i + jitter.uniform(-0.12, 0.12, len(column)), column, "o",
                  color="tab:blue", alpha=0.45, markersize=3.5)
    axes.set_xticks(range(len(names)), [f"{name}\nn={len(column)}"
                                        for name, column in zip(names, data)])
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.grid(axis="y", alpha=0.3)


def plot_confidence(values: Mapping[str, Sequence[float]], path: str | Path,
                    title: str) -> Path:
    """Max softmax score of the correct predictions of each class (thesis 3.3.2 lists them)."""
    figure = new_figure(1.6 + 1.1 * len(values), 4.2)
    axes = figure.add_subplot()
    _class_boxes(axes, values)
    axes.set_ylim(0, 1.04)
    axes.set_ylabel("confidence (max softmax)")
    axes.set_title(title)
    return save_figure(figure, path)


def plot_subject_accuracy(per_subject: Mapping[str, Mapping], path: str | Path, title: str,
                          overall: float | None = None) -> Path:
    """Accuracy of each test subject as bars labelled correct/n, with the overall line."""
    subjects = list(per_subject)
    accuracy = [per_subject[s]["accuracy"] for s in subjects]
    figure = new_figure(max(5.0, 1.5 + 0.45 * len(subjects)), 3.8)
    axes = figure.add_subplot()
    bars = axes.bar(subjects, accuracy, color="tab:blue")
    axes.bar_label(bars, [f"{per_subject[s]['correct']}/{per_subject[s]['n']}"
                          for s in subjects], fontsize="x-small")
    if overall is not None:
        axes.axhline(overall, color="tab:orange", linestyle="--",
                     label=f"overall {overall:.1%}")
        axes.legend(loc="lower right", fontsize="small")
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("accuracy")
    axes.set_xlabel("subject")
    axes.tick_params(axis="x", labelrotation=60 if len(subjects) > 12 else 0)
    axes.set_title(title)
    return save_figure(figure, path)


def plot_human_boxes(values: Mapping[str, Sequence[float]], path: str | Path,
                     title: str) -> Path:
    """Per-annotator accuracy of each class as box plots (thesis Figure 3.25); the median
    of every box is written beside it."""
    figure = new_figure(1.6 + 1.1 * len(values), 4.4)
    axes = figure.add_subplot()
    _class_boxes(axes, values)
    for i, column in enumerate(values.values()):
        if len(column):
            median = float(np.median(column))
            axes.annotate(f"{median:.0%}", (i + 0.3, median), fontsize="x-small",
                          va="center", color="tab:orange")
    axes.set_ylim(-0.03, 1.05)
    axes.yaxis.set_major_formatter(_percent)
    axes.set_ylabel("accuracy per annotator")
    axes.set_title(title)
    return save_figure(figure, path)


def plot_model_vs_human(classes: Sequence[str], model: Sequence[float | None],
                        human: Sequence[float | None], path: str | Path, title: str) -> Path:
    """Model recall beside pooled human accuracy for each class (thesis 3.3.2 compares them)."""
    positions = np.arange(len(classes))
    width = 0.4
    figure = new_figure(1.6 + 1.1 * len(classes), 4.2)
    axes = figure.add_subplot()
    for offset, values, name, colour in ((-width / 2, model, "model (recall)", "tab:blue"),
                                         (width / 2, human, "human (all annotations)",
                                          "tab:gray")):
        heights = [np.nan if v is None else v for v in values]
        bars = axes.bar(positions + offset, heights, width, color=colour, label=name)
        axes.bar_label(bars, ["" if v is None else f"{v:.0%}" for v in values],
                       fontsize="x-small")
    axes.set_xticks(positions, classes)
    axes.set_ylim(0, 1.12)
    axes.yaxis.set_major_formatter(_percent)
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left", fontsize="small", ncols=2)
    axes.set_title(title)
    return save_figure(figure, path)


# --------------------------------------------------------------------------- prediction figures
@dataclass(frozen=True)
class PersonTimeline:
    """One person's windows: start and end times, (N, classes) probabilities (NaN where a
    window had no prediction) and labels (None there)."""

    name: str
    starts: Sequence[float]
    ends: Sequence[float]
    probabilities: np.ndarray
    labels: Sequence[str | None]


def plot_prediction_timeline(persons: Sequence[PersonTimeline], classes: Sequence[str],
                             path: str | Path, title: str) -> Path:
    """Per-window class probabilities over time (one line per class, broken where a window
    had no face) above a strip of the predicted labels, like seed 004's per-video emotion
    analyses (Figures 3-4); one such pair of panels per person, on one time axis. Each strip
    cell runs from a window's start to the next one's, so overlapping windows do not hide
    each other; windows without a face stay grey."""
    colours = {name: f"C{i % 10}" for i, name in enumerate(classes)}
    longest = max((len(p.starts) for p in persons), default=0)
    figure = new_figure(max(8.0, min(18.0, 4 + 0.08 * longest)), 0.6 + 4.0 * len(persons))
    panels = figure.subplots(2 * len(persons), 1, sharex=True, squeeze=False,
                             height_ratios=[4, 1] * len(persons))[:, 0]
    begin = min((p.starts[0] for p in persons if len(p.starts)), default=0.0)
    finish = max((p.ends[-1] for p in persons if len(p.ends)), default=1.0)
    for index, person in enumerate(persons):
        lines, strip = panels[2 * index], panels[2 * index + 1]
        starts, ends = np.asarray(person.starts, float), np.asarray(person.ends, float)
        values = np.asarray(person.probabilities, np.float64).reshape(len(starts), len(classes))
        middles = (starts + ends) / 2
        for i, name in enumerate(classes):
            lines.plot(middles, values[:, i], color=colours[name], linewidth=1.4, marker=".",
                       markersize=4, label=name)
        lines.set_ylim(0, 1.02)
        lines.set_ylabel("probability")
        lines.grid(alpha=0.3)
        if index == 0:
            lines.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        lines.set_title(f"{title}: {person.name}" if len(persons) > 1 else title)
        cell_ends = np.append(starts[1:], ends[-1]) if len(starts) else ends
        for start, stop, label in zip(starts, cell_ends, person.labels):
            strip.axvspan(start, stop, color=colours[label] if label else "0.85", linewidth=0)
        strip.set_yticks([])
        strip.set_ylabel("label", rotation=0, ha="right", va="center")
    panels[-1].set_xlabel("time (s)")
    panels[-1].set_xlim(begin, finish)
    return save_figure(figure, path)


def plot_prediction_distribution(
        persons: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, float],
                                                    Mapping[str, float]]]]],
        path: str | Path, title: str) -> Path:
    """Share of windows per predicted label beside each label's mean probability: one row
    per person (``(name, groups)``), one panel per label set in a row (``(name, shares,
    mean probabilities)``: the classes, then a mapping such as seed 004's
    positive/neutral/negative)."""
    widest = max(sum(1.5 + 0.7 * len(s) for _, s, _ in groups) for _, groups in persons)
    columns = max(len(groups) for _, groups in persons)
    figure = new_figure(max(5.0, widest), 0.6 + 3.4 * len(persons))
    grid = figure.subplots(len(persons), columns, squeeze=False)
    width = 0.4
    for row, (person, groups) in zip(grid, persons):
        for axes in row[len(groups):]:
            axes.set_visible(False)
        for axes, (name, shares, means) in zip(row, groups):
            labels = list(shares)
            positions = np.arange(len(labels))
            for offset, values, legend, colour in (
                    (-width / 2, [shares[n] for n in labels], "share of windows", "tab:blue"),
                    (width / 2, [means[n] for n in labels], "mean probability", "tab:gray")):
                bars = axes.bar(positions + offset, values, width, color=colour, label=legend)
                axes.bar_label(bars, [f"{v:.0%}" for v in values], fontsize="x-small")
            axes.set_xticks(positions, labels, rotation=30 if len(labels) > 4 else 0)
            axes.set_ylim(0, 1.12)
            axes.yaxis.set_major_formatter(_percent)
            axes.set_title(f"{person}: {name}" if len(persons) > 1 else name)
            axes.legend(loc="upper right", fontsize="x-small")
    figure.suptitle(title)
    return save_figure(figure, path)
