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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Param:
    """One configuration key: its default, accepted type(s), allowed values and meaning."""

    default: Any
    types: tuple[type, ...]
    help: str
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    item_types: tuple[type, ...] | None = None  # element type for lists

    def type_name(self) -> str:
        names = {bool: "bool", int: "int", float: "float", str: "str", list: "list",
                 dict: "mapping"}
        text = " | ".join(names.get(t, t.__name__) for t in self.types)
        if self.item_types:
            text += f" of {' | '.join(names.get(t, t.__name__) for t in self.item_types)}"
        return text + (" | null" if self.nullable else "")


def _p(default, types, help, **kw) -> Param:
    types = types if isinstance(types, tuple) else (types,)
    return Param(default, types, help, **kw)


# Top-level keys that are not sections.
GLOBAL_SCHEMA: dict[str, Param] = {
    "workdir": _p("work", str, "Work directory; one sub-folder per stage."),
    "seed": _p(42, int, "Global random seed (splits, augmentation, training)."),
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
                      "(thesis: the 6 basic emotions).", item_types=(str,)),
        "synonyms": _p({}, dict, "Extra label synonyms, e.g. {joy: happy}; merged over the "
                       "built-in ones (anger->angry, happiness->happy, sadness->sad, ...)."),
        "exclude_subjects": _p([], list, "Subjects left out (the thesis drops F016).",
                               item_types=(str,)),
        "video_extensions": _p([".avi", ".mp4", ".mkv", ".mov"], list,
                               "File endings treated as videos.", item_types=(str,)),
        "sequence_fps": _p(25.0, (int, float), "Frame rate assumed for frame-sequence folders "
                           "(BU-4DFE records 25 fps).", min=1),
    },
    "split": {
        "folds": _p(5, int, "Number of cross-validation folds (thesis 3.2.2: k=5).", min=2),
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
                            "(reproduces a published split).", nullable=True, item_types=(list,)),
        "seed": _p(None, int, "Split seed; null uses the global seed.", nullable=True),
    },
    "detect": {
        "detector": _p("haar", str, "Face detector (thesis 3.2.1: Haar cascade); none: "
                       "the frames are already face crops (CK+48), taken whole.",
                       choices=("haar", "yunet", "none")),
        "scale_factor": _p(1.1, float, "Haar scaleFactor (paper 000 sec. 2.2).", min=1.01),
        "min_neighbors": _p(10, int, "Haar minNeighbors (paper 000 sec. 2.2).", min=0),
        "min_size": _p(30, int, "Smallest face side in pixels (paper 000: 30x30).", min=1),
        "frames_allowed": _p(10, int, "Try the first N frames until exactly one face is "
                             "found (paper 000: 10).", min=1),
        "extend_px": _p(10, int, "Pixels added to the box height, at the chin (thesis 3.2.1).",
                        min=0),
        "model_path": _p(None, str, "ONNX model for detector `yunet` "
                         "(face_detection_yunet_2023mar.onnx).", nullable=True),
        "score_threshold": _p(0.8, float, "Minimum score for detector `yunet`.", min=0, max=1),
    },
    "track": {
        "tracker": _p("medianflow", str, "OpenCV tracker (thesis 3.2.1 chose MedianFlow).",
                      choices=("medianflow", "kcf", "csrt", "mosse", "mil", "tld", "boosting")),
        "size": _p(160, int, "Side of the square face crop (paper 000: 160x160).", min=16),
        "color": _p(True, bool, "Keep colour (false: gray clips)."),
        "codec": _p("ffv1", str, "Lossless codec: ffv1 (.mkv, exact for colour and gray) or "
                    "huffyuv (.avi, colour only, as in paper 000).", choices=("ffv1", "huffyuv")),
        "redetect_tries": _p(3, int, "Frames in which to re-detect a lost face before the "
                             "item fails.", min=0),
        "smooth": _p(0.7, (int, float), "One-euro smoothing of the face box: weight the "
                     "previous box keeps while the face is still (0 = off); it opens up as "
                     "the head moves.", min=0, max=0.99),
    },
    "trim": {
        "score": _p("motion", str, "Per-frame expression score: motion (from the clip) or "
                    "openface (AU intensities, thesis 3.2.1).", choices=("motion", "openface")),
        "openface_dir": _p(None, str, "Folder of OpenFace CSVs named <item_id>.csv "
                           "(score `openface`).", nullable=True),
        "min_frames_end": _p(10, int, "Frames always cut from the end (Algorithm 1).", min=0),
        "threshold_ratio": _p(0.5, float, "Cut while the score is below this share of the "
                              "maximum (Algorithm 1).", min=0, max=1),
        "max_cut_ratio": _p(0.5, float, "Never cut more than this share of the frames "
                            "(Algorithm 1).", min=0, max=1),
        "shape": _p("auto", str, "Expression course of the clips: onset-apex-offset (BU-4DFE: "
                    "Algorithm 1), onset-apex (CK+: only the neutral onset is cut) or auto "
                    "(per clip: onset-apex when the last frames are still expressive).",
                    choices=("auto", "onset-apex-offset", "onset-apex")),
        "anomaly_last_frames": _p(20, int, "Maximum in the last N frames: mark 'anomaly', "
                                  "keep whole (thesis 3.2.1; 0 turns the rule off).", min=0),
        "overrides": _p(None, str, "CSV (item_id,first,last) or YAML of manual trims "
                        "for anomalies.", nullable=True),
        "plot_examples": _p(6, int, "Score-curve PNGs to draw (plus every anomaly).", min=0),
    },
    "augment": {
        "methods": _p(["flip", "blur", "bright50", "bright20", "contrast2", "contrast17",
                       "rot8", "rot-8", "saltpepper"], list,
                      "Offline methods, one augmented clip each (thesis 3.2.4: these nine; "
                      "paper 000 adds histeq and gray).", item_types=(str,)),
        "copies": _p(None, int, "Augmented clips per training clip, methods drawn per clip "
                     "by the seed; null: one per method.", nullable=True, min=1),
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
        "batch_size": _p(64, int, "Frames per forward pass.", min=1),
        "max_frames": _p(100, int, "Sequence length for training; longer clips are "
                         "truncated, shorter ones padded and masked (thesis 3.2.3).", min=1),
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
                           "batch_norm, activation, initializer, dense_units."),
        "epochs": _p(30, int, "Fixed epochs per fold, no early stopping (thesis 3.2.3).",
                     min=1),
        "batch_size": _p(16, int, "Batch size per device.", min=1),
        "learning_rate": _p(None, float, "Adam learning rate; null: the model's own "
                            "(thesis 3.2.3: 0.0001; pooled: 0.001).", nullable=True, min=0),
        "augmented": _p(True, bool, "Train on the training folds' offline-augmented rows "
                        "too."),
        "online_augment": _p(False, bool, "Clip models: random per-sequence transform each "
                             "epoch (thesis 3.2.5)."),
        "clip_size": _p(64, int, "Clip models: frames resized to this side.", min=8),
        "max_frames": _p(None, int, "Sequence length; null: extract.max_frames.",
                         nullable=True, min=1),
        "strategy": _p("auto", str, "Devices: auto (all GPUs via MirroredStrategy when >1), "
                       "default (one device) or mirrored.",
                       choices=("auto", "default", "mirrored")),
        "mixed_precision": _p(False, bool, "mixed_float16 (GPUs with tensor cores)."),
        "tensorboard": _p(True, bool, "Write TensorBoard logs per fold."),
    },
    "finalize": {
        "patience": _p(10, int, "EarlyStopping patience on val accuracy (thesis "
                       "'Final model').", min=1),
        "lr_factor": _p(0.5, float, "ReduceLROnPlateau factor.", min=0, max=1),
        "lr_patience": _p(5, int, "ReduceLROnPlateau patience.", min=1),
        "max_epochs": _p(100, int, "Upper bound for the early-stopped fold runs.", min=1),
        "epochs_from": _p("best", str, "Final epochs = mean over folds of the best epoch "
                          "(best) or of the epoch training stopped at (stopped).",
                          choices=("best", "stopped")),
    },
    "tune": {
        "space": _p({}, dict, "Search space for `fer tune`: key -> list of values or "
                    "{min, max[, step]}; keys are model_params, learning_rate, batch_size."),
        "trials": _p(10, int, "Bayesian-optimisation trials (each trains every fold).",
                     min=1),
        "epochs": _p(None, int, "Epochs per fold in a trial; null: train.epochs.",
                     nullable=True, min=1),
    },
    "fuse": {
        "runs": _p(None, list, "Finalized runs to fuse; null: every run in "
                   "work/finalize/runs.", nullable=True, item_types=(str,)),
        "combinations": _p(None, list, "Explicit combinations (lists of run names); null: "
                           "every subset of 2..max_size runs.", nullable=True,
                           item_types=(list,)),
        "max_size": _p(3, int, "Largest combination tried when combinations is null.", min=2),
        "methods": _p(["average", "weighted", "max"], list, "Fusion methods (thesis 3.2.6; "
                      "weighted uses mean CV accuracy, eq. 3.2).", item_types=(str,)),
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


def _check_value(name: str, value: Any, p: Param) -> Any:
    """Validate one value against its declaration; return it (ints promoted to float)."""
    if value is None:
        if p.nullable:
            return None
        raise ConfigError(f"{name} may not be null; expected {p.type_name()}")
    if float in p.types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, p.types) and not (isinstance(value, bool) and bool not in p.types)
    if not ok:
        raise ConfigError(f"{name}: expected {p.type_name()}, got {type(value).__name__} "
                          f"{value!r}")
    if p.choices is not None and value not in p.choices:
        allowed = ", ".join(map(str, p.choices))
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of: {allowed}")
    if p.min is not None and value < p.min or p.max is not None and value > p.max:
        raise ConfigError(f"{name}: {value!r} is out of range [{p.min}, {p.max}]")
    if p.item_types and isinstance(value, list):
        for element in value:
            if not isinstance(element, p.item_types):
                raise ConfigError(f"{name}: every element must be "
                                  f"{'/'.join(t.__name__ for t in p.item_types)}, "
                                  f"got {element!r}")
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
                    raise ConfigError(f"unknown key `{key}.{sub}`; "
                                      f"allowed keys in `{key}`: {allowed}")
                data[key][sub] = _check_value(f"{key}.{sub}", sub_value, SCHEMA[key][sub])
        else:
            allowed = ", ".join([*GLOBAL_SCHEMA, *SCHEMA])
            raise ConfigError(f"unknown key `{key}`; allowed top-level keys: {allowed}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. "
                          "--set split.folds=10")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
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
            raise ConfigError(str(exc), path=f"--set {text}") from None
        given |= _given_keys(nested)
    for dotted, value in PRESET_DEFAULTS.get(data["index"]["preset"], {}).items():
        if dotted not in given:
            section, key = dotted.split(".")
            data[section][key] = value
    return Config(data=data, path=config_path, overrides=list(overrides or []))


def reference_markdown() -> str:
    """The config reference table for the README (a test keeps the README in sync)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def row(name: str, p: Param) -> None:
        default = json.dumps(p.default)
        choices = f" One of: {', '.join(map(str, p.choices))}." if p.choices else ""
        lines.append(f"| `{name}` | {p.type_name()} | `{default}` | {p.help}{choices} |")

    for key, p in GLOBAL_SCHEMA.items():
        row(key, p)
    for section, params in SCHEMA.items():
        for key, p in params.items():
            row(f"{section}.{key}", p)
    return "\n".join(lines)
