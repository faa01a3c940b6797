"""Figures the stages write next to their outputs (PNG via matplotlib's Agg renderer).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot:
no display is needed, no global figure registry grows over a thousand-item run, and a figure
is freed as soon as it goes out of scope.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
