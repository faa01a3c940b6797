"""`fer verify`: damaged artifacts are found, and `--repair` + a re-run redoes only them.

Costs ~30 s: a small pipeline through `extract` (~20 s), then single items.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import fercli.stages.track as track_module
from fercli.core.config import load_config
from fercli.core.engine import run_stage, stage_states
from fercli.core.verify import repair, verify_workdir
from fercli.stages import PIPELINE
from fercli.vision.clipio import ClipWriter, read_clip

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("make_bad", DATA / "make_bad.py")
make_bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("verify") / "work"
    cfg = load_config(None, [f"workdir={workdir}", *make_bad.SMALL_PIPELINE])
    for stage in make_bad.UNTIL_EXTRACT:
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    return workdir


def settings(work: Path) -> list[str]:
    args = []
    for setting in [f"workdir={work}", *make_bad.SMALL_PIPELINE]:
        args += ["--set", setting]
    return args


def records(work: Path) -> dict[str, tuple[int, str]]:
    """Every item record of every stage: mtime and hash."""
    return {p.relative_to(work).as_posix(): (p.stat().st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(work.glob("*/records/*.json"))}


def training_item(work: Path) -> str:
    """A clip of a CV fold: augmented too, so its damage could reach three stages."""
    splits = json.loads((work / "split/splits.json").read_text())
    return sorted(splits["items"]["folds"][0])[0]


def test_flipped_bytes_are_reported_and_repair_redoes_only_those_items(fer, work):
    result = fer("verify", *settings(work))
    assert result.exit_code == 0, result.output
    assert "match their size and SHA-256" in result.output
    item = training_item(work)
    clip = work / "track/clips" / f"{item}.mkv"
    store = work / "extract/features.h5"
    frames, store_bytes = read_clip(clip), store.read_bytes()
    before = records(work)
    states = stage_states(load_config(None, [f"workdir={work}", *make_bad.SMALL_PIPELINE]),
                          PIPELINE)
    make_bad.flip_byte(clip)
    make_bad.flip_byte(store)

    result = fer("verify", *settings(work))
    assert result.exit_code == 7 and "Traceback" not in result.output
    table = {line.split("│")[3].strip(): line for line in result.output.splitlines()
             if line.count("│") == 6}
    assert set(table) == {f"track/clips/{item}.mkv", "extract/features.h5"}
    assert all("altered" in line for line in table.values())
    assert f"│ {item} " in table[f"track/clips/{item}.mkv"]
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {work}: 2 recorded files are missing, damaged or unreadable "
                      "(table above). Run `fer verify --repair`, then `fer run`: only the "
                      "damaged items are redone"]

    result = fer("verify", "--repair", *settings(work))
    assert result.exit_code == 0, result.output
    assert not clip.exists() and not store.exists()
    assert not (work / "track/manifest.json").exists()
    assert not (work / "extract/manifest.json").exists()
    kept = records(work)
    assert set(before) - set(kept) == {f"track/records/{item}.json"}
    assert kept == {k: v for k, v in before.items() if k in kept}

    result = fer("run", "--until", "extract", "-j", "1", *settings(work))
    assert result.exit_code == 0, result.output
    after = records(work)
    redone = {k for k in after if after[k] != before.get(k)}
    # The new clip holds the same pixels, but Matroska writes a random segment id, so its
    # hash differs and trim redoes the item; trim's result is identical, so augment and
    # extract reuse everything (features.h5 is rebuilt from the per-item features).
    assert {f"track/records/{item}.json"} <= redone <= {f"track/records/{item}.json",
                                                        f"trim/records/{item}.json"}
    assert np.array_equal(read_clip(clip), frames)
    assert store.read_bytes() == store_bytes
    new_states = stage_states(load_config(None, [f"workdir={work}",
                                                 *make_bad.SMALL_PIPELINE]), PIPELINE)
    for stage in ("trim", "augment", "extract"):
        assert new_states[stage].status == "up to date"
        assert new_states[stage].output_hash == states[stage].output_hash, stage
    assert fer("verify", *settings(work)).exit_code == 0


class BrighterClips(ClipWriter):
    """A tracker whose output changed: every frame 40 grey levels brighter."""

    def write(self, frame):
        super().write(np.clip(frame.astype(np.int16) + 40, 0, 255).astype(np.uint8))


def test_changed_upstream_output_redoes_only_that_item_downstream(work, monkeypatch):
    cfg = load_config(None, [f"workdir={work}", *make_bad.SMALL_PIPELINE])
    item = training_item(work)
    make_bad.flip_byte(work / "track/clips" / f"{item}.mkv")
    repair(work, verify_workdir(work, list(PIPELINE)).damages)
    before = records(work)
    monkeypatch.setattr(track_module, "ClipWriter", BrighterClips)
    processed = {stage: run_stage(PIPELINE[stage], cfg, PIPELINE).n_processed
                 for stage in ("track", "trim", "augment", "extract")}
    assert processed == {"track": 1, "trim": 1, "augment": 1, "extract": 2}
    after = records(work)
    redone = {k for k in after if after[k] != before.get(k)}
    assert redone == {f"{stage}/records/{name}.json" for stage, name in
                      [("track", item), ("trim", item), ("augment", item),
                       ("extract", item), ("extract", f"{item}@flip")]}
    assert verify_workdir(work, list(PIPELINE)).damages == []
