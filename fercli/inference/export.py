"""`fer export`: a finalized run as one deployable graph, face clip in, probabilities out.

Thesis 4.2 asks of real-time FER a short inference time on small devices and points to
smaller models with fewer operations; this module turns a run into files that an inference
runtime loads without fercli: a TensorFlow SavedModel, or a TFLite flat buffer in float32,
with float16 weights, or with int8 post-training quantization (calibrated on the run's
training clips). Only the classifier is exported; face detection and tracking stay with
OpenCV (`fer live` runs them in front of the exported graph).

The graph reads what the track stage cuts out of a video: ``clip`` (B, T, S, S, C) uint8,
T = the run's max_frames, S = track.size, C = 3 (BGR, OpenCV's order) or 1 (gray runs),
zeros after the last real frame, and ``mask`` (B, T) float32, 1.0 on real frames. A run
with identity normalisation (model.json ``identity``, see fercli.features.identity) reads a third
input, ``onset`` (B, N, S, S, C) uint8, N = ``identity.BASELINE_FRAMES``: the face crops of
the first face frames of the video (its neutral onset; `fer predict`'s rule), zeros where
there are fewer. It returns ``probabilities`` (B, classes). Inside, the preprocessing
`fer predict` applies is replayed in the graph:

- feature runs (model.json names a backbone): each frame converted as
  ``BackboneSpec.preprocess`` does (gray conversion, resize to the backbone's input,
  BGR->RGB, the backbone's normalisation), the backbone applied to all frames at once
  (frames folded into the batch), the features rounded through extract.dtype as the
  feature store held them, padded steps zeroed, then the temporal model; identity runs
  pass the onset crops through the same conversion and backbone (one call on onset and
  clip frames together) and feed the mean of their features, over the non-zero crops, as
  the baseline;
- clip runs: resize to clip_size, BGR->RGB, /255 (``fercli.learning.datasets.load_clip``), then
  the model.

A resize is two matrix products whose matrices are cv2.resize applied to an identity
matrix, rounded to integers as OpenCV rounds uint8 output, with TFLite builtin operations
only. It equals OpenCV's INTER_AREA (shrinking faces, the common case) exactly; for
INTER_LINEAR (enlarging) about one pixel value in eight is one grey level off, since
OpenCV's uint8 bilinear path works with 11-bit fixed-point weights. For export, recurrent
layers are unrolled over T and lose their dropout (inactive at inference anyway), and
TimeDistributed layers fold time into the batch, so the TFLite graph has no TensorFlow
fallback ops and one copy of each convolution.

``export_run`` also checks the files against the Keras pipeline on the run's test-set
clips (share of identical argmax, accuracy change) and times one clip per format.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core import layout
from ..core.errors import ArtifactError, ConfigError, InputError
from ..core.workspace import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    read_json,
)
from ..features.identity import BASELINE_FRAMES

FORMATS = ("savedmodel", "tflite")
QUANTIZATIONS = ("none", "float16", "int8")
CALIBRATION_CLIPS = 16  # training clips that calibrate int8 activation ranges
SIGNATURE = "serve"
TABLE_COLUMNS = ("artifact", "size", "ms/clip", "agreement", "accuracy", "change")


# --------------------------------------------------------------------------- runs
def uses_onset(run) -> bool:
    """True for runs with identity normalisation: their graph reads the ``onset`` crops."""
    return bool(run.info.get("identity")) and not run.is_clip


def default_out_dir(run_dir: Path) -> Path:
    return layout.export_dir(layout.workdir_of_run(run_dir)) / Path(run_dir).name


# --------------------------------------------------------------------------- preprocessing
def resize_matrix(src: int, dst: int, interpolation: int) -> np.ndarray:
    """(dst, src) matrix M with M @ x = cv2.resize of the column x (one axis of a resize).

    OpenCV's area and bilinear resizes are separable and linear, so resizing an image is
    M @ image @ M.T; the columns of M are the resized unit vectors.
    """
    eye = np.eye(src, dtype=np.float32)
    return cv2.resize(eye, (src, dst), interpolation=interpolation).astype(np.float32)


@dataclass(frozen=True)
class PixelPlan:
    """How face crops become a network's input, as numbers the graph layer needs."""

    size: int  # side of the face crops fed in (track.size)
    channels_in: int  # 3: BGR crops, 1: gray crops
    target: tuple[int, int]  # (H, W) of the network input
    channels_out: int
    gray_first: bool  # BGR -> gray before resizing (OpenCV's fixed-point weights)
    interpolation: int  # cv2.INTER_AREA or cv2.INTER_LINEAR
    normalisation: str  # fercli.features.backbones.NORMALISATIONS key


def feature_plan(run, spec) -> PixelPlan:
    """``BackboneSpec.preprocess`` (``to_network_pixels`` + ``normalise``) as a plan."""
    size = int(run.config["track"]["size"])
    channels_in = 3 if run.config["track"]["color"] else 1
    height, width, channels = spec.input_size
    keep_color = bool(run.info["color"])
    shrink = size > height or size > width
    return PixelPlan(size, channels_in, (height, width), channels,
                     channels_in == 3 and (channels == 1 or not keep_color),
                     cv2.INTER_AREA if shrink else cv2.INTER_LINEAR, spec.normalisation)


def clip_plan(run) -> PixelPlan:
    """``ClipEncoder``: INTER_AREA to clip_size, BGR -> RGB, scaled to [0, 1]."""
    size = int(run.config["track"]["size"])
    channels = 3 if run.info["color"] else 1
    clip_size = int(run.info["clip_size"])
    return PixelPlan(size, channels, (clip_size, clip_size), channels, False, cv2.INTER_AREA,
                     "unit")


_LAYERS: dict[str, type] = {}


def _layers() -> dict[str, type]:
    """The Keras layers of the export graph (defined on first use: Keras loads lazily)."""
    if _LAYERS:
        return _LAYERS
    import keras
    from keras import ops

    from ..features.backbones import normalise

    class FacePixels(keras.layers.Layer):
        """uint8 face crops (B, T, S, S, C) -> a network's float input (B, T, H, W, C')."""

        def __init__(self, plan: PixelPlan, **kwargs):
            super().__init__(**kwargs)
            self.plan = plan
            self.rows = resize_matrix(plan.size, plan.target[0], plan.interpolation)
            self.cols = resize_matrix(plan.size, plan.target[1], plan.interpolation)

        def call(self, clip):
            plan = self.plan
            x = ops.cast(clip, "float32")
            if plan.gray_first:  # OpenCV's uint8 BGR2GRAY: 15-bit fixed point, rounded
                x = ops.floor((x[..., 0:1] * 3735.0 + x[..., 1:2] * 19235.0
                               + x[..., 2:3] * 9798.0 + 16384.0) / 32768.0)
            if plan.target != (plan.size, plan.size):
                x = ops.einsum("hs,btswc->bthwc", self.rows, x)
                x = ops.einsum("bthsc,ws->bthwc", x, self.cols)
                x = ops.floor(x + 0.5)  # OpenCV rounds resized uint8 pixels
            if plan.channels_out == 3:
                x = ops.flip(x, axis=-1) if x.shape[-1] == 3 else ops.repeat(x, 3, axis=-1)
            return normalise(x, plan.normalisation, lambda t: ops.flip(t, axis=-1))

        def compute_output_shape(self, input_shape):
            return (*input_shape[:2], *self.plan.target, self.plan.channels_out)

    class Framewise(keras.layers.Layer):
        """Apply a per-frame layer or model to (B, T, ...) with time folded into the batch.

        Keras's TimeDistributed repeats the layer once per time step when T is fixed; one
        call on B*T frames traces once and keeps one copy of the weights in the graph.
        """

        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x, mask=None):  # mask: TimeDistributed's graph node passes one
            steps = x.shape[1]
            y = self.inner(ops.reshape(x, (-1, *x.shape[2:])), training=False)
            return ops.reshape(y, (-1, steps, *y.shape[1:]))

        def compute_output_shape(self, input_shape):
            inner = self.inner.compute_output_shape((None, *input_shape[2:]))
            return (*input_shape[:2], *inner[1:])

    class OnsetBaseline(keras.layers.Layer):
        """Mean features of the onset crops that are there: (B, N, F) features and the
        (B, N, S, S, C) uint8 crops -> (B, F); an all-zero crop is padding (fewer face
        frames than N), as ``identity.onset_baseline`` averages the frames it has."""

        def call(self, features, onset):
            flat = ops.reshape(ops.cast(onset, "float32"),
                               (-1, onset.shape[1], int(np.prod(onset.shape[2:]))))
            present = ops.cast(ops.greater(ops.max(flat, axis=-1), 0.0), "float32")  # (B, N)
            total = ops.sum(features * ops.expand_dims(present, -1), axis=1)
            count = ops.maximum(ops.sum(present, axis=1, keepdims=True), 1.0)
            return total / count

        def compute_output_shape(self, features_shape, onset_shape=None):
            return (features_shape[0], features_shape[2])

    _LAYERS.update(FacePixels=FacePixels, Framewise=Framewise, OnsetBaseline=OnsetBaseline)
    return _LAYERS


# --------------------------------------------------------------------------- graph
def _inference_config(config: Any) -> Any:
    """A layer config with every recurrent layer unrolled and its dropout off."""
    if isinstance(config, dict):
        if "unroll" in config:
            config = {**config, "unroll": True}
            config.update({k: 0.0 for k in ("dropout", "recurrent_dropout") if k in config})
        return {key: _inference_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_inference_config(value) for value in config]
    return config


def inference_copy(model, unroll: bool):
    """The trained model rebuilt for export, with its weights (see module doc)."""
    import keras

    framewise = _layers()["Framewise"]

    def clone(layer):
        if isinstance(layer, keras.layers.TimeDistributed):
            return framewise(clone(layer.layer), name=layer.name)
        config = _inference_config(layer.get_config()) if unroll else layer.get_config()
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def build_inference_model(run, unroll: bool = True, extractor=None):
    """One Keras model: {"clip": uint8 crops, "mask": float} -> class probabilities, plus
    {"onset": uint8 crops} for identity runs (``uses_onset``; see the module doc).

    ``run`` is a `fercli.inference.predict.FinalizedRun`; ``extractor`` (feature runs) its backbone,
    built as `fer predict` builds it when not given.
    """
    import keras
    from keras import ops

    layers = _layers()
    steps = run.max_frames
    temporal = inference_copy(run.model, unroll)
    if run.is_clip:
        plan = clip_plan(run)
    else:
        if extractor is None:
            from .encoders import FeatureEncoder

            extractor = FeatureEncoder(run).extractor
        plan = feature_plan(run, extractor.spec)
    clip = keras.Input((steps, plan.size, plan.size, plan.channels_in), dtype="uint8",
                       name="clip")
    mask = keras.Input((steps,), dtype="float32", name="mask")
    inputs = {"clip": clip, "mask": mask}
    frames = clip
    if uses_onset(run):  # onset frames first, through the same pixels and backbone
        inputs["onset"] = keras.Input((BASELINE_FRAMES, plan.size, plan.size,
                                       plan.channels_in), dtype="uint8", name="onset")
        # joined as float: TFLite's int8 graphs abort on a concatenation of raw uint8 inputs
        frames = ops.concatenate([ops.cast(inputs["onset"], "float32"),
                                  ops.cast(clip, "float32")], axis=1)
    pixels = layers["FacePixels"](plan, name="face_pixels")(frames)
    real = ops.greater(mask, 0.5)
    if run.is_clip:
        probabilities = temporal({"clip": pixels, "mask": real})
    else:
        features = layers["Framewise"](extractor.model, name="backbone")(pixels)
        dtype = run.info["backbone"].get("dtype", "float32")
        if dtype != "float32":  # the precision the feature store kept
            features = ops.cast(ops.cast(features, dtype), "float32")
        model_inputs = {"mask": real}
        if "onset" in inputs:  # fer predict: the mean of the onset's rounded features
            model_inputs["baseline"] = layers["OnsetBaseline"](name="onset_baseline")(
                features[:, :BASELINE_FRAMES], inputs["onset"])
            features = features[:, BASELINE_FRAMES:]
        model_inputs["features"] = features * ops.expand_dims(mask, -1)  # padding: zeros
        probabilities = temporal(model_inputs)
    return keras.Model(inputs, probabilities, name=f"{run.name}-export")


def graph_inputs(model) -> list[str]:
    """The export graph's input names: clip, mask (and onset for identity runs)."""
    names = {layer.name for layer in model.layers}
    return [name for name in ("clip", "mask", "onset") if name in names]


def write_savedmodel(model, folder: Path, batch: int | None = None) -> Path:
    """SavedModel with endpoint ``serve`` (and ``serving_default``): clip, mask (and onset)
    -> probabilities."""
    import keras

    names = graph_inputs(model)
    if "onset" in names:
        def serve(clip, mask, onset):
            return {"probabilities": model({"clip": clip, "mask": mask, "onset": onset},
                                           training=False)}
    else:
        def serve(clip, mask):
            return {"probabilities": model({"clip": clip, "mask": mask}, training=False)}
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve,
                         input_signature=[_spec(model, name, batch) for name in names])
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        archive.write_out(str(tmp), verbose=False)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _spec(model, name: str, batch: int | None):
    import tensorflow as tf

    layer = model.get_layer(name)  # the keras.Input of that name
    return tf.TensorSpec((batch, *layer.batch_shape[1:]), layer.dtype, name=name)


def convert_tflite(model, quantize: str,
                   calibration: Callable[[], Iterator[dict]] | None = None) -> tuple[bytes, bool]:
    """TFLite flat buffer of ``model`` at batch 1; returns (bytes, needed TF fallback ops).

    ``float16`` stores weights as float16; ``int8`` quantizes weights and activations
    with ranges measured on ``calibration`` (dicts of clip, mask and, for identity runs,
    onset: ``calibration_data``), leaving an op in
    float where TFLite has no int8 kernel for it.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="fer-export-") as tmp:
        write_savedmodel(model, Path(tmp) / "batch1", batch=1)

        def converter():
            conv = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "batch1"),
                                                            signature_keys=[SIGNATURE])
            if quantize != "none":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                conv.target_spec.supported_types = [tf.float16]
            elif quantize == "int8":
                if calibration is None:
                    raise InputError("int8 quantization needs calibration clips",
                                     hint="Export from a work directory with training clips")
                conv.representative_dataset = calibration
            return conv

        try:
            with quiet_tflite():
                return converter().convert(), False
        except Exception:  # noqa: BLE001 - the converter raises bare ConverterErrors
            conv = converter()
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                              tf.lite.OpsSet.SELECT_TF_OPS]
            try:
                with quiet_tflite():
                    return conv.convert(), True
            except Exception as exc:  # noqa: BLE001
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise ArtifactError(f"TFLite conversion ({quantize}) failed: {first}",
                                    hint="Try --format savedmodel") from None


# --------------------------------------------------------------------------- loading
class ExportedModel:
    """An exported graph loaded for inference: TFLite interpreter or SavedModel."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if self.path.suffix == ".tflite":
            interpreter = _tflite_interpreter(self.path, threads or os.cpu_count() or 1)
            self._runner = interpreter.get_signature_runner(SIGNATURE)
            shapes = {name: tuple(int(d) for d in detail["shape"])
                      for name, detail in self._runner.get_input_details().items()}
            self.kind = "tflite"
        elif (self.path / "saved_model.pb").is_file():
            import tensorflow as tf

            self._function = tf.saved_model.load(str(self.path)).signatures[SIGNATURE]
            shapes = {name: tuple(spec.shape) for name, spec
                      in self._function.structured_input_signature[1].items()}
            self.kind = "savedmodel"
        else:
            raise ConfigError(f"{self.path} is neither a .tflite file nor a SavedModel folder",
                              hint="Give a file or folder written by `fer export`")
        self.clip_shape = shapes["clip"]
        self.onset_shape = shapes.get("onset")  # identity runs only

    @property
    def max_frames(self) -> int:
        return int(self.clip_shape[1])

    @property
    def needs_onset(self) -> bool:
        return self.onset_shape is not None

    def predict(self, clip: np.ndarray, mask: np.ndarray,
                onset: np.ndarray | None = None) -> np.ndarray:
        """(B, T, S, S, C) uint8 crops and (B, T) mask (and, for a graph of an identity run,
        (B, N, S, S, C) uint8 onset crops, ``pad_onset``) -> (B, classes) probabilities.
        A graph without an onset input ignores ``onset``."""
        inputs = {"clip": np.ascontiguousarray(clip, np.uint8),
                  "mask": np.ascontiguousarray(mask, np.float32)}
        if self.needs_onset:
            if onset is None:
                raise InputError(f"{self.path.name} is the graph of an identity-normalised "
                                 "run and needs the onset crops",
                                 hint="Pass the first face crops of the video (pad_onset)")
            inputs["onset"] = np.ascontiguousarray(onset, np.uint8)
        if self.kind == "tflite":  # the flat buffer is fixed at batch 1
            return np.concatenate([self._runner(**{k: v[i:i + 1] for k, v in inputs.items()})
                                   ["probabilities"] for i in range(len(inputs["clip"]))])
        return self._function(**inputs)["probabilities"].numpy()


def _tflite_interpreter(path: Path, threads: int):
    try:  # LiteRT, TFLite's successor, where installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    with quiet_tflite():
        return Interpreter(model_path=str(path), num_threads=threads)


@contextmanager
def quiet_tflite() -> Iterator[None]:
    """Silence TF's notice that tf.lite.Interpreter moves to LiteRT (also raised inside the
    int8 converter); fercli takes LiteRT's interpreter where it is installed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        yield


def pad_clip(crops: Sequence[np.ndarray], max_frames: int, size: int,
             channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Face crops -> one (1, T, S, S, C) uint8 clip (first T crops, zeros after) and mask."""
    clip = np.zeros((1, max_frames, size, size, channels), np.uint8)
    mask = np.zeros((1, max_frames), np.float32)
    for i, crop in enumerate(list(crops)[:max_frames]):
        clip[0, i] = crop.reshape(size, size, channels)
        mask[0, i] = 1.0
    return clip, mask


def pad_onset(crops: Sequence[np.ndarray] | None, size: int, channels: int) -> np.ndarray:
    """The first face crops of a video -> the (1, N, S, S, C) uint8 ``onset`` input,
    N = BASELINE_FRAMES: the first N crops, zeros (no frame) after when there are fewer."""
    onset = np.zeros((1, BASELINE_FRAMES, size, size, channels), np.uint8)
    for i, crop in enumerate(list(crops if crops is not None else [])[:BASELINE_FRAMES]):
        onset[0, i] = crop.reshape(size, size, channels)
    return onset


# --------------------------------------------------------------------------- data
@dataclass
class LabelledClip:
    item: str
    label: int  # index into the run's classes
    crops: np.ndarray  # (n, S, S, C) uint8 kept frames, n <= max_frames
    # (m, S, S, C) uint8 first frames of the face clip, m <= BASELINE_FRAMES (identity runs)
    onset: np.ndarray | None = None


def run_clips(run, part: str, limit: int | None = None) -> list[LabelledClip]:
    """Kept face frames of the run's work directory: ``test`` items or training items.

    Read as `fer trim` kept them from the track stage's lossless clips, i.e. exactly the
    frames the run was trained and tested on; for identity runs also the clip's first
    BASELINE_FRAMES frames, its onset (the frames `fer extract` and `fer predict` take the
    baseline from). Empty when the work directory is gone.
    """
    import csv
    import io
    from itertools import islice

    from ..vision.clipio import iter_clip, kept_frames

    workdir = layout.workdir_of_run(run.path)
    needed = [layout.splits_json(workdir), layout.stage_dir(workdir, "trim") / "manifest.json",
              layout.index_csv(workdir)]
    if not all(p.is_file() for p in needed):
        return []
    splits = read_json(needed[0], "splits.json")["items"]
    items = splits["test"] if part == "test" else [i for fold in splits["folds"] for i in fold]
    if limit is not None and len(items) > limit:
        items = [items[round(k * (len(items) - 1) / (limit - 1))] for k in range(limit)] \
            if limit > 1 else items[:1]
    trim = read_json(needed[1], "trim manifest")["items"]
    labels = {r["item_id"]: r["label"] for r in csv.DictReader(io.StringIO(needed[2].read_text()))}
    track = run.config["track"]
    channels = 3 if track["color"] else 1
    clips = []
    for item in items:
        record = trim.get(item)
        if not record or record["status"] != "done" or labels.get(item) not in run.classes:
            continue
        info = record["info"]
        last = min(info["last"], info["first"] + run.max_frames - 1)
        crops = np.stack(list(kept_frames(info["clip"], info["first"], last, track["color"])))
        if crops.shape[1:3] != (track["size"], track["size"]):
            raise ArtifactError(f"face clips are {crops.shape[1]} px, the run was trained on "
                                f"{track['size']} px", path=info["clip"],
                                hint="Re-run `fer track` with the run's track.size")
        onset = None
        if uses_onset(run):
            onset = np.stack(list(islice(iter_clip(info["clip"], track["color"]),
                                         BASELINE_FRAMES)))
            onset = onset.reshape(len(onset), *onset.shape[1:3], channels)
        clips.append(LabelledClip(item, run.classes.index(labels[item]),
                                  crops.reshape(len(crops), *crops.shape[1:3], channels),
                                  onset))
    return clips


def calibration_data(run, clips: Sequence[LabelledClip]) -> Callable[[], Iterator[dict]]:
    """int8 calibration samples: the given training clips (and their onsets), one per step."""
    size = int(run.config["track"]["size"])

    def samples() -> Iterator[dict]:
        for clip in clips:
            data, mask = pad_clip(clip.crops, run.max_frames, size, clip.crops.shape[-1])
            sample = {"clip": data, "mask": mask}
            if uses_onset(run):
                sample["onset"] = pad_onset(clip.onset, size, clip.crops.shape[-1])
            yield sample

    return samples


# --------------------------------------------------------------------------- checking
class KerasPipeline:
    """The run as `fer predict` feeds it: encoder (backbone or resize) + model.keras."""

    def __init__(self, run):
        from .encoders import ClipEncoder, FeatureEncoder

        self.run = run
        self.encoder = ClipEncoder(run) if run.is_clip else FeatureEncoder(run)
        self.needs_onset = uses_onset(run)

    def predict(self, crops: np.ndarray, onset: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of the kept face crops; identity runs need ``onset``, the first
        face crops of the video, whose baseline is `fer predict`'s (``with_baseline``)."""
        from .encoders import baseline_key, model_inputs, with_baseline

        def faces(frames):
            return [c[..., 0] if c.ndim == 3 and c.shape[-1] == 1 else c for c in frames]

        codes = self.encoder.encode(faces(crops[:self.run.max_frames]))
        baselines = None
        if self.needs_onset:
            if onset is None or not len(onset):
                raise InputError(f"run {self.run.name} normalises identity and needs the "
                                 "onset crops (the video's first face frames)")
            key = self.run.encoder_key()
            coded = with_baseline({key: codes}, {key: self.encoder.encode(
                faces(onset[:BASELINE_FRAMES]))})
            baselines = [coded[baseline_key(key)]]
        inputs = model_inputs(self.run, self.encoder, [codes], 1, baselines)
        return np.asarray(self.run.model.predict_on_batch(inputs))[0]

    def size_bytes(self) -> int:
        """model.keras plus the backbone's float32 weights (feature runs)."""
        size = (self.run.path / "model.keras").stat().st_size
        if not self.run.is_clip:
            size += sum(int(np.prod(w.shape)) * 4 for w in self.encoder.extractor.model.weights)
        return size


def _timed(predict: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = predict()
    return result, (time.perf_counter() - start) * 1000.0


def check_artifact(predict_clip: Callable[[LabelledClip], np.ndarray],
                   clips: Sequence[LabelledClip]) -> tuple[np.ndarray, float]:
    """Probabilities of every clip and the median ms per clip (after one warm-up call)."""
    predict_clip(clips[0])
    results = [_timed(lambda c=clip: predict_clip(c)) for clip in clips]
    return np.stack([r for r, _ in results]), statistics.median(ms for _, ms in results)


def agreement_row(probabilities: np.ndarray, reference: np.ndarray,
                  labels: np.ndarray) -> dict:
    """Share of identical argmax with the Keras pipeline, accuracy and its change."""
    predicted, expected = probabilities.argmax(1), reference.argmax(1)
    accuracy = float(np.mean(predicted == labels))
    return {"agreement": float(np.mean(predicted == expected)), "accuracy": accuracy,
            "accuracy_change": accuracy - float(np.mean(expected == labels)),
            "max_abs_diff": float(np.abs(probabilities - reference).max())}


# --------------------------------------------------------------------------- entry point
def artifact_name(fmt: str, quantize: str) -> str:
    if fmt == "savedmodel":
        return "savedmodel"
    return "model.tflite" if quantize == "none" else f"model-{quantize}.tflite"


def plan_artifacts(formats: Sequence[str] | None,
                   quantize: Sequence[str] | None) -> list[tuple[str, str]]:
    """(format, quantization) pairs asked for; defaults: SavedModel and float32 TFLite."""
    formats = list(formats or FORMATS)
    quantize = list(quantize or [])
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown export format {fmt!r}", hint=f"Use {' or '.join(FORMATS)}")
    for q in quantize:
        if q not in QUANTIZATIONS:
            raise ConfigError(f"unknown quantization {q!r}",
                              hint=f"Use one of: {', '.join(QUANTIZATIONS)}")
    if quantize and "tflite" not in formats:
        raise ConfigError("--quantize applies to TFLite only", hint="Add --format tflite")
    pairs = [("savedmodel", "none")] if "savedmodel" in formats else []
    if "tflite" in formats:
        pairs += [("tflite", q) for q in dict.fromkeys(quantize or ["none"])]
    return pairs


def _path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_run(run_dir: Path, out_dir: Path | None = None,
               formats: Sequence[str] | None = None, quantize: Sequence[str] | None = None,
               check: bool = True, console=None) -> dict:
    """Export one finalized run; write export.json and export.md; return export.json.

    ``formats``: savedmodel and/or tflite (default both); ``quantize``: TFLite variants
    none (float32), float16, int8 (default none). With ``check``, every file is run on
    the run's test clips beside the Keras pipeline (agreement, accuracy, ms per clip).
    export.json keeps entries of earlier exports of the same model.keras.
    """
    from .runs import load_run

    pairs = plan_artifacts(formats, quantize)
    run = load_run(run_dir)
    out_dir = Path(out_dir or default_out_dir(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    say = console.print if console is not None else (lambda *_: None)
    source_sha = file_sha256(run.path / "model.keras")
    pipeline = KerasPipeline(run)
    extractor = None if run.is_clip else pipeline.encoder.extractor
    models: dict[bool, Any] = {}

    def model_for(unroll: bool):
        if unroll not in models:
            models[unroll] = build_inference_model(run, unroll, extractor)
        return models[unroll]

    needs_calibration = any(q == "int8" for _, q in pairs)
    training = run_clips(run, "train", CALIBRATION_CLIPS) if needs_calibration else []
    artifacts = {}
    for fmt, q in pairs:
        name = artifact_name(fmt, q)
        started = time.perf_counter()
        say(f"export: writing {name} ...")
        select_ops = False
        if fmt == "savedmodel":
            write_savedmodel(model_for(False), out_dir / name)
        else:
            data, select_ops = convert_tflite(
                model_for(True), q, calibration_data(run, training) if training else None)
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(data)
        artifacts[name] = {"name": name, "format": fmt, "quantize": q,
                           "bytes": _path_size(out_dir / name), "select_tf_ops": select_ops,
                           "seconds": round(time.perf_counter() - started, 1)}
    summary = _merge(out_dir / "export.json", source_sha, artifacts)
    track = run.config["track"]
    crop = [track["size"], track["size"], 3 if track["color"] else 1]
    summary.update({
        "run": run.name, "run_path": str(run.path.resolve()), "folder": str(out_dir),
        "model": run.info.get("model"),
        "source_sha256": source_sha, "classes": run.classes, "max_frames": run.max_frames,
        "input": {"clip": [run.max_frames, *crop],
                  "dtype": "uint8", "channels": "BGR" if track["color"] else "gray",
                  "mask": [run.max_frames], "signature": SIGNATURE,
                  "output": "probabilities"},
        "config": {key: run.config[key] for key in ("detect", "track", "trim", "index")},
    })
    if uses_onset(run):  # the first face crops of the video: the identity baseline
        summary["input"]["onset"] = [BASELINE_FRAMES, *crop]
    if check:
        clips = run_clips(run, "test")
        if clips:
            _check(run, pipeline, clips, out_dir, summary, say)
        else:
            summary["check"] = {"clips": 0, "note": "no test clips in the run's work "
                                "directory; files were not compared"}
            say("[yellow]export: no test clips found; files were not compared[/]")
    atomic_write_json(out_dir / "export.json", summary)
    atomic_write_text(out_dir / "export.md", markdown_table(summary))
    return summary


def _merge(path: Path, source_sha: str, artifacts: dict) -> dict:
    """Earlier export.json of the same model, with ``artifacts`` replacing theirs.

    Entries of another model.keras are dropped with their files (they no longer match),
    and so are entries whose file was deleted.
    """
    summary: dict = {"artifacts": {}}
    if path.is_file():
        old = read_json(path, "export.json")
        if old.get("source_sha256") == source_sha:
            summary = old
            summary["artifacts"] = {name: entry for name, entry in old["artifacts"].items()
                                    if (path.parent / name).exists()}
        else:
            for entry in old.get("artifacts", {}).values():
                stale = path.parent / entry["name"]
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink(missing_ok=True)
    summary["artifacts"].update(artifacts)
    return summary


def _check(run, pipeline: KerasPipeline, clips: Sequence[LabelledClip], out_dir: Path,
           summary: dict, say) -> None:
    labels = np.array([c.label for c in clips])
    size = int(run.config["track"]["size"])
    say(f"export: checking against the Keras pipeline on {len(clips)} test clips ...")
    reference, reference_ms = check_artifact(lambda c: pipeline.predict(c.crops, c.onset),
                                             clips)
    summary["reference"] = {"name": "keras", "bytes": pipeline.size_bytes(),
                            "ms_per_clip": round(reference_ms, 2),
                            "accuracy": float(np.mean(reference.argmax(1) == labels))}
    for name, entry in summary["artifacts"].items():
        model = ExportedModel(out_dir / name)

        def predict(clip: LabelledClip, model=model) -> np.ndarray:
            data, mask = pad_clip(clip.crops, run.max_frames, size, clip.crops.shape[-1])
            onset = pad_onset(clip.onset, size, clip.crops.shape[-1]) \
                if model.needs_onset else None
            return model.predict(data, mask, onset)[0]

        probabilities, ms = check_artifact(predict, clips)
        entry.update(agreement_row(probabilities, reference, labels),
                     ms_per_clip=round(ms, 2))
    summary["check"] = {"clips": len(clips), "items": [c.item for c in clips],
                        "frames": [len(c.crops) for c in clips], "threads": os.cpu_count()}


def table_rows(summary: dict) -> list[list[str]]:
    """One row per file (plus the Keras reference): size, ms per clip, agreement, accuracy."""
    rows = []
    reference = summary.get("reference")
    if reference:
        rows.append(["keras (model.keras + backbone)", _megabytes(reference["bytes"]),
                     f"{reference['ms_per_clip']:.1f}", "reference",
                     f"{reference['accuracy']:.3f}", ""])
    for entry in summary["artifacts"].values():
        checked = "agreement" in entry
        rows.append([entry["name"], _megabytes(entry["bytes"]),
                     f"{entry['ms_per_clip']:.1f}" if checked else "",
                     f"{entry['agreement']:.3f}" if checked else "",
                     f"{entry['accuracy']:.3f}" if checked else "",
                     f"{entry['accuracy_change']:+.3f}" if checked else ""])
    return rows


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def markdown_table(summary: dict) -> str:
    check = summary.get("check", {})
    lines = [f"# Export of {summary['run']}", "",
             f"Input: clip {summary['input']['clip']} {summary['input']['dtype']} "
             f"({summary['input']['channels']}) + mask {summary['input']['mask']}"
             + (f" + onset {summary['input']['onset']} {summary['input']['dtype']} (the "
                "first face crops: identity baseline)" if "onset" in summary["input"]
                else "") + "; output: "
             f"{len(summary['classes'])} class probabilities ({', '.join(summary['classes'])}).",
             "", f"Checked on {check.get('clips', 0)} test clips against the Keras pipeline "
             f"(agreement: share of identical argmax; ms per clip at batch 1, "
             f"{check.get('threads', '?')} threads).", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines) + "\n"
