"""The lock file: the exact versions `make setup` installs (CPython 3.11, Linux x86_64).

    python scripts/lock.py refresh LOCK   # make lock: newest versions pyproject.toml allows
    python scripts/lock.py install LOCK   # make setup: the locked versions, then fercli --no-deps
    python scripts/lock.py check LOCK     # make setup: every locked version is the installed one

`refresh` asks pip's own resolver (`pip install --dry-run --ignore-installed --report`) for
`.[<every extra>]`, as if into an empty environment, and writes one `name==version` line per
package. pip evaluates environment markers for the interpreter running it, so `refresh` runs
only on the target; elsewhere `install` falls back to pyproject.toml's bounds with a warning.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv holds pip only
    from pip._vendor.packaging.requirements import Requirement
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "fercli"
TARGET = {"implementation_name": "cpython", "sys_platform": "linux",
          "platform_machine": "x86_64", "python_version": "3.11"}
TARGET_TEXT = "CPython 3.11 on Linux x86_64"
ALWAYS_THERE = {"pip", PROJECT}  # installed, never locked


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment() -> dict[str, str]:
    return {"implementation_name": sys.implementation.name, "sys_platform": sys.platform,
            "platform_machine": platform.machine(),
            "python_version": ".".join(map(str, sys.version_info[:2]))}


def on_target(env: dict[str, str] | None = None) -> bool:
    env = env or environment()
    return all(env.get(k) == v for k, v in TARGET.items())


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extras_spec() -> str:
    extras = sorted(pyproject().get("optional-dependencies", {}))
    return f".[{','.join(extras)}]" if extras else "."


def read_lock(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canon(name)] = version.strip()
    return pins


def pip(*args: str) -> None:
    print("pip " + " ".join(args), flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", *args], cwd=ROOT)


def stale(pins: dict[str, str]) -> list[str]:
    """pyproject.toml requirements (dependencies and every extra) the lock does not meet."""
    project = pyproject()
    groups = {"": project.get("dependencies", [])}
    groups.update(project.get("optional-dependencies", {}))
    problems = []
    for extra, requirements in groups.items():
        for text in requirements:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": extra}):
                continue
            version = pins.get(canon(req.name))
            if version is None:
                problems.append(f"{text}: not in the lock")
            elif not req.specifier.contains(version, prereleases=True):
                problems.append(f"{text}: the lock has {version}")
    return problems


def refresh(lock: Path) -> int:
    if not on_target():
        print(f"lock: the lock is resolved for {TARGET_TEXT}; this is {environment()}. Run "
              "`make lock` with such an interpreter.", file=sys.stderr)
        return 2
    spec = extras_spec()
    pip_version = metadata.version("pip")
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report",
            str(report_path), spec)
        report = json.loads(report_path.read_text())
    if not on_target(report["environment"]):
        print(f"lock: pip resolved for {report['environment']}", file=sys.stderr)
        return 2
    pins = {canon(item["metadata"]["name"]): item["metadata"]["version"]
            for item in report["install"]}
    pins.pop(PROJECT, None)
    if problems := stale(pins):
        print("lock: pip's resolution misses pyproject.toml: " + "; ".join(problems),
              file=sys.stderr)
        return 1
    old = read_lock(lock) if lock.is_file() else {}
    header = [
        f"# {PROJECT}'s locked dependencies: the exact versions `make setup` installs.",
        f"# Target: {TARGET_TEXT}; elsewhere `make setup` installs pyproject.toml's bounds.",
        f"# Covers pyproject.toml's dependencies and extras: {spec}",
        "# Made by `make lock` (scripts/lock.py refresh), which asks pip's resolver for the",
        "# newest versions pyproject.toml's bounds allow, as if into an empty environment:",
        f"#   pip {pip_version} (CPython {platform.python_version()}): pip install --dry-run "
        f"--ignore-installed --report - '{spec}'",
        "# Do not edit by hand: change pyproject.toml and run `make lock`.",
    ]
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("\n".join(header + lines) + "\n")
    changed = [f"{n} {old.get(n, '-')} -> {pins.get(n, '-')}"
               for n in sorted(set(old) | set(pins)) if old.get(n) != pins.get(n)]
    summary = ("new" if not old else f"changed: {', '.join(changed)}" if changed
               else "unchanged")
    print(f"lock: {len(pins)} packages -> {lock.name} ({summary})")
    return 0


def install(lock: Path) -> int:
    if not on_target():
        print(f"lock: WARNING: {lock.name} is resolved for {TARGET_TEXT}, not this "
              f"interpreter ({environment()}); installing pyproject.toml's bounds instead",
              file=sys.stderr)
        pip("install", "--quiet", "-e", extras_spec())
        return 0
    if problems := stale(read_lock(lock)):
        print(f"lock: {lock.name} is out of date with pyproject.toml ("
              + "; ".join(problems) + "): run `make lock`", file=sys.stderr)
        return 1
    pip("install", "--quiet", "-r", str(lock))
    pip("install", "--quiet", "--no-deps", "-e", ".")
    return 0


def check(lock: Path, exact: bool) -> int:
    if not on_target():
        print(f"lock: not checked ({TARGET_TEXT} only)")
        return 0
    pins = read_lock(lock)
    installed = {canon(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = [f"{n}=={v} (installed: {installed.get(n, 'missing')})"
             for n, v in sorted(pins.items()) if installed.get(n) != v]
    extra = sorted(f"{n}=={v}" for n, v in installed.items()
                   if n not in pins and n not in ALWAYS_THERE)
    if wrong:
        print("lock: installed versions differ from the lock: " + ", ".join(wrong),
              file=sys.stderr)
    if extra:
        print(f"lock: {'ERROR' if exact else 'note'}: installed but not locked: "
              + ", ".join(extra), file=sys.stderr)
    if wrong or (exact and extra):
        return 1
    print(f"lock: all {len(pins)} locked packages installed at exactly the locked versions")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("refresh", "install", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    lock = Path(argv[1]).resolve()
    if argv[0] == "refresh":
        return refresh(lock)
    if argv[0] == "install":
        return install(lock)
    return check(lock, exact="--exact" in argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
