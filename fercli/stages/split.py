"""`fer split`: test set and k folds, written once to splits.json.

``split.method: subject`` (default): every subject lands in exactly one place (test or one
fold), so no person is seen in both training and evaluation (thesis 3.2.2). Folds are
balanced by item count, deterministic for a seed; or taken verbatim from the config to
reproduce a published split (thesis Figure 3.6, shipped as configs/bu4dfe-thesis.yaml).

``split.method: stratified``: stratified k-fold over items, as seed 003 does for stills
(sec. 2.1: a random 20 % test share, 5 folds, each part keeping the class proportions of
the whole set; sec. 3.1: one fixed random state). It ignores subjects, so one person can
be in the test set and in a training fold: use it for datasets without subject ids
(FER2013-style folders), never to report subject-independent results.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..core.config import Config, params_hash
from ..core.engine import Context, Item, ItemOutput, Stage
from ..core.errors import ConfigError
from ..core.layout import read_index
from ..core.workspace import atomic_write_json, atomic_write_text

_RANGE = re.compile(r"^([A-Za-z_]*)(\d+)-\1?(\d+)$")


def expand_subjects(entries: list[str]) -> list[str]:
    """``["F011-F015", "M011"]`` -> F011 F012 ... F015 M011 (zero padding kept)."""
    out = []
    for entry in entries:
        match = _RANGE.match(entry.strip())
        if match:
            prefix, start, stop = match.group(1), match.group(2), match.group(3)
            width = len(start)
            if int(stop) < int(start):
                raise ConfigError(f"subject range {entry!r} runs backwards")
            out += [f"{prefix}{n:0{width}d}" for n in range(int(start), int(stop) + 1)]
        else:
            out.append(entry.strip())
    return out


def make_split(subject_items: dict[str, int], *, folds: int, test_fraction: float,
               seed: int, test_subjects: list[str] | None = None,
               fold_subjects: list[list[str]] | None = None) -> dict:
    """Pure split of subjects -> {"test": [...], "folds": [[...], ...], "unassigned": [...]}.

    Automatic folds: subjects shuffled by the seed, then placed largest-first on the fold
    with the fewest items so far (ties: fewest subjects, then lowest index).
    """
    subjects = sorted(subject_items)
    known = set(subjects)
    if fold_subjects is not None:
        fold_lists = [expand_subjects(f) for f in fold_subjects]
        test = expand_subjects(test_subjects or [])
        _refuse_duplicates(test, fold_lists)
        unknown = sorted(s for s in [*test, *sum(fold_lists, [])] if s not in known)
        if unknown:
            raise ConfigError(f"split lists subjects that are not in the index: "
                              f"{', '.join(unknown[:10])}",
                              hint="Check split.test_subjects / split.fold_subjects, or "
                                   "index.exclude_subjects")
        placed = set(test) | set(sum(fold_lists, []))
        return {"test": test, "folds": fold_lists,
                "unassigned": [s for s in subjects if s not in placed]}

    rng = random.Random(seed)
    if test_subjects is not None:
        test = expand_subjects(test_subjects)
        _refuse_duplicates(test, [])
        missing = [s for s in test if s not in known]
        if missing:
            raise ConfigError(f"split.test_subjects not in the index: {', '.join(missing)}")
    else:
        n_test = round(len(subjects) * test_fraction)
        test = sorted(rng.sample(subjects, n_test))
    rest = [s for s in subjects if s not in set(test)]
    if len(rest) < folds:
        raise ConfigError(f"split.folds={folds} but only {len(rest)} training subjects",
                          hint="Lower split.folds or split.test_fraction")
    rng.shuffle(rest)
    rest.sort(key=lambda s: -subject_items[s])  # stable: equal sizes keep the shuffled order
    fold_lists: list[list[str]] = [[] for _ in range(folds)]
    loads = [0] * folds
    for subject in rest:
        k = min(range(folds), key=lambda i: (loads[i], len(fold_lists[i]), i))
        fold_lists[k].append(subject)
        loads[k] += subject_items[subject]
    return {"test": sorted(test), "folds": [sorted(f) for f in fold_lists], "unassigned": []}


def make_stratified_split(items: list[tuple[str, str]], *, folds: int, test_fraction: float,
                          seed: int) -> dict:
    """Pure stratified split of (item_id, label) -> {"test": [...], "folds": [[...], ...]}.

    Per class (in name order) the items are shuffled by the seed; round(n * test_fraction)
    go to the test set, the rest are dealt one by one to the fold with the fewest items of
    that class so far (ties: fewest items overall, then lowest index), so every fold holds
    each class's items to within one (seed 003 sec. 2.1).
    """
    by_class: dict[str, list[str]] = {}
    for item_id, label in sorted(items):
        by_class.setdefault(label, []).append(item_id)
    n_train = sum(len(ids) - round(len(ids) * test_fraction) for ids in by_class.values())
    if n_train < folds:
        raise ConfigError(f"split.folds={folds} but only {n_train} training items",
                          hint="Lower split.folds or split.test_fraction")
    rng = random.Random(seed)
    test: list[str] = []
    fold_lists: list[list[str]] = [[] for _ in range(folds)]
    for label in sorted(by_class):
        ids = by_class[label]
        rng.shuffle(ids)
        n_test = round(len(ids) * test_fraction)
        test += ids[:n_test]
        of_class = [0] * folds
        for item_id in ids[n_test:]:
            k = min(range(folds), key=lambda i: (of_class[i], len(fold_lists[i]), i))
            fold_lists[k].append(item_id)
            of_class[k] += 1
    return {"test": sorted(test), "folds": [sorted(f) for f in fold_lists]}


def _refuse_duplicates(test: list[str], folds: list[list[str]]) -> None:
    places = Counter(test + sum(folds, []))
    twice = sorted(s for s, n in places.items() if n > 1)
    if twice:
        raise ConfigError(f"split puts subject(s) {', '.join(twice)} in two places",
                          hint="Each subject must be in exactly one of test or one fold")


class SplitStage(Stage):
    name = "split"
    help = "Test set and k cross-validation folds, by subject or stratified (splits.json)."
    upstream = ("index",)
    sections = ("split",)
    shardable = False

    def params(self, config: Config) -> dict:
        params = super().params(config)
        params["split"] = {**params["split"], "seed": config["split"]["seed"]
                           if config["split"]["seed"] is not None else config["seed"]}
        return params

    def list_items(self, ctx: Context) -> list[Item]:
        rows = read_index(ctx.workdir)
        fingerprint = params_hash([(r["item_id"], r["subject"], r["label"]) for r in rows])
        return [Item("splits", {"index": fingerprint}, {"rows": rows})]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        rows = item.payload["rows"]
        p = ctx.params["split"]
        stratified = p["method"] == "stratified"
        if stratified:
            if p["test_subjects"] is not None or p["fold_subjects"] is not None:
                raise ConfigError("split.test_subjects / split.fold_subjects list subjects, "
                                  "but split.method is stratified (by item)",
                                  hint="Set split.method=subject, or drop the subject lists")
            by_item = make_stratified_split([(r["item_id"], r["label"]) for r in rows],
                                            folds=p["folds"], test_fraction=p["test_fraction"],
                                            seed=p["seed"])
            place = {i: "test" for i in by_item["test"]}
            place.update({i: f"fold-{k}" for k, fold in enumerate(by_item["folds"])
                          for i in fold})
            subject_of = {r["item_id"]: r["subject"] for r in rows}
            split = {"test": sorted({subject_of[i] for i in by_item["test"]}),
                     "folds": [sorted({subject_of[i] for i in fold})
                               for fold in by_item["folds"]], "unassigned": []}
        else:
            split = make_split(Counter(r["subject"] for r in rows), folds=p["folds"],
                               test_fraction=p["test_fraction"], seed=p["seed"],
                               test_subjects=p["test_subjects"],
                               fold_subjects=p["fold_subjects"])
            place = {s: "test" for s in split["test"]}
            place.update({s: f"fold-{k}" for k, fold in enumerate(split["folds"]) for s in fold})
        items = {"test": [], "folds": [[] for _ in split["folds"]], "unassigned": []}
        table_rows = []
        for r in rows:
            where = place.get(r["item_id"] if stratified else r["subject"], "unassigned")
            if where == "test":
                items["test"].append(r["item_id"])
            elif where == "unassigned":
                items["unassigned"].append(r["item_id"])
            else:
                items["folds"][int(where.split("-")[1])].append(r["item_id"])
            table_rows.append(f"{r['item_id']},{r['subject']},{r['label']},{where}")
        splits = {"seed": p["seed"], "method": p["method"],
                  "subject_independent": not stratified, "subjects": split, "items": items,
                  "counts": {"test": len(items["test"]),
                             "folds": [len(f) for f in items["folds"]]}}
        splits_json = ctx.stage.path("splits.json")
        atomic_write_json(splits_json, splits)
        split_csv = ctx.stage.path("split.csv")
        atomic_write_text(split_csv, "item_id,subject,label,part\n" + "\n".join(table_rows)
                          + "\n")
        return ItemOutput([splits_json, split_csv], info=splits["counts"])

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..core.workspace import read_json

        splits = read_json(ctx.stage.path("splits.json"), "splits.json")
        table = Table(title="split: subjects and items per part")
        for col in ("part", "subjects", "items"):
            table.add_column(col)
        table.add_row("test", _subjects_text(splits["subjects"]["test"]),
                      str(len(splits["items"]["test"])))
        for k, fold in enumerate(splits["subjects"]["folds"]):
            table.add_row(f"fold {k}", _subjects_text(fold), str(len(splits["items"]["folds"][k])))
        if splits["subjects"]["unassigned"]:
            table.add_row("unassigned", _subjects_text(splits["subjects"]["unassigned"]),
                          str(len(splits["items"]["unassigned"])))
        console.print(table)
        if splits.get("method") == "stratified":
            shared = _shared_subjects(splits["subjects"])
            console.print("[yellow]split: stratified by class, not subject-independent[/]"
                          + (f": {len(shared)} subjects are in more than one part"
                             if shared else ""))
        return []


def _shared_subjects(subjects: dict) -> list[str]:
    places = Counter(s for part in [subjects["test"], *subjects["folds"]] for s in part)
    return sorted(s for s, n in places.items() if n > 1)


def _subjects_text(subjects: list[str]) -> str:
    text = " ".join(subjects)
    return text if len(text) <= 60 else f"{' '.join(subjects[:8])} ... ({len(subjects)})"
