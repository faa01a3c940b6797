"""The interpreter and library versions a run was made with (versions.json in a run folder)."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from .workspace import atomic_write_json

# The libraries whose versions decide a run's numbers, first in versions.json; None = absent.
LIBRARIES = ("fercli", "tensorflow", "keras", "numpy", "opencv-contrib-python", "h5py",
             "scikit-learn", "scikit-image", "keras-tuner")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_versions() -> dict:
    """python and platform, the key libraries, then every installed distribution."""
    installed = {d.metadata["Name"]: d.version for d in metadata.distributions()
                 if d.metadata["Name"]}
    return {"python": platform.python_version(), "platform": platform.platform(),
            "libraries": {name: _version(name) for name in LIBRARIES},
            "installed": dict(sorted(installed.items(), key=lambda kv: kv[0].lower()))}


def write_versions(folder: Path) -> Path:
    """Write <folder>/versions.json; returns its path."""
    path = Path(folder) / "versions.json"
    atomic_write_json(path, collect_versions())
    return path
