"""Bad inputs (tests/data/make_bad.py): one clear line, the right exit code, no traceback,
the other items finish and nothing already done is lost.

Costs ~40 s: the dataset cases ~6 s, a small pipeline through `extract` ~15 s (shared by
the workdir cases), two tiny CV folds ~15 s.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest

from fercli.core.config import load_config
from fercli.core.engine import context_for, run_stage
from fercli.learning.experiment import run_name, train_params
from fercli.stages import PIPELINE

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("make_bad", DATA / "make_bad.py")
make_bad = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_bad)


def error_line(result, exit_code: int) -> str:
    """The single `Error:` line of a failed command (and no traceback anywhere)."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime and hash of every file below ``folder``: what 'nothing lost' compares."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns,
                                               hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# --------------------------------------------------------------------------- the dataset
EXPECTED_FAILURES = {
    "F201_happy_tex": ("F201_happy_tex.avi", "frames its header lists decode (truncated?)"),
    "F202_happy_tex": ("F202_happy_tex.avi", "video file is empty (0 bytes)"),
    "F203_happy_tex": ("F203_happy_tex.avi", "no decodable frames in the video"),
    "F204_happy_tex": ("F204_happy_tex.mp4", "cannot open the video"),
    "F205_happy": ("F205/happy", "frame 3 is missing (gap between 2 and 4)"),
    "F206_happy": ("F206/happy", "'00000003.png' is 20x12, the sequence started at 16x12"),
    "F211_happy__copy": ("F211_happy_[copy].avi", "video file is empty (0 bytes)"),
    "F301_happy_tex": ("F301_happy_tex.avi", "resolution 9000x5000 is larger than 8K"),
    "F302_happy": ("F302/happy", "frame size 9000x5000 is larger than 8K"),
    "F304_happy": ("F304/happy", "'frame_00000003_\\xe9.png' is not valid UTF-8"),
}
EXPECTED_EXCLUDED = {
    "clip_0001.avi": "name does not match the `bu4dfe` pattern",
    "F208_bored_tex.avi": "label 'bored' is not one of the classes",
    "F209_happy_x..y.avi": "item id 'F209_happy_x..y' is not a safe file name",
    "F303_happy_\\xff.avi": "file name is not valid UTF-8",
}


def test_bad_videos_and_sequences_fail_alone_and_keep_finished_items(fer, tmp_path):
    data = tmp_path / "data"
    make_bad.add_good_videos(data)
    assert fer("index", data, "-j", "1").exit_code == 0
    records = tmp_path / "work/index/records"
    before = snapshot(records)

    make_bad.add_bad_files(data)
    result = fer("index", data, "-j", "1")
    line = error_line(result, 6)
    assert line.startswith(f"Error: {len(EXPECTED_FAILURES)} of 18 items failed (first: "
                           f"F201_happy_tex: {data / 'F201_happy_tex.avi'}: ")
    failed = {line.split(":")[0]: line for line in result.output.splitlines()
              if line.startswith("failed ")}
    for item_id, (name, reason) in EXPECTED_FAILURES.items():
        line = failed.pop(f"failed {item_id}")
        assert line.startswith(f"failed {item_id}: {data / name}: ") and reason in line, line
        record = json.loads((records / f"{item_id}.json").read_text())
        assert record["status"] == "failed" and not record.get("retry")  # not retried
    assert not failed
    after = snapshot(records)
    assert {k: after[k] for k in before} == before  # finished items untouched
    index = {r["item_id"]: r for r in rows(tmp_path / "work/index/index.csv")}
    assert sorted(index) == sorted([n[:-4] for n in make_bad.GOOD_VIDEOS]
                                   + ["F207_happy", "F210_happy_take_2"])
    assert index["F207_happy"]["n_frames"] == "3"  # notes.txt and Thumbs.db are ignored
    excluded = {r["path"]: r["reason"] for r in rows(tmp_path / "work/index/excluded.csv")}
    assert set(excluded) == set(EXPECTED_EXCLUDED)
    for name, reason in EXPECTED_EXCLUDED.items():
        assert excluded[name].startswith(reason), name


def test_label_csv_cannot_leave_the_dataset_folder(fer, tmp_path):
    data = tmp_path / "data"
    make_bad.add_good_videos(data)
    make_bad.write_video(tmp_path / "outside/F009_happy_tex.avi", 4)
    outside = snapshot(tmp_path / "outside")
    result = fer("index", data, "-j", "1", "--set", "index.preset=csv",
                 "--set", f"index.csv={DATA / 'bad/escape.csv'}")
    assert result.exit_code == 0, result.output
    assert [r["item_id"] for r in rows(tmp_path / "work/index/index.csv")] == \
        ["F001_happy_tex"]
    excluded = {r["path"]: r["reason"] for r in rows(tmp_path / "work/index/excluded.csv")}
    assert excluded == {
        "../outside/F009_happy_tex.avi": "path escapes index.root",
        "/etc/passwd": "path escapes index.root",
        "F001_sad_tex.avi": "item id 'F0..01_F001_sad_tex' is not a safe file name; "
                            "rename the file"}
    assert snapshot(tmp_path / "outside") == outside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside", "work"]


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(("name", "command", "code", "message"), [
    ("wrong_type.yaml", "status", 2, "split.folds: expected int, got str 'five'"),
    ("unknown_key.yaml", "status", 2, "unknown key `split.fold`; allowed keys in `split`:"),
    ("not_yaml.yaml", "status", 2, "not valid YAML (line 3). Fix the syntax"),
])
def test_broken_config_files(fer, tmp_path, name, command, code, message):
    config = shutil.copy(DATA / "bad/configs" / name, tmp_path / name)
    line = error_line(fer(command, "--config", config), code)
    assert line.startswith(f"Error: {config}: {message}"), line


def test_dataset_folder_that_does_not_exist(fer, tmp_path):
    config = shutil.copy(DATA / "bad/configs/missing_root.yaml", tmp_path / "fer.yaml")
    line = error_line(fer("index", "-c", config), 3)
    assert line == (f"Error: {tmp_path / 'does-not-exist'}: dataset folder not found. Set "
                    "index.root to the folder that holds the videos")


def test_hand_edited_manifest(fer, tmp_path):
    data = tmp_path / "data"
    make_bad.add_good_videos(data)
    assert fer("index", data, "-j", "1").exit_code == 0
    records = snapshot(tmp_path / "work/index/records")
    manifest = tmp_path / "work/index/manifest.json"
    manifest.write_text(manifest.read_text()[:-40] + "\n")  # an editor cut it short
    line = error_line(fer("split"), 7)
    assert line.startswith(f"Error: {manifest}: manifest is not valid JSON (")
    assert line.endswith("Delete it, or re-run the stage with --force")

    verify = fer("verify")
    error_line(verify, 7)
    assert "index/manifest.json" in verify.output and "unreadable" in verify.output
    assert fer("verify", "--repair").exit_code == 0
    result = fer("index", data, "-j", "1")  # re-finalized from the records
    assert result.exit_code == 0 and "6 items already done, 0 to do" in result.output
    manifest.write_text("{")
    assert fer("index", data, "-j", "1", "--force").exit_code == 0  # --force gets past it
    assert json.loads(manifest.read_text())["stage"] == "index"
    assert records.keys() == snapshot(tmp_path / "work/index/records").keys()


# --------------------------------------------------------------------------- workdirs
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("bad-inputs") / "work"
    cfg = load_config(None, [f"workdir={workdir}", *make_bad.SMALL_PIPELINE])
    for stage in make_bad.UNTIL_EXTRACT:
        run_stage(PIPELINE[stage], cfg, PIPELINE)
    return workdir


def settings(work: Path, *extra: str) -> list[str]:
    args = []
    for setting in [f"workdir={work}", *make_bad.SMALL_PIPELINE, *extra]:
        args += ["--set", setting]
    return args


def test_openface_score_without_its_folder(fer, work):
    before = snapshot(work / "trim")
    line = error_line(fer("trim", *settings(work, "trim.score=openface")), 2)
    assert line == ("Error: trim.openface_dir is not set for trim.score=openface. Point it "
                    "at the folder of OpenFace CSVs (<item_id>.csv)")
    nowhere = work.parent / "openface"
    line = error_line(fer("trim", *settings(work, "trim.score=openface",
                                            f"trim.openface_dir={nowhere}")), 3)
    assert line == (f"Error: {nowhere}: OpenFace folder not found. Set trim.openface_dir to "
                    "the folder of OpenFace CSVs (<item_id>.csv)")
    assert snapshot(work / "trim") == before  # manifest and records untouched


def write_openface_csv(path: Path, n_frames: int) -> None:
    """An OpenFace 2.0 table whose AU intensities rise to a peak mid-clip."""
    lines = ["frame, face_id, timestamp, confidence, success, AU01_r, AU12_r"]
    for i in range(n_frames):
        level = 4.0 * (1 - abs(2 * i / max(n_frames - 1, 1) - 1))
        lines.append(f"{i + 1}, 0, {i / 25:.2f}, 0.98, 1, {level:.2f}, {level / 2:.2f}")
    path.write_text("\n".join(lines) + "\n")


def test_missing_openface_csv_fails_its_item_until_it_is_added(fer, work, tmp_path):
    copy = Path(shutil.copytree(work, tmp_path / "work"))
    tracked = json.loads((copy / "track/manifest.json").read_text())["items"]
    openface = tmp_path / "openface"
    openface.mkdir()
    lengths = {i: r["info"]["first_frame"] + r["info"]["n_frames"] for i, r in tracked.items()}
    missing = sorted(lengths)[0]
    for item_id, n in lengths.items():
        if item_id != missing:
            write_openface_csv(openface / f"{item_id}.csv", n)
    args = settings(copy, "trim.score=openface", f"trim.openface_dir={openface}")
    line = error_line(fer("trim", *args), 6)
    assert line.startswith(f"Error: 1 of {len(lengths)} items failed (first: {missing}: "
                           f"{openface / missing}.csv: OpenFace CSV not found")
    before = snapshot(copy / "trim/records")

    write_openface_csv(openface / f"{missing}.csv", lengths[missing])
    result = fer("trim", *args)
    assert result.exit_code == 0, result.output
    after = snapshot(copy / "trim/records")
    assert {k for k in after if after[k] != before[k]} == {f"{missing}.json"}


def test_truncated_feature_store_stops_training_before_any_fold(fer, work):
    store = work / "extract/features.h5"
    original = store.read_bytes()
    make_bad.truncate(store)
    line = error_line(fer("cv-train", *settings(work)), 7)
    assert line == (f"Error: {store}: is {len(original) // 2} bytes, `fer extract` wrote "
                    f"{len(original)} (truncated or altered). Run `fer verify --repair`, then "
                    "`fer extract`")
    assert not (work / "cv-train/records").exists()
    assert fer("verify", "--repair", *settings(work)).exit_code == 0
    result = fer("extract", *settings(work))
    assert result.exit_code == 0 and "0 to do" in result.output  # rebuilt from items/*.npy
    assert store.read_bytes() == original


def test_damaged_checkpoint_fails_its_fold_alone(fer, work):
    cfg = load_config(None, [f"workdir={work}", *make_bad.SMALL_PIPELINE])
    ctx = context_for(PIPELINE["cv-train"], cfg, PIPELINE)
    fold = work / "cv-train/runs" / run_name(cfg, train_params(cfg), ctx.upstream_hashes) / "fold-0"
    fold.mkdir(parents=True)  # a run killed after epoch 1 whose checkpoint got damaged
    checkpoint = fold / "latest-e0001.keras"
    checkpoint.write_bytes(b"PK\x03\x04 not a whole zip file")
    (fold / "state.json").write_text(json.dumps({"epoch": 1, "latest": checkpoint.name,
                                                 "best_epoch": 1, "best_val_accuracy": 0.5}))
    line = error_line(fer("cv-train", *settings(work)), 6)
    assert line.startswith(f"Error: 1 of 2 items failed (first: fold-0: {checkpoint}: model "
                           "file cannot be loaded (")
    assert "Delete it to restart fold-0 from epoch 1)" in line
    records = work / "cv-train/records"
    assert json.loads((records / "fold-1.json").read_text())["status"] == "done"
    fold_1 = snapshot(fold.parent / "fold-1")

    checkpoint.unlink()  # what the message says
    result = fer("cv-train", *settings(work))
    assert result.exit_code == 0, result.output
    assert json.loads((records / "fold-0.json").read_text())["info"]["epochs"] == 2
    assert snapshot(fold.parent / "fold-1") == fold_1  # the finished fold was not redone
