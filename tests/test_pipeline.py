"""The whole pipeline on a slice of sample_data: extract -> cv-train -> finalize -> fuse ->
evaluate -> report, with real OpenCV, real Keras training and real HDF5 files."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import support
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from fercli.core.config import load_config
from fercli.core.engine import run_stage
from fercli.features.featurestore import FeatureStore
from fercli.stages import PIPELINE

pytestmark = pytest.mark.slow  # minutes: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = support.small_pipeline(epochs=3)


def config(workdir: Path, *extra: str):
    return load_config(None, [f"workdir={workdir}", *SETTINGS, *extra])


def run(cfg, *stages, **kw):
    return [run_stage(PIPELINE[s], cfg, PIPELINE, **kw) for s in stages]


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("pipeline") / "work"
    cfg = config(workdir)
    run(cfg, "index", "split", "detect", "track", "trim", "augment", "extract", "cv-train",
        "finalize")
    return workdir


def test_feature_store_rows_masks_and_augmentation(work):
    splits = json.loads((work / "split/splits.json").read_text())
    index = {r["item_id"]: r for r in rows(work / "index/index.csv")}
    classes = json.loads((work / "index/classes.json").read_text())
    with FeatureStore(work / "extract/features.h5") as store:
        originals = store.augment == ""
        assert originals.sum() == len(index) == 30
        assert (~originals).sum() == sum(len(f) for f in splits["items"]["folds"])  # 1 method
        assert store.feature_dim == 128 and store.onehot.shape == (len(store), 6)
        test_items = set(splits["items"]["test"])
        for i in range(len(store)):
            item = store.items[i]
            assert store.subjects[i] == index[item]["subject"]
            assert classes[store.labels[i]] == index[item]["label"]
            if item in test_items:
                assert store.parts[i] == "test" and store.augment[i] == ""
            features, mask = store.sequence(i, 40)
            n = store.lengths[i]
            assert mask.sum() == min(n, 40) and mask[:min(n, 40)].all()
            assert not features[min(n, 40):].any()
        assert store.lengths.max() > 40  # some clips are truncated, others padded
        assert store.lengths.min() < 40


def test_cv_train_folds_are_subject_disjoint_and_summarised(work):
    manifest = json.loads((work / "cv-train/manifest.json").read_text())
    folds = manifest["items"]
    assert sorted(folds) == ["fold-0", "fold-1"]
    run = folds["fold-0"]["info"]["run"]
    assert run.startswith("cnn1d-small-")
    for info in (f["info"] for f in folds.values()):
        assert not set(info["val_subjects"]) & set(info["train_subjects"])
        assert info["epochs"] == 3 and info["devices"]
    run_dir = work / "cv-train/runs" / run
    for name in ("mean_curve.png", "mean_curve.csv", "summary.csv", "config.yaml",
                 "classes.json", "run.json"):
        assert (run_dir / name).is_file(), name
    log = rows(run_dir / "fold-0/log.csv")
    assert [int(r["epoch"]) for r in log] == [1, 2, 3]
    val = rows(run_dir / "fold-1/val_probs.csv")
    assert all(abs(sum(float(r[c]) for c in json.loads((run_dir / "classes.json")
                                                      .read_text())) - 1) < 1e-3 for r in val)


def test_finalize_writes_model_epochs_and_test_probabilities(work):
    run_dir = next((work / "finalize/runs").iterdir())
    info = json.loads((run_dir / "model.json").read_text())
    assert info["epochs"] >= 1 and len(info["fold_epochs"]) == 2
    assert (run_dir / "model.keras").stat().st_size > 0
    test = rows(run_dir / "test_probs.csv")
    assert len(test) == 6 and info["test_rows"] == 6
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["python"] == platform.python_version()
    assert versions["libraries"]["numpy"] == np.__version__


def test_versions_name_python_the_key_libraries_and_every_distribution():
    import h5py
    import tensorflow as tf

    from fercli import __version__
    from fercli.core.versions import collect_versions

    versions = collect_versions()
    libraries = versions["libraries"]
    assert libraries["fercli"] == __version__ and libraries["h5py"] == h5py.__version__
    assert libraries["tensorflow"] == tf.__version__ and libraries["opencv-contrib-python"]
    assert set(libraries) <= set(map(str.lower, versions["installed"]))


def test_run_with_one_model_skips_fuse_and_writes_the_report(work, fer):
    """The most common first experiment: one model. fuse says why it has nothing to do,
    evaluate and report run, exit 0."""
    assert len(list((work / "finalize/runs").iterdir())) == 1
    args = [a for setting in [f"workdir={work}", *SETTINGS] for a in ("--set", setting)]
    result = fer("run", *args)
    assert result.exit_code == 0, result.output
    assert "fuse: skipped: 1 finalized run" in " ".join(result.output.split())
    assert (work / "report/report.html").is_file()
    assert (work / "evaluate/summary.csv").is_file()
    again = fer("fuse", *args)  # fuse alone, up to date: exit 0
    assert again.exit_code == 0, again.output


def test_run_reports_honest_cv_and_uar(work):
    """run.json: accuracy and UAR of the mean curve's best epoch (one epoch for all folds);
    the mean of the folds' own best epochs only under its optimistic name."""
    [run_json] = (work / "cv-train/runs").glob("cnn1d-*/run.json")
    info = json.loads(run_json.read_text())
    curve = rows(run_json.parent / "mean_curve.csv")
    best = max(curve, key=lambda r: (float(r["val_accuracy"]), -int(r["epoch"])))
    assert info["cv_epoch"] == int(best["epoch"])
    assert info["cv_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert info["cv_uar"] == pytest.approx(float(best["val_uar"]))
    assert info["optimistic_mean_best_val_accuracy"] >= info["cv_accuracy"] - 1e-9
    assert "mean_best_val_accuracy" not in info
    assert {"uar", "val_uar"} <= set(rows(run_json.parent / "fold-0/log.csv")[0])


def test_pooled_model_with_identity_normalisation_end_to_end(work, tmp_path):
    """The default model, with baselines from the clips' neutral onsets, through finalize
    and predict (in a copy of the workdir: the other tests expect one finalized run)."""
    import shutil

    from fercli.features.identity import BASELINE_FRAMES
    from fercli.inference.predict import predict_videos

    work = Path(shutil.copytree(work, tmp_path / "work"))
    cfg = config(work, "train.model=pooled", "train.model_params={}", "train.identity=onset",
                 "train.epochs=2")
    results = run(cfg, "cv-train", "finalize")
    assert all(r.n_failed == 0 for r in results)
    [run_dir] = (work / "finalize/runs").glob("pooled-*")
    info = json.loads((run_dir / "model.json").read_text())
    assert info["identity"] is True
    with FeatureStore(work / "extract/features.h5") as store:
        row = int(np.flatnonzero(store.augment == "")[0])
        first = store.onsets[row]
        assert store.baselines.shape == (len(store), store.feature_dim)
    assert first >= BASELINE_FRAMES  # sample clips open on a neutral face that trim cuts
    video = ROOT / "sample_data" / "F001_happy_tex.avi"
    [row] = predict_videos([video], [run_dir], work / "predict-pooled")
    assert row["status"] == "ok"


def test_cv_train_single_fold(work):
    cfg = config(work, "train.epochs=2")
    result = run_stage(PIPELINE["cv-train"], cfg, PIPELINE, only=["fold-1"])
    assert result.n_processed == 1 and not result.complete
    runs = [p for p in (work / "cv-train/runs").iterdir() if "fold-1" in
            {q.name for q in p.iterdir()} and not (p / "fold-0").exists()]
    assert len(runs) == 1  # a new run folder holding fold 1 only


def test_killed_fold_resumes_at_the_next_epoch(work, tmp_path):
    extra = ["train.model=lstm", "train.model_params={units: 8}", "train.epochs=8"]
    args = [sys.executable, "-m", "fercli.cli", "cv-train", "--fold", "0"]
    for setting in [f"workdir={work}", *SETTINGS, *extra]:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    states = []
    while time.time() < deadline and proc.poll() is None:
        states = list((work / "cv-train/runs").glob("lstm-*/fold-0/state.json"))
        if states and json.loads(states[0].read_text())["epoch"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fold_dir = states[0].parent
    killed_at = json.loads(states[0].read_text())["epoch"]
    assert 2 <= killed_at < 8
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    log = rows(fold_dir / "log.csv")
    assert [int(r["epoch"]) for r in log] == list(range(1, 9))  # no gap, no duplicate
    assert f"resuming fold-0 at epoch {killed_at + 1}" in result.stderr
    assert len(list(fold_dir.glob("latest-e*.keras"))) == 1


def test_fuse_and_evaluate_match_sklearn(work):
    from fercli.learning.evaluation import load_probabilities
    from fercli.learning.fusion import fuse_scores

    cfg = config(work, "train.model=lstm", "train.model_params={units: 8}")
    run(cfg, "cv-train", "finalize", "fuse", "evaluate")
    table = rows(work / "fuse/fusion_table.csv")
    assert {r["method"] for r in table} == {"average", "weighted", "max"}
    classes = json.loads((work / "index/classes.json").read_text())
    summary = {r["target"]: r for r in rows(work / "evaluate/summary.csv")}
    for run_dir in (work / "finalize/runs").iterdir():
        probs = load_probabilities(run_dir / "test_probs.csv", classes)
        metrics = json.loads((work / "evaluate/targets" / run_dir.name / "metrics.json")
                             .read_text())
        pred = probs.probs.argmax(1)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(probs.labels, pred))
        assert metrics["uar"] == pytest.approx(balanced_accuracy_score(probs.labels, pred))
        assert np.array_equal(metrics["confusion"],
                              confusion_matrix(probs.labels, pred, labels=range(6)))
        assert float(summary[run_dir.name]["accuracy"]) == pytest.approx(metrics["accuracy"])
        # fusing a run with itself changes nothing, whatever the method
        for method in ("average", "weighted", "max"):
            fused = fuse_scores([probs.probs, probs.probs], method, [0.7, 0.7])
            assert np.allclose(fused, probs.probs)


def test_report_embeds_every_figure(work, fer):
    result = fer("report", "--set", f"workdir={work}")
    assert result.exit_code == 0, result.output
    page = (work / "report/report.html").read_text()
    n_images = page.count("<img ")
    assert n_images >= 8 and page.count('src="data:image/png;base64,') == n_images
    for section in ("Dataset", "Cross-validation", "Late fusion", "Test set",
                    "Misclassified items"):
        assert section in page
    markdown = (work / "report/report.md").read_text()
    for link in [line.split("](")[1].rstrip(")\n") for line in markdown.splitlines()
                 if line.startswith("![")]:
        assert (work / "report" / link).resolve().is_file(), link


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def test_report_opens_in_headless_chromium_with_every_image(work, fer, tmp_path):
    assert fer("report", "--set", f"workdir={work}").exit_code == 0
    page = (work / "report/report.html").read_text()
    probe = tmp_path / "probe.html"
    check = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             " const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
             " document.title = `IMAGES ${imgs.length} BROKEN ${broken}`; });</script>")
    probe.write_text(page.replace("</body>", check + "</body>"))
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'ud'}",
                             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    title = result.stdout.split("<title>")[1].split("</title>")[0]
    n_images = page.count("<img ")
    assert title == f"IMAGES {n_images} BROKEN 0", title


@pytest.mark.parametrize("model, extra", [
    ("bilstm", ["train.model_params={units: 8}"]),
    ("lrcn", ["train.model_params={filters: [4, 4], units: 8}", "train.clip_size=32",
              "train.max_frames=16"]),
    ("c3d", ["train.model_params={filters: [4, 4, 8], dense_units: [16, 16]}",
             "train.clip_size=32", "train.max_frames=32"]),
    ("convlstm", ["train.model_params={filters: [2, 2]}", "train.clip_size=24",
                  "train.max_frames=12"]),
])
def test_every_model_completes_all_folds(work, model, extra):
    cfg = config(work, f"train.model={model}", "train.epochs=1", *extra)
    result = run_stage(PIPELINE["cv-train"], cfg, PIPELINE)
    assert result.complete and result.n_failed == 0
    run = json.loads((work / "cv-train/manifest.json").read_text())["items"]["fold-0"]
    assert run["info"]["run"].startswith(f"{model}-")
    assert (work / "cv-train/runs" / run["info"]["run"] / "mean_curve.png").is_file()


def test_tune_searches_with_cross_validation(work, fer):
    result = fer("tune", "--set", f"workdir={work}", *sum((["--set", s] for s in SETTINGS), []),
                 "--set", "train.model=lstm", "--set", "train.model_params={}",
                 "--set", "tune.trials=2", "--set", "tune.epochs=1",
                 "--set", "tune.space={units: [4, 8], dropout: {min: 0.1, max: 0.5}}")
    assert result.exit_code == 0, result.output
    [search] = (work / "tune").glob("lstm-*")
    trials = rows(search / "trials.csv")
    assert len(trials) == 2 and {"units", "dropout", "mean_val_accuracy"} <= set(trials[0])
    best = (search / "best.yaml").read_text()
    assert "model: lstm" in best and "units:" in best
    # the snippet is a valid config file
    snippet = search / "best.yaml"
    assert load_config(snippet, [])["train"]["model"] == "lstm"
    # a space the model cannot take stops at once with one line
    bad = fer("tune", "--set", f"workdir={work}", "--set", "train.model=lstm",
              "--set", "tune.space={filters: [4, 8]}", "--set", "tune.trials=1")
    assert bad.exit_code == 2 and "filters" in bad.output


# What TensorFlow prints on a CPU machine unless told not to (issue 14, item 4)
CHATTER = re.compile(r"absl|cuInit|cuda|oneDNN|retracing|TF-TRT|Unable to register cu"
                     r"|^[IWEF]\d{4} ", re.IGNORECASE)


def test_training_output_has_no_tensorflow_chatter(work, tmp_path):
    """A real `fer cv-train` (TensorFlow imported, a model trained and predicting per fold)
    prints no absl, CUDA, oneDNN or retracing line (`fer --verbose` would)."""
    import shutil

    work = Path(shutil.copytree(work, tmp_path / "work"))
    fer = Path(sys.executable).with_name("fer")
    args = [str(fer)] if fer.is_file() else [sys.executable, "-m", "fercli.cli"]
    args.append("cv-train")
    for setting in [f"workdir={work}", *SETTINGS, "train.epochs=1"]:
        args += ["--set", setting]
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "FERCLI_VERBOSE")}  # the defaults
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(work.glob("cv-train/runs/*/fold-*/val_probs.csv"))) >= 2
    output = (result.stdout + result.stderr).splitlines()
    assert not [line for line in output if CHATTER.search(line)]


def test_tracker_comparison_table(work, fer):
    result = fer("track", "--compare", "medianflow,kcf", "--limit", "3",
                 "--set", f"workdir={work}", *sum((["--set", s] for s in SETTINGS), []))
    assert result.exit_code == 0, result.output
    table = rows(work / "track/compare/trackers.csv")
    assert [r["tracker"] for r in table] == ["medianflow", "kcf"]
    assert all(r["items"] == "3" and r["failed"] == "0" and float(r["fps"]) > 0 for r in table)


def test_extract_accepts_a_keras_model_file_as_backbone(work, tmp_path, fer):
    """A model file, as `fer pretrain` writes, works as `extract.backbone` (runs last: it
    re-extracts the shared work directory)."""
    import keras

    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(12, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(6, activation="softmax")(x)
    model_file = tmp_path / "pretrained.keras"
    keras.Model(inputs, outputs).save(model_file)
    args = ["extract", "--set", f"extract.backbone={model_file}", "--set",
            "extract.weights=null"]
    upstream = [s for s in SETTINGS if not s.startswith(("extract.", "train.", "finalize."))]
    for setting in [f"workdir={work}", *upstream]:
        args += ["--set", setting]
    result = fer(*args)
    assert result.exit_code == 0, result.output
    with FeatureStore(work / "extract/features.h5") as store:
        assert store.feature_dim == 12 and store.attrs["backbone"] == str(model_file)
