"""Evaluation of a model's test-set softmax, and of human annotators on the same items.

Input is the probabilities CSV the training stages write (``name,item,subject,label,pred,
<class 1>,...,<class C>``, one row per test item, class columns in classes.json order).
The prediction is the argmax of the stored scores; on a tie the class listed first wins,
the rule of thesis 3.2.3 (``np.argmax`` returns the first maximum).

Model metrics follow thesis 3.3.2: accuracy, per-class precision/recall/F1 (Table 3.5),
the confusion matrix in counts and row-normalised (Figures 3.12 and 3.28), the confidence
of correct predictions per class, and the table of every misclassified item with all its
class scores (Figure 3.29). Human ground truth follows thesis 3.3.1 (Figure 3.25): every
annotator's accuracy per class, and the model set beside it.
"""
from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ArtifactError, InputError
from ..core.workspace import atomic_write_json, read_text, write_csv

ID_COLUMNS = ("name", "item", "subject", "label", "pred")
# Stored scores are rounded (6 decimals) float32 softmax outputs; a row whose sum is
# further than this from 1 holds logits, a missing class, or shifted columns.
SUM_TOLERANCE = 1e-2
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class Probabilities:
    """Softmax scores of N items over C classes, with who and what each item is."""

    names: list[str]
    items: list[str]
    subjects: list[str]
    labels: np.ndarray  # (N,) int, index into the class list
    probs: np.ndarray  # (N, C) float

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.probs.ndim != 2 or len(self.probs) != n or \
                not len(self.names) == len(self.items) == len(self.subjects) == n:
            raise ValueError(f"inconsistent lengths: {len(self.names)} names, "
                             f"{len(self.items)} items, {len(self.subjects)} subjects, "
                             f"{n} labels, probs of shape {self.probs.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predictions(self) -> np.ndarray:
        """Argmax per row; on a tie the first class wins (thesis 3.2.3)."""
        return np.argmax(self.probs, axis=1)

    @property
    def confidences(self) -> np.ndarray:
        """Score of the predicted class (the maximum softmax value) per row."""
        return self.probs.max(axis=1)


# --------------------------------------------------------------------------- probabilities
def load_probabilities(path: str | Path, classes: Sequence[str]) -> Probabilities:
    """Read and check a probabilities CSV; any defect is a one-line ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError("probabilities file is missing", path=path,
                            hint="Run the training stage that writes it first")
    rows = list(csv.reader(io.StringIO(read_text(path, "probabilities file"))))
    if not rows:
        raise ArtifactError("probabilities file is empty", path=path,
                            hint="Delete it and re-run the stage that writes it")
    header, body = rows[0], rows[1:]
    missing = [column for column in ID_COLUMNS if column not in header]
    if missing:
        raise ArtifactError(f"missing column(s) {', '.join(missing)}", path=path,
                            hint=f"The header must be {','.join(ID_COLUMNS)},<classes>")
    class_columns = [column for column in header if column not in ID_COLUMNS]
    if class_columns != list(classes):
        raise ArtifactError(f"class columns {class_columns} do not match the classes "
                            f"{list(classes)}", path=path,
                            hint="Evaluate it with the classes.json of the run that wrote it")
    if not body:
        raise ArtifactError("probabilities file has no rows", path=path,
                            hint="Re-run the stage that writes it")
    at = {column: header.index(column) for column in header}
    class_index = {name: i for i, name in enumerate(classes)}
    names, items, subjects, labels, probs = [], [], [], [], []
    for line, row in enumerate(body, start=2):
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise ArtifactError(f"{len(row)} fields, the header has {len(header)}", path=where,
                                hint="The file is truncated or edited; re-run its stage")
        scores = _parse_scores([row[at[c]] for c in classes], where)
        label, pred = row[at["label"]], row[at["pred"]]
        for column, value in (("label", label), ("pred", pred)):
            if value not in class_index:
                raise ArtifactError(f"{column} {value!r} is not one of {list(classes)}",
                                    path=where, hint="Check classes.json against the file")
        if scores[class_index[pred]] < scores.max():
            raise ArtifactError(f"pred {pred!r} is not the class with the highest score",
                                path=where, hint="The class columns are out of order; "
                                "re-run the stage that wrote the file")
        names.append(row[at["name"]])
        items.append(row[at["item"]])
        subjects.append(row[at["subject"]])
        labels.append(class_index[label])
        probs.append(scores)
    return Probabilities(names, items, subjects, np.asarray(labels, dtype=np.int64),
                         np.asarray(probs, dtype=np.float64))


def _parse_scores(cells: list[str], where: str) -> np.ndarray:
    try:
        scores = np.asarray([float(cell) for cell in cells], dtype=np.float64)
    except ValueError:
        raise ArtifactError(f"a class score is not a number: {cells}", path=where,
                            hint="Re-run the stage that wrote the file") from None
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ArtifactError(f"class scores must lie in [0, 1], got {cells}", path=where,
                            hint="The file must hold softmax outputs, not logits")
    if abs(scores.sum() - 1) > SUM_TOLERANCE:
        raise ArtifactError(f"class scores sum to {scores.sum():.4f}, not 1", path=where,
                            hint="The file must hold softmax outputs over all classes")
    return scores


def save_probabilities(p: Probabilities, path: str | Path, classes: Sequence[str]) -> Path:
    """Write ``p`` in the CSV format the training stages use (atomically)."""
    _check_classes(p, classes)
    rows = [[name, item, subject, classes[label], classes[pred],
             *(f"{score:.{SCORE_DECIMALS}f}" for score in scores)]
            for name, item, subject, label, pred, scores in
            zip(p.names, p.items, p.subjects, p.labels, p.predictions, p.probs)]
    write_csv(path, [*ID_COLUMNS, *classes], rows)
    return Path(path)


# --------------------------------------------------------------------------- model metrics
def unweighted_average_recall(y_true, y_pred, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (UAR = balanced accuracy)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in range(n_classes)
               if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def evaluate(p: Probabilities, classes: Sequence[str]) -> dict[str, Any]:
    """Every model metric of thesis 3.3.2 as plain JSON-ready Python values.

    ``uar`` (unweighted average recall) is scikit-learn's balanced accuracy, i.e. the
    macro average of per-class recall over the classes present in the labels.
    ``weighted_recall`` is recall averaged with class support as weights, which equals
    accuracy by construction; it is reported because FER papers quote it under that name.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
        recall_score,
    )

    _check_classes(p, classes)
    y_true, y_pred = p.labels, p.predictions
    labels = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        uar = balanced_accuracy_score(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "n": len(p),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uar": float(uar),
        "weighted_recall": float(recall_score(y_true, y_pred, labels=labels,
                                              average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "per_class": _plain(classification_report(
            y_true, y_pred, labels=labels, target_names=list(classes), output_dict=True,
            zero_division=0)),
        "confusion": matrix.tolist(),
        "confusion_normalized": _row_normalized(matrix).tolist(),
        "per_subject": subject_accuracy(p),
        "confidence": correct_confidence(p, classes),
        "errors": error_table(p, classes),
    }


def _row_normalized(matrix: np.ndarray) -> np.ndarray:
    """Each row as shares of its true class; a class absent from the labels stays 0."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def subject_accuracy(p: Probabilities) -> dict[str, dict[str, Any]]:
    """Accuracy per subject, to spot people whose expressions the model misreads."""
    correct = p.predictions == p.labels
    result = {}
    for subject in sorted(set(p.subjects)):
        mask = np.asarray(p.subjects) == subject
        n, hits = int(mask.sum()), int(correct[mask].sum())
        result[subject] = {"n": n, "correct": hits, "accuracy": hits / n}
    return result


def correct_confidence(p: Probabilities, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Max softmax score of the correctly predicted items of each class (thesis 3.3.2)."""
    correct = p.predictions == p.labels
    result = {}
    for index, name in enumerate(classes):
        values = np.sort(p.confidences[correct & (p.labels == index)])
        result[name] = {"values": values.tolist(), "n": len(values),
                        "mean": float(values.mean()) if len(values) else None,
                        "median": float(np.median(values)) if len(values) else None}
    return result


def error_table(p: Probabilities, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Every misclassified item with all class scores, sorted by true class then name
    (thesis Figure 3.29)."""
    predictions = p.predictions
    wrong = np.flatnonzero(predictions != p.labels)
    order = sorted(wrong, key=lambda i: (p.labels[i], p.names[i]))
    return [{"name": p.names[i], "item": p.items[i], "subject": p.subjects[i],
             "label": classes[p.labels[i]], "pred": classes[predictions[i]],
             "confidence": float(p.probs[i, predictions[i]]),
             "scores": dict(zip(classes, map(float, p.probs[i])))} for i in order]


def write_evaluation(result: Mapping[str, Any], classes: Sequence[str], out_dir: str | Path,
                     title: str) -> list[Path]:
    """metrics.json, the tables as CSV and the figures, each written atomically."""
    from ..reporting.plots import plot_confidence, plot_confusion, plot_subject_accuracy

    out = Path(out_dir)
    atomic_write_json(out / "metrics.json", result)
    per_class = result["per_class"]
    write_csv(out / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
               [[name, *(_round(per_class[name][k]) for k in ("precision", "recall",
                                                              "f1-score")),
                 int(per_class[name]["support"])]
                for name in [*classes, "macro avg", "weighted avg"]]
               + [["accuracy", "", "", _round(result["accuracy"]), result["n"]]])
    corner = "true\\predicted"
    write_csv(out / "confusion.csv", [corner, *classes],
               [[name, *row] for name, row in zip(classes, result["confusion"])])
    write_csv(out / "confusion_normalized.csv", [corner, *classes],
               [[name, *map(_round, row)]
                for name, row in zip(classes, result["confusion_normalized"])])
    write_csv(out / "per_subject.csv", ["subject", "n", "correct", "accuracy"],
               [[subject, v["n"], v["correct"], _round(v["accuracy"])]
                for subject, v in result["per_subject"].items()])
    write_csv(out / "errors.csv", ["name", "item", "subject", "label", "pred", "confidence",
                                    *classes],
               [[e["name"], e["item"], e["subject"], e["label"], e["pred"],
                 _round(e["confidence"]), *(_round(e["scores"][c]) for c in classes)]
                for e in result["errors"]])
    write_csv(out / "confidence.csv", ["class", "n", "mean", "median", "values"],
               [[name, v["n"], _round(v["mean"]), _round(v["median"]),
                 " ".join(f"{x:.4f}" for x in v["values"])]
                for name, v in result["confidence"].items()])
    figures = [
        plot_confusion(np.asarray(result["confusion"]), classes, out / "confusion.png",
                       title),
        plot_confidence({c: v["values"] for c, v in result["confidence"].items()},
                        out / "confidence.png", f"{title}: confidence of correct predictions"),
        plot_subject_accuracy(result["per_subject"], out / "per_subject.png",
                              f"{title}: accuracy per subject", overall=result["accuracy"]),
    ]
    tables = ["metrics.json", "per_class.csv", "confusion.csv", "confusion_normalized.csv",
              "per_subject.csv", "errors.csv", "confidence.csv"]
    return [out / name for name in tables] + figures


# --------------------------------------------------------------------------- human ground truth
def _lower(label: str) -> str:
    return label.strip().lower()


def load_human_annotations(
    path: str | Path,
    classes: Sequence[str],
    canonical: Callable[[str], str] = _lower,
    known: Collection[str] | None = None,
) -> dict[str, dict[str, str]]:
    """Annotations as ``{item or name: {annotator: class}}`` (thesis 3.3.1).

    Two layouts are read: long, one row per annotation with columns ``item,annotator,label``;
    and wide, ``item,<annotator 1>,<annotator 2>,...`` with an empty cell where an annotator
    skipped the item. The first column may also be called ``name``. Commas, semicolons and
    tabs are accepted as separators (spreadsheet exports differ). Labels pass through
    ``canonical`` and must then be one of ``classes``; with ``known`` given, every item must
    be in it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("human annotation file not found", path=path,
                         hint="Give the path of a CSV with columns item,annotator,label")
    text = path.read_text(encoding="utf-8-sig")
    rows = [row for row in csv.reader(io.StringIO(text), _dialect(text))]
    if not rows:
        raise InputError("human annotation file is empty", path=path,
                         hint="Add a header item,annotator,label and one row per annotation")
    header = [column.strip() for column in rows[0]]
    lowered = [column.lower() for column in header]
    if not lowered or lowered[0] not in ("item", "name"):
        raise InputError(f"the first column is {header[0]!r}, not 'item'", path=path,
                         hint="Use item,annotator,label or item,<annotator>,<annotator>,...")
    long_format = lowered == [lowered[0], "annotator", "label"]
    if not long_format and len(set(header[1:])) != len(header) - 1:
        raise InputError("annotator columns repeat a name", path=path,
                         hint="Give every annotator a column of its own")
    annotations: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise InputError(f"{len(row)} fields, the header has {len(header)}", path=where,
                             hint="Fix the row so every column has a cell")
        item = row[0].strip()
        if known is not None and item not in known:
            raise InputError(f"item {item!r} is not in the evaluated set", path=where,
                             hint="Use the item or name column of the probabilities file")
        pairs = [(row[1].strip(), row[2])] if long_format else list(zip(header[1:], row[1:]))
        for annotator, raw in pairs:
            if not long_format and not raw.strip():
                continue
            label = canonical(raw)
            if label not in classes:
                raise InputError(f"label {raw!r} is not one of {list(classes)}", path=where,
                                 hint="Correct the label or map it in the canonical function")
            given = annotations.setdefault(item, {})
            if annotator in given:
                raise InputError(f"annotator {annotator!r} labels item {item!r} twice",
                                 path=where, hint="Keep one annotation per annotator and item")
            given[annotator] = label
    if not annotations:
        raise InputError("human annotation file has no annotations", path=path,
                         hint="Add one row per annotation under the header")
    return annotations


def _dialect(text: str) -> type[csv.Dialect]:
    """Separator guessed from the header line; plain CSV when the guess fails."""
    try:
        return csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except (csv.Error, IndexError):
        return csv.excel


def human_evaluation(annotations: Mapping[str, Mapping[str, str]], p: Probabilities,
                     classes: Sequence[str]) -> dict[str, Any]:
    """Human accuracy per class and annotator beside the model on the same items.

    True labels are the dataset's (``p.labels``); the model's recall is computed on the
    annotated items only, so both sides see the same videos. The human majority of an
    item is the most frequent label, ties going to the class listed first (as the model's
    argmax). ``class_median_mean`` is the mean over classes of the median annotator
    accuracy, the summary thesis 3.3.1 reports (67.8%).
    """
    rows = _annotated_rows(annotations, p)
    predictions = p.predictions
    index = {name: i for i, name in enumerate(classes)}
    annotators = sorted({a for given in rows.values() for a in given})
    hits = {a: np.zeros(len(classes), int) for a in annotators}
    seen = {a: np.zeros(len(classes), int) for a in annotators}
    majority_hits = model_agrees = 0
    hard_items = []
    for row, given in rows.items():
        true = int(p.labels[row])
        votes = np.bincount([index[label] for label in given.values()],
                            minlength=len(classes))
        for annotator, label in given.items():
            seen[annotator][true] += 1
            hits[annotator][true] += label == classes[true]
        majority = int(np.argmax(votes))
        majority_hits += majority == true
        model_agrees += majority == predictions[row]
        if votes[true] * 2 < votes.sum():
            hard_items.append({
                "name": p.names[row], "item": p.items[row], "label": classes[true],
                "human_correct": votes[true] / votes.sum(), "human_majority": classes[majority],
                "pred": classes[predictions[row]],
                "votes": {classes[c]: int(v) for c, v in enumerate(votes) if v}})
    annotated = np.fromiter(rows, dtype=np.int64)
    per_annotator = {a: {"n": int(seen[a].sum()), "accuracy": hits[a].sum() / seen[a].sum(),
                         "per_class": {c: (hits[a][k] / seen[a][k] if seen[a][k] else None)
                                       for k, c in enumerate(classes)}}
                     for a in annotators}
    per_class = {}
    for k, name in enumerate(classes):
        of_class = annotated[p.labels[annotated] == k]
        scores = [v["per_class"][name] for v in per_annotator.values()
                  if v["per_class"][name] is not None]
        n_annotations = sum(int(seen[a][k]) for a in annotators)
        per_class[name] = {
            "n_items": len(of_class), "n_annotations": n_annotations,
            "human": sum(int(hits[a][k]) for a in annotators) / n_annotations
            if n_annotations else None,
            "human_median": float(np.median(scores)) if scores else None,
            "model_recall": float(np.mean(predictions[of_class] == k)) if len(of_class)
            else None}
    medians = [v["human_median"] for v in per_class.values() if v["human_median"] is not None]
    n_annotations = sum(v["n"] for v in per_annotator.values())
    return _plain({
        "n_items": len(rows), "n_items_evaluated": len(p), "n_annotators": len(annotators),
        "n_annotations": n_annotations,
        "accuracy": sum(int(h.sum()) for h in hits.values()) / n_annotations,
        "mean_annotator_accuracy": float(np.mean([v["accuracy"]
                                                  for v in per_annotator.values()])),
        "class_median_mean": float(np.mean(medians)),
        "majority_accuracy": majority_hits / len(rows),
        "model_accuracy": float(np.mean(predictions[annotated] == p.labels[annotated])),
        "agreement": model_agrees / len(rows),
        "per_class": per_class,
        "per_annotator": per_annotator,
        "hard_items": sorted(hard_items, key=lambda h: (index[h["label"]], h["name"])),
    })


def _annotated_rows(annotations: Mapping[str, Mapping[str, str]],
                    p: Probabilities) -> dict[int, dict[str, str]]:
    """Row of ``p`` for every annotated key (an item id or a name), annotations merged."""
    rows_of: dict[str, set[int]] = {}
    for row, keys in enumerate(zip(p.items, p.names)):
        for key in set(keys):
            rows_of.setdefault(key, set()).add(row)
    unknown = sorted(key for key in annotations if key not in rows_of)
    if unknown:
        raise InputError(f"{len(unknown)} annotated item(s) are not in the evaluated set, "
                         f"e.g. {unknown[:3]}",
                         hint="Annotate by the item or name column of the probabilities file")
    merged: dict[int, dict[str, str]] = {}
    for key, given in annotations.items():
        if len(rows_of[key]) > 1:
            raise InputError(f"annotated key {key!r} matches {len(rows_of[key])} items",
                             hint="Annotate by the item column, which is unique")
        target = merged.setdefault(next(iter(rows_of[key])), {})
        twice = sorted(set(target) & set(given))
        if twice:
            raise InputError(f"{key!r} is annotated twice by {twice} (under its item and its "
                             "name)", hint="Keep one annotation per annotator and item")
        target.update(given)
    return merged


def write_human_evaluation(result: Mapping[str, Any], classes: Sequence[str],
                           out_dir: str | Path, title: str) -> list[Path]:
    """human.json, per-class and per-annotator CSVs, the Figure 3.25 box plot and the
    model-vs-human bar chart, each written atomically."""
    from ..reporting.plots import plot_human_boxes, plot_model_vs_human

    out = Path(out_dir)
    atomic_write_json(out / "human.json", result)
    per_class = result["per_class"]
    write_csv(out / "human_per_class.csv",
               ["class", "n_items", "n_annotations", "human", "human_median", "model_recall"],
               [[c, per_class[c]["n_items"], per_class[c]["n_annotations"],
                 *(_round(per_class[c][k]) for k in ("human", "human_median", "model_recall"))]
                for c in classes])
    per_annotator = result["per_annotator"]
    write_csv(out / "human_per_annotator.csv", ["annotator", "n", "accuracy", *classes],
               [[a, v["n"], _round(v["accuracy"]), *(_round(v["per_class"][c]) for c in classes)]
                for a, v in per_annotator.items()])
    boxes = {c: [v["per_class"][c] for v in per_annotator.values()
                 if v["per_class"][c] is not None] for c in classes}
    figures = [
        plot_human_boxes(boxes, out / "human_per_class.png",
                         f"{title}: human accuracy per class ({result['n_annotators']} "
                         "annotators)"),
        plot_model_vs_human(classes, [per_class[c]["model_recall"] for c in classes],
                            [per_class[c]["human"] for c in classes],
                            out / "model_vs_human.png", f"{title}: model vs human"),
    ]
    return [out / "human.json", out / "human_per_class.csv",
            out / "human_per_annotator.csv"] + figures


# --------------------------------------------------------------------------- helpers
def _check_classes(p: Probabilities, classes: Sequence[str]) -> None:
    if p.probs.shape[1] != len(classes):
        raise ValueError(f"{p.probs.shape[1]} score columns for {len(classes)} classes")


def _round(value: float | None) -> float | str:
    """Four decimals for tables; an empty cell where there is no value."""
    return "" if value is None else round(float(value), 4)


def _plain(value: Any) -> Any:
    """NumPy scalars and containers turned into JSON-ready Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

