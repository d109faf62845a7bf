"""Export a run to TensorBoard event files and to a tidy CSV table, once or following a run while it is written.

    python -m dynamics.export RUN --tensorboard DIR [--csv FILE] [--follow] [--interval SECONDS]

**Tags.** Every numeric variable of the store whose first dimension is ``step`` or ``eval_step`` becomes scalars
at its step (``eval_step`` variables at the step they followed):

- one dimension (``loss``, ``lr``, ``epoch``, ``val_loss``, ...): the tag ``name``;
- two dimensions (``param``, ``layer``, ``proj``, ``split``, ... second): one tag per label of the second,
  ``name/<label>`` (``grad_norm/0.weight``, ``act_zero_frac/1``, ``traj_proj_total/3``; the index where that
  dimension has no labels);
- three or more (``traj_proj``: step x param x proj, k series per parameter tensor, hundreds of charts that say
  nothing one by one): skipped; ``analyses.trajectory`` reads them from the store.

Each full parameter snapshot (``snapshot(snap_step, flat)``, if the run has them) becomes the histogram
``params/all`` at its ``snap_step`` (-1: the initial parameters; non-finite entries left out). A NaN is a value
not measured at that step (probes on a cadence, a parameter without a gradient) and is not written; infinite
values are. Events carry the step only; their wall time is that of the export.

**Re-exports.** An export starts with TensorBoard's purge marker at step -1, so exporting a run again into the
same directory replaces what an earlier export wrote (TensorBoard discards the older events). Give each run a
directory of its own (``logs/<run name>``) and point ``tensorboard --logdir logs`` at their parent.

**CSV.** :func:`tidy_frame` gives the same scalars as a long table with the columns ``variable``, ``dim``
(``step`` or ``eval_step``), ``index`` (the step or eval_step), ``coordinate`` (the label of the second
dimension, empty for a one-dimensional variable) and ``value`` (float64; NaN rows left out). Read it back with
``pandas.read_csv(path, dtype={"coordinate": str}, keep_default_na=False)``.

**Following.** :func:`follow` reopens the run every ``interval`` seconds and exports only the rows of each
append dimension (``step``, ``eval_step``, ``snap_step``) not exported yet, until ``meta.json`` says the run
is no longer ``running`` (after a last export). If the store's committed length shrinks (a resume cut it), the
export starts over from the beginning. A run killed without closing (``kill -9``) stays ``running`` in
``meta.json``: stop following it with Ctrl-C.

The TensorBoard writer is ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard`` package
(``pip install 'dynamics[tensorboard]'``); it is imported only when TensorBoard files are written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dynamics.cli import RUN_FAILED, UsageParser, fail, flag_message, one_line_errors, os_error_message
from dynamics.errors import ConfigError, DynamicsError, StoreError
from dynamics.store import DATA_NAME, open_run, read_json

USAGE_ERROR = 2
INTERRUPTED = 130
SCALAR_DIMS = ("step", "eval_step")
"""Append dimensions whose variables are exported as scalars (and to the CSV)."""
SNAPSHOT_DIM = "snap_step"
SNAPSHOT_VAR = "snapshot"
HISTOGRAM_TAG = "params/all"
PURGE_STEP = -1
"""The lowest step an export writes (the initial snapshot): the purge marker of a new export is put there."""
BLOCK_ROWS = 4096
"""Rows of an append dimension read from the store at a time (bounds the memory of an export)."""
COLUMNS = ("variable", "dim", "index", "coordinate", "value")
EXTRA_HINT = "pip install 'dynamics[tensorboard]'"


class MissingExtraError(ConfigError, ImportError):
    """An optional dependency of the toolkit (an extra) is not installed; the message names the pip command."""


# ---- what is exported ----


@dataclass(frozen=True)
class Series:
    """A variable exported as scalars: its name, append dimension and the labels of its second dimension."""

    name: str
    dim: str
    labels: tuple[str, ...] | None = None
    """None for a one-dimensional variable; else one label per entry of the second dimension."""

    def tags(self) -> list[str]:
        return [self.name] if self.labels is None else [f"{self.name}/{label}" for label in self.labels]


def scalar_series(ds: xr.Dataset) -> list[Series]:
    """The scalar series of ``ds`` in export order: those along ``step``, then along ``eval_step``; within each, data
    variables, then coordinates such as ``epoch``, each by name (the store lists its arrays in no fixed order)."""
    series = []
    names = [*sorted(map(str, ds.data_vars)), *sorted(str(name) for name in ds.coords if name not in ds.dims)]
    for name in names:
        var = ds[name]
        if not var.dims or var.dims[0] not in SCALAR_DIMS or var.ndim > 2:
            continue
        if not (np.issubdtype(var.dtype, np.number) or np.issubdtype(var.dtype, np.bool_)):
            continue
        if var.ndim == 1:
            series.append(Series(name, var.dims[0]))
            continue
        other = var.dims[1]
        if other in ds.coords:
            labels = tuple(str(label) for label in np.asarray(ds[other].values))
        else:
            labels = tuple(str(j) for j in range(ds.sizes[other]))
        series.append(Series(name, var.dims[0], labels))
    return sorted(series, key=lambda one: SCALAR_DIMS.index(one.dim))  # stable: by name within a dimension


def _values(var: xr.DataArray) -> np.ndarray:
    """The rows of a one- or two-dimensional variable as a float64 matrix (rows x entries)."""
    values = np.asarray(var.values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def tidy_frame(ds: xr.Dataset) -> pd.DataFrame:
    """Every scalar series of ``ds`` as a long table: ``variable, dim, index, coordinate, value``.

    One row per variable, step (or eval_step) and label of the second dimension (``coordinate``, ``""`` for a
    one-dimensional variable), ordered as :func:`scalar_series`, then by index and coordinate; NaN values (not
    measured) are left out, snapshots and variables of three or more dimensions (``traj_proj``) are not included.
    """
    return _tidy(ds, scalar_series(ds))


def _tidy(ds: xr.Dataset, series: Sequence[Series]) -> pd.DataFrame:
    dtypes = dict(zip(COLUMNS, (object, object, np.int64, object, np.float64), strict=True))
    parts = [pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in dtypes.items()})]
    for one in series:
        index = np.asarray(ds[one.dim].values, dtype=np.int64)
        labels = np.asarray(one.labels if one.labels is not None else ("",), dtype=object)
        flat = _values(ds[one.name]).ravel()
        keep = ~np.isnan(flat)
        count = int(keep.sum())
        parts.append(
            pd.DataFrame(
                {
                    "variable": np.full(count, one.name, dtype=object),
                    "dim": np.full(count, one.dim, dtype=object),
                    "index": np.repeat(index, len(labels))[keep],
                    "coordinate": np.tile(labels, len(index))[keep],
                    "value": flat[keep],
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


# ---- one export round ----


@dataclass
class Round:
    """What one export round wrote: per append dimension, the rows and their first and last index value."""

    run_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    status: str = "unknown"
    restarted: bool = False
    """The store had fewer rows than already exported (a resume cut it): everything was exported again."""

    def line(self) -> str:
        """One line, e.g. ``exported steps 0-123 (2 evaluations, 4 snapshots) of runs/x``."""
        extras = []
        if self.rows.get("eval_step"):
            extras.append(_count(self.rows["eval_step"], "evaluation"))
        if self.rows.get(SNAPSHOT_DIM):
            extras.append(_count(self.rows[SNAPSHOT_DIM], "snapshot"))
        if not self.rows.get("step") and not extras:
            return f"nothing new in {self.run_dir} ({self.status})"
        what = f"steps {self.first['step']}-{self.last['step']}" if self.rows.get("step") else "no new steps"
        detail = f" ({', '.join(extras)})" if extras else ""
        again = " (the store was cut by a resume: exported again from the start)" if self.restarted else ""
        return f"exported {what}{detail} of {self.run_dir}{again}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary_writer(log_dir: Path) -> Any:
    """A ``SummaryWriter`` on ``log_dir`` whose purge marker replaces an earlier export there."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise MissingExtraError(
            f"writing TensorBoard files to log_dir needs the tensorboard package ({err}); {EXTRA_HINT}", key="log_dir"
        ) from None
    try:
        return SummaryWriter(log_dir=str(log_dir), purge_step=PURGE_STEP)
    except OSError as err:
        raise ConfigError(
            f"cannot write to log_dir={log_dir} ({err.strerror or err}); choose a writable log_dir", key="log_dir"
        ) from None


def _check_output(path: Path, key: str, directory: bool) -> None:
    """Refuse an output path of the wrong kind: a file where a directory goes, or the other way round."""
    if "\0" in str(path):
        raise ConfigError(f"{key} contains a NUL character, which no file name may hold; choose another {key}", key=key)
    if directory and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a directory; choose a directory for {key}", key=key)
    if not directory and path.is_dir():
        raise ConfigError(f"{key}={path} is a directory, not a file; choose a file name for {key}", key=key)
    if not directory and path.exists() and not path.is_file():  # a FIFO or device would block or swallow the table
        raise ConfigError(f"{key}={path} is not a regular file; choose a file name for {key}", key=key)


class Exporter:
    """Exports a run to TensorBoard (``log_dir``) and/or a CSV file (``csv_path``), a round at a time.

    Each :meth:`export_new` reopens the run and writes only the rows of each append dimension that earlier
    rounds have not written. Construction checks the run (StoreError) and the outputs (ConfigError naming
    ``log_dir`` or ``csv_path``) and opens the TensorBoard writer; :meth:`close` closes it.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        log_dir: str | os.PathLike[str] | None = None,
        *,
        csv_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if log_dir is None and csv_path is None:
            raise ConfigError(
                "nothing to export to: give log_dir (TensorBoard), csv_path (CSV) or both", key=("log_dir", "csv_path")
            )
        self.run_dir = Path(run_dir)
        if self.run_dir.name == DATA_NAME:
            self.run_dir = self.run_dir.parent
        open_run(self.run_dir)  # a missing, foreign or damaged-at-open run raises StoreError here
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.csv_path = None if csv_path is None else Path(csv_path)
        if self.log_dir is not None:
            _check_output(self.log_dir, "log_dir", directory=True)
        if self.csv_path is not None:
            _check_output(self.csv_path, "csv_path", directory=False)
            try:
                self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(
                    f"cannot create the folder of csv_path={self.csv_path} ({err.strerror}); choose a writable "
                    "csv_path",
                    key="csv_path",
                ) from None
        self.done = dict.fromkeys((*SCALAR_DIMS, SNAPSHOT_DIM), 0)
        """Rows of each append dimension exported so far."""
        self._csv_started = False
        self._writer: Any = None
        if self.log_dir is not None:
            self._writer = _summary_writer(self.log_dir)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def export_new(self, status: str | None = None) -> Round:
        """Reopen the run and export the rows not exported yet; ``status`` is the run's, for the report."""
        ds = open_run(self.run_dir)
        sizes = {dim: int(ds.sizes.get(dim, 0)) for dim in self.done}
        result = Round(self.run_dir, status=status or str(ds.attrs.get("status", "unknown")))
        if any(sizes[dim] < done for dim, done in self.done.items()):
            self._restart()
            result.restarted = True
        series = scalar_series(ds)
        for dim in SCALAR_DIMS:
            start, stop = self.done[dim], sizes[dim]
            of_dim = [s for s in series if s.dim == dim]
            for a in range(start, stop, BLOCK_ROWS):
                block = ds.isel({dim: slice(a, min(a + BLOCK_ROWS, stop))})
                self._write_scalars(block, dim, of_dim)
                if self.csv_path is not None and of_dim:
                    self._write_csv(_tidy(block, of_dim))
            self._note(result, ds, dim, start, stop)
        if SNAPSHOT_VAR in ds and ds[SNAPSHOT_VAR].dims[0] == SNAPSHOT_DIM:
            start, stop = self.done[SNAPSHOT_DIM], sizes[SNAPSHOT_DIM]
            if self._writer is not None:
                for i in range(start, stop):
                    self._write_histogram(ds[SNAPSHOT_VAR].isel({SNAPSHOT_DIM: i}), int(ds[SNAPSHOT_DIM].values[i]))
            self._note(result, ds, SNAPSHOT_DIM, start, stop)
        if self.csv_path is not None and not self._csv_started:
            self._write_csv(_tidy(ds, []))  # the header, for a run without rows yet
        if self._writer is not None:
            self._writer.flush()
        return result

    def _restart(self) -> None:
        """Export everything again: a new writer (whose purge marker drops the old events), the CSV rewritten."""
        self.done = dict.fromkeys(self.done, 0)
        self._csv_started = False
        if self._writer is not None:
            self._writer.close()
            self._writer = _summary_writer(self.log_dir)

    def _note(self, result: Round, ds: xr.Dataset, dim: str, start: int, stop: int) -> None:
        if stop > start:
            index = ds[dim].values
            result.rows[dim] = stop - start
            result.first[dim], result.last[dim] = int(index[start]), int(index[stop - 1])
        self.done[dim] = max(self.done[dim], stop)

    def _write_scalars(self, block: xr.Dataset, dim: str, series: Sequence[Series]) -> None:
        """One event per row of ``block`` holding every non-NaN value of the row (one summary, many tags)."""
        if self._writer is None or not series:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        tags = np.asarray([tag for s in series for tag in s.tags()], dtype=object)
        matrix = np.concatenate([_values(block[s.name]) for s in series], axis=1)
        file_writer = self._writer.file_writer
        for step, row in zip(np.asarray(block[dim].values, dtype=np.int64), matrix, strict=True):
            keep = ~np.isnan(row)
            if not keep.any():
                continue
            values = [
                Summary.Value(tag=tag, simple_value=value)
                for tag, value in zip(tags[keep].tolist(), row[keep].tolist(), strict=True)
            ]
            file_writer.add_summary(Summary(value=values), int(step))

    def _write_histogram(self, snapshot: xr.DataArray, step: int) -> None:
        values = np.asarray(snapshot.values)
        values = values[np.isfinite(values)]
        if values.size:
            self._writer.add_histogram(HISTOGRAM_TAG, values, global_step=step)

    def _write_csv(self, frame: pd.DataFrame) -> None:
        """Write ``frame`` to the CSV file: the first time with the header (replacing the file), then appended."""
        if frame.empty and self._csv_started:
            return
        frame.to_csv(self.csv_path, mode="a" if self._csv_started else "w", header=not self._csv_started, index=False)
        self._csv_started = True


# ---- the library entry points ----


def export_tensorboard(
    run_dir: str | os.PathLike[str],
    log_dir: str | os.PathLike[str] | None,
    *,
    csv_path: str | os.PathLike[str] | None = None,
) -> Round:
    """Export every committed row of the run in ``run_dir`` to TensorBoard files in ``log_dir`` (and, with
    ``csv_path``, to a tidy CSV table; ``log_dir=None`` writes the CSV only). Returns what was exported.

    Raises StoreError for a run that is missing, not a run or damaged, ConfigError naming ``log_dir`` or
    ``csv_path`` for an unusable output, and :class:`MissingExtraError` without the ``tensorboard`` package.
    """
    with Exporter(run_dir, log_dir, csv_path=csv_path) as exporter:
        return exporter.export_new()


def run_status(run_dir: str | os.PathLike[str]) -> str:
    """The ``status`` of the run's ``meta.json`` (``running``, ``finished``, ``failed``); StoreError if unreadable."""
    return str(read_json(Path(run_dir) / "meta.json").get("status", "unknown"))


def follow(
    run_dir: str | os.PathLike[str],
    log_dir: str | os.PathLike[str] | None = None,
    *,
    csv_path: str | os.PathLike[str] | None = None,
    interval: float = 5.0,
    report: Callable[[str], None] | None = None,
) -> list[Round]:
    """Follow a run while it is written: export what is there, then every ``interval`` seconds what is new.

    Returns the rounds once ``meta.json``'s status is no longer ``running``; the status is read before the store
    is reopened, so the last round holds every row of the finished run. ``report`` gets one line for each
    round that exported something and for the last one. On KeyboardInterrupt the TensorBoard writer is closed
    with everything exported so far flushed, and the interrupt propagates. Errors as :func:`export_tensorboard`,
    and ConfigError naming ``interval`` unless it is a positive number of seconds.
    """
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval < math.inf:
        raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}", key="interval")
    rounds = []
    with Exporter(run_dir, log_dir, csv_path=csv_path) as exporter:
        while True:
            status = run_status(exporter.run_dir)
            result = exporter.export_new(status)
            rounds.append(result)
            last = status != "running"
            if report is not None and (result.rows or last):
                report(result.line())
            if last:
                return rounds
            time.sleep(interval)


# ---- the command line ----

FLAGS = {"log_dir": "--tensorboard", "csv_path": "--csv", "interval": "--interval"}
"""The flag of each parameter of the library functions, for their ConfigErrors."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a usage error raises ConfigError (one line, exit status 2, from :func:`main`)."""
    parser = UsageParser(
        prog="python -m dynamics.export",
        description="Export a run to TensorBoard event files and/or a tidy CSV table, once or following the run.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="the run directory")
    parser.add_argument(
        "--tensorboard", type=Path, default=None, metavar="DIR", help="write TensorBoard event files into DIR"
    )
    parser.add_argument(
        "--csv", type=Path, default=None, metavar="FILE", help="write the scalars as a tidy long table to FILE"
    )
    parser.add_argument(
        "--follow", action="store_true", help="keep exporting what the run adds until it is no longer running"
    )
    parser.add_argument(
        "--interval", type=float, default=None, metavar="SECONDS", help="seconds between rounds of --follow (default 5)"
    )
    args = parser.parse_args(argv)
    if args.interval is not None and not args.follow:
        raise ConfigError("--interval applies only with --follow; add --follow or drop --interval")
    return args


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dynamics.export``: the exit status (2: usage, or a run that is missing or unreadable; 1:
    writing the export failed; 0 also after Ctrl-C with --follow)."""
    args = argparse.Namespace(follow=False)
    try:
        args = parse_args(argv)
        if args.follow:
            interval = 5.0 if args.interval is None else args.interval
            report = partial(print, flush=True)
            follow(args.run_dir, args.tensorboard, csv_path=args.csv, interval=interval, report=report)
        else:
            print(export_tensorboard(args.run_dir, args.tensorboard, csv_path=args.csv).line())
    except ConfigError as err:
        fail(flag_message(err, FLAGS))
        return USAGE_ERROR
    except StoreError as err:
        fail(err)
        return USAGE_ERROR
    except OSError as err:
        fail(os_error_message(err))
        return RUN_FAILED
    except DynamicsError as err:
        fail(err)
        return RUN_FAILED
    except KeyboardInterrupt:
        if not args.follow:
            fail("interrupted; the export is incomplete, run it again")
            return INTERRUPTED
        print("interrupted; everything exported so far is written", flush=True)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
