"""`fer pretrain` on small FER2013-format data: reading, pipeline, and a full two-phase run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercli.core.errors import ConfigError, InputError
from fercli.core.workspace import file_sha256
from fercli.features.backbones import build_feature_extractor
from fercli.features.pretrain import (
    ImageSplit,
    augmentation,
    load_still_images,
    make_dataset,
    read_fer2013_csv,
    run_pretrain,
    scan_image_folders,
)


def shape_image(code: int, rng: np.random.Generator, side: int = 48) -> np.ndarray:
    """A noisy 48x48 gray image with one bright shape per FER2013 code (learnable classes)."""
    image = np.clip(rng.normal(110, 20, (side, side)), 0, 255).astype(np.uint8)
    cx, cy = (int(v) for v in rng.integers(18, 30, 2))
    r = int(rng.integers(8, 12))
    ink = int(rng.integers(200, 256))
    if code == 0:
        cv2.circle(image, (cx, cy), r, ink, -1)
    elif code == 1:
        cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), ink, -1)
    elif code == 2:
        cv2.rectangle(image, (cx - r - 6, cy - 3), (cx + r + 6, cy + 3), ink, -1)
    elif code == 3:
        cv2.rectangle(image, (cx - 3, cy - r - 6), (cx + 3, cy + r + 6), ink, -1)
    elif code == 4:
        triangle = np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)])
        cv2.fillPoly(image, [triangle], ink)
    elif code == 5:
        cv2.line(image, (cx - r, cy - r), (cx + r, cy + r), ink, 3)
        cv2.line(image, (cx - r, cy + r), (cx + r, cy - r), ink, 3)
    else:
        cv2.circle(image, (cx, cy), r, ink, 2)
    return image


def write_fer2013_csv(path: Path, per_class: int = 20, neutral: int = 4, seed: int = 0) -> Path:
    """FER2013 layout: per class per_class-6 Training, 3 PublicTest, 3 PrivateTest rows."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for code in range(7):
            for k in range(per_class if code < 6 else neutral):
                usage = ("Training" if k < per_class - 6 else
                         "PublicTest" if k < per_class - 3 else "PrivateTest")
                pixels = " ".join(map(str, shape_image(code, rng).ravel()))
                writer.writerow([code, pixels, usage])
    return path


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    return write_fer2013_csv(tmp_path / "fer2013.csv")


def test_fer2013_csv_maps_codes_and_keeps_its_usage_split(fer_csv):
    pixels, labels, usage = read_fer2013_csv(fer_csv)
    assert pixels.shape == (124, 48, 48) and pixels.dtype == np.uint8
    assert labels[0] == "angry" and labels[-1] == "neutral"
    assert usage.count("training") == 6 * 14 + 4
    data = load_still_images(fer_csv)
    assert data.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise"]
    assert data.dropped == {"neutral": 4}
    assert {name: len(part) for name, part in data.splits.items()} == {
        "train": 84, "val": 18, "test": 18}
    assert data.counts()["test"] == dict.fromkeys(data.classes, 3)
    with_neutral = load_still_images(fer_csv, ["happy", "neutral"])
    assert with_neutral.counts()["train"] == {"happy": 14, "neutral": 4}


def test_fer2013_csv_without_usage_is_split_stratified(tmp_path):
    rows = [("3" if i % 2 else "4", " ".join(["7"] * 2304)) for i in range(40)]
    path = tmp_path / "no_usage.csv"
    path.write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p in rows))
    data = load_still_images(path, ["happy", "sad"], seed=3)
    assert data.counts() == {"train": {"happy": 16, "sad": 16}, "val": {"happy": 2, "sad": 2},
                             "test": {"happy": 2, "sad": 2}}
    assert "stratified" in data.split_rule


def test_bad_csv_rows_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("emotion,pixels,Usage\n"
                    f"3,{' '.join(['1'] * 2304)},Training\n"
                    f"9,{' '.join(['1'] * 2304)},Training\n"
                    f"2,{' '.join(['1'] * 2303)},Training\n")
    with pytest.raises(InputError, match=r"2 row\(s\).*line 3, 4"):
        read_fer2013_csv(path)
    (tmp_path / "other.csv").write_text("label,image\n1,2\n")
    with pytest.raises(InputError, match="is not a FER2013 CSV"):
        read_fer2013_csv(tmp_path / "other.csv")


def write_label_folders(root: Path, names: dict[str, int], rng) -> None:
    for folder, count in names.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            code = {"happiness": 3, "Anger": 0, "contempt": 6}[Path(folder).name]
            cv2.imwrite(str(root / folder / f"{i:03d}.png"), shape_image(code, rng))


def test_label_folders_use_synonyms_and_carve_held_out_parts(tmp_path):
    write_label_folders(tmp_path / "flat", {"happiness": 10, "Anger": 10, "contempt": 2},
                        np.random.default_rng(1))
    data = load_still_images(tmp_path / "flat", ["angry", "happy"], seed=1)
    assert data.dropped == {"contempt": 2}
    assert data.counts() == {"train": {"angry": 8, "happy": 8}, "val": {"angry": 1, "happy": 1},
                             "test": {"angry": 1, "happy": 1}}
    assert data.fingerprint["files"] == 22


def test_train_test_folders_keep_their_test_part(tmp_path):
    write_label_folders(tmp_path / "kaggle", {"train/happiness": 10, "train/Anger": 10,
                                              "test/happiness": 2, "test/Anger": 3},
                        np.random.default_rng(2))
    data = load_still_images(tmp_path / "kaggle", ["angry", "happy"], seed=1)
    assert data.counts()["test"] == {"angry": 3, "happy": 2}
    assert data.counts()["val"] == {"angry": 1, "happy": 1}
    batch, targets = next(iter(make_dataset(data.splits["test"], 2, (32, 32, 3), 8)))
    assert batch.shape == (5, 32, 32, 3) and targets.numpy().sum(axis=0).tolist() == [3, 2]
    with pytest.raises(InputError, match="class\\(es\\) sad have no training images"):
        load_still_images(tmp_path / "kaggle", ["angry", "sad"])


@pytest.mark.parametrize("channels", [1, 3])
def test_tiff_stills_decode_like_png(tmp_path, channels):
    """JAFFE ships .tiff, which tf.io cannot decode: OpenCV reads them, same pixels as PNG."""
    rng = np.random.default_rng(3)
    images = {"happy": shape_image(3, rng), "angry": shape_image(0, rng)}
    for suffix in (".png", ".tiff"):
        for label, image in images.items():
            (tmp_path / suffix / label).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / suffix / label / f"KA{suffix}"), image)
    batches = []
    for suffix in (".png", ".tiff"):
        paths, labels, _ = scan_image_folders(tmp_path / suffix)
        part = ImageSplit(np.array([sorted(set(labels)).index(x) for x in labels]),
                          paths=paths)
        batches.append(next(iter(make_dataset(part, 2, (24, 24, channels), 4)))[0].numpy())
    assert batches[0].shape == (2, 24, 24, channels)
    np.testing.assert_array_equal(batches[0], batches[1])


def test_dataset_images_stay_with_their_labels(tmp_path):
    """Flat images whose gray level encodes the class: each batch's pixels match its labels."""
    path = tmp_path / "levels.csv"
    rows = [(code, " ".join([str(40 * code)] * 2304)) for code in (0, 3, 4) for _ in range(6)]
    path.write_text("emotion,pixels\n" + "".join(f"{c},{p}\n" for c, p in rows))
    data = load_still_images(path, ["angry", "happy", "sad"], seed=0)
    train = data.splits["train"]
    for images, targets in make_dataset(train, 3, (24, 24, 3), 5, shuffle_seed=1):
        levels = images.numpy().mean(axis=(1, 2, 3))
        codes = np.array([0, 3, 4])[targets.numpy().argmax(axis=1)]
        np.testing.assert_allclose(levels, 40 * codes, atol=1e-3)


def test_augmentation_keeps_shape_and_pixel_range():
    import tensorflow as tf

    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)), tf.float32)
    out = augmentation(5)(images).numpy()
    assert out.shape == (4, 32, 32, 3)
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images.numpy())


def test_pretrain_end_to_end_then_extract_by_path(fer_csv, tmp_path):
    out = tmp_path / "pretrain"
    settings = {"backbone": "small-cnn", "weights": None, "trials": 2, "epochs_head": 2,
                "epochs_finetune": 1, "unfreeze_blocks": 2, "batch_size": 16,
                "image_size": 48, "seed": 1}
    summary = run_pretrain(fer_csv, out, **settings)

    for name in ("model.keras", "classification_report.csv", "confusion_matrix.csv",
                 "confusion_matrix.png", "tuner_trials.csv", "summary.json",
                 "finetune_history.csv", "finetune_history.png", "test_predictions.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tuner").is_dir()
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["data"]["dropped_labels"] == {"neutral": 4}
    assert summary["class_weight"] == dict.fromkeys(summary["classes"], 1.0)
    assert summary["phase1"]["trials"] == 2 and summary["phase2"]["epochs_run"] == 1
    assert summary["phase2"]["trainable_layers"] == 2  # block2_conv and block3_conv

    with open(out / "tuner_trials.csv") as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 2 and {t["status"] for t in trials} == {"COMPLETED"}
    assert all(t["units_1"] in ("256", "512", "1024") for t in trials)
    assert all(0.2 <= float(t["dropout_1"]) <= 0.9 for t in trials)
    with open(out / "classification_report.csv") as handle:
        report = {row["class"]: row for row in csv.DictReader(handle)}
    assert [report[c]["support"] for c in summary["classes"]] == ["3"] * 6
    assert float(report["accuracy"]["f1"]) == summary["test"]["accuracy"]
    matrix = np.loadtxt(out / "confusion_matrix.csv", delimiter=",", skiprows=1,
                        usecols=range(1, 7))
    assert matrix.sum() == 18 and matrix.sum(axis=1).tolist() == [3] * 6
    probabilities = np.loadtxt(out / "test_predictions.csv", delimiter=",", skiprows=1,
                               usecols=range(2, 8))
    assert probabilities.shape == (18, 6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)

    units = summary["phase1"]["best_hyperparameters"][
        f"units_{summary['phase1']['best_hyperparameters']['dense_layers']}"]
    assert summary["feature_layer"]["dim"] == units
    extractor = build_feature_extractor(str(out / "model.keras"))
    assert (extractor.layer, extractor.feature_dim) == ("dense", units)
    assert extractor.describe()["weights_sha256"] == file_sha256(out / "model.keras")
    faces = np.random.default_rng(0).integers(0, 256, (3, 160, 160, 3)).astype(np.uint8)
    features = extractor.extract(faces)
    assert features.shape == (3, units) and np.isfinite(features).all()
    assert extractor.extract(faces[..., 0]).shape == (3, units)

    # a second run resumes the finished search (no new trial); phase 2 can be skipped;
    # a search started with other settings is refused
    again = run_pretrain(fer_csv, out, **{**settings, "unfreeze_blocks": 0})
    assert again["phase1"] == summary["phase1"]
    assert again["phase2"] == {"unfrozen_blocks": 0, "epochs_run": 0}
    with pytest.raises(ConfigError, match="tuner search with other seed"):
        run_pretrain(fer_csv, out, **{**settings, "seed": 2})
