"""`fer export` on tiny finalized runs over real trimmed face clips (about 60 s).

The work directory is real (index, split, detect, track, trim on four sample_data subjects,
two of them the test set); the runs are built here as `fer finalize` writes them, around
untrained models: an LSTM on small-cnn features and an LRCN on 32 px clips. Their output
layer is scaled up so that classes are well apart and argmax agreement tests the exported
graph, not ties between near-equal scores.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import support

from fercli.core.config import load_config
from fercli.core.engine import run_stage
from fercli.core.errors import ConfigError
from fercli.stages import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
MAX_FRAMES = 16
SETTINGS = [f"index.root={ROOT / 'sample_data'}",
            "index.exclude_subjects=[F003, F004, M003, M004]", "split.folds=2",
            "split.test_subjects=[F001, F002]", "track.size=64", "trim.plot_examples=0",
            "extract.backbone=small-cnn", "extract.weights=null",
            f"extract.max_frames={MAX_FRAMES}"]


def make_run(workdir: Path, name: str, model_name: str, params: dict, input_shape: tuple,
             clip_size: int | None = None) -> Path:
    """A run folder as `fer finalize` writes it, around an untrained, decisive model."""
    config = load_config(None, [f"workdir={workdir}", *SETTINGS])
    classes = json.loads((workdir / "index/classes.json").read_text())
    return support.make_run(workdir, name, model_name, params, input_shape,
                            config=config.data, classes=classes, clip_size=clip_size,
                            decisive=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from fercli.features.backbones import build_feature_extractor

    workdir = tmp_path_factory.mktemp("export") / "work"
    cfg = load_config(None, [f"workdir={workdir}", *SETTINGS])
    for stage in ("index", "split", "detect", "track", "trim"):
        run_stage(PIPELINE[stage], cfg, PIPELINE, workers=2)
    dim = build_feature_extractor("small-cnn", weights=None).feature_dim
    return {"feature": make_run(workdir, "lstm-small", "lstm", {"units": 8},
                                (MAX_FRAMES, dim)),
            "clip": make_run(workdir, "lrcn-clips32", "lrcn",
                             {"filters": [4, 4], "layers": 1, "units": 8},
                             (MAX_FRAMES, 32, 32, 3), clip_size=32),
            "workdir": workdir}


@pytest.fixture(scope="module")
def feature_export(runs) -> dict:
    from fercli.inference.export import export_run

    return export_run(runs["feature"], None, ["savedmodel", "tflite"],
                      ["none", "float16", "int8"])


def test_feature_run_exports_every_format_and_agrees(runs, feature_export):
    out = runs["workdir"] / "export" / "lstm-small"
    assert feature_export["folder"] == str(out)
    assert (out / "savedmodel" / "saved_model.pb").is_file()
    artifacts = feature_export["artifacts"]
    assert list(artifacts) == ["savedmodel", "model.tflite", "model-float16.tflite",
                               "model-int8.tflite"]
    for name, entry in artifacts.items():
        assert entry["bytes"] > 0 and entry["ms_per_clip"] > 0, name
        assert entry["agreement"] >= 0.9, (name, entry)
        assert not entry["select_tf_ops"], name  # builtin TFLite ops only
    for name in ("savedmodel", "model.tflite"):  # float32: the same function
        assert artifacts[name]["max_abs_diff"] < 1e-3 and artifacts[name]["agreement"] == 1.0
    assert artifacts["model-float16.tflite"]["bytes"] < artifacts["model.tflite"]["bytes"]
    check = feature_export["check"]
    assert check["clips"] == 12 and all(0 < n <= MAX_FRAMES for n in check["frames"])
    assert feature_export["input"] == {"clip": [MAX_FRAMES, 64, 64, 3], "dtype": "uint8",
                                       "channels": "BGR", "mask": [MAX_FRAMES],
                                       "signature": "serve", "output": "probabilities"}
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["artifacts"] == artifacts
    table = (out / "export.md").read_text()
    assert "| keras (model.keras + backbone) |" in table and "| model-int8.tflite |" in table


def test_exported_files_run_without_fercli_models(runs, feature_export):
    """The SavedModel and the TFLite file alone give the run's probabilities."""
    import tensorflow as tf

    from fercli.inference.export import ExportedModel, KerasPipeline, pad_clip, run_clips
    from fercli.inference.runs import load_run

    run = load_run(runs["feature"])
    clip = run_clips(run, "test")[0]
    expected = KerasPipeline(run).predict(clip.crops)
    data, mask = pad_clip(clip.crops, MAX_FRAMES, 64, 3)
    out = Path(feature_export["folder"])
    serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serve"]
    batch = serve(clip=tf.constant(np.repeat(data, 2, 0)), mask=tf.constant(np.repeat(mask, 2, 0)))
    np.testing.assert_allclose(batch["probabilities"].numpy(), [expected, expected], atol=1e-4)
    np.testing.assert_allclose(ExportedModel(out / "model.tflite").predict(data, mask)[0],
                               expected, atol=1e-4)


def test_export_json_keeps_earlier_files_of_the_same_model(runs, feature_export):
    from fercli.inference.export import export_run

    again = export_run(runs["feature"], None, ["savedmodel"], check=False)
    assert list(again["artifacts"]) == list(feature_export["artifacts"])
    assert again["artifacts"]["model-int8.tflite"] == \
        feature_export["artifacts"]["model-int8.tflite"]


def test_clip_run_exports_through_the_cli(runs, fer, tmp_path):
    out = tmp_path / "clip-export"
    result = fer("export", str(runs["clip"]), "--format", "tflite", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "model.tflite" in result.output and "agreement" in result.output
    summary = json.loads((out / "export.json").read_text())
    assert list(summary["artifacts"]) == ["model.tflite"]
    assert summary["artifacts"]["model.tflite"]["agreement"] >= 0.9
    assert summary["artifacts"]["model.tflite"]["max_abs_diff"] < 1e-3
    assert summary["reference"]["ms_per_clip"] > 0


@pytest.mark.parametrize("size, target, channels, gray, interpolation, mode, exact", [
    (160, (64, 64), 1, True, cv2.INTER_AREA, "symmetric", 1.0),  # minixception-like
    (64, (64, 64), 3, False, cv2.INTER_AREA, "torch", 1.0),  # no resize
    # enlarged: OpenCV's uint8 bilinear uses 11-bit fixed-point weights
    (48, (64, 64), 3, False, cv2.INTER_LINEAR, "caffe", 0.85),
])
def test_graph_preprocessing_equals_the_backbone_preprocessing(size, target, channels, gray,
                                                               interpolation, mode, exact):
    from fercli.features.backbones import BackboneSpec, normalise
    from fercli.inference.export import PixelPlan, _layers

    spec = BackboneSpec("probe", (*target, channels), mode, (), "pool", None, "")
    crops = np.random.default_rng(0).integers(0, 256, (5, size, size, 3), np.uint8)
    expected = spec.preprocess(crops, keep_color=not gray)
    plan = PixelPlan(size, 3, target, channels, gray, interpolation, mode)
    layer = _layers()["FacePixels"](plan)
    got = np.asarray(layer(crops[None]))[0]
    scale = float(np.max(np.abs(normalise(np.full((1, 1, 1, channels), 1.0), mode)
                                - normalise(np.zeros((1, 1, 1, channels)), mode))))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= scale + 1e-4  # at most one grey level apart
    assert np.mean(np.isclose(got, expected, atol=1e-4)) >= exact


def test_clip_preprocessing_equals_load_clip_resizing():
    from fercli.inference.export import PixelPlan, _layers

    crops = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), np.uint8)
    expected = np.stack([cv2.cvtColor(cv2.resize(c, (32, 32), interpolation=cv2.INTER_AREA),
                                      cv2.COLOR_BGR2RGB) for c in crops]) / 255.0
    plan = PixelPlan(64, 3, (32, 32), 3, False, cv2.INTER_AREA, "unit")
    got = np.asarray(_layers()["FacePixels"](plan)(crops[None]))[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_export_option_mistakes(runs):
    from fercli.inference.export import plan_artifacts
    from fercli.inference.runs import resolve_run

    assert plan_artifacts(None, None) == [("savedmodel", "none"), ("tflite", "none")]
    assert plan_artifacts(["tflite"], ["float16", "int8"]) == [("tflite", "float16"),
                                                              ("tflite", "int8")]
    with pytest.raises(ConfigError, match="TFLite only"):
        plan_artifacts(["savedmodel"], ["int8"])
    with pytest.raises(ConfigError, match="unknown export format"):
        plan_artifacts(["onnx"], None)
    with pytest.raises(ConfigError, match="unknown quantization"):
        plan_artifacts(["tflite"], ["int4"])
    with pytest.raises(ConfigError, match="lrcn-clips32"):
        resolve_run("nope", runs["workdir"])
    assert resolve_run("lstm-small", runs["workdir"]) == runs["feature"]


# --------------------------------------------------------------------------- identity runs
IDENTITY = ["augment.methods=[]", "extract.augmented=false", "train.model=pooled",
            "train.model_params={}", "train.identity=onset", "train.epochs=2",
            "train.batch_size=8", "train.tensorboard=false", "finalize.max_epochs=2",
            "finalize.patience=1", "finalize.lr_patience=1"]


@pytest.fixture(scope="module")
def identity_run(runs, tmp_path_factory) -> Path:
    """A real identity-normalised run: extract (with the onset baselines), cv-train and
    finalize of the pooled model with train.identity=onset, in a copy of the work directory
    (the other tests expect its finalize folder as they made it)."""
    import shutil

    workdir = Path(shutil.copytree(runs["workdir"],
                                   tmp_path_factory.mktemp("identity") / "work"))
    cfg = load_config(None, [f"workdir={workdir}", *SETTINGS, *IDENTITY])
    for stage in ("augment", "extract", "cv-train", "finalize"):
        assert run_stage(PIPELINE[stage], cfg, PIPELINE).n_failed == 0, stage
    [run_dir] = (workdir / "finalize" / "runs").glob("pooled-*")
    return run_dir


def test_extract_predict_and_export_take_one_onset_baseline(identity_run):
    """One clip's neutral baseline as `fer extract` stored it for training, as `fer predict`
    computes it (``with_baseline`` on the codes of the first face frames) and as the export
    graph computes it from the onset crops: the same identity normalisation everywhere."""
    import keras

    from fercli.features.featurestore import FeatureStore
    from fercli.features.identity import BASELINE_FRAMES
    from fercli.inference.encoders import baseline_key, with_baseline
    from fercli.inference.export import KerasPipeline, build_inference_model, pad_onset, run_clips
    from fercli.inference.runs import load_run

    run = load_run(identity_run)
    assert run.info["identity"] is True
    pipeline = KerasPipeline(run)
    clip = run_clips(run, "test")[0]
    assert clip.onset.shape == (BASELINE_FRAMES, 64, 64, 3)
    with FeatureStore(identity_run.parents[2] / "extract" / "features.h5") as store:
        [row] = np.flatnonzero((store.items == clip.item) & (store.augment == ""))
        stored, onset_at = store.baselines[row], store.onsets[row]
    assert onset_at >= BASELINE_FRAMES  # trim keeps frames after the neutral onset

    key = run.encoder_key()
    codes = pipeline.encoder.encode(list(clip.onset))
    predicted = with_baseline({}, {key: codes})[baseline_key(key)]

    model = build_inference_model(run, extractor=pipeline.encoder.extractor)
    probe = keras.Model(model.input, model.get_layer("onset_baseline").output)

    def graph_baseline(onset):
        return np.asarray(probe({"clip": np.zeros((1, MAX_FRAMES, 64, 64, 3), np.uint8),
                                 "mask": np.zeros((1, MAX_FRAMES), np.float32),
                                 "onset": pad_onset(onset, 64, 3)}))[0]

    exported = graph_baseline(clip.onset)
    scale = float(np.abs(predicted).max())
    assert scale > 0
    np.testing.assert_allclose(exported, predicted, rtol=0, atol=1e-5 * scale)
    # extract averages float32 features and stores the mean in extract.dtype (float16);
    # predict and the graph average the features as the store holds frames (float16)
    np.testing.assert_allclose(stored, predicted, rtol=0, atol=2e-3 * scale)
    # fewer face frames than BASELINE_FRAMES: the mean of those there are (zeros: none)
    np.testing.assert_allclose(graph_baseline(clip.onset[:2]), codes[:2].mean(0), rtol=0,
                               atol=1e-5 * scale)
    np.testing.assert_allclose(graph_baseline(clip.onset[:1]), codes[0], rtol=0,
                               atol=1e-5 * scale)


def test_identity_run_exports_with_an_onset_input_and_agrees(identity_run):
    """The graph of an identity run reads the onset crops too; the parity check feeds the
    Keras pipeline as `fer predict` does and gives the same agreement table."""
    import tensorflow as tf

    from fercli.core.errors import InputError
    from fercli.features.identity import BASELINE_FRAMES
    from fercli.inference.export import (
        ExportedModel,
        KerasPipeline,
        export_run,
        pad_clip,
        pad_onset,
        run_clips,
    )
    from fercli.inference.runs import load_run

    summary = export_run(identity_run, None, ["savedmodel", "tflite"], ["none", "int8"])
    assert summary["input"] == {"clip": [MAX_FRAMES, 64, 64, 3], "dtype": "uint8",
                                "channels": "BGR", "mask": [MAX_FRAMES],
                                "onset": [BASELINE_FRAMES, 64, 64, 3], "signature": "serve",
                                "output": "probabilities"}
    artifacts = summary["artifacts"]
    assert list(artifacts) == ["savedmodel", "model.tflite", "model-int8.tflite"]
    for name, entry in artifacts.items():
        assert entry["bytes"] > 0 and entry["ms_per_clip"] > 0, name
        assert 0.0 <= entry["agreement"] <= 1.0 and not entry["select_tf_ops"], name
    for name in ("savedmodel", "model.tflite"):  # float32: the same function as Keras
        assert artifacts[name]["max_abs_diff"] < 1e-3 and artifacts[name]["agreement"] == 1.0
    assert summary["check"]["clips"] == 12
    out = Path(summary["folder"])
    table = (out / "export.md").read_text()
    assert f"+ onset [{BASELINE_FRAMES}, 64, 64, 3] uint8" in table
    assert "| keras (model.keras + backbone) |" in table and "| model-int8.tflite |" in table

    run = load_run(identity_run)
    clip = run_clips(run, "test")[0]
    data, mask = pad_clip(clip.crops, MAX_FRAMES, 64, 3)
    onset = pad_onset(clip.onset, 64, 3)
    expected = KerasPipeline(run).predict(clip.crops, clip.onset)
    serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serve"]
    assert set(serve.structured_input_signature[1]) == {"clip", "mask", "onset"}
    got = serve(clip=tf.constant(data), mask=tf.constant(mask), onset=tf.constant(onset))
    np.testing.assert_allclose(got["probabilities"].numpy()[0], expected, atol=1e-4)
    lite = ExportedModel(out / "model.tflite")
    assert lite.needs_onset and lite.onset_shape == (1, BASELINE_FRAMES, 64, 64, 3)
    np.testing.assert_allclose(lite.predict(data, mask, onset)[0], expected, atol=1e-4)
    with pytest.raises(InputError, match="onset"):
        lite.predict(data, mask)
    # the baseline is read: the clip's last frames as the "onset" change the scores
    other = lite.predict(data, mask, pad_onset(clip.crops[-BASELINE_FRAMES:], 64, 3))[0]
    assert np.abs(other - expected).max() > 1e-6
    np.testing.assert_allclose(other, KerasPipeline(run).predict(
        clip.crops, clip.crops[-BASELINE_FRAMES:]), atol=1e-4)
