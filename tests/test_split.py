import json
from collections import Counter

import pytest

from fercli.core.errors import ConfigError
from fercli.stages.split import expand_subjects, make_split, make_stratified_split

THESIS_FOLDS = [["F011-F015", "F017-F027"], ["F028-F043"], ["F044-F058", "M011"],
                ["M012-M027"], ["M028-M043"]]
THESIS_TEST = ["F001-F010", "M001-M010"]


def _bu4dfe_subjects():
    subjects = [f"F{i:03d}" for i in range(1, 59) if i != 16] + \
        [f"M{i:03d}" for i in range(1, 44)]
    return {s: 6 for s in subjects}


def test_expand_ranges_keeps_padding():
    assert expand_subjects(["F008-F011", "M011"]) == ["F008", "F009", "F010", "F011", "M011"]


def test_reproduces_the_thesis_split_exactly():
    split = make_split(_bu4dfe_subjects(), folds=5, test_fraction=0.2, seed=0,
                       test_subjects=THESIS_TEST, fold_subjects=THESIS_FOLDS)
    assert len(split["test"]) == 20
    assert [len(f) for f in split["folds"]] == [16, 16, 16, 16, 16]
    assert split["folds"][2][-1] == "M011" and "F016" not in sum(split["folds"], [])
    assert split["unassigned"] == []


def test_automatic_split_is_disjoint_balanced_and_deterministic():
    counts = {f"S{i:03d}": 6 if i % 3 else 5 for i in range(1, 38)}
    a = make_split(counts, folds=5, test_fraction=0.2, seed=7)
    b = make_split(counts, folds=5, test_fraction=0.2, seed=7)
    c = make_split(counts, folds=5, test_fraction=0.2, seed=8)
    assert a == b and a != c
    places = a["test"] + sum(a["folds"], [])
    assert sorted(places) == sorted(counts)          # every subject exactly once
    assert len(set(places)) == len(places)
    loads = [sum(counts[s] for s in f) for f in a["folds"]]
    assert max(loads) - min(loads) <= 6               # balanced by item count


def test_subject_in_two_places_is_refused():
    with pytest.raises(ConfigError, match="F011 in two places"):
        make_split(_bu4dfe_subjects(), folds=2, test_fraction=0.2, seed=0,
                   test_subjects=["F011"], fold_subjects=[["F011-F012"], ["F013"]])


def test_unknown_subject_in_config_is_refused():
    with pytest.raises(ConfigError, match="not in the index: X999"):
        make_split({"A": 1, "B": 1}, folds=2, test_fraction=0.0, seed=0,
                   test_subjects=[], fold_subjects=[["A"], ["X999"]])


def test_split_stage_writes_disjoint_items(fer, bu_videos, tmp_path):
    assert fer("index", bu_videos).exit_code == 0
    result = fer("split", "--set", "split.folds=2", "--set", "split.test_fraction=0.34")
    assert result.exit_code == 0, result.output
    splits = json.loads((tmp_path / "work/split/splits.json").read_text())
    test_ids = set(splits["items"]["test"])
    fold_ids = [set(f) for f in splits["items"]["folds"]]
    assert len(test_ids) == 6 and all(fold_ids)
    subjects_of = lambda ids: {i.split("_")[0] for i in ids}  # noqa: E731
    parts = [subjects_of(test_ids)] + [subjects_of(f) for f in fold_ids]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            assert not a & b
    assert len(test_ids | set().union(*fold_ids)) == 18


def test_split_from_config_file(fer, bu_videos, tmp_path):
    (tmp_path / "fer.yaml").write_text(
        f"index:\n  root: {bu_videos}\nsplit:\n  test_subjects: [F001, M001]\n"
        "  fold_subjects: [[F002-F003], [M002-M003]]\n")
    assert fer("index").exit_code == 0
    assert fer("split").exit_code == 0
    splits = json.loads((tmp_path / "work/split/splits.json").read_text())
    assert splits["subjects"]["test"] == ["F001", "M001"]
    assert splits["subjects"]["folds"] == [["F002", "F003"], ["M002", "M003"]]


def test_subject_split_of_ten_subjects_into_four_folds():
    """JAFFE: 10 subjects; test_fraction 0.2 holds out 2, the other 8 fill 4 folds."""
    counts = {s: 18 + (k % 3) for k, s in enumerate(
        ["KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"])}
    split = make_split(counts, folds=4, test_fraction=0.2, seed=42)
    assert len(split["test"]) == 2
    assert [len(f) for f in split["folds"]] == [2, 2, 2, 2]
    assert sorted(split["test"] + sum(split["folds"], [])) == sorted(counts)


def _labelled_items():
    sizes = {"angry": 20, "happy": 13, "sad": 7}
    return [(f"{label}_{i:02d}", label) for label, n in sizes.items() for i in range(n)], sizes


def test_stratified_split_is_balanced_per_class_and_deterministic():
    items, sizes = _labelled_items()
    a = make_stratified_split(items, folds=5, test_fraction=0.2, seed=3)
    assert a == make_stratified_split(list(reversed(items)), folds=5, test_fraction=0.2,
                                      seed=3)
    assert a != make_stratified_split(items, folds=5, test_fraction=0.2, seed=4)
    placed = a["test"] + sum(a["folds"], [])
    assert sorted(placed) == sorted(i for i, _ in items)  # every item exactly once
    label_of = dict(items)
    test_counts = Counter(label_of[i] for i in a["test"])
    assert test_counts == {label: round(n * 0.2) for label, n in sizes.items()}
    for label in sizes:  # each class spread over the folds to within one item
        per_fold = [sum(label_of[i] == label for i in fold) for fold in a["folds"]]
        assert max(per_fold) - min(per_fold) <= 1, (label, per_fold)
    loads = [len(f) for f in a["folds"]]
    assert max(loads) - min(loads) <= 1


def test_stratified_split_refuses_too_few_items():
    with pytest.raises(ConfigError, match="split.folds=5 but only 3 training items"):
        make_stratified_split([("a", "x"), ("b", "x"), ("c", "y")], folds=5,
                              test_fraction=0.0, seed=0)


def test_split_stage_stratified(fer, bu_videos, tmp_path):
    assert fer("index", bu_videos).exit_code == 0
    result = fer("split", "--set", "split.method=stratified", "--set", "split.folds=2",
                 "--set", "split.test_fraction=0.34")
    assert result.exit_code == 0, result.output
    assert "stratified by class, not subject-independent" in result.output
    splits = json.loads((tmp_path / "work/split/splits.json").read_text())
    assert splits["method"] == "stratified" and splits["subject_independent"] is False
    assert splits["counts"] == {"test": 6, "folds": [6, 6]}  # 2 of each of the 3 labels
    labels = lambda ids: Counter(i.split("_")[1].lower() for i in ids)  # noqa: E731
    assert labels(splits["items"]["test"]) == {"happy": 2, "sad": 2, "angry": 2}
    assert all(labels(f) == {"happy": 2, "sad": 2, "angry": 2}
               for f in splits["items"]["folds"])
    rows = (tmp_path / "work/split/split.csv").read_text().splitlines()
    assert rows[0] == "item_id,subject,label,part" and len(rows) == 19

    result = fer("split", "--set", "split.method=stratified",
                 "--set", "split.fold_subjects=[[F001], [F002]]")
    assert result.exit_code == 2
    assert "split.method is stratified" in result.output
