"""Per-frame model inputs of a finalized run: face crops -> what its model reads.

Feature runs get backbone features rounded through ``extract.dtype`` as the feature store
held them; clip runs get the face resized and scaled as ``fercli.learning.datasets.load_clip``
and ``clip_dataset`` do. `fer predict` and `fer export`'s checks share these, so a graph and
the Keras pipeline see identical inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..core import layout
from ..core.errors import ConfigError
from .runs import FinalizedRun


def backbone_source(run: FinalizedRun) -> str:
    """The run's backbone: a name, or a model file resolved as `fer predict` finds it."""
    from ..features.backbones import is_model_file

    backbone = str(run.info["backbone"]["backbone"])
    if is_model_file(backbone) and not Path(backbone).expanduser().exists():
        # model.json keeps the config's text, relative to a config file it does not name;
        # `fer` runs beside its workdir by default, so try the workdir's parent
        backbone = str(layout.workdir_of_run(run.path).parent / backbone)
    return backbone


def keras_extractor(run: FinalizedRun):
    """The run's Keras feature extractor (``fercli.features.backbones.FeatureExtractor``)."""
    from ..features.backbones import build_feature_extractor

    extract = run.info["backbone"]
    return build_feature_extractor(
        backbone_source(run), layer=extract.get("layer"), weights=extract.get("weights"),
        input_color=bool(run.info["color"]), batch_size=int(extract.get("batch_size") or 64))


class FeatureEncoder:
    """Face crops -> per-frame backbone features, as `fer extract` stored them.

    The backbone runs as the run's TFLite graph where ``load_inference_run`` attached one
    (``run.backbone_graph``, see fercli.inference.runtime), else as Keras;
    ``extractor`` is always the Keras extractor (built on first use: `fer export` builds
    its graphs from it).
    """

    def __init__(self, run: FinalizedRun):
        extract = run.info["backbone"]
        self.run = run
        self.batch_size = int(extract.get("batch_size") or 64)
        self.dtype = extract.get("dtype", "float32")
        self._extractor = None
        lite = getattr(run, "backbone_graph", None)
        self.engine = lite if lite is not None else self.extractor
        expected = int(run.info["input_shape"][-1])
        if self.engine.feature_dim != expected:
            raise ConfigError(f"run {run.name} reads {expected} features per frame but "
                              f"backbone {backbone_source(run)} gives "
                              f"{self.engine.feature_dim}",
                              hint="Check the run's extract section (backbone, layer)")

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = keras_extractor(self.run)
        return self._extractor

    def encode(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        features = self.engine.extract(np.stack(faces))
        return features.astype(self.dtype).astype(np.float32)

    @staticmethod
    def model_input(codes: np.ndarray) -> np.ndarray:
        return codes


class ClipEncoder:
    """Face crops -> small clip frames, resized and ordered as ``load_clip`` does."""

    def __init__(self, run: FinalizedRun):
        self.batch_size = 64
        self.size = int(run.info["clip_size"])
        self.color = bool(run.info["color"])

    def encode(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        frames = []
        for face in faces:
            if face.shape[:2] != (self.size, self.size):
                face = cv2.resize(face, (self.size, self.size), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(face, cv2.COLOR_BGR2RGB) if self.color
                          else face[..., None])
        return np.stack(frames)

    @staticmethod
    def model_input(codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float32) / 255.0  # clip_dataset's scaling


def baseline_key(key: tuple) -> tuple:
    """Where a sequence's codes keep the neutral baseline of an encoder's features."""
    return ("baseline", *key)


def with_baseline(codes: dict, onset: dict) -> dict:
    """``codes`` plus each feature encoder's baseline (fercli.features.identity) from ``onset``, the
    codes of the video's first face frames: the rule extract applies to a clip's first frames.
    Clip encoders' codes are face crops, which no run normalises: they get no baseline."""
    from ..features.identity import onset_baseline

    return {**codes, **{baseline_key(key): onset_baseline(value)
                        for key, value in onset.items()
                        if value is not None and len(value) and np.ndim(value[0]) == 1}}


def model_inputs(run: FinalizedRun, encoder, sequences: Sequence[np.ndarray],
                 rows: int, baselines: Sequence[np.ndarray] | None = None) -> dict:
    """``rows`` sequences (zeros after the given ones) padded with zeros or truncated to the
    run's max_frames, plus masks (and the baselines of an identity-normalised run). A fixed
    row count keeps one traced graph per model."""
    length = run.max_frames
    shape = sequences[0].shape[1:]
    data = np.zeros((rows, length, *shape), sequences[0].dtype)
    mask = np.zeros((rows, length), np.float32)
    for i, seq in enumerate(sequences):
        n = min(len(seq), length)
        data[i, :n] = seq[:n]
        mask[i, :n] = 1.0
    inputs = {"clip" if run.is_clip else "features": encoder.model_input(data), "mask": mask}
    if run.info.get("identity"):
        base = np.zeros((rows, data.shape[-1]), np.float32)
        base[:len(baselines)] = np.stack(baselines)
        inputs["baseline"] = base
    return inputs
