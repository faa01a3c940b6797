import math
import time
import tracemalloc

import pytest

from fercli.core.config import (
    AUGMENT_METHODS,
    FUSION_METHODS,
    GLOBAL_SCHEMA,
    MAX_YAML_BYTES,
    SCHEMA,
    _check_value,
    defaults,
    load_config,
    params_hash,
    reference_markdown,
)
from fercli.core.errors import ConfigError


def test_defaults_follow_the_thesis():
    cfg = load_config(None, [])
    assert cfg["index"]["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise"]
    assert cfg["split"]["folds"] == 5
    assert cfg["split"]["test_fraction"] == 0.2


def test_precedence_cli_over_file_over_defaults(tmp_path):
    path = tmp_path / "fer.yaml"
    path.write_text("split:\n  folds: 3\n  test_fraction: 0.3\n")
    cfg = load_config(path, ["split.folds=4"])
    assert cfg["split"]["folds"] == 4          # CLI wins
    assert cfg["split"]["test_fraction"] == 0.3  # file wins over default
    assert cfg["index"]["preset"] == "bu4dfe"    # default


def test_default_file_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fer.yaml").write_text("workdir: elsewhere\n")
    cfg = load_config(None, [])
    assert cfg.workdir == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize("override, needle", [
    ("split.nfolds=3", "unknown key `split.nfolds`; allowed keys in `split`: folds"),
    ("split.folds=three", "split.folds: expected int, got str 'three'"),
    ("index.preset=foo", "choose one of: bu4dfe, folder-per-label, ckplus, regex, csv"),
    ("nosuch.key=1", "unknown key `nosuch`"),
    ("split.folds=1", "out of range"),
    ("split.folds", "expected section.key=value"),
])
def test_wrong_key_or_type_is_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("split:\n  folds: [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [])
    assert str(path) in str(info.value) and "split.folds" in str(info.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("split: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [])


def test_params_hash_is_order_independent():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_reference_lists_every_key():
    text = reference_markdown()
    data = defaults()
    for section, values in data.items():
        if isinstance(values, dict) and section in ("index", "split"):
            for key in values:
                assert f"`{section}.{key}`" in text


def test_ckplus_presets_default_to_apex_ending_clips_unless_told_otherwise():
    from fercli.core.config import load_config

    cfg = load_config(None, ["index.preset=ckplus48"])
    assert cfg["trim"]["shape"] == "onset-apex" and cfg["detect"]["detector"] == "none"
    assert load_config(None, ["index.preset=ckplus"])["trim"]["shape"] == "onset-apex"
    told = load_config(None, ["index.preset=ckplus", "trim.shape=auto"])
    assert told["trim"]["shape"] == "auto"
    assert load_config(None, [])["trim"]["shape"] == "auto"


# --- bounds on what YAML may build, and on every value (issue 15, item 3) ---

def _laughs(levels: int = 9) -> str:
    """A billion-laughs mapping in flow style: 9**levels strings from ~500 bytes."""
    parts = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


def _one_error_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _fast_and_small(call):
    """Run ``call`` and return its result, asserting < 2 s and < 20 MB of Python memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 20e6, peak
    return result


def test_alias_bomb_in_a_file_is_refused_before_anything_expands(fer, tmp_path):
    # The reported failure: synonyms values were not type-checked, so `config show` passed
    # and the stage's params_hash expanded 9**9 strings (2.4 GB, 45 s, MemoryError).
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"index:\n  synonyms: {_laughs()}\n")
    line = _one_error_line(_fast_and_small(lambda: fer("config", "show", "-c", bomb)))
    assert line == (f"Error: {bomb}: YAML expands to more than 100000 values (aliases *name "
                    "repeat their anchor's values). Write the values out, without nested "
                    "aliases")
    with pytest.raises(ConfigError, match="expands to more than"):
        _fast_and_small(lambda: load_config(bomb, []))


def test_alias_bomb_in_set_is_refused_the_same_way(fer):
    result = _fast_and_small(lambda: fer("config", "show", "--set",
                                         f"index.synonyms={_laughs()}"))
    line = _one_error_line(result)
    assert line.startswith("Error: --set index.synonyms={l0: &l0 [lol")
    assert "...: YAML expands to more than 100000 values" in line and len(line) < 300


@pytest.mark.parametrize("value, needle", [
    ("{a: &a [x], b: [" + ", ".join(["*a"] * 101) + "]}", "more than 100 YAML aliases"),
    ("&a [*a]", "alias inside its own anchor"),                # would recurse forever
    ("[" * 25 + "]" * 25, "nested deeper than 20 levels"),
])
def test_alias_count_self_reference_and_depth_are_bounded(value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(None, [f"tune.space={value}"])
    assert "\n" not in str(info.value)


def test_a_few_anchors_within_bounds_still_work(tmp_path):
    path = tmp_path / "fer.yaml"
    path.write_text("index:\n  exclude_subjects: &out [F016]\nevaluate:\n  targets: *out\n")
    assert load_config(path, [])["evaluate"]["targets"] == ["F016"]


def test_config_file_over_the_size_limit_is_refused_unread(fer, tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    line = _one_error_line(fer("config", "show", "-c", path))
    assert line == (f"Error: {path}: {path.stat().st_size} bytes, over the limit of 1048576 "
                    "(1 MiB) for a config file. Check that --config names a fer config")


@pytest.mark.parametrize("override, message", [
    ("track.size=8", "track.size: 8 is out of range [16, 1024]. Give a value within it"),
    ("split.folds=100000", "split.folds: 100000 is out of range [2, 1000]"),
    ("split.test_fraction=0.95", "split.test_fraction: 0.95 is out of range [0, 0.9]"),
    ("trim.threshold_ratio=0", "trim.threshold_ratio: 0 is out of range (0, 1]"),
    ("trim.max_cut_ratio=1.0", "trim.max_cut_ratio: 1.0 is out of range [0, 1)"),
    ("finalize.lr_factor=1", "finalize.lr_factor: 1 is out of range (0, 1)"),
    ("train.learning_rate=0", "train.learning_rate: 0 is out of range (0, 1]"),
    ("seed=-1", "seed: -1 is out of range [0, 4294967295]"),
    ("split.test_fraction=" + "9" * 400, "is out of range [0, 0.9]"),  # no OverflowError
    ("split.test_fraction=.nan", "split.test_fraction: nan is not a finite number. Give a "
                                 "number in [0, 0.9]"),
    ("index.sequence_fps=.inf", "index.sequence_fps: inf is not a finite number"),
    ("train.model_params={dropout: .nan}", "train.model_params.dropout: nan is not a finite"),
    ("index.synonyms={joy: 1}", "index.synonyms.joy: expected str, got int 1"),
    ("index.synonyms={joy: [happy]}", "index.synonyms.joy: expected str, got list"),
    ("train.model_params={units: {a: 1}}", "train.model_params.units: expected a number, "
                                           "string, bool or a list of them"),
    ("index.classes=[happy, 3]", "index.classes: every element must be str, got 3"),
    ("index.classes=[happy, happy]", "index.classes: 'happy' is listed twice"),
    ("index.classes=[]", "index.classes: the list is empty"),
    ("index.video_extensions=[avi]", "'avi' is not a file ending. Write it with its dot, "
                                     "e.g. '.avi'"),
    ("augment.methods=[flip, flop]", "augment.methods: 'flop' is not allowed; choose from: "
                                     "flip, blur"),
    ("fuse.methods=[mean]", "fuse.methods: 'mean' is not allowed"),
    ("split.fold_subjects=[[F001]]", "split.fold_subjects: 1 fold(s), at least 2 needed"),
    ("split.fold_subjects=[[F001], [F002, 3]]", "split.fold_subjects[1]: expected a non-empty "
                                                "list of subjects"),
    ("fuse.combinations=[[a]]", "fuse.combinations[0]: expected at least 2 different run"),
    ("tune.space={units: []}", "tune.space.units: the list is empty"),
    ("tune.space={units: [8, a]}", "tune.space.units: mixes types"),
    ("tune.space={dropout: {min: 0.5, max: 0.1}}", "tune.space.dropout: min 0.5 is not below"),
    ("tune.space={dropout: {min: 0.1}}", "tune.space.dropout: expected {min: .., max: .."),
    ("tune.space={learning_rate: {min: 0, max: 0.1, sampling: log}}",
     "tune.space.learning_rate: log sampling needs min > 0"),
    ("tune.space={batch_size: [0, 8]}", "tune.space.batch_size: 0 is out of range [1, 4096]"),
])
def test_out_of_range_and_mistyped_values_fail_at_load_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("overrides, message", [
    (["split.method=stratified", "split.test_subjects=[F001]"],
     "split.test_subjects / split.fold_subjects list subjects, but split.method is stratified"),
    (["trim.min_frames_end=30"], "trim.min_frames_end (30) exceeds trim.anomaly_last_frames "
                                 "(20): the forced end cut could remove the apex"),
    (["augment.copies=12"], "augment.copies is 12 but augment.methods lists 9"),
    (["train.max_frames=200"], "train.max_frames (200) exceeds extract.max_frames (100)"),
    (["fuse.runs=[a, b]", "fuse.combinations=[[a, c]]"],
     "fuse.combinations names runs not in fuse.runs: c"),
    (["detect.detector=yunet"], "detect.model_path is not set for detector `yunet`"),
    (["trim.score=openface"], "trim.openface_dir is not set for trim.score=openface"),
])
def test_cross_field_rules_fail_before_any_stage(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["trim.min_frames_end=30", "trim.anomaly_last_frames=0"],    # anomaly rule off
    ["trim.min_frames_end=30", "index.preset=ckplus"],            # onset-apex: no end cut
    ["train.model=lrcn", "train.max_frames=200"],                 # clip models read clips
    ["augment.copies=9"],
    ["tune.space={units: [4, 8], dropout: {min: 0.1, max: 0.5, step: 0.1}}"],
])
def test_cross_field_rules_allow_their_exceptions(overrides):
    load_config(None, overrides)


def test_every_default_passes_and_every_number_declares_a_range(tmp_path):
    params = {**GLOBAL_SCHEMA, **{f"{s}.{k}": p for s, keys in SCHEMA.items()
                                  for k, p in keys.items()}}
    for name, p in params.items():
        assert _check_value(name, p.default, p) == p.default, name
        if int in p.types or float in p.types:
            assert p.min is not None and p.max is not None, f"{name} declares no range"
            assert math.isfinite(p.min) and math.isfinite(p.max), name
    path = tmp_path / "fer.yaml"  # what `fer config init` writes loads again
    path.write_text(load_config(None, []).to_yaml())
    assert load_config(path, []).data == defaults()


def test_shipped_configs_pass_every_rule():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(path, [])


def test_names_repeated_from_other_modules_match_them():
    from fercli.learning.fusion import METHODS
    from fercli.vision.augment import OFFLINE_METHODS

    assert AUGMENT_METHODS == tuple(OFFLINE_METHODS)
    assert FUSION_METHODS == METHODS
