"""The stage engine on a fake stage (no video, no TensorFlow), and the manifest format.

A stage is four methods (params, list_items, process_item, finalize); the engine owns
skipping, per-item records, failures, shards and the manifest. Pinning the manifest's
format here (as DVC pins its lock file) makes a change to it a conscious one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from fercli.core.config import load_config
from fercli.core.engine import (
    Context,
    Item,
    ItemOutput,
    Stage,
    done_records,
    run_stage,
    stage_states,
)
from fercli.core.errors import ItemError
from fercli.core.workspace import atomic_write_text


class Squares(Stage):
    """Writes n*n for each n in `seed`-many items; item 3 always fails."""

    name = "squares"
    help = "fake stage"
    sections: ClassVar[tuple[str, ...]] = ()
    calls: ClassVar[list[str]] = []

    def params(self, config) -> dict:
        return {"n": config["split"]["folds"]}

    def item_params(self, params: dict) -> dict:
        return {}  # the item count does not change an item's result

    def list_items(self, ctx: Context) -> list[Item]:
        return [Item(f"n{i}", {"n": i}, {"n": i}) for i in range(ctx.params["n"])]

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        Squares.calls.append(item.id)
        if item.payload["n"] == 3:
            raise ItemError("three is unlucky", path=item.id, hint="Skip it")
        out = ctx.stage.path("out", f"{item.id}.txt")
        atomic_write_text(out, str(item.payload["n"] ** 2))
        return ItemOutput([out], {"square": item.payload["n"] ** 2})

    def finalize(self, ctx: Context, records: list[dict], console) -> list[Path]:
        total = ctx.stage.path("total.txt")
        atomic_write_text(total, str(sum(r["info"]["square"] for r in done_records(records))))
        return [total]


REGISTRY = {"squares": Squares()}


def config(tmp_path: Path, n: int):
    return load_config(None, [f"workdir={tmp_path / 'work'}", f"split.folds={n}"])


def test_fake_stage_records_skips_resumes_and_fails_one_item(tmp_path):
    Squares.calls.clear()
    result = run_stage(REGISTRY["squares"], config(tmp_path, 5), REGISTRY)
    assert (result.n_items, result.n_processed, result.n_failed) == (5, 5, 1)
    assert result.failures == [("n3", "n3: three is unlucky. Skip it")]
    assert (tmp_path / "work/squares/total.txt").read_text() == str(0 + 1 + 4 + 16)

    again = run_stage(REGISTRY["squares"], config(tmp_path, 5), REGISTRY)
    assert again.skipped and Squares.calls.count("n1") == 1

    Squares.calls.clear()  # one more item: only it runs, the rest are reused
    more = run_stage(REGISTRY["squares"], config(tmp_path, 6), REGISTRY)
    assert Squares.calls == ["n5"] and more.n_reused == 5
    assert stage_states(config(tmp_path, 6), REGISTRY)["squares"].status == "up to date"


def test_shards_share_the_items_and_the_last_writes_the_manifest(tmp_path):
    first = run_stage(REGISTRY["squares"], config(tmp_path, 4), REGISTRY, shard=(1, 2))
    assert not first.complete and not (tmp_path / "work/squares/manifest.json").exists()
    second = run_stage(REGISTRY["squares"], config(tmp_path, 4), REGISTRY, shard=(2, 2))
    assert second.complete and (tmp_path / "work/squares/manifest.json").is_file()


def test_manifest_format_is_pinned(tmp_path):
    run_stage(REGISTRY["squares"], config(tmp_path, 3), REGISTRY)
    manifest = json.loads((tmp_path / "work/squares/manifest.json").read_text())
    assert list(manifest) == ["schema", "stage", "fercli_version", "params", "params_hash",
                              "upstream", "sources", "output_hash", "outputs", "items",
                              "finished", "host"]
    assert manifest["schema"] == 1 and manifest["stage"] == "squares"
    assert manifest["params"] == {"n": 3} and len(manifest["params_hash"]) == 16
    assert manifest["upstream"] == {} and manifest["sources"] is None
    assert [o["path"] for o in manifest["outputs"]] == ["squares/total.txt"]
    assert set(manifest["outputs"][0]) == {"path", "size", "sha256"}
    assert manifest["items"]["n2"] == {
        "status": "done", "info": {"square": 4},
        "outputs": [{"path": "squares/out/n2.txt", "size": 1,
                     "sha256": manifest["items"]["n2"]["outputs"][0]["sha256"]}]}
    record = json.loads((tmp_path / "work/squares/records/n1.json").read_text())
    assert set(record) == {"id", "key", "status", "outputs", "info", "seconds"}

