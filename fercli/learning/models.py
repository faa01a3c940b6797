"""Keras models for the training stages, built by name from a parameter dict.

Two families share one input convention, so one data pipeline feeds them all:

- feature-sequence models (``FEATURE_MODELS``) read ``features`` (T, F) from the feature
  store: the temporal halves of the thesis's cascade networks (thesis 3.2.4: LSTM,
  BiLSTM, 1D-CNN);
- raw-clip models (``CLIP_MODELS``) read ``clip`` (T, H, W, C) in [0, 1]: the LRCN
  baseline (paper 000 sec. 2.4) and the thesis's alternatives C3D and ConvLSTM
  (thesis 3.2.5).

Every model also takes ``mask`` (T,), True (or 1.0) on real frames: sequences are
zero-padded to a fixed length and masked where the layer allows it (thesis 3.2.3).
Every model ends in a float32 softmax, so mixed precision leaves the probabilities and
the loss in full precision.

``dropout`` is the thesis's "input" (naive) dropout (thesis 3.2.4): for the recurrent
models (lstm, bilstm, lrcn, convlstm) the recurrent layers' own ``dropout=``, one mask per
sequence on the layer's inputs, as opposed to ``recurrent_dropout`` on the state (a
Dropout layer in front would draw a new mask every step); for cnn1d it drops input
features, for c3d the inputs of each hidden dense layer.
"""
from __future__ import annotations

import copy

import keras
from keras import layers, ops

from ..core.config import CLIP_MODELS, FEATURE_MODELS
from ..core.errors import ConfigError

ACTIVATIONS = ("relu", "leaky_relu")
INITIALIZERS = ("glorot_uniform", "he_uniform", "he_normal")

_COMMON = {"l2": 0.0, "activation": "relu", "initializer": "glorot_uniform"}

MODEL_DEFAULTS: dict[str, dict] = {
    # ours, for small real datasets (tens to hundreds of sequences): masked pooling over
    # time, batch-normalised, one small regularised hidden layer. Nested subject-
    # independent CK+48 (README, Accuracy on real data): 0.907, cnn1d 0.903, probe 0.888.
    "pooled": {"pooling": ["mean", "last"], "last_k": 3, "dropout": 0.5,
               "dense_units": [64], "l2": 1e-3, "activation": "relu",
               "initializer": "glorot_uniform"},
    # thesis 3.2.4 / 3.3.2: one LSTM layer of 128, input dropout 0.4 (25088 features)
    "lstm": {"layers": 1, "units": 128, "dropout": 0.4, "recurrent_dropout": 0.0,
             "dense_units": [], **_COMMON},
    # thesis 3.3.2: one BiLSTM layer of 128, dropout 0.7
    "bilstm": {"layers": 1, "units": 128, "dropout": 0.7, "recurrent_dropout": 0.0,
               "dense_units": [], **_COMMON},
    # thesis 3.3.2, Figure 3.27: 4 Conv1D, 2 MaxPool1D, 1 fully connected layer; the
    # filter counts and the kernel size are not legible in the text, these are ours.
    "cnn1d": {"filters": [64, 64, 128, 128], "kernel_size": 3, "dropout": 0.0,
              "batch_norm": False, "dense_units": [128], **_COMMON},
    # paper 000 sec. 2.4: TimeDistributed 2 x (Conv2D 32 3x3 relu + MaxPool 2x2), 2 LSTM 128
    "lrcn": {"filters": [32, 32], "kernel_size": 3, "layers": 2, "units": 128,
             "dropout": 0.0, "recurrent_dropout": 0.0, "batch_norm": False,
             "dense_units": [], **_COMMON},
    # thesis 3.2.5, Figure 3.22: Conv3D 16/16/32 (3x3x3) each + MaxPool3D, Flatten, 2 x Dense 512
    "c3d": {"filters": [16, 16, 32], "kernel_size": 3, "dropout": 0.0, "batch_norm": False,
            "dense_units": [512, 512], **_COMMON},
    # thesis 3.3.2: 2 ConvLSTM2D layers of 8 filters, Flatten
    "convlstm": {"filters": [8, 8], "kernel_size": 3, "dropout": 0.0,
                 "recurrent_dropout": 0.0, "batch_norm": False, "dense_units": [],
                 **_COMMON},
}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _rate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


POOLINGS = ("mean", "max", "last")

_CHECKS = {
    "pooling": (lambda v: isinstance(v, list) and v and all(x in POOLINGS for x in v),
                f"a non-empty list of {', '.join(POOLINGS)}"),
    "last_k": (_positive_int, "an integer >= 1"),
    "layers": (_positive_int, "an integer >= 1"),
    "units": (_positive_int, "an integer >= 1"),
    "kernel_size": (_positive_int, "an integer >= 1"),
    "dropout": (_rate, "a number in [0, 1)"),
    "recurrent_dropout": (_rate, "a number in [0, 1)"),
    "l2": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
           "a number >= 0"),
    "batch_norm": (lambda v: isinstance(v, bool), "true or false"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "initializer": (lambda v: v in INITIALIZERS, f"one of {', '.join(INITIALIZERS)}"),
    "filters": (lambda v: isinstance(v, list) and v and all(map(_positive_int, v)),
                "a non-empty list of integers >= 1"),
    "dense_units": (lambda v: isinstance(v, list) and all(map(_positive_int, v)),
                    "a list of integers >= 1 (may be empty)"),
}


def resolve_params(name: str, params: dict | None) -> dict:
    """The model's defaults updated with ``params``; unknown keys or bad values are errors."""
    if name not in MODEL_DEFAULTS:
        raise ConfigError(f"unknown model {name!r}",
                          hint=f"Use one of: {', '.join(sorted(MODEL_DEFAULTS))}.")
    defaults = MODEL_DEFAULTS[name]
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"model {name!r} has no parameter {', '.join(unknown)}",
                          hint=f"Allowed: {', '.join(sorted(defaults))}.")
    resolved = copy.deepcopy({**defaults, **params})
    for key, value in resolved.items():
        check, expected = _CHECKS[key]
        if not check(value):
            raise ConfigError(f"model {name!r} parameter {key}: expected {expected}, "
                              f"got {value!r}")
    if name == "cnn1d" and len(resolved["filters"]) % 2:
        raise ConfigError(f"model 'cnn1d' parameter filters: expected an even number of "
                          f"layers (a max-pooling follows every second), got "
                          f"{resolved['filters']!r}")
    return resolved


class _ExplicitMask(layers.Layer):
    """Base of layers that take the mask as an input: any Keras mask stops here."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None


@keras.saving.register_keras_serializable(package="fercli")
class MaskSteps(_ExplicitMask):
    """Zero the padded time steps, so convolutions see what 'same' padding would add."""

    def call(self, inputs):
        x, mask = inputs
        for _ in range(len(x.shape) - 2):
            mask = ops.expand_dims(mask, -1)
        return ops.where(mask, x, ops.zeros_like(x))


# Lowest float16 value: padded steps never win a max-pool, also under mixed precision.
_LOWEST = -65504.0


@keras.saving.register_keras_serializable(package="fercli")
class MaskedMaxPool1D(_ExplicitMask):
    """Max-pool over time that ignores padded steps and pools the mask along with it.

    A pooled step is real when its window holds at least one real step; its value is the
    maximum over the real steps only. So appending padding never changes a real output.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size

    def call(self, inputs):
        x, mask = inputs
        real = ops.expand_dims(mask, -1)
        pooled = ops.max_pool(ops.where(real, x, ops.full_like(x, _LOWEST)),
                              self.pool_size, self.pool_size, padding="same")
        pooled_real = ops.max_pool(ops.cast(real, x.dtype), self.pool_size, self.pool_size,
                                   padding="same") > 0
        pooled = ops.where(pooled_real, pooled, ops.zeros_like(pooled))
        return pooled, ops.squeeze(pooled_real, -1)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package="fercli")
class MaskedAverage(_ExplicitMask):
    """Mean over the real steps (sum / count); an all-padded sequence gives zeros, not NaN."""

    def call(self, inputs):
        x, mask = inputs
        weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        return ops.sum(x * weights, axis=1) / count


@keras.saving.register_keras_serializable(package="fercli")
class MaskedPooling(_ExplicitMask):
    """Pool (B, T, F) over the real steps: ``mean``, ``max`` or the mean of the ``last``
    ``last_k`` real steps (the apex end of an onset -> apex clip); concatenated."""

    def __init__(self, pooling=("mean",), last_k: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.pooling = list(pooling)
        self.last_k = last_k

    def call(self, inputs):
        x, mask = inputs
        real = ops.cast(mask, x.dtype)
        weights = ops.expand_dims(real, -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        out = []
        for kind in self.pooling:
            if kind == "mean":
                out.append(ops.sum(x * weights, axis=1) / count)
            elif kind == "max":
                pooled = ops.max(ops.where(weights > 0, x, ops.full_like(x, _LOWEST)), axis=1)
                out.append(ops.where(count > 0.5, pooled, ops.zeros_like(pooled)))
            else:  # steps whose real-step rank from the end is below last_k
                from_end = ops.flip(ops.cumsum(ops.flip(real, axis=1), axis=1), axis=1)
                last = ops.expand_dims(real * ops.cast(from_end <= self.last_k, x.dtype), -1)
                out.append(ops.sum(x * last, axis=1) / ops.maximum(ops.sum(last, axis=1), 1.0))
        return out[0] if len(out) == 1 else ops.concatenate(out, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "last_k": self.last_k}


@keras.saving.register_keras_serializable(package="fercli")
class IdentityNormalisation(_ExplicitMask):
    """Each frame's features next to their change from the sequence's neutral baseline:
    (B, T, F) and (B, F) -> (B, T, 2F) = [x, x - baseline]. The baseline is the mean
    feature vector of the clip's first (neutral onset) frames, so the change carries the
    expression and not the person (see fercli.features.identity)."""

    def call(self, inputs):
        x, baseline = inputs
        return ops.concatenate([x, x - ops.expand_dims(baseline, 1)], axis=-1)


def _regularizer(p: dict):
    return keras.regularizers.L2(p["l2"]) if p["l2"] else None


def _conv_block(x, conv_cls, filters: int, p: dict, wrap=None, mask=None, padding="same"):
    """Conv (no bias with batch norm) -> optional BatchNorm -> activation."""
    conv = conv_cls(filters, p["kernel_size"], padding=padding, use_bias=not p["batch_norm"],
                    kernel_initializer=p["initializer"], kernel_regularizer=_regularizer(p))
    x = (wrap(conv) if wrap else conv)(x)
    if p["batch_norm"]:
        norm = layers.BatchNormalization()
        x = norm(x, mask=mask) if mask is not None else (wrap(norm) if wrap else norm)(x)
    activation = layers.Activation(p["activation"])
    return (wrap(activation) if wrap else activation)(x)


def _recurrent_stack(x, mask, p: dict, bidirectional: bool = False):
    """``layers`` LSTMs of ``units``; all but the last return the whole sequence."""
    for i in range(p["layers"]):
        lstm = layers.LSTM(p["units"], dropout=p["dropout"],
                           recurrent_dropout=p["recurrent_dropout"],
                           return_sequences=i < p["layers"] - 1,
                           kernel_initializer=p["initializer"],
                           kernel_regularizer=_regularizer(p))
        x = (layers.Bidirectional(lstm) if bidirectional else lstm)(x, mask=mask)
    return x


def _head(x, p: dict, n_classes: int, dropout: float = 0.0):
    """Hidden dense layers, then the float32 softmax (stable under mixed precision)."""
    for units in p["dense_units"]:
        if dropout:
            x = layers.Dropout(dropout)(x)
        x = layers.Dense(units, activation=p["activation"], kernel_initializer=p["initializer"],
                         kernel_regularizer=_regularizer(p))(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32",
                        name="probabilities")(x)


def _pooled(features, mask, p, n_classes):
    """Masked pooling over time, batch norm (a learned standardisation), dropout, head."""
    x = MaskedPooling(p["pooling"], p["last_k"])([features, mask])
    x = layers.BatchNormalization()(x)
    for units in p["dense_units"]:
        x = layers.Dropout(p["dropout"])(x) if p["dropout"] else x
        x = layers.Dense(units, activation=p["activation"], kernel_initializer=p["initializer"],
                         kernel_regularizer=_regularizer(p))(x)
    x = layers.Dropout(p["dropout"])(x) if p["dropout"] else x
    return layers.Dense(n_classes, activation="softmax", dtype="float32",
                        kernel_regularizer=_regularizer(p), name="probabilities")(x)


def _lstm(features, mask, p, n_classes, bidirectional=False):
    return _head(_recurrent_stack(features, mask, p, bidirectional), p, n_classes)


def _cnn1d(features, mask, p, n_classes):
    """Conv1D pairs each followed by a masked max-pool, then a masked mean over time."""
    x = layers.Dropout(p["dropout"])(features) if p["dropout"] else features
    x = MaskSteps()([x, mask])
    for i, filters in enumerate(p["filters"]):
        x = MaskSteps()([_conv_block(x, layers.Conv1D, filters, p, mask=mask), mask])
        if i % 2:
            x, mask = MaskedMaxPool1D(2)([x, mask])
    return _head(MaskedAverage()([x, mask]), p, n_classes)


def _lrcn(clip, mask, p, n_classes):
    """Per-frame Conv2D + MaxPool (TimeDistributed), flattened, into masked LSTMs."""
    x = clip
    for filters in p["filters"]:
        x = _conv_block(x, layers.Conv2D, filters, p, wrap=layers.TimeDistributed,
                        padding="valid")
        x = layers.TimeDistributed(layers.MaxPooling2D(2))(x)
    x = layers.TimeDistributed(layers.Flatten())(x)
    return _head(_recurrent_stack(x, mask, p), p, n_classes)


def _c3d(clip, mask, p, n_classes):
    """Conv3D + MaxPool3D blocks over (time, height, width), Flatten, dense layers."""
    x = MaskSteps()([clip, mask])
    for filters in p["filters"]:
        x = _conv_block(x, layers.Conv3D, filters, p, padding="valid")
        x = layers.MaxPooling3D(2)(x)
    return _head(layers.Flatten()(x), p, n_classes, dropout=p["dropout"])


def _convlstm(clip, mask, p, n_classes):
    """Stacked masked ConvLSTM2D; the last returns its final state map, flattened."""
    x = clip
    for i, filters in enumerate(p["filters"]):
        x = layers.ConvLSTM2D(filters, p["kernel_size"], dropout=p["dropout"],
                              recurrent_dropout=p["recurrent_dropout"],
                              return_sequences=i < len(p["filters"]) - 1,
                              kernel_initializer=p["initializer"],
                              kernel_regularizer=_regularizer(p))(x, mask=mask)
        if p["batch_norm"]:
            x = layers.BatchNormalization()(x)
    return _head(layers.Flatten()(x), p, n_classes)


def _shrunk(dims: list[int], kernel: int, blocks: int, pool: bool) -> list[int]:
    """Sizes left after ``blocks`` valid convolutions (each optionally halved by pooling)."""
    for _ in range(blocks):
        dims = [d - kernel + 1 for d in dims]
        dims = [d // 2 for d in dims] if pool else dims
    return dims


def _check_clip_shape(name: str, input_shape: tuple, p: dict) -> None:
    """Fail early with the sizes involved, not deep inside Keras, when a clip is too small."""
    frames, height, width = input_shape[:3]
    blocks, kernel = len(p["filters"]), p["kernel_size"]
    if name == "c3d":
        left = _shrunk([frames, height, width], kernel, blocks, pool=True)
    elif name == "lrcn":
        left = _shrunk([height, width], kernel, blocks, pool=True)
    else:
        left = _shrunk([height, width], kernel, blocks, pool=False)
    if min(left) < 1:
        raise ConfigError(f"model {name!r}: an input of {tuple(input_shape)} shrinks to "
                          f"nothing after {blocks} convolution blocks of kernel {kernel}",
                          hint="Use more frames or larger clips, or fewer filters / a "
                          "smaller kernel_size.")


_BUILDERS = {
    "pooled": _pooled,
    "lstm": _lstm,
    "bilstm": lambda f, m, p, n: _lstm(f, m, p, n, bidirectional=True),
    "cnn1d": _cnn1d,
    "lrcn": _lrcn,
    "c3d": _c3d,
    "convlstm": _convlstm,
}


def build_model(name: str, params: dict | None, input_shape, n_classes: int,
                baseline: bool = False) -> keras.Model:
    """A functional model with inputs {"features" or "clip", "mask"} and softmax output.

    ``input_shape`` is (T, F) for feature models and (T, H, W, C) for clip models.
    ``baseline`` (feature models): a third input ``baseline`` (F,), the sequence's neutral
    onset features, and the model reads [x, x - baseline] per frame (identity
    normalisation, fercli.features.identity).
    Build (and compile) it inside ``strategy.scope()`` when training on several devices.
    """
    p = resolve_params(name, params)
    input_shape = tuple(int(d) for d in input_shape)
    rank = 2 if name in FEATURE_MODELS else 4
    if len(input_shape) != rank:
        raise ConfigError(f"model {name!r} takes inputs of rank {rank} "
                          f"({'(T, F)' if rank == 2 else '(T, H, W, C)'}), got {input_shape}")
    if name in CLIP_MODELS:
        _check_clip_shape(name, input_shape, p)
    data_name = "features" if name in FEATURE_MODELS else "clip"
    data = keras.Input(shape=input_shape, name=data_name)
    mask = keras.Input(shape=input_shape[:1], dtype="bool", name="mask")
    inputs = {data_name: data, "mask": mask}
    x = data
    if baseline and name in FEATURE_MODELS:
        inputs["baseline"] = keras.Input(shape=input_shape[1:], name="baseline")
        x = IdentityNormalisation()([data, inputs["baseline"]])
    outputs = _BUILDERS[name](x, mask, p, n_classes)
    return keras.Model(inputs, outputs, name=f"fer-{name}")


def uses_cudnn_rnn(model: keras.Model) -> bool:
    """True when the model holds (Bi)LSTM layers, whose cuDNN kernel XLA cannot compile."""
    return any(isinstance(layer, (layers.LSTM, layers.GRU, layers.Bidirectional))
               for layer in model.layers)


@keras.saving.register_keras_serializable(package="fercli")
class MacroRecall(keras.metrics.Metric):
    """Unweighted average recall (UAR): the mean of the per-class recalls, from a running
    confusion count; classes absent from the data are left out of the mean. Accuracy alone
    hides a model that never predicts the rare classes (anger, fear, sadness on CK+)."""

    def __init__(self, n_classes: int, name: str = "uar", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = n_classes
        self.hits = self.add_variable((n_classes,), initializer="zeros", name="hits")
        self.counts = self.add_variable((n_classes,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.one_hot(ops.argmax(y_true, axis=-1), self.n_classes, dtype=self.dtype)
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_classes, dtype=self.dtype)
        self.hits.assign_add(ops.sum(true * pred, axis=0))
        self.counts.assign_add(ops.sum(true, axis=0))

    def result(self):
        present = ops.cast(self.counts > 0, self.dtype)
        recall = self.hits / ops.maximum(self.counts, 1.0)
        return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.hits.assign(ops.zeros_like(self.hits))
        self.counts.assign(ops.zeros_like(self.counts))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


def compile_model(model: keras.Model, learning_rate: float = 1e-4) -> keras.Model:
    """Adam, categorical cross-entropy, accuracy and UAR (thesis 3.2.3: Adam at 1e-4).

    XLA is turned off for LSTM models: TensorFlow cannot compile the cuDNN LSTM kernel
    (keras-team/keras#18456), and Keras would otherwise enable XLA on a single GPU.
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="categorical_crossentropy",
                  metrics=["accuracy", MacroRecall(int(model.output_shape[-1]))],
                  jit_compile=False if uses_cudnn_rnn(model) else "auto")
    return model
