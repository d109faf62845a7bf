"""Where a sweep's runs execute: a local pool of worker processes, or submitit (Slurm job arrays, or local).

Both take :class:`Task` objects and report each one :class:`Done` when its run has ended; both run the same
collect command lines (:mod:`dynamics.sweep.command`). A task is a list of attempts (a resume, then a fresh
start should the resume fail): the next one runs only if the previous one exited with a non-zero status.

* :class:`LocalPool` keeps up to ``workers`` ``python -m dynamics.collect`` subprocesses running, each
  writing its output to the task's log file, with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to the run's
  thread count (collect applies it with ``torch.set_num_threads`` too). The children share the sweep's
  process group, so a signal to the group (Ctrl-C in a terminal, ``kill -9 -PGID``) ends them as well; a
  run they leave unfinished is continued by the next sweep.
* :class:`SubmititPool` submits :func:`run_task` through ``submitit.AutoExecutor``: on Slurm every task
  at once as one job array (``slurm_array_parallelism = workers``), elsewhere (``cluster="local"``: one
  process per job, as in tests) at most ``workers`` jobs at a time, through the same ``map_array`` call.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dynamics.errors import ConfigError
from dynamics.sweep.command import MODULE, shown

EXECUTORS = ("local", "submitit")
CLUSTERS = ("slurm", "local")
DEFAULT_TIMEOUT_MIN = 24 * 60
"""submitit's time limit of a job unless the sweep file's [submitit] table sets ``timeout_min``."""
ERROR_PREFIX = "error: "


@dataclass(frozen=True)
class Task:
    """One point's run: the collect arguments of each attempt, in order, its log file and thread count."""

    name: str
    run_dir: str
    attempts: tuple[tuple[str, ...], ...]
    log: str
    threads: int | None = None


@dataclass(frozen=True)
class Done:
    """A task that ended: the exit status of its last attempt, the last ``error:`` line that attempt printed
    and the file holding its output."""

    task: Task
    code: int
    error: str | None
    log: str


def _error_line(text: str) -> str | None:
    lines = [line for line in text.splitlines() if line.startswith(ERROR_PREFIX)]
    return lines[-1].removeprefix(ERROR_PREFIX).strip() if lines else None


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``stream`` and keeps what was written."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.text = io.StringIO()

    def write(self, text: str) -> int:
        self.text.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run_task(task: Task) -> tuple[int, str | None]:
    """Run ``task``'s attempts in this process with :func:`dynamics.collect.main` (submitit's job function).

    Returns the exit status of the last attempt and its last ``error:`` line.
    """
    from dynamics.collect import main

    code, error = 1, None
    for argv in task.attempts:
        print(f"$ {shown(argv)}", file=sys.stderr, flush=True)
        tee = _Tee(sys.stderr)
        with contextlib.redirect_stderr(tee):
            code = main(list(argv))
        error = _error_line(tee.text.getvalue())
        if code == 0:
            return 0, None
    return code, error


class LocalPool:
    """Up to ``workers`` runs at once, each a ``python -m dynamics.collect`` subprocess of this process."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}; fix it", key="workers")
        self.workers = workers
        self._queue: deque[Task] = deque()
        self._live: dict[subprocess.Popen[bytes], tuple[Task, int, int]] = {}

    @property
    def running(self) -> int:
        """Runs in progress."""
        return len(self._live)

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue ``tasks``; they start as workers become free."""
        self._queue.extend(tasks)
        self._fill()

    def _start(self, task: Task, attempt: int) -> None:
        argv = task.attempts[attempt]
        env = dict(os.environ)
        if task.threads is not None:
            env.update(OMP_NUM_THREADS=str(task.threads), MKL_NUM_THREADS=str(task.threads))
        Path(task.log).parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "ab") as log:
            offset = log.tell()
            log.write(f"$ {shown(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                [sys.executable, *MODULE, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._live[process] = (task, attempt, offset)

    def _fill(self) -> None:
        while self._queue and len(self._live) < self.workers:
            self._start(self._queue.popleft(), 0)

    def poll(self) -> list[Done]:
        """The tasks that ended since the last call; starts the next attempts and queued tasks."""
        done = []
        for process, (task, attempt, offset) in list(self._live.items()):
            code = process.poll()
            if code is None:
                continue
            del self._live[process]
            if code != 0 and attempt + 1 < len(task.attempts):
                self._start(task, attempt + 1)
                continue
            with open(task.log, "rb") as log:
                log.seek(offset)
                error = _error_line(log.read().decode(errors="replace"))
            done.append(Done(task, code, error, task.log))
        self._fill()
        return done

    def stop(self, grace: float = 10.0) -> None:
        """Drop the queue and end the running runs. A Ctrl-C in a terminal reached them too: each gets a few
        seconds to mark its run failed (keeping its steps) and exit; then SIGINT, then SIGKILL after ``grace``."""
        self._queue.clear()
        self._wait(3.0)
        for process in self._live:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGINT)
        self._wait(grace)
        for process in self._live:
            process.kill()
            process.wait()
        self._live.clear()

    def _wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` in all for the running processes to end; forget those that did."""
        deadline = time.monotonic() + seconds
        for process in list(self._live):
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                continue
            del self._live[process]


class SubmititPool:
    """Runs through ``submitit.AutoExecutor(folder=folder, cluster=cluster)`` (cluster None: Slurm where there is
    one, else local), with the executor ``parameters`` of the sweep file's [submitit] table (``where`` names
    it in errors)."""

    def __init__(
        self, folder: Path, workers: int, cluster: str | None, parameters: Mapping[str, Any], where: str
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}; fix it", key="workers")
        if cluster is not None and cluster not in CLUSTERS:
            raise ConfigError(f"unknown cluster {cluster!r}; choose one of: {', '.join(CLUSTERS)}", key="cluster")
        try:
            import submitit
        except ImportError:
            raise ConfigError(
                "the submitit executor needs the submitit package; pip install 'dynamics[sweep]' (or submitit)",
                key="executor",
            ) from None
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
            self.executor.update_parameters(
                **{"timeout_min": DEFAULT_TIMEOUT_MIN, "slurm_array_parallelism": workers, **parameters}
            )
        except (NameError, ValueError, TypeError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{where}: submitit refuses its parameters ({first}); fix them", key="path") from None
        self.cluster: str = self.executor.cluster
        self.window = None if self.cluster == "slurm" else workers
        self._queue: deque[Task] = deque()
        self._jobs: list[tuple[Any, Task]] = []

    @property
    def running(self) -> int:
        """Jobs the scheduler reports running (queued Slurm jobs are not counted)."""
        return sum(job.state == "RUNNING" for job, _ in self._jobs)

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue ``tasks``: all of them as one job array on Slurm, else as workers become free."""
        self._queue.extend(tasks)
        self._fill()

    def _fill(self) -> None:
        free = len(self._queue) if self.window is None else self.window - len(self._jobs)
        batch: Sequence[Task] = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
        if batch:
            self._jobs.extend(zip(self.executor.map_array(run_task, batch), batch, strict=True))

    def poll(self) -> list[Done]:
        """The tasks whose jobs ended since the last call."""
        done = []
        for entry in list(self._jobs):
            job, task = entry
            if not job.done():
                continue
            self._jobs.remove(entry)
            try:
                code, error = job.result()
            except Exception as err:  # noqa: BLE001 - the job failed outside the run (killed, timed out, lost)
                lines = str(err).strip().splitlines()
                code, error = 1, f"submitit job {job.job_id} failed ({lines[-1] if lines else type(err).__name__})"
            done.append(Done(task, code, error, str(job.paths.stderr)))
        self._fill()
        return done

    def stop(self, grace: float = 10.0) -> None:
        """Drop the queue; cancel the jobs of a local cluster (Slurm jobs keep running: the next sweep finds them)."""
        self._queue.clear()
        if self.cluster != "slurm":
            for job, _ in self._jobs:
                job.cancel(check=False)
        self._jobs.clear()
