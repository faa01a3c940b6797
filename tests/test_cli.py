"""Every command documents itself; the README cannot drift from the code."""
import re
from pathlib import Path

import typer

from fercli.cli import app
from fercli.core.config import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def _all_commands():
    root = typer.main.get_command(app)
    stack = [((), root)]
    while stack:
        path, command = stack.pop()
        yield path, command
        if hasattr(command, "commands"):
            stack += [((*path, name), sub) for name, sub in command.commands.items()]


def test_every_command_has_help(runner):
    names = []
    for path, command in _all_commands():
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert (command.help or "").strip(), f"`fer {' '.join(path)}` has no help text"
        assert "Usage:" in result.output
        names.append(" ".join(path))
    for expected in ("index", "split", "run", "status", "config show", "sample-data"):
        assert expected in names


def test_readme_config_reference_is_current():
    text = README.read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->",
                      text, re.S)
    assert match, "README lacks the generated config reference block"
    assert match.group(1).strip() == reference_markdown().strip(), \
        "README config reference is stale: paste the output of `fer config reference`"


def test_readme_shows_the_two_commands():
    head = README.read_text()[:3000]
    assert "make demo" in head and "make test" in head


def test_config_show_and_errors(fer, tmp_path):
    result = fer("config", "show", "--set", "split.folds=7")
    assert result.exit_code == 0 and "folds: 7" in result.output
    result = fer("config", "show", "--set", "split.folds=x")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --set split.folds=x")
    assert fer("config", "init").exit_code == 0
    assert (tmp_path / "fer.yaml").exists()
    assert fer("config", "init").exit_code == 1


def test_status_lists_every_stage(fer):
    result = fer("status")
    assert result.exit_code == 0
    for stage in ("index", "split", "cv-train", "evaluate"):
        assert stage in result.output
    assert "not run" in result.output


def test_version_needs_no_command(runner):
    from fercli import __version__
    from fercli.cli import app

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fercli {__version__}"
