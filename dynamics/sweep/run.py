"""Run a sweep: decide what each point's run needs, run those on an executor, and report how it went.

Resuming is the normal case. Each point's run directory is looked at first (:func:`plan_sweep`):

* ``finished``: kept, not rerun. If its ``config.json`` holds other settings than the sweep file now gives
  that point, the sweep refuses before anything runs (delete that run, or choose another sweep folder).
* ``running`` with a live writer (another process holds its ``.writer.lock``): left alone, reported.
* ``killed`` (marked running, no live writer: the process died, e.g. by SIGKILL) or ``failed`` (an error, a
  diverged loss, Ctrl-C): *resumed* from its newest checkpoint when it has one and its settings are the
  point's (collect's resume: cheap, and exact), else, or should that resume fail, started again from
  scratch (overwriting it). A run is checkpointed before its first step, so a killed run always
  has one.
* ``pending`` (no ``meta.json``): started. Leftovers of a run killed before its ``meta.json`` was written are
  removed first.

A run's state lives in its ``meta.json`` only, so a sweep killed at any moment loses nothing that finished,
and running it again continues it. One sweep process at a time may run a sweep folder (it holds the
folder's ``.writer.lock``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dynamics.checkpoint import checkpoint_paths
from dynamics.config import make_config
from dynamics.errors import ConfigError, StoreError, parameters_as
from dynamics.runlock import LOCK_NAME, RunLock
from dynamics.store import DATA_NAME, read_json
from dynamics.sweep.command import fresh_argv, resume_argv
from dynamics.sweep.executors import EXECUTORS, Done, LocalPool, SubmititPool, Task
from dynamics.sweep.manifest import run_state, write_manifest
from dynamics.sweep.spec import EXECUTION_ONLY, Point, Sweep

LEFTOVERS = frozenset({LOCK_NAME, "config.json", DATA_NAME, "checkpoints", "features"})
"""What a run directory may hold before its ``meta.json`` exists (removed before the run starts again)."""
LOGS = "logs"
SUBMITIT = ".submitit"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Step:
    """What a sweep does with one point: ``keep`` (finished), ``busy`` (another process writes it), ``resume``
    or ``start``; ``attempts`` are the collect arguments it runs, in order, until one succeeds."""

    point: Point
    run_dir: Path
    state: str
    action: str
    attempts: tuple[tuple[str, ...], ...] = ()
    threads: int | None = None


@dataclass
class SweepReport:
    """How a sweep went: the points finished (``ran`` of them in this call), failed (error and log) and busy."""

    sweep: Sweep
    sweep_dir: Path
    manifest: Path | None
    finished: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Whether every point's run is finished."""
        return len(self.finished) == len(self.sweep.points)


def available_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Threads per run so that ``workers`` runs share this machine's cores without oversubscribing them."""
    return max(1, available_cores() // workers)


def run_threads(sweep: Sweep, workers: int, threads: int | None, local: bool) -> int | None:
    """The thread count of each run: ``threads``, else the sweep file's [base] threads, else this machine's
    cores // ``workers`` (``local``) or the [submitit] table's ``cpus_per_task`` (Slurm; None: torch's default)."""
    if threads is not None or sweep.threads is not None:
        return threads if threads is not None else sweep.threads
    if local:
        return default_threads(workers)
    return sweep.submitit.get("cpus_per_task", sweep.submitit.get("slurm_cpus_per_task"))


def settings_difference(run_dir: Path, point: Point) -> str | None:
    """How the settings recorded in ``run_dir/config.json`` differ from ``point``'s (None: the same, apart from
    execution-only keys such as threads)."""
    try:
        recorded = make_config(read_json(run_dir / "config.json")).to_dict()
    except (StoreError, ConfigError, TypeError) as err:
        return f"its config.json is unusable ({err})"
    wanted = point.config.to_dict()
    for key, value in wanted.items():
        if key not in EXECUTION_ONLY and recorded[key] != value:
            return f"{key} is {recorded[key]!r} there, {value!r} in the sweep file"
    return None


def plan_sweep(sweep: Sweep, sweep_dir: Path, threads: int | None = None) -> list[Step]:
    """What to do with each point (see the module's docstring); reads, never writes. ``threads``: the thread
    count of runs started from scratch (None: each point's own setting)."""
    steps = []
    for point in sweep.points:
        run_dir = Path(sweep_dir) / point.name
        state = run_state(run_dir)
        if state == "finished":
            difference = settings_difference(run_dir, point)
            if difference is not None:
                raise ConfigError(
                    f"{run_dir} holds a finished run of point {point.name} with other settings than {sweep.file} "
                    f"gives it ({difference}); delete that run or choose another sweep_dir",
                    key="sweep_dir",
                )
            steps.append(Step(point, run_dir, state, "keep"))
            continue
        if state == "running":
            steps.append(Step(point, run_dir, state, "busy"))
            continue
        if state == "pending" and run_dir.is_dir() and any(e.name not in LEFTOVERS for e in run_dir.iterdir()):
            raise ConfigError(
                f"{run_dir} exists and holds no run (no meta.json); move it away or choose another sweep_dir",
                key="sweep_dir",
            )
        config = point.config if threads is None else dataclasses.replace(point.config, threads=threads)
        fresh = tuple(fresh_argv(config, point.settings, run_dir.resolve()))
        resumable = state != "pending" and checkpoint_paths(run_dir) and settings_difference(run_dir, point) is None
        if resumable:
            attempts = (tuple(resume_argv(run_dir.resolve())), fresh)
            steps.append(Step(point, run_dir, state, "resume", attempts, config.threads))
        else:
            steps.append(Step(point, run_dir, state, "start", (fresh,), config.threads))
    return steps


def _clear_leftovers(step: Step) -> None:
    """Remove what a run killed before its meta.json left behind (only names a run writes; see LEFTOVERS)."""
    if step.state == "pending" and step.run_dir.is_dir() and RunLock.holder(step.run_dir) is None:
        shutil.rmtree(step.run_dir)


def _outcome(done: Done) -> str | None:
    """None if the task's run finished, else why not."""
    if run_state(Path(done.task.run_dir)) == "finished":
        return None
    if done.error:
        return done.error
    try:
        error = read_json(Path(done.task.run_dir) / "meta.json").get("error")
    except StoreError:
        error = None
    return error or f"collect ended with exit status {done.code}"


def run_sweep(
    sweep: Sweep,
    sweep_dir: str | os.PathLike[str],
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int | None = None,
    cluster: str | None = None,
    progress: bool = True,
) -> SweepReport:
    """Run every point of ``sweep`` that is not finished in ``sweep_dir`` (one run directory per point) and
    write the manifest ``sweep_dir/sweep.json``.

    ``executor`` is ``local`` (``workers`` collect processes at a time) or ``submitit`` (``cluster``: ``slurm``,
    ``local``, or None for Slurm where available). ``threads`` is each run's torch thread count; None takes
    the sweep file's ``threads`` in [base], else this machine's cores // ``workers`` (Slurm: the
    ``cpus_per_task`` of the [submitit] table, else torch's default). Raises ConfigError before anything
    runs when a setting or the folder is unusable; KeyboardInterrupt ends the running runs (marked failed,
    resumable) and propagates.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}", key="executor")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}; fix it", key="workers")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 or None, got {threads}; fix it", key="threads")
    sweep_dir = Path(sweep_dir)
    created = not sweep_dir.exists()
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create sweep_dir={sweep_dir} ({err.strerror}); choose a writable sweep_dir", key="sweep_dir"
        ) from None
    with parameters_as({"run_dir": "sweep_dir"}):
        lock = RunLock(sweep_dir)
    try:
        pool: LocalPool | SubmititPool
        if executor == "local":
            pool = LocalPool(workers)
            local = True
        else:
            pool = SubmititPool(sweep_dir / SUBMITIT, workers, cluster, sweep.submitit, f"{sweep.file} [submitit]")
            local = pool.cluster != "slurm"
        threads = run_threads(sweep, workers, threads, local)
        try:
            steps = plan_sweep(sweep, sweep_dir, threads)
        except ConfigError:
            if created:
                lock.release()
                shutil.rmtree(sweep_dir, ignore_errors=True)
            raise
        manifest = write_manifest(sweep, sweep_dir)
        return _execute(sweep, sweep_dir, manifest, steps, pool, progress)
    finally:
        lock.release()


def _execute(
    sweep: Sweep, sweep_dir: Path, manifest: Path, steps: list[Step], pool: Any, progress: bool
) -> SweepReport:
    report = SweepReport(sweep, sweep_dir, manifest)
    report.finished = [step.point.name for step in steps if step.action == "keep"]
    report.busy = [step.point.name for step in steps if step.action == "busy"]
    todo = [step for step in steps if step.action in ("resume", "start")]
    for step in todo:
        _clear_leftovers(step)
    logs = sweep_dir / LOGS
    tasks = [
        Task(
            step.point.name,
            str(step.run_dir),
            step.attempts,
            str(logs / f"{step.point.name}.log"),
            step.threads,
        )
        for step in todo
    ]
    start = time.monotonic()
    bar = tqdm(
        total=len(steps),
        initial=len(report.finished),
        desc=f"sweep {sweep.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar:
        try:
            pool.submit(tasks)
            remaining = len(tasks)
            while remaining:
                for done in pool.poll():
                    remaining -= 1
                    error = _outcome(done)
                    if error is None:
                        report.finished.append(done.task.name)
                        report.ran.append(done.task.name)
                    else:
                        report.failed[done.task.name] = (error, done.log)
                        if progress:
                            bar.write(f"{done.task.name}: failed ({error})")
                    bar.update()
                bar.set_postfix(running=pool.running, failed=len(report.failed))
                if remaining:
                    time.sleep(POLL_SECONDS)
        except BaseException:
            pool.stop()
            raise
    report.seconds = time.monotonic() - start
    return report
