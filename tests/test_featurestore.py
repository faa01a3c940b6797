import h5py
import numpy as np
import pytest

from fercli.core.errors import ArtifactError
from fercli.features.featurestore import FeatureStore, FeatureStoreWriter, Row, export_fold

CLASSES = ["angry", "happy", "sad"]


def _write(path, lengths=(3, 7, 5)):
    rng = np.random.default_rng(0)
    data = []
    with FeatureStoreWriter(path, feature_dim=4, classes=CLASSES, dtype="float32",
                            attrs={"backbone": "small-cnn"}) as writer:
        for i, n in enumerate(lengths):
            frames = rng.normal(size=(n, 4)).astype(np.float32)
            aug = "flip" if i == 2 else ""
            writer.add(Row(f"it{i}" + ("@flip" if aug else ""), f"it{i}", f"S{i}", i % 3, aug,
                           "fold-0" if i else "test"), frames)
            data.append(frames)
    return data


def test_roundtrip_padding_truncation_and_masks(tmp_path):
    path = tmp_path / "features.h5"
    data = _write(path)
    with FeatureStore(path) as store:
        assert len(store) == 3 and store.feature_dim == 4 and store.classes == CLASSES
        assert list(store.lengths) == [3, 7, 5]
        assert store.attrs["backbone"] == "small-cnn"
        feats, mask = store.sequence(0, max_frames=5)        # shorter: padded
        assert mask.sum() == 3 and not mask[3:].any()
        assert np.allclose(feats[:3], data[0]) and not feats[3:].any()
        feats, mask = store.sequence(1, max_frames=5)        # longer: truncated
        assert mask.all() and np.allclose(feats, data[1][:5])
        assert list(store.labels) == [0, 1, 2]
        assert list(store.select(["fold-0"], with_augmented=False)) == [1]
        assert list(store.select(["fold-0"], with_augmented=True)) == [1, 2]
        export_fold(store, np.array([0, 1]), tmp_path / "fold-0-features-4.h5", 6)
    with h5py.File(tmp_path / "fold-0-features-4.h5") as f:
        assert f["features"].shape == (2, 6, 4) and f["masks"][:].sum() == 3 + 6


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(ValueError):
        with FeatureStoreWriter(path, feature_dim=4, classes=CLASSES) as writer:
            writer.add(Row("a", "a", "S", 0, "", "test"), np.zeros((2, 3)))
    assert list(tmp_path.iterdir()) == []


def test_truncated_store_is_a_clear_error(tmp_path):
    path = tmp_path / "features.h5"
    _write(path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ArtifactError, match="Re-run `fer extract --force`"):
        FeatureStore(path)
