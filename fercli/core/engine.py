"""The resumable stage engine: skip what is up to date, resume per item, shard, record.

A stage declares its upstream stages and config sections, lists its items (each with a
fingerprint of its inputs), processes one item at a time (pure work, returning files and a
small info dict) and finalizes stage-level outputs once every item has a record.

Up-to-date rule (DVC-like, cheap checks first): the manifest exists, the stage's own
parameter hash is unchanged, every upstream stage is up to date and its output hash equals
the one this manifest consumed. Per item, a record is reused when its key (parameters +
the item's input fingerprint) is unchanged, so a killed run restarts at the first
unfinished item and a repaired item is redone alone.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import multiprocessing
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .. import __version__
from .config import Config, params_hash
from .errors import (
    ArtifactError,
    ConfigError,
    DiskFullError,
    FerError,
    InputError,
    ItemError,
    ItemsFailedError,
    LockError,
    MissingUpstreamError,
    access_error,
)
from .verify import check_stage_outputs
from .workspace import SCHEMA_VERSION, StageDir, check_item_id, disk_full, file_entry

RecordStatus = Literal["done", "failed"]  # an item's record: finished, or failed with a reason


def done_records(records: list[dict | None]) -> list[dict]:
    """The records of the items that finished (failed and missing ones left out)."""
    return [r for r in records if r and r["status"] == "done"]


@dataclass
class Item:
    """One unit of per-item work: a video, a sequence, a fold."""

    id: str
    fingerprint: Any  # JSON-able description of the inputs; changes -> redo the item
    payload: dict = field(default_factory=dict)


@dataclass
class ItemOutput:
    files: list[Path] = field(default_factory=list)  # artifacts written (already in place)
    info: dict = field(default_factory=dict)  # small deterministic results


@dataclass
class Context:
    """What a stage needs to do its work; picklable so worker processes get it too."""

    config: Config
    stage: StageDir
    params: dict
    upstream: dict[str, StageDir]
    upstream_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def workdir(self) -> Path:
        return self.stage.workdir

    def upstream_items(self, name: str) -> dict[str, dict]:
        """Done items of an upstream stage: id -> {outputs, info} from its manifest."""
        manifest = self.upstream[name].read_manifest() or {"items": {}}
        return {i: rec for i, rec in manifest["items"].items() if rec["status"] == "done"}

    def upstream_item_list(self, name: str, **payload) -> list[Item]:
        """One item per done upstream item; its fingerprint is that item's record, so an
        item is redone exactly when its upstream output changed."""
        return [Item(i, params_hash(rec), {**rec["info"], **payload})
                for i, rec in self.upstream_items(name).items()]


class Stage:
    """Base class of a pipeline stage (one module per stage under fercli/stages/)."""

    name: ClassVar[str]
    help: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()
    sections: ClassVar[tuple[str, ...]] = ()  # config sections that are its parameters
    shardable: ClassVar[bool] = True
    cpu_parallel: ClassVar[bool] = False  # OpenCV work: one process per core by default

    def params(self, config: Config) -> dict:
        return {section: config[section] for section in self.sections}

    def upstreams(self, config: Config) -> tuple[str, ...]:
        """Stages whose outputs this one reads (may depend on the config)."""
        return self.upstream

    def item_params(self, params: dict) -> dict:
        """The parameters that change per-item results (default: all of them)."""
        return params

    def source_fingerprint(self, config: Config) -> str | None:
        """Identity of inputs from outside the workdir (the dataset); None if it has none."""
        return None

    def list_items(self, ctx: Context) -> list[Item]:
        raise NotImplementedError

    def process_item(self, ctx: Context, item: Item) -> ItemOutput:
        raise NotImplementedError

    def finalize(self, ctx: Context, records: list[dict], console: Console) -> list[Path]:
        """Write stage-level outputs (tables, plots) from all item records."""
        return []


# --------------------------------------------------------------------------- status
@dataclass
class StageState:
    name: str
    status: str  # "up to date" | "stale" | "incomplete" | "not run"
    reason: str = ""
    n_items: int = 0
    n_done: int = 0
    n_failed: int = 0
    output_hash: str | None = None


def _param_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _param_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} {old!r} -> {new!r}"]


def stage_states(config: Config, registry: dict[str, Stage]) -> dict[str, StageState]:
    """Status of every stage, in pipeline order; staleness flows downstream."""
    states: dict[str, StageState] = {}
    for name, stage in registry.items():
        states[name] = _state_of(stage, config, states)
    return states


def _state_of(stage: Stage, config: Config, states: dict[str, StageState]) -> StageState:
    sdir = StageDir(config.workdir, stage.name)
    manifest = sdir.read_manifest()
    if manifest is None:
        n = len(sdir.record_ids())
        if n:
            return StageState(stage.name, "incomplete",
                              f"{n} item records, no manifest (killed or other shards running)",
                              n_done=n)
        return StageState(stage.name, "not run")
    items = manifest.get("items", {})
    state = StageState(stage.name, "up to date", n_items=len(items),
                       n_done=sum(r.get("status") == "done" for r in items.values()),
                       n_failed=sum(r.get("status") == "failed" for r in items.values()),
                       output_hash=manifest.get("output_hash"))
    reasons = []
    diff = _param_diff(manifest.get("params"), stage.params(config))
    if diff:
        reasons.append("params changed: " + "; ".join(diff))
    try:
        sources = stage.source_fingerprint(config)
    except FerError as exc:
        sources = f"unreadable: {exc}"
    if sources != manifest.get("sources"):
        reasons.append("source files changed" if not str(sources).startswith("unreadable")
                       else str(sources))
    for up in stage.upstreams(config):
        up_state = states.get(up)
        if up_state is None or up_state.status != "up to date":
            reasons.append(f"upstream `{up}` is {up_state.status if up_state else 'unknown'}")
        elif manifest.get("upstream", {}).get(up) != up_state.output_hash:
            reasons.append(f"upstream `{up}` changed")
    retry = sum(bool(r.get("retry")) for r in items.values())
    if retry:
        reasons.append(f"{retry} items failed with unexpected errors and will be retried")
    if reasons:
        state.status, state.reason = "stale", "; ".join(reasons)
    return state


# --------------------------------------------------------------------------- running
@dataclass
class StageResult:
    name: str
    skipped: bool
    n_items: int = 0
    n_processed: int = 0
    n_reused: int = 0
    n_failed: int = 0
    complete: bool = True
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected K/N, e.g. --shard 1/4") from None
    if not 1 <= k <= n:
        raise ConfigError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


def _require_upstream(stage: Stage, config: Config,
                      states: dict[str, StageState]) -> dict[str, str]:
    """Output hashes of the upstream stages; each must be up to date."""
    hashes = {}
    for up in stage.upstreams(config):
        st = states[up]
        if st.status != "up to date":
            why = f" ({st.reason})" if st.reason else ""
            raise MissingUpstreamError(f"stage `{up}` is {st.status}{why}",
                                       hint=f"Run `fer {up}` first")
        hashes[up] = st.output_hash
    return hashes


def context_for(stage: Stage, config: Config, registry: dict[str, Stage],
                states: dict[str, StageState] | None = None) -> Context:
    """The context a stage runs in, after checking that its upstream stages are done."""
    hashes = _require_upstream(stage, config, states or stage_states(config, registry))
    return Context(config=config, stage=StageDir(config.workdir, stage.name),
                   params=stage.params(config),
                   upstream={up: StageDir(config.workdir, up) for up in hashes},
                   upstream_hashes=hashes)


def _run_one(stage: Stage, ctx: Context, item: Item) -> tuple[RecordStatus, dict]:
    """Worker entry: process one item; expected failures become a failed record."""
    started = time.perf_counter()
    try:
        output = stage.process_item(ctx, item)
    except (ConfigError, MissingUpstreamError, LockError, DiskFullError):
        raise  # not about this item: stop the stage with the one-line error
    except ItemError as exc:
        return "failed", {"reason": str(exc), "seconds": time.perf_counter() - started}
    except FerError as exc:
        return "failed", {"reason": str(exc), "retry": True,
                          "seconds": time.perf_counter() - started}
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # every later item would fail the same way
            raise disk_full(exc.filename or f"{ctx.stage.root} (item {item.id})") from exc
        # Permission and the like: this item fails with one clear line; retried next run.
        return "failed", {"reason": str(access_error(exc)), "retry": True,
                          "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the others
        first = (str(exc).strip().splitlines() or [""])[0]  # TF errors carry a traceback
        return "failed", {"reason": f"unexpected {type(exc).__name__}: {first}", "retry": True,
                          "traceback": traceback.format_exc(limit=5),
                          "seconds": time.perf_counter() - started}
    return "done", {"outputs": [file_entry(p, ctx.workdir) for p in output.files],
                    "info": output.info, "seconds": time.perf_counter() - started}


def run_stage(stage: Stage, config: Config, registry: dict[str, Stage], *,
              force: bool = False, shard: tuple[int, int] | None = None, workers: int = 1,
              only: list[str] | None = None, console: Console | None = None) -> StageResult:
    """Run one stage: skip if up to date, else process the items without a valid record.

    ``shard`` (K, N) or ``only`` (item ids, e.g. one CV fold) restrict this process to a
    share of the items; the manifest is written by whichever process completes the set.
    """
    console = console or Console(stderr=True)
    if shard and not stage.shardable:
        raise ConfigError(f"`fer {stage.name}` cannot be sharded; run it without --shard")
    if force:  # --force is the remedy an unreadable manifest suggests: it must get past it
        _drop_unreadable_manifest(StageDir(config.workdir, stage.name))
    states = stage_states(config, registry)
    upstream_hashes = _require_upstream(stage, config, states)
    if states[stage.name].status == "up to date" and not force:
        st = states[stage.name]
        extra = f", {st.n_failed} failed" if st.n_failed else ""
        console.print(f"[green]{stage.name}[/]: up to date ({st.n_items} items{extra}); "
                      "nothing to do (use --force to redo)")
        return StageResult(stage.name, skipped=True, n_items=st.n_items, n_failed=st.n_failed)

    check_stage_outputs(config.workdir, list(upstream_hashes))
    started = time.perf_counter()
    ctx = context_for(stage, config, registry, states)
    sdir, params = ctx.stage, ctx.params
    phash = params_hash(params)
    with sdir.lock(shard, only):
        sources = stage.source_fingerprint(config)
        if shard is None and only is None:
            sdir.remove_temp_files()
        if (shard is None and only is None) or force:
            sdir.remove_manifest()
        items = stage.list_items(ctx)
        seen: set[str] = set()
        for item in items:
            check_item_id(item.id, item.payload.get("path"))
            if item.id in seen:
                raise InputError(f"two items share the id {item.id!r}",
                                 path=item.payload.get("path"),
                                 hint="Rename one of them; ids come from file names")
            seen.add(item.id)
        mine = items if shard is None else items[shard[0] - 1::shard[1]]
        if only is not None:
            unknown = sorted(set(only) - {item.id for item in items})
            if unknown:
                raise ConfigError(f"no item {', '.join(unknown)} in stage `{stage.name}`; "
                                  f"items: {', '.join(i.id for i in items[:12])}")
            mine = [item for item in mine if item.id in only]
        item_phash = params_hash(stage.item_params(params))
        keys = {item.id: params_hash({"params": item_phash, "input": item.fingerprint})
                for item in items}

        def current(item: Item) -> dict | None:
            record = sdir.read_record(item.id)
            return record if record and record.get("key") == keys[item.id] else None

        def reusable(item: Item) -> bool:
            record = current(item)
            return record is not None and not record.get("retry")

        todo = [item for item in mine if force or not reusable(item)]
        result = StageResult(stage.name, skipped=False, n_items=len(items),
                             n_reused=len(mine) - len(todo))
        if result.n_reused:
            console.print(f"{stage.name}: {result.n_reused} items already done, "
                          f"{len(todo)} to do")
        for item, status, data in _process(stage, ctx, todo, workers, console):
            record = {"id": item.id, "key": keys[item.id], "status": status, **data}
            sdir.write_record(record)
            result.n_processed += 1
            if status == "failed":
                console.print(f"[red]failed[/] {item.id}: {escape(data['reason'])}")

        records = [current(item) for item in items]
        missing = [item.id for item, rec in zip(items, records) if rec is None]
        if missing:
            result.complete = False
            console.print(f"{stage.name}: this shard is done; {len(missing)} of "
                          f"{len(items)} items wait for other shards (or a re-run)")
        else:
            _finish(stage, ctx, records, phash, upstream_hashes, sources, console)
        result.failures = [(r["id"], r["reason"]) for r in records
                           if r and r["status"] == "failed"]
        result.n_failed = len(result.failures)
    result.seconds = time.perf_counter() - started
    return result


def _drop_unreadable_manifest(sdir: StageDir) -> None:
    """Delete a manifest that is not valid JSON: it is rebuilt from the item records."""
    try:
        sdir.read_manifest()
    except ArtifactError:
        sdir.remove_manifest()


# Seconds the running items get to finish after the first Ctrl-C / SIGTERM / SIGHUP, so the
# process exits well within 2 s (a batch scheduler's SIGKILL follows its SIGTERM).
STOP_GRACE_SECONDS = 1.0
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class StopRequests:
    """While active (main thread only), a first stop signal sets ``signum`` (the loop then
    drains what finished and stops) when ``graceful``, else raises KeyboardInterrupt; a
    second one always raises at once."""

    def __init__(self, graceful: bool):
        self.graceful = graceful
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.graceful and self.signum is None:
            self.signum = signum
            return
        raise KeyboardInterrupt

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _process(stage: Stage, ctx: Context, todo: list[Item], workers: int, console: Console):
    """Yield (item, status, data) as items finish, with a progress bar.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP) ends with KeyboardInterrupt after every item
    that finished was yielded (so its record is written): in-process, the running item is
    abandoned (its temporary files go with it); with workers, no new item starts, running
    ones get STOP_GRACE_SECONDS, then the workers are killed and their temporary files
    removed.
    """
    if not todo:
        return
    columns = (TextColumn(f"[bold]{stage.name}[/]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[current]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(stage.name, total=len(todo), current="")

        def finished(item: Item, status: str, data: dict):
            progress.update(task, current=item.id)
            progress.advance(task)
            return item, status, data

        if workers <= 1 or len(todo) == 1:
            try:
                with StopRequests(graceful=False):
                    for item in todo:
                        progress.update(task, current=item.id)
                        yield finished(item, *_run_one(stage, ctx, item))
            except KeyboardInterrupt:  # a stop may land between a temp file and its cleanup
                ctx.stage.remove_temp_files({os.getpid()})
                raise
            return
        yield from _process_in_workers(stage, ctx, todo, workers, finished)


def _process_in_workers(stage: Stage, ctx: Context, todo: list[Item], workers: int,
                        finished: Callable):
    for (_, _, item), result in run_in_workers(
            _run_one, [(stage, ctx, item) for item in todo], workers,
            on_abandon=lambda pids: ctx.stage.remove_temp_files(pids | {os.getpid()})):
        yield finished(item, *result)


def run_in_workers(function: Callable, jobs: list[tuple], workers: int,
                   on_abandon: Callable[[set[int]], None] | None = None):
    """Yield (job, ``function(*job)``) as jobs finish in ``workers`` spawned processes.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP) lets no new job start and gives running ones
    STOP_GRACE_SECONDS; the finished ones are yielded, then the workers are killed,
    ``on_abandon`` gets their pids (to remove their temporary files) and KeyboardInterrupt
    is raised. An error in a job ends the pool the same way and is raised.
    """
    _start_resource_tracker_deaf_to_hangup()
    mp = multiprocessing.get_context("spawn")  # no fork of a process holding TF/cv2 state
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp,
                                  initializer=_worker_init, initargs=(os.getpid(),))
    clean_exit = False
    try:
        with StopRequests(graceful=True) as stop:
            # Workers start while submitting: blocked signals stay blocked in them (the mask
            # is inherited) until _worker_init ignores them, so a Ctrl-C that reaches the
            # process group while a worker is still importing cannot kill it; here they are
            # delivered once unblocked.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                futures = {pool.submit(function, *job): job for job in jobs}
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            pending = set(futures)
            while pending and stop.signum is None:
                done, pending = cf.wait(pending, timeout=0.2,
                                        return_when=cf.FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()
            if stop.signum is not None:
                _quiet_cancelled_results()
                for future in pending:
                    future.cancel()
                done, _ = cf.wait(pending, timeout=STOP_GRACE_SECONDS)
                for future in done:
                    if not future.cancelled() and future.exception() is None:
                        yield futures[future], future.result()
                raise KeyboardInterrupt
        clean_exit = True
    finally:
        if clean_exit:
            pool.shutdown(wait=True)
        else:  # stopped, or an error ends the pool: abandon the running jobs at once
            processes = dict(getattr(pool, "_processes", None) or {})  # pid -> Process
            # The pool's manager thread closes a wake-up pipe that CPython's exit hook may
            # write to at the same moment (EBADF, printed as a traceback at exit; seen after
            # SIGTERM): it is let finish first, which it does at once with the workers dead.
            # Taken before shutdown(), which drops the pool's reference to it.
            manager = getattr(pool, "_executor_manager_thread", None)
            for process in processes.values():
                with contextlib.suppress(Exception):
                    process.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            if manager is not None:
                manager.join(timeout=STOP_GRACE_SECONDS)
            if on_abandon is not None:
                on_abandon(set(processes))


def _quiet_cancelled_results() -> None:
    """CPython's pool manager thread may still set the result of a future cancelled by a
    stop (a race in concurrent.futures), and its InvalidStateError would print a thread
    traceback; that one error is dropped, every other thread error still prints."""
    previous = threading.excepthook

    def hook(args) -> None:
        if not isinstance(args.exc_value, cf.InvalidStateError):
            previous(args)

    threading.excepthook = hook


def _start_resource_tracker_deaf_to_hangup() -> None:
    """multiprocessing's helper process ignores SIGINT and SIGTERM but dies of the SIGHUP a
    closed terminal sends the group, then warns; started with SIGHUP ignored (kept across
    exec) it outlives the hang-up until this process ends."""
    from multiprocessing import resource_tracker

    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _worker_init(parent: int) -> None:
    """Worker initializer: stop signals are the parent's to handle (it drains, then kills
    the workers); a worker whose parent was killed (SIGKILL) exits too, before the re-run
    starts on Linux (PR_SET_PDEATHSIG), else within a second: a worker that lives on would
    write the clip the re-run is writing."""
    import sys

    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(AttributeError, OSError):  # the watcher below still works
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _finish(stage: Stage, ctx: Context, records: list[dict], phash: str,
            upstream_hashes: dict[str, str], sources: str | None, console: Console) -> None:
    """All items have records: write stage outputs, then the manifest (last)."""
    outputs = [file_entry(p, ctx.workdir) for p in stage.finalize(ctx, records, console)]
    items = {r["id"]: {k: r[k] for k in ("status", "reason", "retry", "outputs", "info")
                       if k in r} for r in records}
    content = {"params": phash, "items": {i: {k: v for k, v in rec.items() if k != "reason"}
                                          for i, rec in items.items()},
               "outputs": [entry["sha256"] for entry in outputs]}
    manifest = {
        "schema": SCHEMA_VERSION,
        "stage": stage.name,
        "fercli_version": __version__,
        "params": ctx.params,
        "params_hash": phash,
        "upstream": upstream_hashes,
        "sources": sources,
        "output_hash": params_hash(content),
        "outputs": outputs,
        "items": items,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": os.uname().nodename,
    }
    ctx.stage.write_manifest(manifest)


def summary_table(result: StageResult) -> Table:
    table = Table(title=f"{result.name}: summary", show_lines=False)
    for col in ("items", "processed now", "reused", "failed", "complete", "time"):
        table.add_column(col, justify="right")
    table.add_row(str(result.n_items), str(result.n_processed), str(result.n_reused),
                  str(result.n_failed), "yes" if result.complete else "no",
                  f"{result.seconds:.1f} s")
    return table


def raise_if_failed(result: StageResult) -> None:
    if result.n_failed and not result.skipped:
        first_id, first_reason = result.failures[0]
        others = ("no item succeeded: fix the cause above before going on"
                  if result.n_failed == result.n_items else "the other items are complete")
        raise ItemsFailedError(f"{result.n_failed} of {result.n_items} items failed "
                               f"(first: {first_id}: {first_reason})",
                               hint=f"See `fer status` and work/{result.name}/records; "
                                    f"{others}")
