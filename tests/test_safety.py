"""Safety: no code execution from data files, and no path outside the work directory.

Datasets, configs, label CSVs and model files come from users; fercli must only ever read
them as data. The package source is checked through its syntax tree (strings and comments
that mention these names do not count). Costs < 1 s.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from fercli.core.errors import InputError
from fercli.core.verify import repair, verify_workdir
from fercli.core.workspace import StageDir, check_item_id, file_entry

PACKAGE = Path(__file__).resolve().parents[1] / "fercli"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _name(node: ast.AST) -> str:
    """Dotted name of a called function: ``np.load``, ``yaml.load``, ``eval``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword
    return None


def unsafe_calls(source: str) -> list[str]:
    """What in this source could run code from a file or a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names
                      if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in ("eval", "exec", "compile", "__import__", "os.system", "os.popen"):
            found.append(f"{where}: {name}()")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"{where}: {name}() (use yaml.safe_load)")
        elif name.endswith(("np.load", "numpy.load")) and \
                _keyword(node, "allow_pickle") is not False:
            found.append(f"{where}: {name}() without allow_pickle=False")
        elif name.endswith("load_model") and _keyword(node, "safe_mode") is False:
            found.append(f"{where}: {name}(safe_mode=False)")
        elif _keyword(node, "shell") is True:
            found.append(f"{where}: {name}(shell=True)")
    return found


def test_package_never_executes_data():
    problems = [f"{path.relative_to(PACKAGE.parent)} {problem}"
                for path in sorted(PACKAGE.rglob("*.py"))
                for problem in unsafe_calls(path.read_text(encoding="utf-8"))]
    assert problems == []


def test_the_checker_catches_each_pattern():
    source = "\n".join(["import pickle", "from marshal import loads", "eval('1')",
                        "exec('x = 1')", "yaml.load(text)", "np.load(path)",
                        "np.load(path, allow_pickle=True)", "np.load(path, allow_pickle=False)",
                        "keras.models.load_model(p, safe_mode=False)",
                        "subprocess.run(cmd, shell=True)", "yaml.safe_load(text)"])
    assert [p.split(": ", 1)[1] for p in unsafe_calls(source)] == [
        "imports pickle", "imports marshal", "eval()", "exec()",
        "yaml.load() (use yaml.safe_load)", "np.load() without allow_pickle=False",
        "np.load() without allow_pickle=False", "keras.models.load_model(safe_mode=False)",
        "subprocess.run(shell=True)"]


@pytest.mark.parametrize("item_id", ["..", "../x", "a/../../b", "/etc/passwd", "a/b", "a\\b",
                                     "a..b", ".hidden", "", "x" * 201, "a b", "caf\u00e9",
                                     "F001_\udcff", "-rf"])
def test_unsafe_item_ids_are_refused(item_id):
    with pytest.raises(InputError, match="is not a safe file name"):
        check_item_id(item_id)


@pytest.mark.parametrize("item_id", ["F001_happy_tex", "F001_happy_tex@flip", "fold-0",
                                     "S005_001+2", "M042.take.2"])
def test_safe_item_ids_pass(item_id):
    assert check_item_id(item_id) == item_id


def test_stage_paths_stay_inside_the_stage_folder(tmp_path):
    stage = StageDir(tmp_path / "work", "track")
    stage.root.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", stage.root / "link")
    for parts in [("..", "x"), ("../../etc/passwd",), ("/etc/passwd",), ("clips", "../../x"),
                  ("link", "file")]:
        with pytest.raises(InputError, match="escapes the stage folder"):
            stage.path(*parts)
    assert stage.path("clips", "F001.mkv") == stage.root.resolve() / "clips/F001.mkv"


def test_verify_repair_never_touches_files_outside_the_workdir(tmp_path):
    """A hand-edited manifest can point anywhere; repair deletes only inside the workdir."""
    work = tmp_path / "work"
    stage = StageDir(work, "track")
    clip = stage.path("clips", "F001.mkv")
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"clip")
    entry = file_entry(clip, work.resolve())
    victim = tmp_path / "precious.json"
    victim.write_text("{}")
    manifest = {"schema": 1, "outputs": [{**entry, "path": "../precious.json"}],
                "items": {"F001": {"status": "done", "outputs": [entry]},
                          "../precious": {"status": "done", "outputs": [{**entry,
                                                                         "size": 1}]}}}
    stage.manifest_path.write_text(json.dumps(manifest))
    damages = verify_workdir(work, ["track"]).damages
    assert [(d.item, d.problem) for d in damages] == [(None, "outside the workdir"),
                                                      ("../precious", "outside the workdir")]
    repair(work, damages)
    assert victim.read_text() == "{}" and clip.read_bytes() == b"clip"
