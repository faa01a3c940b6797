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


# --------------------------------------------------------------------------- training input
from fercli.core.errors import ConfigError  # noqa: E402
from fercli.features import featurestore  # noqa: E402
from fercli.features.featurestore import input_memory_budget  # noqa: E402


def _store(path, n_rows=40, feature_dim=3, seed=0, dtype="float32"):
    """Rows of 1..9 frames; feature 0 holds the row number, feature 1 the frame number."""
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(path, feature_dim=feature_dim, classes=CLASSES, dtype=dtype,
                            chunk_rows=8) as writer:
        for row in range(n_rows):
            frames = rng.normal(size=(1 + (row * 7) % 9, feature_dim)).astype(np.float32)
            frames[:, 0], frames[:, 1] = row, np.arange(len(frames))
            writer.add(Row(f"r{row}", f"r{row}", f"S{row % 4}", row % 3, "",
                           f"fold-{row % 2}"), frames)
    return path


def test_read_block_gathers_what_sequence_reads(tmp_path, monkeypatch):
    path = _store(tmp_path / "features.h5")
    with FeatureStore(path) as store:
        rows = np.array([5, 3, 17, 4, 30, 3, 39])            # unsorted, one twice
        block = store.read_block(rows, max_frames=6)
        assert list(block.rows) == sorted(set(rows.tolist()))
        assert block.frames.ctypes.data % 64 == 0 and not block.frames[-1].any()
        assert block.nbytes == block.frames.nbytes
        features, mask = block.gather(rows, 6)
        for k, row in enumerate(rows):
            expected, expected_mask = store.sequence(int(row), 6)
            np.testing.assert_array_equal(features[k], expected)
            np.testing.assert_array_equal(mask[k], expected_mask)
        with pytest.raises(KeyError):
            block.gather(np.array([6]), 6)
        monkeypatch.setattr(featurestore, "SPAN_BYTES", 40)  # one read per few frames
        small = store.read_block(rows, max_frames=6)
        np.testing.assert_array_equal(small.frames, block.frames)
        whole = store.read_block(np.arange(len(store)))       # max_frames None: every frame
        assert len(whole.frames) == store.offsets[-1] + 1


def test_frame_spans_join_back_to_back_rows_only():
    offsets = np.array([0, 3, 5, 9, 10])
    assert featurestore.frame_spans(offsets, np.array([0, 1, 2, 3]), None, 100) == [(0, 4, 10)]
    assert featurestore.frame_spans(offsets, np.array([0, 2]), None, 100) == [(0, 1, 3), (1, 2, 4)]
    # truncated rows leave a gap: each is its own read
    assert featurestore.frame_spans(offsets, np.array([0, 1]), 2, 100) == [(0, 1, 2), (1, 2, 2)]
    assert featurestore.frame_spans(offsets, np.array([0, 1, 2]), None, 5) == [(0, 2, 5),
                                                                              (2, 3, 4)]


def test_input_memory_budget(monkeypatch):
    monkeypatch.delenv(featurestore.INPUT_MEMORY_ENV, raising=False)
    assert 0 < input_memory_budget() <= featurestore.DEFAULT_INPUT_MEMORY_MB << 20
    assert input_memory_budget(1.5) == int(1.5 * (1 << 20))
    monkeypatch.setenv(featurestore.INPUT_MEMORY_ENV, "64")
    assert input_memory_budget() == 64 << 20 and input_memory_budget(0) == 0
    monkeypatch.setenv(featurestore.INPUT_MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match="number of MB"):
        input_memory_budget()
    with pytest.raises(ConfigError, match=">= 0 MB"):
        input_memory_budget(-1)


def test_streaming_windows_cover_every_row_once_and_end_on_whole_batches():
    from fercli.learning.datasets import streaming_windows

    rows = np.arange(3, 103)
    row_bytes = np.full(len(rows), 100)
    for shuffle in (False, True):
        windows = streaming_windows(rows, row_bytes, shuffle, seed=4, epoch=1,
                                    window_bytes=1000, batch_size=8, block_bytes=300)
        order = np.concatenate(windows)
        assert sorted(order) == list(rows)
        assert all(len(w) % 8 == 0 for w in windows[:-1])
        assert max(len(w) for w in windows) * 100 <= 1000 + 7 * 100  # + under one batch
        again = streaming_windows(rows, row_bytes, shuffle, 4, 1, 1000, 8, 300)
        np.testing.assert_array_equal(np.concatenate(again), order)
    assert list(np.concatenate(streaming_windows(rows, row_bytes, False, 4, 1, 1000, 8))) \
        == list(rows)
    other = np.concatenate(streaming_windows(rows, row_bytes, True, 4, 2, 1000, 8, 300))
    assert list(other) != list(order)                          # a new order each epoch
    # blocks of 3 neighbouring rows (300 bytes) move whole: each lies in one window
    windows = streaming_windows(rows, row_bytes, True, 4, 1, window_bytes=4800, batch_size=1,
                                block_bytes=300)
    assert len(windows) == 3 and max(len(w) for w in windows) <= 48
    window_of = {int(row): k for k, w in enumerate(windows) for row in w}
    assert all(len({window_of[r] for r in range(first, min(first + 3, 103))}) == 1
               for first in range(3, 103, 3))
    assert set(window_of[r] for r in range(3, 51)) != {0}      # blocks shuffled, not in order


def _passes(dataset, n):
    """n passes over the dataset: per pass (rows, features, masks, labels) as NumPy."""
    passes = []
    for _ in range(n):
        batches = list(dataset.as_numpy_iterator())
        features = np.concatenate([b[0]["features"] for b in batches])
        passes.append((features[:, 0, 0].astype(int), features,
                       np.concatenate([b[0]["mask"] for b in batches]),
                       np.concatenate([b[1] for b in batches]),
                       [len(b[1]) for b in batches]))
    return passes


def test_streamed_and_held_inputs_give_the_same_rows_masks_and_labels(tmp_path, monkeypatch):
    from fercli.learning.datasets import feature_dataset

    path = _store(tmp_path / "features.h5")
    rows = np.arange(1, 38)[::-1].copy()
    with FeatureStore(path) as store:
        expected = {int(r): store.sequence(int(r), 6) for r in rows}
        onehot = store.onehot
        one_row = int(store.held_frames(rows, 6).max() * store.frame_bytes)
    read = []
    real_read = FeatureStore.read_block
    monkeypatch.setattr(FeatureStore, "read_block",
                        lambda self, r, m=None: read.append(real := real_read(self, r, m))
                        or real)
    budget_mb = 20 * one_row / (1 << 20)                       # windows of ~5 rows
    for shuffle in (False, True):
        held = _passes(feature_dataset(path, rows, 6, 4, shuffle, seed=3), 2)
        read.clear()
        streamed = _passes(feature_dataset(path, rows, 6, 4, shuffle, seed=3,
                                           memory_mb=budget_mb), 2)
        assert len(read) > 4                                   # it did stream, window by window
        bound = 20 * one_row // 4 + 3 * one_row + 64 * 3 * 4   # a quarter + under one batch
        assert max(block.nbytes for block in read) <= bound
        for (h_rows, *_, h_sizes), (s_rows, s_features, s_masks, s_labels, s_sizes) in zip(
                held, streamed):
            assert h_sizes == s_sizes == [4] * 9 + [1]
            assert sorted(h_rows) == sorted(s_rows) == sorted(rows)
            for k, row in enumerate(s_rows):                   # each row exactly as stored
                features, mask = expected[int(row)]
                np.testing.assert_array_equal(s_features[k], features)
                np.testing.assert_array_equal(s_masks[k], mask.astype(np.float32))
                np.testing.assert_array_equal(s_labels[k], onehot[row])
        if not shuffle:                                        # the given order, both ways
            assert list(held[0][0]) == list(streamed[0][0]) == list(rows)
        else:                                                  # new order each epoch, seeded
            assert list(held[0][0]) != list(held[1][0])
            assert list(streamed[0][0]) != list(streamed[1][0])
            again = _passes(feature_dataset(path, rows, 6, 4, True, seed=3,
                                            memory_mb=budget_mb), 1)
            assert list(again[0][0]) == list(streamed[0][0])


def test_streamed_input_reads_ahead_only_a_little_and_survives_a_dropped_pass(tmp_path,
                                                                            monkeypatch):
    from fercli.learning.datasets import feature_dataset

    path = _store(tmp_path / "features.h5", n_rows=120)
    read = []
    real_read = FeatureStore.read_block
    monkeypatch.setattr(FeatureStore, "read_block",
                        lambda self, r, m=None: read.append(len(r)) or real_read(self, r, m))
    with FeatureStore(path) as store:
        one_row = int(store.held_frames(np.arange(120), 4).max() * store.frame_bytes)
    dataset = feature_dataset(path, np.arange(120), 4, batch_size=2, shuffle=False,
                              memory_mb=8 * one_row / (1 << 20))
    batch = next(iter(dataset))                                # a pass dropped after a batch
    assert batch[0]["features"].shape == (2, 4, 3)
    print("rows read for the first batch:", sum(read))
    assert 2 <= sum(read) < 30                 # the first windows and a little read-ahead
    rows = _passes(dataset, 1)[0][0]                           # the next pass starts afresh
    assert list(rows) == list(range(120))


def test_baselines_come_with_their_rows(tmp_path):
    from fercli.learning.datasets import feature_dataset

    path = _store(tmp_path / "features.h5")
    with FeatureStore(path) as store:
        baselines = store.baselines
    for memory_mb in (None, 1e-4):
        batches = list(feature_dataset(path, np.arange(40), 5, 8, True, seed=1, baseline=True,
                                       memory_mb=memory_mb).as_numpy_iterator())
        for inputs, _ in batches:
            rows = inputs["features"][:, 0, 0].astype(int)
            np.testing.assert_array_equal(inputs["baseline"], baselines[rows])


def test_held_half_frames_are_the_same_widened_once_or_per_batch(tmp_path):
    """float16 frames held as float32 (both copies fit the budget at once) or as their bit
    patterns widened in every batch (only the float16 frames fit) give the same batches."""
    from fercli.learning.datasets import feature_dataset

    path = _store(tmp_path / "features.h5", dtype="float16")
    rows = np.arange(40)
    with FeatureStore(path) as store:
        assert store.dtype == np.float16
        held_mb = int((store.held_frames(rows, 5) * store.frame_bytes).sum()) / (1 << 20)
    once = _passes(feature_dataset(path, rows, 5, 8, True, seed=1, memory_mb=3 * held_mb), 1)
    per_batch = _passes(feature_dataset(path, rows, 5, 8, True, seed=1,
                                        memory_mb=2.5 * held_mb), 1)
    for a, b in zip(once[0], per_batch[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert once[0][1].dtype == np.float32
