"""Input pipelines on real HDF5 stores and real FFV1 clips; fold rows; device strategies."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fercli.core.errors import ArtifactError, ConfigError, InputError
from fercli.features.featurestore import FeatureStore, FeatureStoreWriter, Row
from fercli.learning import datasets
from fercli.learning.datasets import (
    clip_dataset,
    describe_devices,
    distribution_strategy,
    enable_mixed_precision,
    feature_dataset,
    final_rows,
    load_clip,
    training_rows,
)
from fercli.learning.models import build_model, compile_model
from fercli.vision.clipio import ClipWriter

CLASSES = ["angry", "happy", "sad"]
PARTS = {"S0": "fold-0", "S1": "fold-0", "S2": "fold-1", "S3": "fold-1", "S4": "fold-2",
         "S5": "fold-2", "S6": "test", "S7": "unassigned"}
ROOT = Path(__file__).resolve().parents[1]


def write_store(path: Path, parts: dict[str, str] = PARTS) -> Path:
    """Per subject 2 items of lengths 2..9, each with one augmented copy; F=3.

    Feature 0 of every frame holds the row number, so batches show which rows they hold.
    """
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(path, feature_dim=3, classes=CLASSES, dtype="float32") as writer:
        row = 0
        for s, (subject, part) in enumerate(parts.items()):
            for k in range(2):
                item = f"{subject}_{CLASSES[(s + k) % 3]}"
                length = 2 + (3 * s + k) % 8
                for augment in ("", "flip"):
                    frames = rng.normal(size=(length, 3)).astype(np.float32)
                    frames[:, 0] = row
                    name = item + (f"@{augment}" if augment else "")
                    writer.add(Row(name, item, subject, (s + k) % 3, augment, part), frames)
                    row += 1
    return path


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "features.h5")


def _epoch(dataset):
    """All batches of one pass, concatenated: (features, masks, labels) as NumPy."""
    batches = list(dataset.as_numpy_iterator())
    return tuple(np.concatenate([b[0][key] for b in batches]) for key in ("features", "mask")) \
        + (np.concatenate([b[1] for b in batches]),)


def test_training_rows_keep_validation_original_and_subject_independent(store_path):
    with FeatureStore(store_path) as store:
        train, validation = training_rows(store, fold=1, n_folds=3)
        assert set(store.parts[validation]) == {"fold-1"}
        assert set(store.augment[validation]) == {""}
        assert len(validation) == len(store.select(["fold-1"], with_augmented=False)) == 4
        assert set(store.parts[train]) == {"fold-0", "fold-2"}
        assert set(store.augment[train]) == {"", "flip"} and len(train) == 16
        assert not set(store.subjects[train]) & set(store.subjects[validation])
        plain_train, _ = training_rows(store, fold=1, n_folds=3, with_augmented=False)
        assert set(store.augment[plain_train]) == {""} and len(plain_train) == 8
        everything = final_rows(store)
        assert set(store.parts[everything]) == {"fold-0", "fold-1", "fold-2"}
        assert len(everything) == 24 and len(final_rows(store, with_augmented=False)) == 12
        test = datasets.test_rows(store)
        assert set(store.parts[test]) == {"test"} and set(store.augment[test]) == {""}
        with pytest.raises(ConfigError, match="fold 3 does not exist"):
            training_rows(store, fold=3, n_folds=3)
        with pytest.raises(ArtifactError, match="rows of fold-2, but the split has 2 folds"):
            training_rows(store, fold=0, n_folds=2)


def test_a_fold_without_sequences_is_an_input_error(tmp_path):
    path = write_store(tmp_path / "f.h5", {"S0": "fold-0", "S1": "fold-0", "S2": "test"})
    with FeatureStore(path) as store, pytest.raises(InputError, match="0 validation"):
        training_rows(store, fold=1, n_folds=2)


def test_feature_dataset_shapes_masks_and_contents(store_path):
    with FeatureStore(store_path) as store:
        rows = final_rows(store)
        dataset = feature_dataset(store_path, rows, max_frames=6, batch_size=5, shuffle=False,
                                  seed=0)
        assert dataset.cardinality() == 5     # 24 rows: 4 full batches and one of 4
        features, masks, labels = _epoch(dataset)
        assert features.shape == (24, 6, 3) and features.dtype == np.float32
        assert masks.shape == (24, 6) and masks.dtype == np.float32 and labels.shape == (24, 3)
        assert set(np.unique(masks)) == {0, 1}
        masks = masks.astype(bool)
        assert list(features[:, 0, 0].astype(int)) == list(rows)
        np.testing.assert_array_equal(masks.sum(1), np.minimum(store.lengths[rows], 6))
        assert not features[~masks].any()
        np.testing.assert_array_equal(labels, store.onehot[rows])
        expected, _ = store.sequence(int(rows[7]), 6)
        np.testing.assert_array_equal(features[7], expected)


def test_feature_dataset_reshuffles_each_epoch_reproducibly(store_path):
    with FeatureStore(store_path) as store:
        rows = final_rows(store)
    dataset = feature_dataset(store_path, rows, 4, batch_size=8, shuffle=True, seed=7)
    first, second = (_epoch(dataset)[0][:, 0, 0] for _ in range(2))
    assert sorted(first) == sorted(second) == sorted(rows) and list(first) != list(second)
    again = feature_dataset(store_path, rows, 4, batch_size=8, shuffle=True, seed=7)
    np.testing.assert_array_equal(_epoch(again)[0][:, 0, 0], first)
    other_seed = feature_dataset(store_path, rows, 4, batch_size=8, shuffle=True, seed=8)
    assert list(_epoch(other_seed)[0][:, 0, 0]) != list(first)


def test_feature_dataset_streams_rows_on_demand(store_path, monkeypatch):
    reads = []
    read_block = FeatureStore.read_block
    monkeypatch.setattr(FeatureStore, "read_block",
                        lambda self, rows, n=None: reads.extend(rows) or read_block(self, rows, n))
    rows = np.arange(32)  # a budget they do not fit: they stream (else they are held)
    batch = next(iter(feature_dataset(store_path, rows, 4, batch_size=2, shuffle=False,
                                      memory_mb=1e-4)))
    assert batch[0]["features"].shape == (2, 4, 3)
    assert 2 <= len(reads) < 16      # the first batch plus a little read-ahead, not all 32


def test_few_rows_give_one_short_batch_and_none_is_an_error(store_path):
    dataset = feature_dataset(store_path, np.array([3, 1, 2]), 5, batch_size=8, shuffle=True,
                              seed=1)
    assert dataset.cardinality() == 1
    features, masks, _ = _epoch(dataset)
    assert features.shape == (3, 5, 3) and sorted(features[:, 0, 0]) == [1, 2, 3]
    with FeatureStore(store_path) as store:
        lengths = np.minimum(store.lengths[features[:, 0, 0].astype(int)], 5)
    np.testing.assert_array_equal(masks.sum(1), lengths)
    with pytest.raises(InputError, match="no sequences selected"):
        feature_dataset(store_path, np.array([], int), 5, batch_size=8, shuffle=True)


def write_clip(path: Path, n_frames: int, color: bool, size: int = 32) -> tuple:
    """A lossless clip whose frame i is flat with level 10 * i (blue; green 100, red 200)."""
    with ClipWriter(path, size=size, color=color, fps=25) as writer:
        for i in range(n_frames):
            if color:
                writer.write(np.dstack([np.full((size, size), v, np.uint8)
                                        for v in (10 * i, 100, 200)]))
            else:
                writer.write(np.full((size, size), 10 * i, np.uint8))
    return path


@pytest.mark.parametrize("color", [False, True])
def test_clip_dataset_reads_the_kept_range_resized_scaled_and_masked(tmp_path, color):
    short = write_clip(tmp_path / "short.mkv", 8, color)
    long = write_clip(tmp_path / "long.mkv", 12, color)
    clips = [(short, 2, 5, 1), (long, 1, 10, 2)]          # 4 kept frames; 10 kept frames
    dataset = clip_dataset(clips, n_classes=3, max_frames=6, size=(16, 16), color=color,
                           batch_size=2, shuffle=False)
    (inputs, labels), = dataset.as_numpy_iterator()
    clip, mask = inputs["clip"], inputs["mask"]
    assert clip.shape == (2, 6, 16, 16, 3 if color else 1) and clip.dtype == np.float32
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1] * 6])
    first_channel = clip[..., -1] if color else clip[..., 0]   # RGB: blue comes last
    np.testing.assert_allclose(first_channel[0, :4], np.array([20, 30, 40, 50])[:, None, None]
                               * np.ones((16, 16)) / 255, atol=1e-6)
    np.testing.assert_allclose(first_channel[1, :, 0, 0], np.arange(10, 70, 10) / 255,
                               atol=1e-6)
    assert not clip[0, 4:].any()
    if color:
        np.testing.assert_allclose(clip[..., 0][mask == 1], 200 / 255, atol=1e-6)  # red first
    np.testing.assert_array_equal(labels, [[0, 1, 0], [0, 0, 1]])


def test_a_clip_model_trains_on_the_clip_dataset(tmp_path):
    clips = [(write_clip(tmp_path / f"{i}.mkv", 4 + i, color=False), 0, 3 + i, i % 3)
             for i in range(4)]
    dataset = clip_dataset(clips, 3, max_frames=6, size=(16, 16), color=False, batch_size=2,
                           shuffle=True, seed=0)
    model = compile_model(build_model("lrcn", {"filters": [2], "units": 4, "layers": 1},
                                      (6, 16, 16, 1), 3))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(dataset, verbose=0).shape == (4, 3)


def test_clip_errors_name_the_file(tmp_path):
    path = write_clip(tmp_path / "c.mkv", 5, color=False)
    with pytest.raises(ArtifactError, match="ends before its kept frame 5"):
        load_clip(path, 2, 8, max_frames=10, size=None, color=False)
    with pytest.raises(ArtifactError, match="missing"):
        clip_dataset([(tmp_path / "gone.mkv", 0, 3, 0)], 3, 4, (8, 8), False, 2, False)
    with pytest.raises(InputError, match="bad clip entry"):
        clip_dataset([(path, 3, 1, 0)], 3, 4, (8, 8), False, 2, False)


def test_online_augmentation_varies_per_epoch_keeps_padding_zero(tmp_path):
    from fercli.vision.augment import OnlineAugment

    clips = [(write_clip(tmp_path / f"{i}.mkv", 6, color=True), 0, 3, 0) for i in range(3)]
    dataset = clip_dataset(clips, 3, max_frames=5, size=(16, 16), color=True, batch_size=3,
                           shuffle=False, seed=3, online_augment=OnlineAugment())
    (first, _), = dataset.as_numpy_iterator()
    (second, _), = dataset.as_numpy_iterator()
    plain = clip_dataset(clips, 3, 5, (16, 16), True, 3, shuffle=False)
    (original, _), = plain.as_numpy_iterator()
    for batch in (first, second):
        assert not batch["clip"][:, 4].any() and batch["clip"].max() <= 1
        assert not np.allclose(batch["clip"], original["clip"])
    assert not np.allclose(first["clip"], second["clip"])            # a new draw per epoch
    assert not np.allclose(first["clip"][0], first["clip"][1])       # and per element
    (repeat, _), = clip_dataset(clips, 3, 5, (16, 16), True, 3, shuffle=False, seed=3,
                                online_augment=True).as_numpy_iterator()
    np.testing.assert_allclose(repeat["clip"], first["clip"], atol=1e-6)


def test_default_strategy_on_one_device_and_device_lines():
    assert distribution_strategy("auto").num_replicas_in_sync == 1
    assert distribution_strategy("default").num_replicas_in_sync == 1
    with pytest.raises(ConfigError, match="Use one of: auto, default, mirrored"):
        distribution_strategy("tpu")
    lines = describe_devices()
    assert any(line.startswith("CPU:0") for line in lines)
    assert lines[-1].startswith(f"TensorFlow {tf.__version__}")
    try:
        assert enable_mixed_precision(True) == "mixed_float16"
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        assert enable_mixed_precision(False) == "float32"


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from fercli.learning.datasets import distribution_strategy, feature_dataset
    from fercli.learning.models import build_model, compile_model
    auto = distribution_strategy("auto").num_replicas_in_sync
    strategy = distribution_strategy("mirrored")
    per_replica = 3
    with strategy.scope():
        model = compile_model(build_model("lstm", {"units": 4}, (5, 3), 3))
    rows = np.arange(20)
    dataset = feature_dataset(sys.argv[1], rows, 5, per_replica * strategy.num_replicas_in_sync,
                              shuffle=True, seed=0)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    print(json.dumps({"auto": auto, "replicas": strategy.num_replicas_in_sync,
                      "steps": int(dataset.cardinality()), "loss": history.history["loss"][0],
                      "devices": list(strategy.extended.worker_devices)}))
""")


def test_mirrored_strategy_trains_over_two_logical_cpus(store_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(store_path)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["auto"] == 1                  # no GPU: 'auto' stays on one device
    assert report["replicas"] == 2 and len(report["devices"]) == 2
    assert report["steps"] == 4                 # 20 rows in global batches of 2 x 3
    assert np.isfinite(report["loss"])


def test_half_features_widen_exactly_without_float16_kernels():
    """Every one of the 65,536 half-precision bit patterns widens to numpy's float32."""
    from fercli.learning.datasets import _half_as_bits, _to_float32

    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    widened = _to_float32(_half_as_bits(halves)).numpy()
    expected = halves.astype(np.float32)
    assert np.array_equal(widened, expected, equal_nan=True)
    assert np.array_equal(np.signbit(widened), np.signbit(expected))
