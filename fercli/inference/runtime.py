"""LiteRT inference for finalized runs: `fer predict` without importing TensorFlow.

A run's Keras models are converted once into TFLite flat buffers kept in the run folder,
``<run>/tflite/``, and run on LiteRT (``ai-edge-litert``, TFLite's successor) afterwards:

- ``temporal.tflite``: model.keras as ``fercli.inference.export.inference_copy`` rebuilds it
  (recurrent layers unrolled, TimeDistributed folded into the batch). It reads what
  ``fercli.inference.encoders.model_inputs`` builds, ``features`` or ``clip``, ``mask``
  (float, 1.0 on real frames) and, for identity runs, ``baseline``, and returns (B, classes)
  probabilities, for any batch B: ``LiteModel.predict_on_batch`` stands in for Keras's;
- ``backbone.tflite`` (feature runs): the Keras feature model that ``FeatureEncoder`` builds,
  from the network's float32 input to one feature vector per frame. The pixels are still
  prepared in numpy (``BackboneSpec.preprocess``: resize, colour, normalisation), so they are
  the same pixels, and ``FeatureEncoder`` rounds the features through extract.dtype as before;
- ``cache.json``, written last: what the graphs were made from (the sha256 of model.keras;
  the backbone's name or file, layer, weights and their sha256; the runtime format and the
  fercli, TensorFlow and Keras versions) and each graph's size and sha256.

Loading compares that record with the run as it is now and reads no Keras file, so a fresh
cache costs no TensorFlow import; any difference (model.keras re-finalized, other weights,
another TensorFlow) rebuilds the cache. Each file is written under a temporary name and
renamed into place, cache.json last (and removed first on a rebuild): a killed conversion
leaves no cache that passes the check. Where LiteRT is not installed, a graph does not
convert with TFLite's builtin operations or does not load, the run stays on Keras and
``FinalizedRun.runtime_note`` says why in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core import tfenv
from ..core.errors import FerError
from ..core.workspace import atomic_write_bytes, atomic_write_json, file_sha256, pid_alive
from .runs import FinalizedRun, read_run

RUNTIME_FORMAT = 1  # raise when the conversion changes: caches of another format are rebuilt
CACHE_DIR = "tflite"
CACHE_JSON = "cache.json"
TEMPORAL = "temporal.tflite"
BACKBONE = "backbone.tflite"
PIXELS = "pixels"  # the backbone graph's input: BackboneSpec.preprocess output
OUTPUT = "output"


def cpu_threads() -> int:
    """Cores this process may use (the scheduler's affinity, e.g. a batch job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def interpreter_class():
    """LiteRT's Interpreter, or None where ai-edge-litert is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    return Interpreter


@contextmanager
def quiet_litert() -> Iterator[None]:
    """Drop the INFO lines LiteRT's C++ side writes to file descriptor 2 while an
    interpreter is made ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."); other
    lines are written back. `fer --verbose` keeps them all."""
    if tfenv.verbose():
        yield
        return
    with tfenv.stderr_without(lambda line: line.startswith("INFO: ")):
        yield


# --------------------------------------------------------------------------- running
class LiteGraph:
    """A TFLite graph on LiteRT: named float32 inputs -> its one output.

    The batch dimension follows the inputs; the interpreter is resized only when a batch
    differs from the one before (predict sends fixed-size batches).
    """

    def __init__(self, source: Path | bytes, threads: int | None = None):
        interpreter = interpreter_class()
        if interpreter is None:
            raise ImportError("ai-edge-litert is not installed")
        where = ({"model_content": source} if isinstance(source, bytes)
                 else {"model_path": str(source)})
        with quiet_litert():
            self.interpreter = interpreter(**where, num_threads=threads or cpu_threads())
        [signature] = self.interpreter.get_signature_list()
        runner = self.interpreter.get_signature_runner(signature)
        details = runner.get_input_details()
        self.inputs = {name: int(d["index"]) for name, d in details.items()}
        self.shapes = {name: tuple(int(n) for n in d["shape"]) for name, d in details.items()}
        [output] = runner.get_output_details().values()
        self.output = int(output["index"])
        del runner  # it holds the interpreter's internals, which allocate_tensors refuses
        with quiet_litert():  # the XNNPACK delegate is made (and announced) here
            self.interpreter.allocate_tensors()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        arrays = {name: np.ascontiguousarray(feed[name], np.float32) for name in self.inputs}
        resized = False
        for name, array in arrays.items():
            if array.shape != self.shapes[name]:
                # strict: only the batch dimension (-1 in the graph) may change
                self.interpreter.resize_tensor_input(self.inputs[name], list(array.shape),
                                                     strict=True)
                self.shapes[name] = array.shape
                resized = True
        if resized:
            with quiet_litert():
                self.interpreter.allocate_tensors()
        for name, array in arrays.items():
            self.interpreter.set_tensor(self.inputs[name], array)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


class LiteModel:
    """``FinalizedRun.model`` on LiteRT: ``predict_on_batch`` as Keras's, same inputs."""

    def __init__(self, graph: LiteGraph):
        self.graph = graph

    def predict_on_batch(self, inputs: dict) -> np.ndarray:
        """{"features" or "clip", "mask"(, "baseline")} of B rows -> (B, classes)."""
        return self.graph(inputs)


class LiteBackbone:
    """The run's backbone on LiteRT, with ``FeatureExtractor.extract``'s interface."""

    def __init__(self, graph: LiteGraph, description: dict, input_color: bool,
                 batch_size: int):
        from ..features.backbones import BackboneSpec

        self.graph = graph
        self.spec = BackboneSpec(description["name"], tuple(description["input_size"]),
                                 description["normalisation"], (), "", None, "")
        self.layer = description["layer"]
        self.feature_dim = int(description["feature_dim"])
        self.input_color = input_color
        self.batch_size = batch_size

    def extract(self, frames: np.ndarray) -> np.ndarray:
        """(N,H,W,3) BGR or (N,H,W) gray frames -> (N, feature_dim) float32."""
        from ..features.backbones import batched_features

        return batched_features(self, frames, lambda pixels: self.graph({PIXELS: pixels}))


_SHARED: dict[str, LiteGraph] = {}  # sha256 of a flat buffer -> its loaded graph


def shared_graph(source: Path | bytes, sha256: str) -> LiteGraph:
    """One interpreter per distinct graph in this process (fused runs of one backbone)."""
    if sha256 not in _SHARED:
        _SHARED[sha256] = LiteGraph(source)
    return _SHARED[sha256]


# --------------------------------------------------------------------------- cache key
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def backbone_identity(run: FinalizedRun) -> dict | None:
    """What decides a feature run's backbone graph, found without building it (None: clip
    run). Unknown names and missing weights raise the ConfigError the Keras path raises."""
    if run.is_clip:
        return None
    from ..features import weights as weights_cache
    from ..features.backbones import get_spec, is_model_file, resolve_weights
    from .encoders import backbone_source

    extract = run.info["backbone"]
    source = backbone_source(run)
    identity: dict[str, Any] = {"layer": extract.get("layer"),
                                "input_color": bool(run.info["color"])}
    if is_model_file(source):
        path = Path(source).expanduser()
        identity.update(file=str(path.resolve()),
                        sha256=file_sha256(path) if path.is_file() else None)
    else:
        spec = get_spec(source)
        weights = resolve_weights(spec, extract.get("weights"))
        identity.update(backbone=spec.name, weights=None if weights is None else str(weights),
                        weights_sha256=(file_sha256(weights) if isinstance(weights, Path)
                                        else weights_cache.SOURCES[spec.name].sha256
                                        if weights == "fer2013" else None))
    return identity


def cache_key(run: FinalizedRun) -> dict:
    """Everything the cached graphs depend on (compared as a whole with cache.json's)."""
    return {"format": RUNTIME_FORMAT, "model_sha256": file_sha256(run.path / "model.keras"),
            "backbone": backbone_identity(run),
            "versions": {"fercli": __version__, "tensorflow": _version("tensorflow"),
                         "keras": _version("keras")}}


def fresh_cache(folder: Path, key: dict, needed: tuple[str, ...]) -> dict | None:
    """cache.json of ``folder`` when it was made from ``key`` and every graph in ``needed``
    is there with its recorded size and sha256; else None."""
    try:
        cached = json.loads((folder / CACHE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    files = cached.get("files")
    if not isinstance(files, dict) or set(files) != set(needed):
        return None
    for name, entry in files.items():
        path = folder / name
        try:
            if path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return cached


def needed_graphs(run: FinalizedRun) -> tuple[str, ...]:
    return (TEMPORAL,) if run.is_clip else (TEMPORAL, BACKBONE)


# --------------------------------------------------------------------------- converting
def _to_tflite(function, specs: list, trackable) -> bytes:
    """A TFLite flat buffer (builtin operations only: LiteRT has no TensorFlow fallback) of
    ``function`` traced for ``specs``; the batch dimension stays open. Through a SavedModel,
    as `fer export` converts (straight from a concrete function, Keras 3's variables are
    not all frozen: the graph returns NaN)."""
    import keras
    import tensorflow as tf

    from .export import SIGNATURE, quiet_tflite

    archive = keras.export.ExportArchive()
    archive.track(trackable)
    archive.add_endpoint(SIGNATURE, function, input_signature=specs)
    with tempfile.TemporaryDirectory(prefix="fer-runtime-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with quiet_tflite():
            return converter.convert()


def temporal_graph(model) -> bytes:
    """model.keras as TFLite: its inputs as float32 (a bool ``mask`` is read as > 0.5) ->
    probabilities, as ``predict_on_batch`` computes them."""
    import tensorflow as tf

    from .export import inference_copy

    copy = inference_copy(model, unroll=True)
    inputs = list(model.inputs)
    specs = [tf.TensorSpec((None, *t.shape[1:]), tf.float32, name=t.name) for t in inputs]

    def serve(*tensors):
        feed = {t.name: (tf.greater(x, 0.5) if t.dtype == "bool" else tf.cast(x, t.dtype))
                for t, x in zip(inputs, tensors)}
        return {OUTPUT: copy(feed, training=False)}

    return _to_tflite(serve, specs, copy)


def backbone_graph(extractor) -> tuple[bytes, dict]:
    """A Keras ``FeatureExtractor``'s model as TFLite (network input -> features), and what
    ``LiteBackbone`` needs to prepare its pixels."""
    import tensorflow as tf

    spec, model, dim = extractor.spec, extractor.model, extractor.feature_dim

    def features(pixels):
        return {OUTPUT: tf.reshape(model(pixels, training=False), (-1, dim))}

    data = _to_tflite(features, [tf.TensorSpec((None, *spec.input_size), tf.float32,
                                               name=PIXELS)], model)
    return data, {"name": spec.name, "input_size": list(spec.input_size),
                  "normalisation": spec.normalisation, "layer": extractor.layer,
                  "feature_dim": dim}


def convert_run(run: FinalizedRun) -> tuple[dict[str, bytes], dict | None]:
    """The run's graphs ({file name: flat buffer}) and its backbone's description."""
    from ..learning.training import load_model
    from .encoders import keras_extractor

    files = {TEMPORAL: temporal_graph(load_model(run.path / "model.keras"))}
    description = None
    if not run.is_clip:
        files[BACKBONE], description = backbone_graph(keras_extractor(run))
    return files, description


def _remove_dead_leftovers(folder: Path) -> None:
    """Temporary files of conversions that were killed (their pid is gone)."""
    for path in folder.glob(".*.tmp*"):
        parts = path.name.split(".")
        if len(parts) > 2 and parts[2].isdigit() and not pid_alive(int(parts[2])):
            path.unlink(missing_ok=True)


def write_cache(folder: Path, key: dict, files: dict[str, bytes],
                description: dict | None) -> None:
    """The graphs, then cache.json (atomic writes; the old record goes first)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CACHE_JSON).unlink(missing_ok=True)
    _remove_dead_leftovers(folder)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    atomic_write_json(folder / CACHE_JSON, {
        "key": key, "backbone": description, "litert": _version("ai-edge-litert"),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()}})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- loading
def load_inference_run(run_dir: Path) -> FinalizedRun:
    """A finalized run ready for `fer predict`: on LiteRT where it can be (``runtime``
    "tflite", ``model`` a ``LiteModel``, ``backbone_graph`` for feature runs; no TensorFlow
    import when the cache is fresh), else on Keras with ``runtime_note`` saying why.
    ``keras_model`` gives the Keras model either way."""
    run = attach_runtime(read_run(run_dir))
    if run.model is None:
        from ..learning.training import load_model

        run.model = load_model(run.path / "model.keras")
    return run


def attach_runtime(run: FinalizedRun) -> FinalizedRun:
    """Give ``run`` its LiteRT graphs, converted and cached first when the cache is missing
    or stale: ``model`` (a ``LiteModel``), ``backbone_graph`` (feature runs) and
    ``runtime="tflite"``. Where that cannot be, ``run`` is left as it was with
    ``runtime_note`` set (``load_inference_run`` then loads the Keras model). Errors of the run
    itself (an unknown backbone, missing weights) raise as on the Keras path."""
    if interpreter_class() is None:
        run.runtime_note = (f"{run.name}: LiteRT (ai-edge-litert) is not installed, so the "
                            "Keras model runs (slower start-up)")
        return run
    folder = run.path / CACHE_DIR
    needed = needed_graphs(run)
    key = cache_key(run)
    cached = fresh_cache(folder, key, needed)
    if cached is not None:
        sources: dict[str, Path | bytes] = {name: folder / name for name in needed}
        description = cached.get("backbone")
        digests = {name: cached["files"][name]["sha256"] for name in needed}
    else:
        try:
            files, description = convert_run(run)
        except FerError:
            raise
        except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
            run.runtime_note = (f"{run.name}: no TFLite graph ({_first_line(exc)}), so the "
                                "Keras model runs")
            return run
        sources = dict(files)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        try:
            write_cache(folder, key, files, description)
            sources = {name: folder / name for name in needed}
        except (OSError, FerError) as exc:  # a read-only run folder, a full disk
            run.runtime_note = (f"{run.name}: TFLite graphs not cached in {folder} "
                                f"({_first_line(exc)}); they are converted on every start")
    try:
        model = LiteModel(LiteGraph(sources[TEMPORAL]))
        backbone = None if run.is_clip else LiteBackbone(
            shared_graph(sources[BACKBONE], digests[BACKBONE]), description,
            bool(run.info["color"]), int(run.info["backbone"].get("batch_size") or 64))
    except Exception as exc:  # noqa: BLE001 - LiteRT raises RuntimeError/ValueError
        run.runtime_note = (f"{run.name}: LiteRT cannot load its TFLite graphs "
                            f"({_first_line(exc)}), so the Keras model runs")
        return run
    run.model, run.runtime, run.backbone_graph = model, "tflite", backbone
    return run
