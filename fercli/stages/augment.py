"""`fer augment`: offline augmentation of the trimmed training clips (thesis 3.2.2, 3.2.4).

Only clips of the cross-validation folds are augmented, never test or unassigned subjects;
training then uses a fold's augmented rows only while that fold is a training fold, so no
augmented copy of a validation subject is ever trained on in that fold (thesis 3.2.3).
Each method applies one transform to every frame of a sequence; clips are written
losslessly like the tracked ones.
"""
from __future__ import annotations

import random
from pathlib import Path

from rich.console import Console

from ..core.engine import Context, Item, ItemOutput, Stage, done_records
from ..core.layout import load_splits
from ..vision.clipio import ClipWriter, kept_frames


def methods_for(item_id: str, methods: list[str], copies: int | None, seed: int) -> list[str]:
    """All methods, or `copies` of them drawn for this clip (stable per item and seed)."""
    if copies is None or copies >= len(methods):
        return list(methods)
    rng = random.Random(f"{seed}:{item_id}")
    return sorted(rng.sample(methods, copies), key=methods.index)


class AugmentStage(Stage):
    name = "augment"
    help = "Write offline-augmented copies of the trimmed training clips (never test)."
    upstream = ("trim", "split")
    cpu_parallel = True
    sections = ("augment", "track")

    def params(self, config):
        params = super().params(config)
        params["seed"] = config["seed"]
        params["track"] = {"color": config["track"]["color"], "codec": config["track"]["codec"],
                           "size": config["track"]["size"]}
        return params

    def list_items(self, ctx: Context) -> list[Item]:
        from ..core.errors import ConfigError
        from ..vision.augment import OFFLINE_METHODS

        unknown = [m for m in ctx.params["augment"]["methods"] if m not in OFFLINE_METHODS]
        if unknown:
            raise ConfigError(f"augment.methods: unknown method(s) {', '.join(unknown)}; "
                              f"choose from: {', '.join(OFFLINE_METHODS)}")
        splits = load_splits(ctx.workdir)
        training = {i for fold in splits["items"]["folds"] for i in fold}
        return [item for item in ctx.upstream_item_list("trim") if item.id in training]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        from ..vision.augment import augment_sequence, sequence_seed

        params, track = ctx.params["augment"], ctx.params["track"]
        info = item.payload
        files, methods = [], methods_for(item.id, params["methods"], params["copies"],
                                         ctx.params["seed"])
        suffix = Path(info["clip"]).suffix
        for method in methods:
            out = ctx.stage.path("clips", f"{item.id}@{method}{suffix}")
            out.parent.mkdir(parents=True, exist_ok=True)
            seed = sequence_seed(ctx.params["seed"], item.id, method)
            frames = kept_frames(info["clip"], info["first"], info["last"], track["color"])
            with ClipWriter(out, track["size"], track["color"], info["fps"],
                            track["codec"]) as writer:
                for frame in augment_sequence(frames, method, seed):
                    writer.write(frame)
            files.append(out)
        return ItemOutput(files, info={"methods": methods, "n_frames": info["n_kept"],
                                       "fps": info["fps"]})

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        from ..vision.augment import plot_augment_preview

        done = done_records(records)
        console.print(f"augment: {sum(len(r['info']['methods']) for r in done)} augmented "
                      f"clips from {len(done)} training clips")
        if not done:
            return []
        trim = ctx.upstream_items("trim")[done[0]["id"]]["info"]
        frames = list(kept_frames(trim["clip"], trim["first"], trim["last"],
                                  ctx.params["track"]["color"]))
        picks = [frames[int(i * (len(frames) - 1) / 3)] for i in range(4)]
        preview = ctx.stage.path("preview.png")
        plot_augment_preview(picks, ctx.params["augment"]["methods"], preview,
                             seed=ctx.params["seed"])
        return [preview]
