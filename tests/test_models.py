"""The model registry: thesis architectures, masks respected, learning, saving, params."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from fercli.core.errors import ConfigError
from fercli.learning.models import (
    CLIP_MODELS,
    FEATURE_MODELS,
    MODEL_DEFAULTS,
    build_model,
    compile_model,
    resolve_params,
    uses_cudnn_rnn,
)

T = 10
TINY = {  # (input shape, params small enough for a 2-core test machine)
    "pooled": ((T, 4), {"pooling": ["mean", "max", "last"], "last_k": 2, "dense_units": [8]}),
    "lstm": ((T, 4), {"units": 8, "layers": 2}),
    "bilstm": ((T, 4), {"units": 8}),
    "cnn1d": ((T, 4), {"filters": [4, 4, 8, 8], "dense_units": [8], "batch_norm": True,
                       "activation": "leaky_relu"}),
    "lrcn": ((T, 12, 12, 1), {"filters": [4, 4], "units": 8, "layers": 1}),
    "c3d": ((24, 24, 24, 1), {"filters": [4, 4, 8], "dense_units": [8, 8], "dropout": 0.2,
                              "batch_norm": True, "initializer": "he_uniform"}),
    "convlstm": ((T, 10, 10, 3), {"filters": [2, 2], "dense_units": [4]}),
}


def _inputs(name, shape, lengths, rng):
    data = rng.random((len(lengths), *shape), dtype=np.float32)
    mask = np.arange(shape[0])[None, :] < np.asarray(lengths)[:, None]
    data[~mask] = 0
    return {"features" if name in FEATURE_MODELS else "clip": data, "mask": mask}


@pytest.mark.parametrize("name", sorted({*FEATURE_MODELS, *CLIP_MODELS}))
def test_every_model_trains_and_predicts_a_softmax(name):
    shape, params = TINY[name]
    rng = np.random.default_rng(0)
    inputs = _inputs(name, shape, [2, 5, shape[0], 1, 7, 3], rng)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    model = compile_model(build_model(name, params, shape, 3))
    history = model.fit(inputs, labels, epochs=2, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    probabilities = model.predict(inputs, verbose=0)
    assert probabilities.shape == (6, 3) and probabilities.dtype == np.float32
    assert np.all(probabilities >= 0) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert set(model.input) == {"features" if name in FEATURE_MODELS else "clip", "mask"}


@pytest.mark.parametrize("name", ["pooled", "lstm", "bilstm", "cnn1d"])
def test_padding_and_what_is_in_it_do_not_change_the_output(name):
    """Same weights, the same 5 real steps padded to 8 or to 13 (with garbage): same output."""
    _, params = TINY[name]
    short = build_model(name, params, (8, 4), 3)
    long = build_model(name, params, (13, 4), 3)
    long.set_weights(short.get_weights())
    rng = np.random.default_rng(1)
    real = rng.normal(size=(2, 5, 4)).astype(np.float32)
    padded_short = np.zeros((2, 8, 4), np.float32)
    padded_short[:, :5] = real
    padded_long = rng.normal(size=(2, 13, 4)).astype(np.float32) * 50   # garbage padding
    padded_long[:, :5] = real
    mask_short = np.arange(8)[None].repeat(2, 0) < 5
    mask_long = np.arange(13)[None].repeat(2, 0) < 5
    out_short = short.predict({"features": padded_short, "mask": mask_short}, verbose=0)
    out_long = long.predict({"features": padded_long, "mask": mask_long}, verbose=0)
    np.testing.assert_allclose(out_short, out_long, atol=1e-5)
    # ... while the real steps do matter
    padded_long[:, 4] += 1.0
    changed = long.predict({"features": padded_long, "mask": mask_long}, verbose=0)
    assert not np.allclose(changed, out_long, atol=1e-5)


def _toy_problem(rng, n, frames=10, dim=4):
    """Class c shifts feature c of every real step; lengths vary, padding is zero."""
    labels = rng.integers(0, 3, n)
    lengths = rng.integers(4, frames + 1, n)
    features = rng.normal(size=(n, frames, dim)).astype(np.float32)
    features[np.arange(n), :, labels] += 1.5
    mask = np.arange(frames)[None, :] < lengths[:, None]
    features[~mask] = 0
    return {"features": features, "mask": mask}, np.eye(3, dtype=np.float32)[labels]


@pytest.mark.parametrize("name, params", [
    ("pooled", {"dropout": 0.0}),
    ("lstm", {"units": 16, "dropout": 0.0}),
    ("cnn1d", {"filters": [8, 8, 8, 8], "dense_units": [8]}),
])
def test_a_learnable_problem_is_learned_well_above_chance(name, params):
    rng = np.random.default_rng(2)
    train_x, train_y = _toy_problem(rng, 192)
    test_x, test_y = _toy_problem(rng, 96)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(name, params, (10, 4), 3), learning_rate=1e-2)
    model.fit(train_x, train_y, epochs=8, batch_size=32, verbose=0)
    scores = model.evaluate(test_x, test_y, verbose=0, return_dict=True)
    assert scores["accuracy"] > 0.7 and scores["uar"] > 0.7   # chance is 1/3


def test_thesis_baselines_have_the_thesis_parameter_counts():
    """Figure 3.15 (LSTM on 1024 features) and Figure 3.22 (C3D on 100x160x160x3 clips)."""
    lstm = build_model("lstm", None, (100, 1024), 6)
    assert [layer.count_params() for layer in lstm.layers[2:]] == [590336, 774]
    assert build_model("c3d", None, (100, 160, 160, 3), 6).count_params() == 53_372_502
    assert MODEL_DEFAULTS["lstm"]["units"] == 128 and MODEL_DEFAULTS["lstm"]["dropout"] == 0.4
    assert MODEL_DEFAULTS["bilstm"]["dropout"] == 0.7
    lstm_layer = lstm.layers[2]
    assert lstm_layer.dropout == 0.4 and lstm_layer.recurrent_dropout == 0.0


def test_saved_model_with_custom_mask_layers_reloads(tmp_path):
    shape, params = TINY["cnn1d"]
    model = build_model("cnn1d", params, shape, 3)
    inputs = _inputs("cnn1d", shape, [3, 10], np.random.default_rng(3))
    model.save(tmp_path / "cnn1d.keras")
    loaded = keras.models.load_model(tmp_path / "cnn1d.keras")
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0),
                               model.predict(inputs, verbose=0), atol=1e-6)


def test_mixed_precision_keeps_a_float32_softmax():
    shape, params = TINY["cnn1d"]
    inputs = _inputs("cnn1d", shape, [3, 10], np.random.default_rng(4))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("cnn1d", params, shape, 3)
    finally:
        keras.config.set_dtype_policy("float32")
    assert {layer.compute_dtype for layer in model.layers
            if isinstance(layer, keras.layers.Conv1D)} == {"float16"}
    probabilities = model.predict(inputs, verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_compile_uses_adam_and_turns_xla_off_for_lstms():
    lstm = compile_model(build_model("bilstm", {"units": 4}, (5, 3), 2))
    assert isinstance(lstm.optimizer, keras.optimizers.Adam)
    assert np.isclose(float(lstm.optimizer.learning_rate), 1e-4)
    assert uses_cudnn_rnn(lstm) and lstm.jit_compile is False
    assert not uses_cudnn_rnn(build_model("cnn1d", TINY["cnn1d"][1], (5, 3), 2))


@pytest.mark.parametrize("name, params, input_shape, message", [
    ("lstm", {"unit": 8}, (5, 3), r"no parameter unit\. Allowed: .*dropout.*units"),
    ("lstm", {"filters": [8]}, (5, 3), r"no parameter filters"),
    ("lstm", {"dropout": 1.0}, (5, 3), r"dropout: expected a number in \[0, 1\)"),
    ("cnn1d", {"activation": "tanh"}, (5, 3), r"expected one of relu, leaky_relu"),
    ("cnn1d", {"filters": [4, 4, 4]}, (5, 3), r"even number"),
    ("c3d", {"initializer": "zeros"}, (24, 24, 24, 1), r"he_uniform"),
    ("c3d", {"dense_units": [0]}, (24, 24, 24, 1), r"dense_units: expected a list"),
    ("lstm", {"layers": True}, (5, 3), r"layers: expected an integer"),
    ("transformer", {}, (5, 3), r"unknown model 'transformer'\. Use one of: bilstm, c3d"),
    ("lstm", {}, (5, 8, 8, 1), r"rank 2"),
    ("c3d", {}, (8, 24, 24, 1), r"shrinks to nothing"),
    ("lrcn", {"kernel_size": 7}, (5, 12, 12, 1), r"shrinks to nothing"),
])
def test_bad_params_are_config_errors(name, params, input_shape, message):
    with pytest.raises(ConfigError, match=message):
        build_model(name, params, input_shape, 3)


def test_defaults_cover_every_model_and_resolve_unchanged():
    assert set(MODEL_DEFAULTS) == {*FEATURE_MODELS, *CLIP_MODELS}
    for name, defaults in MODEL_DEFAULTS.items():
        assert resolve_params(name, None) == defaults


def test_pooled_model_pools_only_real_steps_and_the_last_k():
    """mean / max / last-k over the real steps, by hand, equal the layer's output."""
    from fercli.learning.models import MaskedPooling

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    out = np.asarray(MaskedPooling(["mean", "max", "last"], last_k=2)([x, mask]))
    for row, n in enumerate((4, 2)):
        real = x[row, :n]
        expected = np.concatenate([real.mean(0), real.max(0), real[-2:].mean(0)])
        np.testing.assert_allclose(out[row], expected, atol=1e-5)


def test_identity_normalisation_feeds_the_change_from_the_baseline():
    """With a baseline input the model reads [x, x - b]: adding the same vector to every
    frame and to the baseline (another person, same expression change) changes only x."""
    from fercli.learning.models import IdentityNormalisation

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    b = rng.normal(size=(2, 3)).astype(np.float32)
    out = np.asarray(IdentityNormalisation()([x, b]))
    np.testing.assert_allclose(out[..., :3], x, atol=1e-6)
    np.testing.assert_allclose(out[..., 3:], x - b[:, None], atol=1e-6)
    model = compile_model(build_model("pooled", {"dense_units": []}, (5, 3), 3, baseline=True))
    assert set(model.input) == {"features", "mask", "baseline"}
    probs = model.predict({"features": x, "mask": np.ones((2, 5), bool), "baseline": b},
                          verbose=0)
    assert probs.shape == (2, 3)


def test_macro_recall_is_the_mean_of_per_class_recalls():
    from fercli.learning.models import MacroRecall

    metric = MacroRecall(3)
    truth = np.eye(3, dtype=np.float32)[[0, 0, 0, 0, 1, 1]]  # class 2 absent: left out
    pred = np.eye(3, dtype=np.float32)[[0, 0, 0, 1, 1, 0]]
    metric.update_state(truth, pred)
    assert float(metric.result()) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_class_weights_scale_the_loss_of_each_class():
    """balanced weights: n / (k n_c); the weighted loss of a batch is the weighted mean."""
    from fercli.learning.training import balanced_class_weights

    labels = np.array([0, 0, 0, 1])
    weights = balanced_class_weights(labels, 3)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    keras.utils.set_random_seed(0)
    model = compile_model(build_model("pooled", {"dense_units": []}, (T, 4), 3))
    inputs = _inputs("pooled", (T, 4), [T] * 4, np.random.default_rng(5))
    onehot = np.eye(3, dtype=np.float32)[labels]
    probs = model.predict(inputs, verbose=0)
    per_item = -np.log(probs[np.arange(4), labels])
    sample_weight = np.array([weights[c] for c in labels])
    weighted = model.evaluate(inputs, onehot, sample_weight=sample_weight, verbose=0,
                              return_dict=True)["loss"]
    plain = model.evaluate(inputs, onehot, verbose=0, return_dict=True)["loss"]
    regularisation = plain - per_item.mean()
    assert weighted - regularisation == pytest.approx(
        float(np.sum(per_item * sample_weight) / 4), rel=1e-4)
    assert not np.isclose(weighted, plain)
