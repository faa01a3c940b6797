"""`fer extract`: per-frame CNN features of every kept frame into the HDF5 feature store.

Frames go through the backbone in batches of ``extract.batch_size`` (never one at a time).
Each item's features are first saved alone (``items/<row>.npy``, so a killed run resumes
at the next clip); when all are done they are streamed into ``features.h5`` (see
fercli.features.featurestore), one row per original or augmented clip, with subject, label,
augmentation method and split part (thesis 3.2.3-3.2.4).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from rich.console import Console

from ..core import layout
from ..core.config import params_hash
from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.errors import ArtifactError
from ..core.layout import load_splits
from ..core.workspace import atomic_path, read_text
from ..features.featurestore import FeatureStoreWriter, Row
from ..features.identity import BASELINE_FRAMES, onset_baseline
from ..learning.experiment import extract_section
from ..vision.clipio import iter_clip, kept_frames

_EXTRACTORS: dict[str, object] = {}


def feature_extractor(params: dict, color: bool):
    """One extractor per process and parameter set (loading a backbone takes seconds)."""
    from ..features.backbones import build_feature_extractor

    key = params_hash([params["backbone"], params["layer"], params["weights"], color])
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = build_feature_extractor(params["backbone"], layer=params["layer"],
                                                   weights=params["weights"], input_color=color)
    return _EXTRACTORS[key]


def extract_sequence(frames, extractor, batch_size: int) -> np.ndarray:
    """(T, F) float32 features of a frame stream, computed batch by batch."""
    out, batch = [], []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            out.append(extractor.extract(np.stack(batch)))
            batch = []
    if batch:
        out.append(extractor.extract(np.stack(batch)))
    if not out:
        return np.zeros((0, extractor.feature_dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class ExtractStage(Stage):
    name = "extract"
    help = "Run the spatial backbone on every kept frame (batched) into features.h5."
    upstream = ("trim", "augment", "split")
    sections = ("extract",)

    def params(self, config):
        params = super().params(config)
        params["extract"] = extract_section(config)  # a model file from pretrain resolved
        params["color"] = config["track"]["color"]
        params["seed"] = config["seed"]  # augmented baselines redo augment's transform
        return params

    def item_params(self, params: dict) -> dict:
        section = {k: v for k, v in params["extract"].items()
                   if k not in ("max_frames", "augmented", "batch_size")}
        return {"extract": section, "color": params["color"]}

    def list_items(self, ctx: Context) -> list[Item]:
        items = []
        for item in ctx.upstream_item_list("trim"):
            info = item.payload
            items.append(Item(item.id, item.fingerprint,
                              {"clip": info["clip"], "first": info["first"],
                               "last": info["last"], "source": item.id, "augment": "",
                               "source_clip": info["clip"]}))
        if ctx.params["extract"]["augmented"]:
            trimmed = ctx.upstream_items("trim")
            for source, rec in ctx.upstream_items("augment").items():
                for method, out in zip(rec["info"]["methods"], rec["outputs"]):
                    items.append(Item(f"{source}@{method}", out["sha256"],
                                      {"clip": str(ctx.workdir / out["path"]), "first": 0,
                                       "last": rec["info"]["n_frames"] - 1, "source": source,
                                       "augment": method,
                                       "source_clip": trimmed[source]["info"]["clip"]}))
        return items

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        params = ctx.params["extract"]
        info = item.payload
        extractor = feature_extractor(params, ctx.params["color"])
        frames = kept_frames(info["clip"], info["first"], info["last"], ctx.params["color"])
        features = extract_sequence(frames, extractor, params["batch_size"])
        baseline = onset_baseline(extract_sequence(
            self._onset_frames(ctx, info), extractor, params["batch_size"]))
        out = ctx.stage.path("items", f"{item.id}.npy")
        baseline_out = ctx.stage.path("items", f"{item.id}.baseline.npy")
        with atomic_path(out) as tmp:
            np.save(tmp, features.astype(params["dtype"]))
        with atomic_path(baseline_out) as tmp:
            np.save(tmp, baseline.astype(params["dtype"]))
        return ItemOutput([out, baseline_out], info={
            "source": info["source"], "augment": info["augment"], "n_frames": len(features),
            "onset": int(info["first"]) if not info["augment"] else None,
            "feature_dim": int(features.shape[1])})

    @staticmethod
    def _onset_frames(ctx: Context, info: dict):
        """The first frames of the source clip (its neutral onset), transformed like the
        augmented clip when the row is one (augment's one transform per sequence)."""
        from itertools import islice

        onset = islice(iter_clip(info["source_clip"], ctx.params["color"]), BASELINE_FRAMES)
        if not info["augment"]:
            return onset
        from ..vision.augment import augment_sequence, sequence_seed

        seed = sequence_seed(ctx.params["seed"], info["source"], info["augment"])
        return augment_sequence(onset, info["augment"], seed)

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        params = ctx.params["extract"]
        done = sorted(done_records(records), key=lambda r: r["id"])
        meta = _index_rows(layout.index_csv(ctx.workdir))
        splits = load_splits(ctx.workdir)
        part = {i: "test" for i in splits["items"]["test"]}
        part.update({i: f"fold-{k}" for k, fold in enumerate(splits["items"]["folds"])
                     for i in fold})
        classes = layout.read_classes(ctx.workdir)
        for source in sorted({r["info"]["source"] for r in done}):  # a damaged index.csv
            row = meta.get(source, {})
            if not row.get("subject") or row.get("label") not in classes:
                raise ArtifactError(f"no valid row for item {source}",
                                    path=layout.index_csv(ctx.workdir),
                                    hint="Run `fer verify --repair`, then `fer run`")
        dim = done[0]["info"]["feature_dim"] if done else 0
        trim_first = {i: r["info"]["first"] for i, r in ctx.upstream_items("trim").items()
                      if r.get("info")}
        store_path = ctx.stage.path("features.h5")
        attrs = {"backbone": params["backbone"], "layer": str(params["layer"]),
                 "weights": str(params["weights"]), "max_frames": params["max_frames"],
                 "color": ctx.params["color"]}
        with FeatureStoreWriter(store_path, dim, classes, dtype=params["dtype"],
                                attrs=attrs) as writer:
            for r in done:
                source = r["info"]["source"]
                row = Row(r["id"], source, meta[source]["subject"],
                          classes.index(meta[source]["label"]), r["info"]["augment"],
                          part.get(source, "unassigned"))
                features, baseline = (_load_npy(ctx.workdir / o["path"])
                                      for o in r["outputs"][:2])
                onset = r["info"].get("onset")
                writer.add(row, features, baseline,
                           onset=trim_first.get(source, 0) if onset is None else onset)
        n_aug = sum(bool(r["info"]["augment"]) for r in done)
        console.print(f"extract: features.h5 holds {len(done)} sequences ({n_aug} augmented), "
                      f"{dim} features per frame from {params['backbone']}")
        return [store_path]


def _load_npy(path: Path) -> np.ndarray:
    """One item's saved features; a damaged file is a one-line error naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError):  # truncated, altered header, or not an array at all
        raise ArtifactError("feature file is damaged (not a readable .npy array)", path=path,
                            hint="Run `fer verify --repair`, then `fer extract`") from None


def _index_rows(path: Path) -> dict[str, dict]:
    rows = csv.DictReader(io.StringIO(read_text(path, "index.csv")))
    return {r.get("item_id"): r for r in rows}
