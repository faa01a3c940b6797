"""Configuration: one YAML file, one section per stage, ``--set`` overrides.

Precedence is stated once: command line (``--set section.key=value``) > config file >
defaults below. Every key is declared with its type, allowed values and a help line, so a
wrong key or a wrong type fails early with one line naming the key, and the README's
config reference is generated from this table (``fer config reference``).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError

DEFAULT_CONFIG_FILE = "fer.yaml"

THESIS_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]
# Adam learning rate when train.learning_rate is null: the thesis's 1e-4 (3.2.3) for its
# models; the pooled head has few weights and converges in tens of epochs at 1e-3.
THESIS_LEARNING_RATE = 1e-4
MODEL_LEARNING_RATES = {"pooled": 1e-3}

# Synonyms seen in BU-4DFE, CK+, FER2013 and folder-per-label redistributions.
DEFAULT_SYNONYMS = {
    "anger": "angry", "angry": "angry", "an": "angry",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "fe": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "ha": "happy",
    "sad": "sad", "sadness": "sad", "sa": "sad",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise",
    "neutral": "neutral", "ne": "neutral",
    "contempt": "contempt",
}


# Bounds of what YAML may build before any value is checked (file and --set alike): a
# config holds a few hundred values, so these only ever stop mistakes and "billion laughs"
# alias bombs, which stay small on disk and expand when the parameters are hashed.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 20

# Names other modules own, repeated here so the schema (and the README) can list them
# without importing OpenCV or Keras; tests/test_config.py keeps them equal.
AUGMENT_METHODS = ("flip", "blur", "bright50", "bright20", "contrast2", "contrast17", "rot8",
                   "rot-8", "saltpepper", "histeq", "gray")  # fercli.vision.augment.OFFLINE_METHODS
FUSION_METHODS = ("average", "weighted", "max")  # fercli.learning.fusion.METHODS
# The model registry's two families (fercli.learning.models builds them), named here so
# that config checks and data loading need not import Keras.
FEATURE_MODELS = ("pooled", "lstm", "bilstm", "cnn1d")  # read per-frame features
CLIP_MODELS = ("lrcn", "c3d", "convlstm")  # read raw face clips
SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 0 .. 2**32-1


@dataclass(frozen=True)
class Param:
    """One configuration key: its default, accepted type(s), allowed values and meaning.

    Every number declares its range (``min``/``max``, inclusive unless ``*_open``), so a
    value no stage can use fails at load, not hours later under another name.
    """

    default: Any
    types: tuple[type, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    item_types: tuple[type, ...] | None = None  # element type for lists
    item_choices: tuple[Any, ...] | None = None  # allowed elements of a list
    value_types: tuple[type, ...] | None = None  # value type for mappings (keys are str)
    check: Callable[[str, Any], None] | None = None  # structure the fields above miss

    def type_name(self) -> str:
        text = _names(self.types)
        if self.item_types:
            text += f" of {_names(self.item_types)}"
        if self.value_types:
            text += f" of str -> {_names(self.value_types)}"
        return text + (" | null" if self.nullable else "")

    def range_text(self) -> str:
        """``[2, 1000]``, ``(0, 1]``: the interval of allowed numbers, "" when none."""
        if self.min is None and self.max is None:
            return ""
        low = "-inf" if self.min is None else _number(self.min)
        high = "inf" if self.max is None else _number(self.max)
        return f"{'(' if self.min_open else '['}{low}, {high}{')' if self.max_open else ']'}"

    def in_range(self, value: float) -> bool:
        above = self.min is None or (value > self.min if self.min_open else value >= self.min)
        below = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return above and below


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"  # 4294967295, not 4.29497e+09


def _names(types: tuple[type, ...]) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "str", list: "list",
             dict: "mapping"}
    return " | ".join(names.get(t, t.__name__) for t in types)


def _p(default, types, help, **kw) -> Param:
    types = types if isinstance(types, tuple) else (types,)
    return Param(default, types, help, **kw)


def _show(value: Any) -> str:
    """A value for a one-line message: its repr, cut short (it may be a huge list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unique(name: str, value: list) -> None:
    """No element twice: a repeated class, method or extension is always a slip."""
    seen = set()
    for element in value:
        if isinstance(element, (str, int, float)):
            if element in seen:
                raise ConfigError(f"{name}: {element!r} is listed twice",
                                  hint="Give each element once")
            seen.add(element)


def _nonempty(name: str, value: list) -> None:
    if not value:
        raise ConfigError(f"{name}: the list is empty", hint="Give at least one element")


def _extensions(name: str, value: list) -> None:
    """Compared with the file's suffix, so `avi` (no dot) would silently match nothing."""
    for ext in value:
        if not (ext.startswith(".") and len(ext) > 1):
            raise ConfigError(f"{name}: {ext!r} is not a file ending",
                              hint=f"Write it with its dot, e.g. '.{ext.lstrip('.') or 'mp4'}'")


def _lists_of_str(least: int, what: str) -> Callable[[str, Any], None]:
    """Elements that are themselves lists of at least ``least`` strings (folds, combos)."""

    def check(name: str, value: list) -> None:
        for k, inner in enumerate(value):
            if (len(inner) < least or not all(isinstance(s, str) for s in inner)
                    or len(set(inner)) < len(inner)):
                raise ConfigError(f"{name}[{k}]: expected {what}, got {_show(inner)}")

    return check


def _fold_lists(name: str, value: list) -> None:
    """Cross-validation needs two folds at least, each naming some subjects."""
    if len(value) < 2:
        raise ConfigError(f"{name}: {len(value)} fold(s), at least 2 needed",
                          hint="List one subject list per fold")
    _lists_of_str(1, "a non-empty list of subjects, each once")(name, value)


def _scalars(name: str, values: list) -> None:
    for element in values:
        if not isinstance(element, (bool, int, float, str)):
            raise ConfigError(f"{name}: expected a number, string, bool or a list of them, "
                              f"got {_show(element)}")
        _finite(name, element)


def _model_params(name: str, value: dict) -> None:
    """Numbers, strings, booleans or flat lists of them; fercli.learning.models.resolve_params
    checks each against its model (it needs Keras, too slow to import for every command)."""
    for key, v in value.items():
        _scalars(f"{name}.{key}", v if isinstance(v, list) else [v])


def _check_space(name: str, space: dict) -> None:
    """tune.space: each key a non-empty list of one type or {min, max[, step, sampling]}.

    KerasTuner rejects mixed-type choices, empty or reversed ranges and log sampling
    from 0 only when the search starts; learning_rate and batch_size keep train's ranges.
    """
    for key, spec in space.items():
        where = f"{name}.{key}"
        train = SCHEMA["train"].get(key) if key in ("learning_rate", "batch_size") else None
        if isinstance(spec, list):
            _nonempty(where, spec)
            _scalars(where, spec)
            if len({type(v) for v in spec}) > 1:
                raise ConfigError(f"{where}: mixes types in {_show(spec)}",
                                  hint="Give values of one type, e.g. all floats (0.5, 1.0)")
            values = spec
        elif isinstance(spec, dict):
            unknown = set(spec) - {"min", "max", "step", "sampling"}
            if unknown or not {"min", "max"} <= set(spec):
                raise ConfigError(f"{where}: expected {{min: .., max: ..[, step: .., "
                                  f"sampling: ..]}}, got {_show(spec)}")
            number = _p(None, (int, float), "", min=-1e12, max=1e12)
            low, high = (_check_value(f"{where}.{k}", spec[k], number) for k in ("min", "max"))
            if not low < high:
                raise ConfigError(f"{where}: min {low!r} is not below max {high!r}")
            if "step" in spec:
                _check_value(f"{where}.step", spec["step"],
                             _p(None, (int, float), "", min=0, max=high - low, min_open=True))
            sampling = spec.get("sampling", "linear")
            _check_value(f"{where}.sampling", sampling,
                         _p(None, str, "", choices=("linear", "log", "reverse_log")))
            if sampling != "linear" and low <= 0:
                raise ConfigError(f"{where}: {sampling} sampling needs min > 0, got {low!r}")
            values = [spec["min"], spec["max"]]
        else:
            raise ConfigError(f"{where}: expected a list of values or {{min: .., max: ..}}, "
                              f"got {_show(spec)}")
        for v in values if train is not None else []:
            _check_value(where, v, train)


# Top-level keys that are not sections.
GLOBAL_SCHEMA: dict[str, Param] = {
    "workdir": _p("work", str, "Work directory; one sub-folder per stage."),
    "seed": _p(42, int, "Global random seed (splits, augmentation, training).", min=0,
               max=SEED_MAX),
}

SCHEMA: dict[str, dict[str, Param]] = {
    "index": {
        "root": _p(None, str, "Dataset folder (videos or frame-sequence folders).", nullable=True),
        "preset": _p("bu4dfe", str, "How subject and label are read from each path "
                     "(ckplus48: `<emotion>/Sxxx_yyy_NN.png`, frames grouped per Sxxx_yyy).",
                     choices=("bu4dfe", "folder-per-label", "ckplus", "regex", "csv",
                              "ckplus48")),
        "pattern": _p(None, str, "Regex over the relative path with named groups `label` "
                      "and `subject` (preset `regex`); without `subject` each item is its "
                      "own subject. A grouped sequence is matched as `<folder>/<sequence>`.",
                      nullable=True),
        "group": _p(None, str, "Regex over image file names with a named group `sequence` "
                    "(optional `frame`): the images of one folder that share `sequence` are "
                    "one item, in frame order (preset ckplus48 sets it).", nullable=True),
        "stills": _p("auto", (bool, str), "Image files as one-frame items: true, false (a "
                     "folder of images is one sequence) or auto (a folder whose path does not "
                     "match the pattern gives an item per matching image).",
                     choices=(True, False, "auto")),
        "csv": _p(None, str, "CSV with columns path,subject,label (preset `csv`); "
                  "paths relative to `root`.", nullable=True),
        "classes": _p(list(THESIS_CLASSES), list, "Class list, in output order "
                      "(thesis: the 6 basic emotions).", item_types=(str,), check=_nonempty),
        "synonyms": _p({}, dict, "Extra label synonyms, e.g. {joy: happy}; merged over the "
                       "built-in ones (anger->angry, happiness->happy, sadness->sad, ...).",
                       value_types=(str,)),
        "exclude_subjects": _p([], list, "Subjects left out (the thesis drops F016).",
                               item_types=(str,)),
        "video_extensions": _p([".avi", ".mp4", ".mkv", ".mov"], list,
                               "File endings treated as videos.", item_types=(str,),
                               check=_extensions),
        "sequence_fps": _p(25.0, (int, float), "Frame rate assumed for frame-sequence folders "
                           "(BU-4DFE records 25 fps).", min=1, max=1000),
    },
    "split": {
        "folds": _p(5, int, "Number of cross-validation folds (thesis 3.2.2: k=5).", min=2,
                   max=1000),
        "method": _p("subject", str, "subject: subject-independent test set and folds "
                     "(thesis 3.2.2); stratified: items dealt per class, each class's share "
                     "equal in every part (seed 003 sec. 2.1, for stills; NOT "
                     "subject-independent).", choices=("subject", "stratified")),
        "test_fraction": _p(0.2, float, "Share of subjects (method stratified: of each "
                            "class's items) held out as the test set (thesis Figure 3.6: "
                            "20 of 100).", min=0.0, max=0.9),
        "test_subjects": _p(None, list, "Explicit test subjects (overrides test_fraction).",
                            nullable=True, item_types=(str,)),
        "fold_subjects": _p(None, list, "Explicit folds: a list of subject lists "
                            "(reproduces a published split).", nullable=True,
                            item_types=(list,), check=_fold_lists),
        "seed": _p(None, int, "Split seed; null uses the global seed.", nullable=True, min=0,
                   max=SEED_MAX),
    },
    "detect": {
        "detector": _p("haar", str, "Face detector (thesis 3.2.1: Haar cascade); none: "
                       "the frames are already face crops (CK+48), taken whole.",
                       choices=("haar", "yunet", "none")),
        "scale_factor": _p(1.1, float, "Haar scaleFactor (paper 000 sec. 2.2).", min=1.01,
                           max=2),
        "min_neighbors": _p(10, int, "Haar minNeighbors (paper 000 sec. 2.2).", min=0,
                            max=100),
        "min_size": _p(30, int, "Smallest face side in pixels (paper 000: 30x30).", min=1,
                       max=4096),
        "frames_allowed": _p(10, int, "Try the first N frames until exactly one face is "
                             "found (paper 000: 10).", min=1, max=1000),
        "extend_px": _p(10, int, "Pixels added to the box height, at the chin (thesis 3.2.1).",
                        min=0, max=1000),
        "model_path": _p(None, str, "ONNX model for detector `yunet` "
                         "(face_detection_yunet_2023mar.onnx).", nullable=True),
        "score_threshold": _p(0.8, float, "Minimum score for detector `yunet`.", min=0, max=1),
    },
    "track": {
        "tracker": _p("medianflow", str, "OpenCV tracker (thesis 3.2.1 chose MedianFlow).",
                      choices=("medianflow", "kcf", "csrt", "mosse", "mil", "tld", "boosting")),
        "size": _p(160, int, "Side of the square face crop (paper 000: 160x160).", min=16,
                   max=1024),
        "color": _p(True, bool, "Keep colour (false: gray clips)."),
        "codec": _p("x264", str, "Lossless codec, all bit-exact and byte-reproducible: x264 "
                    "(.mkv, lossless H.264; fastest, smallest), ffv1 (.mkv, every frame "
                    "independent) or huffyuv (.avi, colour only, as in paper 000).",
                    choices=("x264", "ffv1", "huffyuv")),
        "redetect_tries": _p(3, int, "Frames in which to re-detect a lost face before the "
                             "item fails.", min=0, max=1000),
        "smooth": _p(0.7, (int, float), "One-euro smoothing of the face box: weight the "
                     "previous box keeps while the face is still (0 = off); it opens up as "
                     "the head moves.", min=0, max=0.99),
    },
    "trim": {
        "score": _p("motion", str, "Per-frame expression score: motion (from the clip) or "
                    "openface (AU intensities, thesis 3.2.1).", choices=("motion", "openface")),
        "openface_dir": _p(None, str, "Folder of OpenFace CSVs named <item_id>.csv "
                           "(score `openface`).", nullable=True),
        "min_frames_end": _p(10, int, "Frames always cut from the end (Algorithm 1).", min=0,
                             max=10000),
        "threshold_ratio": _p(0.5, float, "Cut while the score is below this share of the "
                              "maximum (Algorithm 1).", min=0, max=1, min_open=True),
        "max_cut_ratio": _p(0.5, float, "Never cut more than this share of the frames "
                            "(Algorithm 1); below 1, so a frame is always kept.", min=0,
                            max=1, max_open=True),
        "shape": _p("auto", str, "Expression course of the clips: onset-apex-offset (BU-4DFE: "
                    "Algorithm 1), onset-apex (CK+: only the neutral onset is cut) or auto "
                    "(per clip: onset-apex when the last frames are still expressive).",
                    choices=("auto", "onset-apex-offset", "onset-apex")),
        "anomaly_last_frames": _p(20, int, "Maximum in the last N frames: mark 'anomaly', "
                                  "keep whole (thesis 3.2.1; 0 turns the rule off).", min=0,
                                  max=10000),
        "overrides": _p(None, str, "CSV (item_id,first,last) or YAML of manual trims "
                        "for anomalies.", nullable=True),
        "plot_examples": _p(6, int, "Score-curve PNGs to draw (plus every anomaly).", min=0,
                            max=1000),
    },
    "augment": {
        "methods": _p(["flip", "blur", "bright50", "bright20", "contrast2", "contrast17",
                       "rot8", "rot-8", "saltpepper"], list,
                      "Offline methods, one augmented clip each (thesis 3.2.4: these nine; "
                      "paper 000 adds histeq and gray).", item_types=(str,),
                      item_choices=AUGMENT_METHODS),
        "copies": _p(None, int, "Augmented clips per training clip, methods drawn per clip "
                     "by the seed; null: one per method.", nullable=True, min=1, max=100),
    },
    "extract": {
        "backbone": _p("minixception-fer2013", str, "Spatial backbone name (vgg16, resnet50, "
                       "densenet201, vggface, minixception-fer2013, small-cnn) or a Keras "
                       "model file (e.g. from `fer pretrain`)."),
        "layer": _p(None, str, "Layer to take features from; null: the backbone's default "
                    "(e.g. vgg16 `flatten` -> 25088).", nullable=True),
        "weights": _p("default", str, "default (the backbone's own: imagenet for vgg16/"
                      "resnet50/densenet201, fer2013 for minixception), imagenet, fer2013, a "
                      "weights file, or null (random init).", nullable=True),
        "batch_size": _p(64, int, "Frames per forward pass.", min=1, max=4096),
        "max_frames": _p(100, int, "Sequence length for training; longer clips are "
                         "truncated, shorter ones padded and masked (thesis 3.2.3).", min=1,
                         max=10000),
        "dtype": _p("float16", str, "Storage type of the features.",
                    choices=("float16", "float32")),
        "augmented": _p(True, bool, "Also extract the offline-augmented clips."),
    },
    "train": {
        "model": _p("pooled", str, "Model on features (pooled: masked pooling + small "
                    "head, best on small real datasets; lstm, bilstm, cnn1d: the thesis's "
                    "temporal models) or raw-clip model (lrcn, c3d, convlstm).",
                    choices=("pooled", "lstm", "bilstm", "cnn1d", "lrcn", "c3d", "convlstm")),
        "identity": _p("auto", str, "Identity normalisation: `onset` feeds the model each "
                       "frame's change from the clip's neutral onset (its first frames) too; "
                       "`none` does not; `auto`: onset when most clips have a neutral onset "
                       "(not for stills or apex-only crops).",
                       choices=("auto", "onset", "none")),
        "class_weight": _p("balanced", str, "Loss weights per class: balanced (n / (k x "
                           "n_class), seed 002) or none.", choices=("balanced", "none")),
        "model_params": _p({}, dict, "Hyperparameters over the model's defaults: layers, "
                           "units, filters, kernel_size, dropout, recurrent_dropout, l2, "
                           "batch_norm, activation, initializer, dense_units.",
                           check=_model_params),
        "epochs": _p(30, int, "Fixed epochs per fold, no early stopping (thesis 3.2.3).",
                     min=1, max=10000),
        "batch_size": _p(16, int, "Batch size per device.", min=1, max=4096),
        "learning_rate": _p(None, float, "Adam learning rate; null: the model's own "
                            "(thesis 3.2.3: 0.0001; pooled: 0.001).", nullable=True, min=0,
                            max=1, min_open=True),
        "augmented": _p(True, bool, "Train on the training folds' offline-augmented rows "
                        "too."),
        "online_augment": _p(False, bool, "Clip models: random per-sequence transform each "
                             "epoch (thesis 3.2.5)."),
        "clip_size": _p(64, int, "Clip models: frames resized to this side.", min=8,
                        max=512),
        "max_frames": _p(None, int, "Sequence length; null: extract.max_frames (feature "
                         "models: at most that, the store holds no more).", nullable=True,
                         min=1, max=10000),
        "strategy": _p("auto", str, "Devices: auto (all GPUs via MirroredStrategy when >1), "
                       "default (one device) or mirrored.",
                       choices=("auto", "default", "mirrored")),
        "mixed_precision": _p(False, bool, "mixed_float16 (GPUs with tensor cores)."),
        "tensorboard": _p(True, bool, "Write TensorBoard logs per fold."),
    },
    "finalize": {
        "patience": _p(10, int, "EarlyStopping patience on val accuracy (thesis "
                       "'Final model').", min=1, max=10000),
        "lr_factor": _p(0.5, float, "ReduceLROnPlateau factor.", min=0, max=1, min_open=True,
                        max_open=True),
        "lr_patience": _p(5, int, "ReduceLROnPlateau patience.", min=1, max=10000),
        "max_epochs": _p(100, int, "Upper bound for the early-stopped fold runs.", min=1,
                         max=10000),
        "epochs_from": _p("best", str, "Final epochs = mean over folds of the best epoch "
                          "(best) or of the epoch training stopped at (stopped).",
                          choices=("best", "stopped")),
    },
    "tune": {
        "space": _p({}, dict, "Search space for `fer tune`: key -> list of values or "
                    "{min, max[, step, sampling]}; keys are model_params, learning_rate, "
                    "batch_size.",
                    check=_check_space),
        "trials": _p(10, int, "Bayesian-optimisation trials (each trains every fold).",
                     min=1, max=1000),
        "epochs": _p(None, int, "Epochs per fold in a trial; null: train.epochs.",
                     nullable=True, min=1, max=10000),
    },
    "fuse": {
        "runs": _p(None, list, "Finalized runs to fuse; null: every run in "
                   "work/finalize/runs.", nullable=True, item_types=(str,)),
        "combinations": _p(None, list, "Explicit combinations (lists of run names); null: "
                           "every subset of 2..max_size runs.", nullable=True,
                           item_types=(list,),
                           check=_lists_of_str(2, "at least 2 different run names")),
        "max_size": _p(3, int, "Largest combination tried when combinations is null.", min=2,
                       max=10),
        "methods": _p(["average", "weighted", "max"], list, "Fusion methods (thesis 3.2.6; "
                      "weighted uses mean CV accuracy, eq. 3.2).", item_types=(str,),
                      item_choices=FUSION_METHODS),
    },
    "evaluate": {
        "targets": _p(None, list, "Runs or fusions (run+run@method) to evaluate; null: every "
                      "finalized run and the best fusion by CV accuracy.", nullable=True,
                      item_types=(str,)),
        "human": _p(None, str, "CSV of human annotations of the test items (item,annotator,"
                    "label) for the human-vs-model comparison (thesis 3.3.1).", nullable=True),
    },
}


@dataclass
class Config:
    """The resolved configuration plus where each value came from."""

    data: dict[str, Any]
    path: Path | None = None
    overrides: list[str] = field(default_factory=list)

    def __getitem__(self, section: str) -> Any:
        return self.data[section]

    def resolve_path(self, value: str | Path) -> Path:
        """Relative paths in a config file are relative to that file's folder."""
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / Path(value).expanduser()).resolve()

    @property
    def workdir(self) -> Path:
        return self.resolve_path(self.data["workdir"])

    def section_hash(self, section: str) -> str:
        return params_hash(self.data[section])

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None)


def params_hash(params: Any) -> str:
    """Stable hash of parameters, as DVC does: JSON with sorted keys."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def defaults() -> dict[str, Any]:
    data = {key: copy.deepcopy(p.default) for key, p in GLOBAL_SCHEMA.items()}
    for section, params in SCHEMA.items():
        data[section] = {key: copy.deepcopy(p.default) for key, p in params.items()}
    return data


def _finite(name: str, value: Any, wanted: str = "a finite number") -> None:
    """NaN slips through every range test (each comparison is false); inf overflows later."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: {value!r} is not a finite number", hint=f"Give {wanted}")


def _check_value(name: str, value: Any, p: Param) -> Any:
    """Validate one value against its declaration; return it (ints promoted to float)."""
    if value is None:
        if p.nullable:
            return None
        raise ConfigError(f"{name} may not be null; expected {p.type_name()}")
    ok = isinstance(value, p.types) and not (isinstance(value, bool) and bool not in p.types)
    if not ok and float in p.types and isinstance(value, int) and not isinstance(value, bool):
        ok = True  # an int where a float is expected; promoted once its range is checked
    if not ok:
        raise ConfigError(f"{name}: expected {p.type_name()}, got {type(value).__name__} "
                          f"{_show(value)}")
    _finite(name, value, f"a number in {p.range_text()}" if p.range_text() else "a number")
    if isinstance(value, str) and "\x00" in value:  # no path, name or pattern holds one
        raise ConfigError(f"{name}: {_show(value)} contains a NUL character")
    if p.choices is not None and value not in p.choices:
        allowed = ", ".join(map(str, p.choices))
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of: {allowed}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not p.in_range(value):
            raise ConfigError(f"{name}: {_show(value)} is out of range {p.range_text()}",
                              hint="Give a value within it")
        if float in p.types:
            value = float(value)
    if isinstance(value, list):
        for element in value:
            if p.item_types and not isinstance(element, p.item_types):
                raise ConfigError(f"{name}: every element must be {_names(p.item_types)}, "
                                  f"got {_show(element)}")
            if p.item_choices and element not in p.item_choices:
                raise ConfigError(f"{name}: {element!r} is not allowed; choose from: "
                                  f"{', '.join(p.item_choices)}")
            _finite(name, element)
        _unique(name, value)
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{name}: keys must be non-empty strings, got {_show(key)}")
            if p.value_types and not isinstance(element, p.value_types):
                raise ConfigError(f"{name}.{key}: expected {_names(p.value_types)}, got "
                                  f"{type(element).__name__} {_show(element)}")
    if p.check is not None:
        p.check(name, value)
    return value


def _merge(data: dict, update: dict) -> None:
    for key, value in update.items():
        if key in GLOBAL_SCHEMA:
            data[key] = _check_value(key, value, GLOBAL_SCHEMA[key])
        elif key in SCHEMA:
            if not isinstance(value, dict):
                raise ConfigError(f"section `{key}` must be a mapping")
            for sub, sub_value in value.items():
                if sub not in SCHEMA[key]:
                    allowed = ", ".join(SCHEMA[key])
                    raise ConfigError(f"unknown key `{_short(f'{key}.{sub}')}`; "
                                      f"allowed keys in `{key}`: {allowed}")
                data[key][sub] = _check_value(f"{key}.{sub}", sub_value, SCHEMA[key][sub])
        else:
            allowed = ", ".join([*GLOBAL_SCHEMA, *SCHEMA])
            raise ConfigError(f"unknown key `{_short(str(key))}`; allowed top-level keys: "
                              f"{allowed}")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml also caps nesting


def load_yaml(text: str, where: object) -> Any:
    """``yaml.safe_load`` within bounds, each refusal one line naming ``where``.

    Aliases are counted and expanded sizes summed on the composed node graph, where each
    anchored node exists once, so an alias bomb is refused before any Python object is
    built, let alone copied, dumped or hashed.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{size} bytes of YAML, over the limit of {MAX_YAML_BYTES} (1 MiB)",
                          path=where, hint="A config is a few KiB; check that this is one")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # `!!int x`, an int of 5000 digits: not YAMLErrors
            raise yaml.YAMLError(str(exc)) from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: object) -> None:
    sizes: dict[int, int] = {}  # id(node) -> values it expands to; a repeat is an alias
    aliases = 0

    def expanded(node: yaml.Node, depth: int) -> int:
        nonlocal aliases
        if id(node) in sizes:
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name)",
                                  path=where, hint="Write the values out")
            return sizes[id(node)]
        if depth > MAX_YAML_DEPTH:  # also where an alias refers to its own anchor
            raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels (or an "
                              f"alias inside its own anchor)", path=where,
                              hint="A config needs a few levels; write the values out")
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else [])
        total = 1 + sum(expanded(child, depth + 1) for child in children)
        if total > MAX_YAML_VALUES:
            raise ConfigError(f"YAML expands to more than {MAX_YAML_VALUES} values "
                              f"(aliases *name repeat their anchor's values)", path=where,
                              hint="Write the values out, without nested aliases")
        sizes[id(node)] = total
        return total

    expanded(root, 0)


def _short(text: str) -> str:
    """A ``--set`` text for messages: one printable line (newlines and bytes that are not
    UTF-8 escaped), cut short: the value may be a whole document."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:81])
    return shown if len(shown) <= 80 else shown[:77] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {_short(text)!r}: expected section.key=value, e.g. "
                          "--set split.folds=10")
    if any("\ud800" <= c <= "\udfff" for c in text):  # argv bytes Python could not decode
        raise ConfigError(f"--set {_short(text)!r}: not valid UTF-8",
                          hint="Give settings and paths in UTF-8")
    dotted, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"--set {_short(text)}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return dotted.strip().split("."), value


# Defaults that follow from the dataset layout, used unless the file or --set gives the key:
# CK+ sequences end at the apex (DATA.md), and CK+48 holds face crops already.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "ckplus": {"trim.shape": "onset-apex"},
    "ckplus48": {"trim.shape": "onset-apex", "detect.detector": "none"},
}


def _given_keys(update: dict) -> set[str]:
    return {f"{section}.{key}" for section, values in update.items()
            if isinstance(values, dict) for key in values}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve defaults < preset defaults < file < overrides and validate every key."""
    data = defaults()
    given: set[str] = set()
    config_path: Path | None = None
    if path is not None or Path(DEFAULT_CONFIG_FILE).exists():
        config_path = Path(path if path is not None else DEFAULT_CONFIG_FILE).resolve()
        if not config_path.is_file():
            raise ConfigError("config file not found", path=path,
                              hint="Check the path given to --config")
        size = config_path.stat().st_size
        if size > MAX_YAML_BYTES:  # refused before reading it
            raise ConfigError(f"{size} bytes, over the limit of {MAX_YAML_BYTES} (1 MiB) for "
                              f"a config file", path=config_path,
                              hint="Check that --config names a fer config")
        try:
            loaded = load_yaml(config_path.read_text(encoding="utf-8"), config_path) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"not valid YAML{where}", path=config_path,
                              hint="Fix the syntax or regenerate it with `fer config init`"
                              ) from None
        if not isinstance(loaded, dict):
            raise ConfigError("top level must be a mapping of sections", path=config_path)
        try:
            _merge(data, loaded)
        except ConfigError as exc:
            raise ConfigError(str(exc), path=config_path) from None
        given |= _given_keys(loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        try:
            _merge(data, nested)
        except ConfigError as exc:
            raise ConfigError(str(exc), path=f"--set {_short(text)}") from None
        given |= _given_keys(nested)
    for dotted, value in PRESET_DEFAULTS.get(data["index"]["preset"], {}).items():
        if dotted not in given:
            section, key = dotted.split(".")
            data[section][key] = value
    _check_rules(data)
    return Config(data=data, path=config_path, overrides=list(overrides or []))


def _check_rules(data: dict) -> None:
    """Rules between keys, checked on the resolved values before any stage runs.

    Each guards a combination that a stage would otherwise refuse (or worse, accept)
    only after the stages before it have run.
    """
    split, trim, train = data["split"], data["trim"], data["train"]
    if split["method"] == "stratified" and (split["test_subjects"] is not None
                                            or split["fold_subjects"] is not None):
        raise ConfigError("split.test_subjects / split.fold_subjects list subjects, but "
                          "split.method is stratified (by item)",
                          hint="Set split.method=subject, or drop the subject lists")
    if data["detect"]["detector"] == "yunet" and not data["detect"]["model_path"]:
        raise ConfigError("detect.model_path is not set for detector `yunet`",
                          hint="Download face_detection_yunet_2023mar.onnx from the OpenCV "
                               "model zoo and set detect.model_path")
    if trim["score"] == "openface" and not trim["openface_dir"]:
        raise ConfigError("trim.openface_dir is not set for trim.score=openface",
                          hint="Point it at the folder of OpenFace CSVs (<item_id>.csv)")
    # Algorithm 1 keeps a clip whole when its apex lies in the last anomaly_last_frames;
    # a longer forced end cut could remove an apex just before them.
    if (trim["shape"] != "onset-apex" and 0 < trim["anomaly_last_frames"]
            < trim["min_frames_end"]):
        raise ConfigError(f"trim.min_frames_end ({trim['min_frames_end']}) exceeds "
                          f"trim.anomaly_last_frames ({trim['anomaly_last_frames']}): the "
                          f"forced end cut could remove the apex",
                          hint="Lower trim.min_frames_end or raise trim.anomaly_last_frames "
                               "(0 turns the anomaly rule off)")
    copies, methods = data["augment"]["copies"], data["augment"]["methods"]
    if copies is not None and copies > len(methods):
        raise ConfigError(f"augment.copies is {copies} but augment.methods lists "
                          f"{len(methods)}: each copy uses another method",
                          hint=f"Set augment.copies to at most {len(methods)}, or null")
    stored = data["extract"]["max_frames"]
    if (train["model"] in FEATURE_MODELS and train["max_frames"] is not None
            and train["max_frames"] > stored):
        raise ConfigError(f"train.max_frames ({train['max_frames']}) exceeds "
                          f"extract.max_frames ({stored}): model {train['model']!r} reads "
                          f"stored features, at most {stored} frames per clip",
                          hint="Raise extract.max_frames (and re-run `fer extract`) or "
                               "lower train.max_frames")
    fuse = data["fuse"]
    if fuse["runs"] is not None and fuse["combinations"] is not None:
        missing = sorted({r for combo in fuse["combinations"] for r in combo}
                         - set(fuse["runs"]))
        if missing:
            raise ConfigError(f"fuse.combinations names runs not in fuse.runs: "
                              f"{', '.join(missing)}",
                              hint="Add them to fuse.runs, or set fuse.runs to null")


def reference_markdown() -> str:
    """The config reference table for the README (a test keeps the README in sync)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def row(name: str, p: Param) -> None:
        default = json.dumps(p.default)
        choices = f" One of: {', '.join(map(str, p.choices))}." if p.choices else ""
        if p.item_choices:
            choices += f" Each one of: {', '.join(p.item_choices)}."
        kind = p.type_name()
        if p.range_text():  # int in [1, 100] | null
            kind = kind.replace(" | null", "") + f" in {p.range_text()}" + (
                " | null" if p.nullable else "")
        lines.append(f"| `{name}` | {kind} | `{default}` | {p.help}{choices} |")

    for key, p in GLOBAL_SCHEMA.items():
        row(key, p)
    for section, params in SCHEMA.items():
        for key, p in params.items():
            row(f"{section}.{key}", p)
    return "\n".join(lines)
