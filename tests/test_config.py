import pytest

from fercli.config import defaults, load_config, params_hash, reference_markdown
from fercli.errors import ConfigError


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
    from fercli.config import load_config

    cfg = load_config(None, ["index.preset=ckplus48"])
    assert cfg["trim"]["shape"] == "onset-apex" and cfg["detect"]["detector"] == "none"
    assert load_config(None, ["index.preset=ckplus"])["trim"]["shape"] == "onset-apex"
    told = load_config(None, ["index.preset=ckplus", "trim.shape=auto"])
    assert told["trim"]["shape"] == "auto"
    assert load_config(None, [])["trim"]["shape"] == "auto"
