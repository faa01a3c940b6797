"""What many tests share: the small real pipeline's settings, run folders written by the
code `fer finalize` uses, and the process-group helpers of the kill and interrupt tests."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]


def small_pipeline(epochs: int = 3, patience: int = 2) -> list[str]:
    """--set values of a real pipeline on 5 sample subjects that trains in seconds."""
    return [
        f"index.root={SAMPLE_DATA}", "index.exclude_subjects=[F003, F004, M004]",
        "split.folds=2", "split.test_fraction=0.2", "track.size=64",
        "augment.methods=[flip]", "extract.backbone=small-cnn", "extract.max_frames=40",
        f"train.epochs={epochs}", "train.batch_size=8", "train.tensorboard=false",
        "train.model=cnn1d", "train.model_params={filters: [8, 8, 16, 16], dense_units: [16]}",
        f"finalize.max_epochs={epochs + 1}", f"finalize.patience={patience}",
        "finalize.lr_patience=1"]


def make_run(workdir: Path, name: str, model_name: str, params: dict, input_shape: tuple, *,
             config: dict, classes: list[str], clip_size: int | None = None,
             identity: bool = False, decisive: bool = False) -> Path:
    """An untrained model in a run folder written by `fer finalize`'s own writer.

    ``decisive`` scales the output layer so that predictions are not near-uniform;
    ``identity`` builds the model with the onset-baseline input (identity normalisation).
    """
    from fercli.inference.runs import write_run_folder
    from fercli.learning.models import build_model

    model = build_model(model_name, params, input_shape, len(classes), baseline=identity)
    if decisive:
        head = model.get_layer("probabilities")
        head.set_weights([w * 8.0 for w in head.get_weights()])
    run_dir = Path(workdir) / "finalize" / "runs" / name
    info = {"run": name, "model": model_name, "classes": classes,
            "input_shape": list(input_shape),
            "backbone": None if clip_size else config["extract"], "clip_size": clip_size,
            "color": True, "max_frames": input_shape[0], "min_frames": 2,
            "identity": identity}
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.keras")
        write_run_folder(run_dir, Path(tmp) / "model.keras", info, config, classes)
    return run_dir


def live_group_members(pgid: int) -> list[int]:
    """Pids of the process group that still run (zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(stat.parent.name))
    return members


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- two faces
PANEL = (200, 240)  # (width, height) of one subject's half of the frame
BEFORE, AFTER = 43, 40  # frames before and after the cut; 43 keeps the cut off a cadence of 10
# Two sample subjects (seed 0, as `fer sample` draws them) that look different: F004 is
# dark, cool and on a grey-green background, M001 bright and warm on a light one.
LEFT, RIGHT = "F004", "M001"
NEW_BACKGROUND = ((40, 40, 40), (230, 230, 230))


def sample_subject(name: str, background=None):
    from dataclasses import replace

    from fercli.sampledata import make_subject, subject_names

    index = subject_names(8).index(name)
    drawn = make_subject(name, np.random.default_rng([0, index]))
    if background is None:
        return drawn
    return replace(drawn, background=background, background_angle_deg=90.0)


def subject_panel(name: str, expression: str, seed: int, n_frames: int, background=None,
                  size=PANEL) -> list[np.ndarray]:
    from fercli.sampledata import render_frames

    return render_frames(sample_subject(name, background), expression,
                         np.random.default_rng(seed), n_frames, size=size)


def two_subject_panels() -> dict[str, list[np.ndarray]]:
    """Each subject through one expression, and again on a new background after the cut."""
    return {
        "left": subject_panel(LEFT, "happy", 1, 70),
        "right": subject_panel(RIGHT, "surprise", 2, 70),
        "left after": subject_panel(LEFT, "sad", 3, AFTER, NEW_BACKGROUND),
        "right after": subject_panel(RIGHT, "fear", 4, AFTER, NEW_BACKGROUND),
    }


def two_face_cut_clip(panels: dict | None = None) -> list[np.ndarray]:
    """LEFT | RIGHT for BEFORE frames, then a cut to RIGHT | LEFT on a new background."""
    panels = panels or two_subject_panels()
    before = [np.hstack(pair) for pair in zip(panels["left"][:BEFORE], panels["right"])]
    after = [np.hstack(pair) for pair in zip(panels["right after"], panels["left after"])]
    return before + after
