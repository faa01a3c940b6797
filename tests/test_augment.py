"""Offline and online video augmentation on a real face (skimage's astronaut photograph)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data

from fercli.core.errors import ConfigError, ItemError
from fercli.vision.augment import (
    DEFAULT_OFFLINE,
    OFFLINE_LABELS,
    OFFLINE_METHODS,
    OnlineAugment,
    affine_matrix,
    augment_sequence,
    plot_augment_preview,
    rotate,
    salt_pepper_noise,
    tf_apply_params,
)

SIZE = 160
IDENTITY = {"rotation": 0.0, "zoom_x": 1.0, "zoom_y": 1.0, "shift_x": 0.0, "shift_y": 0.0,
            "shear": 0.0, "flip": False, "brightness": 1.0}


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """160x160 BGR face cropped from the astronaut portrait, like a tracked face clip frame."""
    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.resize(image[25:205, 145:325], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def clip(face) -> np.ndarray:
    """Four different frames: the face drifting right by 2 pixels per frame."""
    return np.stack([np.roll(face, 2 * k, axis=1) for k in range(4)])


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def test_registry_names_and_defaults():
    assert DEFAULT_OFFLINE == ["flip", "blur", "bright50", "bright20", "contrast2",
                               "contrast17", "rot8", "rot-8", "saltpepper"]
    assert set(OFFLINE_METHODS) == set(DEFAULT_OFFLINE) | {"histeq", "gray"}
    assert set(OFFLINE_LABELS) == set(OFFLINE_METHODS)


@pytest.mark.parametrize("method", sorted(OFFLINE_METHODS))
@pytest.mark.parametrize("colour", [True, False], ids=["bgr", "gray"])
def test_offline_method_keeps_shape_and_dtype(face, method, colour):
    frame = face if colour else gray(face)
    out = OFFLINE_METHODS[method](frame, np.random.default_rng(0))
    assert out.shape == frame.shape and out.dtype == np.uint8
    if method != "gray" or colour:
        assert not np.array_equal(out, frame)


def test_flip_is_exact(face):
    assert np.array_equal(OFFLINE_METHODS["flip"](face, None), face[:, ::-1])
    assert np.array_equal(OFFLINE_METHODS["flip"](gray(face), None), gray(face)[:, ::-1])


def test_brightness_and_contrast_saturate(face):
    wide = face.astype(np.int32)
    assert np.array_equal(OFFLINE_METHODS["bright50"](face, None), np.clip(wide + 50, 0, 255))
    assert np.array_equal(OFFLINE_METHODS["bright20"](face, None), np.clip(wide + 20, 0, 255))
    assert np.array_equal(OFFLINE_METHODS["contrast2"](face, None), np.clip(2 * wide, 0, 255))


def test_rotation_there_and_back_restores_the_centre(face):
    there = OFFLINE_METHODS["rot8"](face, None)
    back = OFFLINE_METHODS["rot-8"](there, None)
    centre = np.s_[40:120, 40:120]
    moved = np.abs(there[centre].astype(float) - face[centre]).mean()
    restored = np.abs(back[centre].astype(float) - face[centre]).mean()
    assert moved > 10 and restored < 3
    assert (there[0, 0] == 0).all() and (there[-1, -1] == 0).all(), "black corners"


def test_rotation_is_counter_clockwise():
    """A dot right of centre ends up above it after +90 degrees (cv2 convention)."""
    frame = np.zeros((21, 21), np.uint8)
    frame[10, 18] = 255
    y, x = np.unravel_index(np.argmax(rotate(frame, 90)), frame.shape)
    assert (y, x) == (2, 10)


def test_salt_pepper_sets_one_percent_at_the_same_places_in_every_frame(clip):
    frames = np.clip(clip, 1, 254)  # so that every salt or pepper value is a change
    out = np.stack(list(augment_sequence(frames, "saltpepper", seed=3)))
    changed = out != frames
    n_each = math.ceil(0.01 * SIZE * SIZE / 2)
    assert (changed.sum(axis=(1, 2)) == 2 * n_each).all(), "per frame and channel"
    assert (changed == changed[0]).all(), "one noise mask for the whole sequence"
    assert ((out[changed] == 0) | (out[changed] == 255)).all()
    assert (out[changed] == 255).sum() == (out[changed] == 0).sum()
    unchanged = ~changed
    assert np.array_equal(out[unchanged], frames[unchanged])


def test_salt_pepper_noise_reaches_the_last_row_and_column():
    noise = salt_pepper_noise((6, 5, 3), amount=1.0, rng=np.random.default_rng(0))
    assert noise.shape == (6, 5, 3)
    assert (noise != 0).all(), "every position can be hit, unlike randint(0, i - 1)"
    assert salt_pepper_noise((6, 5), 1.0, np.random.default_rng(0)).shape == (6, 5)


def test_augment_sequence_is_deterministic_per_seed(clip):
    first = np.stack(list(augment_sequence(clip, "saltpepper", seed=7)))
    again = np.stack(list(augment_sequence(clip, "saltpepper", seed=7)))
    other = np.stack(list(augment_sequence(clip, "saltpepper", seed=8)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_augment_sequence_applies_the_method_to_every_frame(clip):
    out = list(augment_sequence(iter(clip), "rot8", seed=0))
    assert len(out) == len(clip)
    for frame, rotated in zip(clip, out):
        assert np.array_equal(rotated, rotate(frame, 8))


def test_gray_keeps_three_equal_channels_and_histeq_spreads_levels(face):
    grey = OFFLINE_METHODS["gray"](face, None)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    dull = (gray(face) // 4 + 100).astype(np.uint8)  # levels 100-163 only
    spread = OFFLINE_METHODS["histeq"](dull, None)
    assert spread.min() < 10 and spread.max() == 255
    assert np.ptp(gray(OFFLINE_METHODS["histeq"](face // 4 + 100, None))) > 200


def test_unknown_method_fails_at_once_naming_the_choices(clip):
    with pytest.raises(ConfigError, match="unknown augmentation method 'mirror'") as info:
        augment_sequence(clip, "mirror", seed=0)
    assert "flip" in str(info.value) and "saltpepper" in str(info.value)


def test_wrong_frame_type_is_an_item_error(face):
    with pytest.raises(ItemError, match="frame 0 is float32"):
        list(augment_sequence([face.astype(np.float32)], "flip", seed=0))


def test_online_params_stay_in_the_thesis_ranges():
    augment = OnlineAugment()
    rng = np.random.default_rng(0)
    draws = [augment.sample_params(rng) for _ in range(300)]
    columns = {key: np.array([d[key] for d in draws]) for key in IDENTITY}
    assert np.abs(columns["rotation"]).max() <= 10 and np.abs(columns["rotation"]).max() > 9
    for key in ("zoom_x", "zoom_y"):
        assert 0.9 <= columns[key].min() and columns[key].max() <= 1.1
    for key in ("shift_x", "shift_y"):
        assert np.abs(columns[key]).max() <= 0.1
    assert np.abs(columns["shear"]).max() <= 0.15
    assert 0.4 <= columns["brightness"].min() and columns["brightness"].max() <= 1.5
    assert 0.35 < columns["flip"].mean() < 0.65
    assert augment.sample_params(np.random.default_rng(1)) != augment.sample_params(
        np.random.default_rng(2))


def test_zero_ranges_give_the_identity(clip):
    still = OnlineAugment(rotation_range=0, zoom_range=0, width_shift_range=0,
                          height_shift_range=0, shear_range=0, horizontal_flip=False,
                          brightness_range=(1.0, 1.0))
    params = still.sample_params(np.random.default_rng(5))
    assert params == IDENTITY
    assert np.allclose(affine_matrix(params, SIZE, SIZE), [[1, 0, 0], [0, 1, 0]])
    assert np.array_equal(still.apply_numpy(clip, params), clip)


def test_affine_matrix_shifts_by_a_share_of_the_size():
    matrix = affine_matrix({**IDENTITY, "shift_x": 0.1, "shift_y": -0.05}, 100, 200)
    assert np.allclose(matrix, [[1, 0, 20], [0, 1, -5]])


def test_online_rotation_matches_the_offline_rotation(face):
    online = OnlineAugment().apply_numpy(face[None], {**IDENTITY, "rotation": 8.0})[0]
    centre = np.s_[30:130, 30:130]
    assert np.abs(online[centre].astype(int) - rotate(face, 8)[centre]).max() <= 1


def test_online_applies_one_transform_to_every_frame(clip):
    augment = OnlineAugment()
    params = augment.sample_params(np.random.default_rng(11))
    same = np.stack([clip[0]] * 3)
    out = augment.apply_numpy(same, params)
    assert out.shape == same.shape and out.dtype == np.uint8
    assert (out == out[0]).all() and not np.array_equal(out[0], clip[0])
    each = augment.apply_numpy(clip, params)
    for k, frame in enumerate(clip):
        assert np.array_equal(each[k], augment.apply_numpy(frame[None], params)[0])


def test_online_flip_and_brightness_clip_to_the_range(face):
    frames = face[None].astype(np.float32) / 255
    out = OnlineAugment().apply_numpy(frames, {**IDENTITY, "flip": True, "brightness": 1.5},
                                      max_value=1.0)
    assert out.dtype == np.float32 and out.max() == 1.0
    assert np.allclose(out[0], np.minimum(frames[0][:, ::-1] * 1.5, 1.0))


def test_online_handles_gray_clips(face):
    frames = np.stack([gray(face)] * 2)
    params = OnlineAugment().sample_params(np.random.default_rng(0))
    assert OnlineAugment().apply_numpy(frames, params).shape == frames.shape
    assert OnlineAugment().apply_numpy(frames[..., None], params).shape == (2, SIZE, SIZE, 1)


@pytest.mark.parametrize("bad", [{"zoom_range": 1.0}, {"rotation_range": -1},
                                 {"brightness_range": (1.5, 0.4)}, {"fill_mode": "wrap"}])
def test_online_rejects_bad_settings(bad):
    with pytest.raises(ConfigError):
        OnlineAugment(**bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_online_matches_keras_image_data_generator(face):
    """Same parameters, same image as Keras's ImageDataGenerator.apply_transform (thesis 3.2.5)."""
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image")
    generator = legacy.ImageDataGenerator(fill_mode="nearest")
    image = face.astype(np.float32)
    keras_out = generator.apply_transform(image, {"theta": -7, "tx": 10, "ty": -12,
                                                  "shear": 5, "zx": 0.93, "zy": 1.08})
    ours = OnlineAugment().apply_numpy(image[None], {
        **IDENTITY, "rotation": -7, "shift_x": -10 / SIZE, "shift_y": 12 / SIZE, "shear": 5,
        "zoom_x": 0.93, "zoom_y": 1.08})[0]
    assert np.abs(keras_out - ours).mean() < 0.01


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect", "constant"])
def test_tensorflow_matches_numpy_on_the_same_params(tf, clip, fill_mode):
    augment = OnlineAugment(fill_mode=fill_mode)
    frames = clip.astype(np.float32)
    for seed in range(3):
        params = augment.sample_params(np.random.default_rng(seed))
        expected = augment.apply_numpy(frames, params)
        got = tf_apply_params(tf.constant(frames), params, fill_mode).numpy()
        assert got.shape == frames.shape
        assert np.abs(got - expected).mean() < 0.01, params
        assert np.abs(got - frames).mean() > 5, "the transform did something"


def test_tensorflow_sequence_is_one_draw_per_seed(tf, clip):
    augment = OnlineAugment()
    same = tf.constant(np.stack([clip[0]] * 3).astype(np.float32) / 255)
    first = augment.tf_augment_sequence(same, tf.constant([1, 2]), max_value=1.0).numpy()
    again = augment.tf_augment_sequence(same, tf.constant([1, 2]), max_value=1.0).numpy()
    other = augment.tf_augment_sequence(same, tf.constant([1, 3]), max_value=1.0).numpy()
    assert np.array_equal(first, again)
    assert np.allclose(first, first[0], atol=1e-6), "same transform on every frame"
    assert not np.allclose(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0


def test_tensorflow_augmentation_runs_in_a_dataset_map(tf, clip):
    augment = OnlineAugment()
    clips = np.stack([clip.astype(np.float32)] * 4)  # four copies of one clip

    def pipeline(epoch: int):
        dataset = tf.data.Dataset.from_tensor_slices(clips).enumerate()
        return dataset.map(lambda index, item: augment.tf_augment_sequence(
            item, tf.stack([tf.constant(epoch, tf.int64), index])))

    epoch0 = np.stack(list(pipeline(0).as_numpy_iterator()))
    assert epoch0.shape == clips.shape
    assert pipeline(0).element_spec.shape == clips.shape[1:]
    assert np.array_equal(epoch0, np.stack(list(pipeline(0).as_numpy_iterator())))
    assert not np.allclose(epoch0[0], epoch0[1]), "each element draws its own transform"
    assert not np.allclose(epoch0, np.stack(list(pipeline(1).as_numpy_iterator())))


def test_preview_figure(tmp_path, clip):
    path = plot_augment_preview(list(clip[:3]), DEFAULT_OFFLINE, tmp_path / "preview.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > image.shape[1] > 300
    grey = plot_augment_preview([gray(f) for f in clip[:2]], ["histeq", "gray"],
                                tmp_path / "grey.png", online=None)
    assert cv2.imread(str(grey)) is not None
