"""The real-data scripts: their pure helpers everywhere, real faces only where FER_DATA is set.

The development copies of ../shared/DATA.md are never in the repository; the tests that
read them skip with one line when ``FER_DATA`` does not point at them.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import accuracy  # noqa: E402
import realdata  # noqa: E402

DATA = Path(os.environ["FER_DATA"]) if os.environ.get("FER_DATA") else None


def test_wilson_interval_matches_the_textbook_value():
    low, high = accuracy.wilson(81, 100)  # Wilson 95% for 0.81, n 100: 0.722-0.875
    assert (round(low, 3), round(high, 3)) == (0.722, 0.875)
    assert accuracy.wilson(0, 10)[0] == pytest.approx(0, abs=1e-12)
    assert accuracy.wilson(10, 10)[1] == pytest.approx(1)


def test_uar_is_the_mean_of_per_class_recalls():
    truth = ["a", "a", "a", "b"]
    assert accuracy.uar(truth, ["a", "a", "a", "a"]) == pytest.approx(0.5)
    assert accuracy.uar(truth, ["a", "a", "b", "b"]) == pytest.approx((2 / 3 + 1) / 2)


def test_outer_groups_hold_every_subject_once_and_balance_items():
    counts = {f"S{i:03d}": 1 + i % 4 for i in range(23)}
    groups = accuracy.outer_groups(counts, 5, seed=1)
    assert sorted(s for g in groups for s in g) == sorted(counts)
    sizes = [sum(counts[s] for s in g) for g in groups]
    assert max(sizes) - min(sizes) <= max(counts.values())
    assert groups == accuracy.outer_groups(counts, 5, seed=1)


def test_still_frames_reads_a_frames_list(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "x.frames"
    listing.write_text("# frames\na.png\nb.png\n")
    row = {"kind": "frames", "path": str(listing)}
    assert accuracy.still_frames(row) == [tmp_path / "a.png", tmp_path / "b.png"]
    assert accuracy.apex_frame(row) == str(tmp_path / "b.png")
    assert accuracy.apex_frame({"kind": "video", "path": "v.avi"}) == ""


@pytest.mark.parametrize("script", ["realdata.py", "accuracy.py"])
def test_scripts_skip_in_one_line_without_fer_data(script):
    env = {k: v for k, v in os.environ.items() if k != "FER_DATA"}
    args = [] if script == "realdata.py" else ["ckplus48"]
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert any("FER_DATA is not set" in line for line in lines)
    assert "Traceback" not in done.stdout + done.stderr


def test_markdown_table_of_realdata_rows():
    row = {"dataset": "x", "indexed": 2, "excluded": 0, "failed": {"trim": 0}, "anomalies": 0,
           "clips": 2, "last_frame_cut": 0, "frame0_spikes": 0, "frames_kept": 8,
           "frames": 10, "shapes": {"onset-apex": 2}}
    table = realdata.markdown([row])
    assert "| x | 2 | 0 | 0 | 0/2 | 0 | 0 | 8/10 | onset-apex 2 | - |" in table


needs_data = pytest.mark.skipif(DATA is None, reason="FER_DATA is not set (real faces: "
                                "see ../shared/DATA.md)")


@needs_data
def test_ckplus48_indexes_one_sequence_per_sxxx_yyy(tmp_path):
    from fercli import api

    root = DATA / "CK+48"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    config = api.load_config(None, [f"workdir={tmp_path / 'work'}", f"index.root={root}",
                                    "index.preset=ckplus48"])
    api.run_pipeline(config, until="index")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "work/index/index.csv").read_text())))
    excluded = list(csv.DictReader(io.StringIO(
        (tmp_path / "work/index/excluded.csv").read_text())))
    contempt = [r for r in excluded if r["path"].startswith("contempt/")]
    assert (len(rows), len(rows) + len(contempt)) == (309, 327)
    assert all(int(r["n_frames"]) == 3 for r in rows)


@needs_data
def test_real_ckplus_videos_keep_their_apex_without_a_frame0_spike(tmp_path):
    from fercli import api

    root = realdata.ckplus_videos_root(DATA, tmp_path)
    if root is None:
        pytest.skip("the two CK+ videos are not under FER_DATA/datasets")
    work = tmp_path / "work"
    config = api.load_config(None, [f"workdir={work}", f"index.root={root}",
                                    "index.preset=folder-per-label", "index.classes=[angry]",
                                    "split.folds=2", "split.test_fraction=0"])
    api.run_pipeline(config, until="trim")
    figures = realdata.trim_figures(work)
    assert figures["clips"] == 2
    assert (figures["anomalies"], figures["last_frame_cut"], figures["frame0_spikes"]) == (0,) * 3
    assert figures["shapes"] == {"onset-apex": 2}
