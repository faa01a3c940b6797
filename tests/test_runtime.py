"""LiteRT runtime (fercli.inference.runtime) and read-ahead decoding (fercli.vision.media).

Runs are written by `fer finalize`'s own writer around untrained, decisive models (an LSTM
on small-cnn features, a 1D CNN with identity normalisation, an LRCN on 32 px clips); the
TFLite path must give Keras's probabilities, its cache must be reused without TensorFlow,
rebuilt when stale, and never look complete after a killed conversion.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import support
from conftest import write_video

from fercli.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MAX_FRAMES = 12
ROWS = 16  # predict's PREDICT_BATCH
SETTINGS = ["track.size=64", "extract.backbone=small-cnn", "extract.weights=null",
            f"extract.max_frames={MAX_FRAMES}", "extract.dtype=float16"]


def make_run(workdir: Path, name: str, model_name: str, params: dict, input_shape: tuple,
             **kwargs) -> Path:
    config = load_config(None, [f"workdir={workdir}", *SETTINGS])
    return support.make_run(workdir, name, model_name, params, input_shape,
                            config=config.data, classes=support.CLASSES, decisive=True,
                            **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    import keras

    from fercli.features.backbones import build_feature_extractor

    keras.utils.set_random_seed(7)  # untrained models: the same weights every time
    workdir = tmp_path_factory.mktemp("runtime") / "work"
    dim = build_feature_extractor("small-cnn", weights=None).feature_dim
    return {"feature": make_run(workdir, "lstm-small", "lstm", {"units": 8},
                                (MAX_FRAMES, dim)),
            "identity": make_run(workdir, "cnn1d-identity", "cnn1d",
                                 {"filters": [8, 8], "dense_units": [8]}, (MAX_FRAMES, dim),
                                 identity=True),
            "clip": make_run(workdir, "lrcn-clips32", "lrcn",
                             {"filters": [4, 4], "layers": 1, "units": 8},
                             (MAX_FRAMES, 32, 32, 3), clip_size=32),
            "workdir": workdir}


def faces(count: int, seed: int = 0) -> list[np.ndarray]:
    """Face-like crops: smooth blobs with noise (not flat: features must differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    crops = []
    for _ in range(count):
        cy, cx, r = rng.uniform(20, 44), rng.uniform(20, 44), rng.uniform(8, 24)
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        image = blob[..., None] * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 12, (64, 64, 3))
        crops.append(np.clip(image + 30, 0, 255).astype(np.uint8))
    return crops


def sequences(codes: np.ndarray) -> list[np.ndarray]:
    """ROWS sequences of different lengths (some longer than max_frames, one short)."""
    return [codes[i:i + 4 + i % 11] for i in range(ROWS - 1)] + [codes[:2]]


def encoder_for(run):
    from fercli.inference.encoders import ClipEncoder, FeatureEncoder

    return ClipEncoder(run) if run.is_clip else FeatureEncoder(run)


def inputs_for(run, encoder, codes: np.ndarray) -> dict:
    from fercli.inference.encoders import model_inputs

    seqs = sequences(codes)
    baselines = [s[:5].mean(0) for s in seqs] if run.info.get("identity") else None
    return model_inputs(run, encoder, seqs, ROWS, baselines)


@pytest.mark.parametrize("kind", ["feature", "identity", "clip"])
def test_tflite_gives_the_keras_probabilities(runs, kind):
    from fercli.inference.runs import load_run
    from fercli.inference.runtime import load_inference_run

    lite, keras_run = load_inference_run(runs[kind]), load_run(runs[kind])
    assert (lite.runtime, lite.runtime_note) == ("tflite", None)
    assert keras_run.runtime == "keras" and keras_run.keras_model is keras_run.model
    lite_encoder, keras_encoder = encoder_for(lite), encoder_for(keras_run)
    crops = faces(40)
    lite_codes, keras_codes = lite_encoder.encode(crops), keras_encoder.encode(crops)
    if kind != "clip":  # features rounded through float16: at most a last-bit difference
        assert lite_encoder.engine is lite.backbone_graph
        scale = float(np.abs(keras_codes).max())
        assert scale > 0
        np.testing.assert_allclose(lite_codes, keras_codes, rtol=2e-3, atol=1e-3 * scale)
        assert np.mean(lite_codes == keras_codes) > 0.95
    else:
        np.testing.assert_array_equal(lite_codes, keras_codes)
    # the temporal graph on identical inputs
    inputs = inputs_for(keras_run, keras_encoder, keras_codes)
    expected = np.asarray(keras_run.model.predict_on_batch(inputs))
    got = lite.model.predict_on_batch(inputs)
    assert got.shape == expected.shape == (ROWS, len(support.CLASSES))
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    top2 = np.sort(expected, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 1e-3).sum() >= ROWS // 2  # no ties: argmax means much
    # end to end: crops -> backbone -> temporal model, each on its own runtime
    end_to_end = lite.model.predict_on_batch(inputs_for(lite, lite_encoder, lite_codes))
    assert np.abs(end_to_end - expected).max() < 1e-4
    assert (end_to_end.argmax(1) == expected.argmax(1)).all()
    # another batch size (export's checks send one row) resizes the graph
    one = {name: value[:1] for name, value in inputs.items()}
    np.testing.assert_allclose(lite.model.predict_on_batch(one), expected[:1], atol=1e-4)
    # the Keras model stays reachable (export builds its graphs from it)
    assert lite.keras_model.name == keras_run.model.name


PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from fercli.inference.encoders import ClipEncoder, FeatureEncoder, model_inputs
    from fercli.inference.runtime import load_inference_run

    run = load_inference_run(sys.argv[1])
    encoder = ClipEncoder(run) if run.is_clip else FeatureEncoder(run)
    codes = encoder.encode([np.full((64, 64, 3), 90, np.uint8)] * 5)
    base = [codes.mean(0)] if run.info.get("identity") else None
    probabilities = run.model.predict_on_batch(model_inputs(run, encoder, [codes], 16, base))
    print(json.dumps({"runtime": run.runtime, "note": run.runtime_note,
                      "shape": list(probabilities.shape),
                      "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
""")


def probe(run_dir: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(run_dir)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no LiteRT INFO line, no TensorFlow chatter
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["identity", "clip"])
def test_a_fresh_cache_is_used_without_tensorflow(runs, kind):
    from fercli.inference.runtime import CACHE_DIR, CACHE_JSON, load_inference_run

    load_inference_run(runs[kind])  # converts, or finds the cache of an earlier test
    cache = runs[kind] / CACHE_DIR
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert CACHE_JSON in stamps
    assert probe(runs[kind]) == {"runtime": "tflite", "note": None, "shape": [16, 6],
                                 "tensorflow": False, "keras": False}
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # not rebuilt


def test_a_stale_cache_is_rebuilt(runs, tmp_path):
    from fercli.core.workspace import file_sha256
    from fercli.inference.runs import load_run
    from fercli.inference.runtime import CACHE_DIR, CACHE_JSON, load_inference_run

    workdir = tmp_path / "work"
    run_dir = Path(shutil.copytree(runs["feature"], workdir / "finalize/runs/lstm-small"))
    first = load_inference_run(run_dir)
    before = json.loads((run_dir / CACHE_DIR / CACHE_JSON).read_text())
    crops = faces(20, seed=3)
    encoder = encoder_for(first)
    old = first.model.predict_on_batch(inputs_for(first, encoder, encoder.encode(crops)))
    # re-finalized: another model.keras in the same folder
    make_run(workdir, "lstm-small", "lstm", {"units": 6}, tuple(first.info["input_shape"]))
    second = load_inference_run(run_dir)
    after = json.loads((run_dir / CACHE_DIR / CACHE_JSON).read_text())
    assert second.runtime == "tflite"
    assert after["key"]["model_sha256"] != before["key"]["model_sha256"]
    assert after["files"]["backbone.tflite"] == before["files"]["backbone.tflite"]
    inputs = inputs_for(second, encoder, encoder.encode(crops))
    new = second.model.predict_on_batch(inputs)
    assert np.abs(new - old).max() > 1e-3
    assert np.abs(new - np.asarray(load_run(run_dir).model.predict_on_batch(inputs))).max() \
        < 1e-4
    # a damaged graph (same size, other bytes) is not trusted either
    graph = run_dir / CACHE_DIR / "temporal.tflite"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert load_inference_run(run_dir).runtime == "tflite"
    record = json.loads((run_dir / CACHE_DIR / CACHE_JSON).read_text())
    assert record["files"]["temporal.tflite"]["sha256"] == file_sha256(graph)


KILLED = textwrap.dedent("""
    import os, signal, sys
    from fercli.inference import runtime
    from fercli.inference.runtime import load_inference_run

    write = runtime.atomic_write_bytes

    def dying_write(path, data):
        if path.name == runtime.BACKBONE:  # the temporal graph is in place: die mid-write
            from fercli.core.workspace import atomic_path
            with atomic_path(path) as tmp:
                tmp.write_bytes(data[:len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        write(path, data)

    runtime.atomic_write_bytes = dying_write
    load_inference_run(sys.argv[1])
""")


def test_a_killed_conversion_leaves_no_cache_that_looks_complete(runs, tmp_path):
    from fercli.inference.runs import load_run
    from fercli.inference.runtime import (
        CACHE_DIR,
        CACHE_JSON,
        cache_key,
        fresh_cache,
        load_inference_run,
    )

    run_dir = Path(shutil.copytree(runs["feature"], tmp_path / "work/finalize/runs/lstm"))
    shutil.rmtree(run_dir / CACHE_DIR, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", KILLED, str(run_dir)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == -9, done.stderr
    cache = run_dir / CACHE_DIR
    names = sorted(p.name for p in cache.iterdir())
    assert "temporal.tflite" in names and CACHE_JSON not in names
    assert "backbone.tflite" not in names  # only its temporary file, named as one
    assert any(n.startswith(".backbone.") and ".tmp" in n for n in names)
    run = load_run(run_dir)
    assert fresh_cache(cache, cache_key(run), ("temporal.tflite", "backbone.tflite")) is None
    rebuilt = load_inference_run(run_dir)
    assert rebuilt.runtime == "tflite"
    assert sorted(p.name for p in cache.iterdir()) == ["backbone.tflite", CACHE_JSON,
                                                       "temporal.tflite"]


def test_without_litert_or_a_graph_the_run_stays_on_keras(runs, monkeypatch):
    from fercli.inference import runtime
    from fercli.inference.runtime import load_inference_run

    monkeypatch.setattr(runtime, "interpreter_class", lambda: None)
    run = load_inference_run(runs["feature"])
    assert run.runtime == "keras" and "ai-edge-litert" in run.runtime_note
    assert run.backbone_graph is None
    encoder = encoder_for(run)
    assert encoder.engine is encoder.extractor  # Keras
    monkeypatch.undo()

    def broken(model):
        raise RuntimeError("converter said no\nsecond line")

    monkeypatch.setattr(runtime, "temporal_graph", broken)
    shutil.rmtree(runs["clip"] / runtime.CACHE_DIR, ignore_errors=True)
    run = load_inference_run(runs["clip"])
    assert run.runtime == "keras"
    assert run.runtime_note == ("lrcn-clips32: no TFLite graph (RuntimeError: converter said "
                                "no), so the Keras model runs")
    assert not (runs["clip"] / runtime.CACHE_DIR / runtime.CACHE_JSON).exists()
    encoder = encoder_for(run)
    out = run.model.predict_on_batch(inputs_for(run, encoder, encoder.encode(faces(8))))
    assert out.shape == (ROWS, len(support.CLASSES))


# --------------------------------------------------------------------------- read-ahead
@pytest.fixture
def video(tmp_path) -> Path:
    return write_video(tmp_path / "clip.avi", n_frames=30, size=(64, 48))


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fer-read-ahead"]


@pytest.mark.parametrize("prefetch", [1, 4, 64])
def test_read_ahead_gives_the_same_frames(video, tmp_path, prefetch):
    from fercli.vision.media import iter_frames

    expected = list(iter_frames(video))
    got = list(iter_frames(video, prefetch=prefetch))
    assert len(got) == len(expected) == 30
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, frame in enumerate(expected[:5], start=1):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), frame)
    assert all(np.array_equal(a, b) for a, b in
               zip(iter_frames(folder, prefetch=prefetch), iter_frames(folder)))
    assert not read_ahead_threads()


def test_closing_read_ahead_early_stops_the_thread_and_releases_the_capture(video,
                                                                            monkeypatch):
    from fercli.vision import media

    released = []
    opencv_capture = cv2.VideoCapture

    class Capture:
        def __init__(self, name):
            self.inner = opencv_capture(name)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def release(self):
            released.append(threading.current_thread().name)
            self.inner.release()

    monkeypatch.setattr(media.cv2, "VideoCapture", Capture)
    frames = media.iter_frames(video, prefetch=2)
    assert not read_ahead_threads()  # nothing starts before the first frame is asked for
    for index, _ in enumerate(frames):
        if index == 3:
            break
    frames.close()
    assert not read_ahead_threads()
    assert released == ["fer-read-ahead"]
    # an exception in the consumer's loop closes it the same way (garbage collection)
    with pytest.raises(KeyError):
        for _ in media.iter_frames(video, prefetch=1):
            raise KeyError("the caller failed")
    assert not read_ahead_threads() and len(released) == 2


def test_read_ahead_raises_the_producers_error_unchanged(tmp_path, video):
    from fercli.core.errors import ItemError
    from fercli.vision.media import iter_frames

    def message(path: Path, prefetch: int) -> tuple[type, str]:
        with pytest.raises(ItemError) as caught:
            list(iter_frames(path, prefetch=prefetch))
        return type(caught.value), str(caught.value)

    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(os.urandom(4096))
    for path in (tmp_path / "missing.avi", empty, damaged):
        assert message(path, 3) == message(path, 0)
    folder = tmp_path / "gap"  # frames 1, 2, 4: the error comes before any frame
    folder.mkdir()
    for i in (1, 2, 4):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), np.zeros((8, 8, 3), np.uint8))
    assert message(folder, 2) == message(folder, 0)
    assert not read_ahead_threads()
