"""Evaluation: every metric checked against scikit-learn computed directly, the tables against
hand counts, the CSV readers against malformed files, the figures as real PNG files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
)

from fercli.core.errors import ArtifactError, InputError
from fercli.learning.evaluation import (
    Probabilities,
    evaluate,
    human_evaluation,
    load_human_annotations,
    load_probabilities,
    save_probabilities,
    write_evaluation,
    write_human_evaluation,
)

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random_probabilities(n_subjects: int = 6, seed: int = 0) -> Probabilities:
    """One clip per subject and class; the true class is boosted in about 60% of rows,
    so there are hits and misses in every class."""
    rng = np.random.default_rng(seed)
    subjects = [f"{'FM'[s % 2]}{s + 1:03d}" for s in range(n_subjects)]
    rows = [(s, c) for s in subjects for c in range(len(CLASSES))]
    probs = []
    for _ in rows:
        alpha = np.full(len(CLASSES), 0.6)
        probs.append(rng.dirichlet(alpha))
    probs = np.asarray(probs)
    labels = np.asarray([c for _, c in rows])
    boost = rng.random(len(rows)) < 0.6
    probs[boost, labels[boost]] += 2.0
    probs /= probs.sum(axis=1, keepdims=True)
    names = [f"{s}_{CLASSES[c]}" for s, c in rows]
    return Probabilities(names, [f"{name}_0" for name in names], [s for s, _ in rows],
                         labels, probs)


def _hand_probabilities() -> Probabilities:
    """Four rows over three classes; row 2 is a tie between 'angry' and 'happy'."""
    return Probabilities(
        names=["F001_angry", "F001_happy", "M002_sad", "M002_happy"],
        items=["a1", "h1", "s1", "h2"],
        subjects=["F001", "F001", "M002", "M002"],
        labels=np.array([0, 1, 2, 1]),
        probs=np.array([[0.2, 0.1, 0.7],
                        [0.05, 0.9, 0.05],
                        [0.1, 0.1, 0.8],
                        [0.45, 0.45, 0.1]]))


HAND_CLASSES = ["angry", "happy", "sad"]


def test_metrics_equal_scikit_learn():
    p = _random_probabilities()
    result = evaluate(p, CLASSES)
    y_true, y_pred = p.labels, p.probs.argmax(axis=1)
    assert 0 < result["accuracy"] < 1
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["uar"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert result["weighted_recall"] == pytest.approx(
        recall_score(y_true, y_pred, average="weighted"))
    assert result["confusion"] == confusion_matrix(y_true, y_pred).tolist()
    np.testing.assert_allclose(result["confusion_normalized"],
                               confusion_matrix(y_true, y_pred, normalize="true"))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(len(CLASSES)), zero_division=0)
    for k, name in enumerate(CLASSES):
        row = result["per_class"][name]
        assert (row["precision"], row["recall"], row["f1-score"], row["support"]) == \
            pytest.approx((precision[k], recall[k], f1[k], support[k]))
    assert result["macro_f1"] == pytest.approx(f1.mean())
    assert result["n"] == len(p) == 36
    json.dumps(result)  # plain Python values only


def test_absent_class_counts_zero_in_tables_but_not_in_uar():
    p = _hand_probabilities()
    classes = [*HAND_CLASSES, "fear"]
    p = Probabilities(p.names, p.items, p.subjects, p.labels,
                      np.hstack([p.probs, np.zeros((4, 1))]))
    result = evaluate(p, classes)
    assert result["confusion"][3] == [0, 0, 0, 0]
    assert result["confusion_normalized"][3] == [0, 0, 0, 0]
    assert result["uar"] == pytest.approx(balanced_accuracy_score(p.labels, p.predictions))
    assert result["per_class"]["fear"]["support"] == 0


def test_class_list_must_fit_the_scores(tmp_path: Path):
    with pytest.raises(ValueError, match="3 score columns for 6 classes"):
        evaluate(_hand_probabilities(), CLASSES)
    with pytest.raises(ValueError, match="3 score columns for 2 classes"):
        save_probabilities(_hand_probabilities(), tmp_path / "p.csv", HAND_CLASSES[:2])


def test_argmax_tie_goes_to_the_first_class(tmp_path: Path):
    p = _hand_probabilities()
    assert p.predictions.tolist() == [2, 1, 2, 0]
    path = save_probabilities(p, tmp_path / "probs.csv", HAND_CLASSES)
    assert path.read_text().splitlines()[4].split(",")[4] == "angry"
    assert load_probabilities(path, HAND_CLASSES).predictions[3] == 0


def test_per_subject_accuracy_by_hand():
    per_subject = evaluate(_hand_probabilities(), HAND_CLASSES)["per_subject"]
    assert per_subject == {"F001": {"n": 2, "correct": 1, "accuracy": 0.5},
                           "M002": {"n": 2, "correct": 1, "accuracy": 0.5}}
    p = _random_probabilities()
    per_subject = evaluate(p, CLASSES)["per_subject"]
    for subject, values in per_subject.items():
        rows = [i for i, s in enumerate(p.subjects) if s == subject]
        hits = sum(p.probs[i].argmax() == p.labels[i] for i in rows)
        assert values == {"n": 6, "correct": hits, "accuracy": pytest.approx(hits / 6)}


def test_error_table_holds_exactly_the_misclassified_rows():
    p = _random_probabilities()
    errors = evaluate(p, CLASSES)["errors"]
    wrong = {p.names[i] for i in range(len(p)) if p.probs[i].argmax() != p.labels[i]}
    assert {e["name"] for e in errors} == wrong and len(errors) == len(wrong) > 0
    for e in errors:
        i = p.names.index(e["name"])
        assert (e["item"], e["subject"], e["label"]) == \
            (p.items[i], p.subjects[i], CLASSES[p.labels[i]])
        assert e["pred"] == CLASSES[p.probs[i].argmax()] != e["label"]
        assert e["confidence"] == pytest.approx(p.probs[i].max())
        assert list(e["scores"].values()) == pytest.approx(p.probs[i].tolist())
    keys = [(CLASSES.index(e["label"]), e["name"]) for e in errors]
    assert keys == sorted(keys)


def test_confidence_of_correct_predictions_per_class():
    confidence = evaluate(_hand_probabilities(), HAND_CLASSES)["confidence"]
    assert confidence["angry"] == {"values": [], "n": 0, "mean": None, "median": None}
    assert confidence["happy"]["values"] == [0.9]
    assert confidence["sad"] == {"values": [0.8], "n": 1, "mean": 0.8, "median": 0.8}


def test_save_load_round_trip(tmp_path: Path):
    p = _random_probabilities()
    first = save_probabilities(p, tmp_path / "probs.csv", CLASSES)
    loaded = load_probabilities(first, CLASSES)
    assert (loaded.names, loaded.items, loaded.subjects) == (p.names, p.items, p.subjects)
    assert loaded.labels.tolist() == p.labels.tolist()
    np.testing.assert_allclose(loaded.probs, p.probs, atol=5e-7)
    second = save_probabilities(loaded, tmp_path / "again.csv", CLASSES)
    assert second.read_text() == first.read_text()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["again.csv", "probs.csv"]


HEADER = "name,item,subject,label,pred,angry,happy,sad"
GOOD_ROW = "F001_sad,F001_sad,F001,sad,sad,0.1,0.2,0.7"


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("name,item,label,pred,angry,happy,sad\n" + GOOD_ROW, "missing column(s) subject"),
    ("name,item,subject,label,pred,angry,sad,happy\n" + GOOD_ROW, "do not match the classes"),
    ("name,item,subject,label,pred,angry,happy\n" + GOOD_ROW, "do not match the classes"),
    (HEADER + "\n", "no rows"),
    (HEADER + "\n" + GOOD_ROW + "\nF002_sad,F002_sad,F002,sad,sad,0.1,0.2", ":3: 7 fields"),
    (HEADER + "\nF001_sad,F001_sad,F001,sad,sad,0.1,0.2,0.3", ":2: class scores sum to 0.6"),
    (HEADER + "\nF001_sad,F001_sad,F001,sad,sad,-1.2,0.5,1.7", "must lie in [0, 1]"),
    (HEADER + "\nF001_sad,F001_sad,F001,sad,sad,0.1,x,0.7", "not a number"),
    (HEADER + "\nF001_sad,F001_sad,F001,fear,sad,0.1,0.2,0.7", "label 'fear' is not one"),
    (HEADER + "\nF001_sad,F001_sad,F001,sad,happy,0.1,0.2,0.7", "not the class with the hi"),
])
def test_malformed_probabilities_name_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "test_probs.csv"
    path.write_text(text)
    with pytest.raises(ArtifactError) as caught:
        load_probabilities(path, HAND_CLASSES)
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_probabilities_file(tmp_path: Path):
    with pytest.raises(ArtifactError, match="test_probs.csv: probabilities file is missing"):
        load_probabilities(tmp_path / "test_probs.csv", HAND_CLASSES)


# --------------------------------------------------------------------------- human ground truth
LONG = """item,annotator,label
a1,A,Angry
a1,B,sad
a1,C,sad
h1,A,happy
h1,B,happy
h1,C,HAPPY
s1,A,sad
s1,B,angry
h2,A,happy
h2,B,sad
h2,C,happy
"""
# The same annotations in the wide layout, keyed by name, separated by semicolons, C
# skipping the sad clip (empty cell).
WIDE = """\ufeffname;A;B;C
F001_angry;angry;sad;sad
F001_happy;happy;happy;happy
M002_sad;sad;angry;
M002_happy;happy;sad;happy
"""


def _known(p: Probabilities) -> set[str]:
    return set(p.items) | set(p.names)


def test_human_annotations_long_and_wide_agree(tmp_path: Path):
    p = _hand_probabilities()
    (tmp_path / "long.csv").write_text(LONG)
    (tmp_path / "wide.csv").write_text(WIDE, encoding="utf-8")
    long = load_human_annotations(tmp_path / "long.csv", HAND_CLASSES, known=_known(p))
    wide = load_human_annotations(tmp_path / "wide.csv", HAND_CLASSES, known=_known(p))
    assert long["a1"] == {"A": "angry", "B": "sad", "C": "sad"}
    assert long["s1"] == {"A": "sad", "B": "angry"}
    by_name = dict(zip(p.names, p.items))
    assert {by_name[name]: given for name, given in wide.items()} == long
    assert human_evaluation(long, p, HAND_CLASSES) == human_evaluation(wide, p, HAND_CLASSES)


def test_human_accuracy_by_hand(tmp_path: Path):
    p = _hand_probabilities()
    (tmp_path / "long.csv").write_text(LONG)
    result = human_evaluation(load_human_annotations(tmp_path / "long.csv", HAND_CLASSES),
                              p, HAND_CLASSES)
    assert (result["n_items"], result["n_annotators"], result["n_annotations"]) == (4, 3, 11)
    assert result["per_annotator"]["A"] == {
        "n": 4, "accuracy": 1.0, "per_class": {"angry": 1.0, "happy": 1.0, "sad": 1.0}}
    assert result["per_annotator"]["B"]["per_class"] == {"angry": 0.0, "happy": 0.5,
                                                         "sad": 0.0}
    assert result["per_annotator"]["C"]["per_class"]["sad"] is None
    assert result["per_annotator"]["C"]["accuracy"] == pytest.approx(2 / 3)
    per_class = result["per_class"]
    assert [per_class[c]["human"] for c in HAND_CLASSES] == pytest.approx([1 / 3, 5 / 6, 1 / 2])
    assert [per_class[c]["human_median"] for c in HAND_CLASSES] == [0.0, 1.0, 0.5]
    # The model predicts sad, happy, sad, angry (h2 is a tie, the first class wins).
    assert [per_class[c]["model_recall"] for c in HAND_CLASSES] == [0.0, 0.5, 1.0]
    assert result["accuracy"] == pytest.approx(7 / 11)
    assert result["mean_annotator_accuracy"] == pytest.approx((1 + 1 / 4 + 2 / 3) / 3)
    assert result["class_median_mean"] == pytest.approx(0.5)
    # Majorities: a1 sad, h1 happy, s1 tie sad/angry -> angry (first class), h2 happy.
    assert result["majority_accuracy"] == 0.5
    assert result["agreement"] == 0.5
    assert result["model_accuracy"] == 0.5
    assert [h["item"] for h in result["hard_items"]] == ["a1"]
    assert result["hard_items"][0]["votes"] == {"angry": 1, "sad": 2}


@pytest.mark.parametrize("text, message", [
    ("item,annotator,label\na1,A,angry\nx9,A,sad\n", ":3: item 'x9' is not in the evaluated"),
    ("item,annotator,label\na1,A,angry\na1,B,contempt\n", ":3: label 'contempt' is not one"),
    ("item,annotator,label\na1,A,angry\na1,A,sad\n", ":3: annotator 'A' labels item 'a1' twi"),
    ("item,A,B\na1,angry\n", ":2: 2 fields, the header has 3"),
    ("video,A\na1,angry\n", "first column is 'video'"),
    ("item,A,A\na1,angry,sad\n", "annotator columns repeat"),
    ("item,A\n", "no annotations"),
])
def test_malformed_human_annotations_name_file_and_line(tmp_path: Path, text: str,
                                                         message: str):
    path = tmp_path / "humans.csv"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_human_annotations(path, HAND_CLASSES, known=_known(_hand_probabilities()))
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_human_keys_must_match_the_probabilities():
    p = _hand_probabilities()
    with pytest.raises(InputError, match=r"1 annotated item\(s\) are not in the evaluated"):
        human_evaluation({"zz": {"A": "sad"}}, p, HAND_CLASSES)
    with pytest.raises(InputError, match="annotated twice by \\['A'\\]"):
        human_evaluation({"a1": {"A": "sad"}, "F001_angry": {"A": "sad"}}, p, HAND_CLASSES)


def test_canonical_function_maps_labels(tmp_path: Path):
    path = tmp_path / "humans.csv"
    path.write_text("item,annotator,label\na1,A,Anger\nh1,A,happiness\n")
    synonyms = {"anger": "angry", "happiness": "happy"}
    annotations = load_human_annotations(path, HAND_CLASSES,
                                         canonical=lambda s: synonyms[s.strip().lower()])
    assert annotations == {"a1": {"A": "angry"}, "h1": {"A": "happy"}}


# --------------------------------------------------------------------------- written outputs
def _assert_pngs_and_no_temp_files(paths: list[Path], folder: Path) -> None:
    for path in paths:
        assert path.parent == folder and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(f.name for f in folder.iterdir()) == sorted(p.name for p in paths)


def test_write_evaluation(tmp_path: Path):
    p = _random_probabilities()
    result = evaluate(p, CLASSES)
    out = tmp_path / "eval"
    paths = write_evaluation(result, CLASSES, out, "cnn1d")
    _assert_pngs_and_no_temp_files(paths, out)
    assert {f.suffix for f in paths} == {".json", ".csv", ".png"}
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == result["accuracy"]
    with open(out / "errors.csv") as handle:
        errors = list(csv.DictReader(handle))
    assert [e["name"] for e in errors] == [e["name"] for e in result["errors"]]
    with open(out / "confusion.csv") as handle:
        rows = list(csv.reader(handle))
    assert [list(map(int, row[1:])) for row in rows[1:]] == result["confusion"]
    with open(out / "per_class.csv") as handle:
        per_class = {row["class"]: row for row in csv.DictReader(handle)}
    assert float(per_class["accuracy"]["f1"]) == round(result["accuracy"], 4)
    assert int(per_class["angry"]["support"]) == 6


def test_write_human_evaluation(tmp_path: Path):
    p = _hand_probabilities()
    (tmp_path / "long.csv").write_text(LONG)
    result = human_evaluation(load_human_annotations(tmp_path / "long.csv", HAND_CLASSES),
                              p, HAND_CLASSES)
    out = tmp_path / "human"
    paths = write_human_evaluation(result, HAND_CLASSES, out, "cnn1d")
    _assert_pngs_and_no_temp_files(paths, out)
    with open(out / "human_per_annotator.csv") as handle:
        rows = {row["annotator"]: row for row in csv.DictReader(handle)}
    assert rows["C"]["sad"] == "" and float(rows["B"]["happy"]) == 0.5
    # No 'angry' clip is predicted right: its confidence box is empty, the figure still drawn.
    model = evaluate(p, HAND_CLASSES)
    assert model["confidence"]["angry"]["n"] == 0
    _assert_pngs_and_no_temp_files(write_evaluation(model, HAND_CLASSES, out / "model", "x"),
                                   out / "model")
