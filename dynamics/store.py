"""The run directory and its Zarr store: crash-safe appends, and a lazy reader that works mid-run.

A run directory holds ``config.json``, ``meta.json`` and ``data.zarr``. Every array of ``data.zarr`` that
grows with training has ``step`` or ``eval_step`` as its first dimension. An append first grows and fills
the arrays, then commits the new lengths in the group's attributes; every file write is atomic (Zarr's
local store writes a temporary file and renames it). A reader therefore trusts only the committed
lengths, so a process killed at any moment, even mid-flush, leaves a store that opens and holds every
committed row; a reader in another process sees a consistent prefix while the run is writing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing

from dynamics.errors import ConfigError, StoreError
from dynamics.runlock import LOCK_NAME, RunLock

FORMAT = "dynamics-run"
FORMAT_VERSION = 1
APPEND_DIMS = ("step", "eval_step")
CHUNK_ROWS = 512
DATA_NAME = "data.zarr"


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning a missing or damaged file into a StoreError."""
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} is missing; this is not a complete run directory") from None
    except (OSError, ValueError) as err:
        raise StoreError(f"{path} is unreadable ({err}); the run directory is damaged") from None
    if not isinstance(payload, dict):
        raise StoreError(f"{path} does not hold a JSON object; the run directory is damaged")
    return payload


def prepare_run_dir(run_dir: Path, overwrite: bool) -> RunLock:
    """Create an empty run directory and take its write lock, refusing to clobber anything that is not an
    explicitly replaced run, or a run another process is writing (the lock is taken before anything is removed)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a directory; choose another --out")
    replace = run_dir.is_dir() and any(entry.name != LOCK_NAME for entry in run_dir.iterdir())
    if replace:
        meta_path = run_dir / "meta.json"
        if not meta_path.exists():
            raise ConfigError(f"--out {run_dir} exists and is not a run directory; choose an empty or new --out")
        if not overwrite:
            status = _status_of(meta_path)
            raise ConfigError(
                f"--out {run_dir} already holds a {status} run; pass --overwrite to replace it or choose another --out"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir} ({err.strerror}); choose a writable --out") from None
    lock = RunLock(run_dir)
    if replace:
        for name in ("config.json", "meta.json", DATA_NAME, "overview.png", "overview.pdf", "features",
                     "checkpoints"):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    return lock


def _status_of(meta_path: Path) -> str:
    try:
        return str(json.loads(meta_path.read_text()).get("status", "unknown"))
    except (OSError, ValueError):
        return "damaged"


def cut_group(group: zarr.Group, lengths: Mapping[str, int]) -> None:
    """Cut the arrays of ``group`` whose first dimension is in ``lengths`` to those lengths (for a resume).

    The shorter lengths are committed first, so a process killed during the cut leaves a store that opens
    with the cut applied; the rows beyond them in a chunk that is kept are reset to the fill value, so a
    later append that pads an array (a variable missing from it) never shows a stale row.
    """
    committed = dict(group.attrs.get("committed", {}))
    group.attrs["committed"] = {**committed, **{dim: int(n) for dim, n in lengths.items()}}
    for _, array in group.arrays():
        dims = array.metadata.dimension_names or ()
        if not dims or dims[0] not in lengths or array.shape[0] <= lengths[dims[0]]:
            continue
        keep = int(lengths[dims[0]])
        chunk = array.chunks[0]
        end = min(array.shape[0], -(-keep // chunk) * chunk)
        if end > keep:
            array[keep:end] = array.fill_value
        array.resize((keep, *array.shape[1:]))


def rows_before(array: zarr.Array, length: int, step: int) -> int:
    """How many of the first ``length`` values of a sorted step-like ``array`` are below ``step``."""
    return int(np.searchsorted(np.asarray(array[:length]), step, side="left")) if length else 0


class RunWriter:
    """Appends rows along ``step`` and ``eval_step`` to ``data.zarr``, committing lengths after the data."""

    def __init__(self, run_dir: Path, coords: Mapping[str, Sequence[str]], attrs: Mapping[str, Any]) -> None:
        self.path = run_dir / DATA_NAME
        # the format tag is in the very first zarr.json, so a reader never sees an untagged run store
        self.group = zarr.open_group(self.path, mode="w", zarr_format=3,
                                     attributes={"format": FORMAT, "format_version": FORMAT_VERSION})
        self.lengths = dict.fromkeys(APPEND_DIMS, 0)
        self.dim_sizes: dict[str, int] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._attrs: dict[str, dict[str, Any]] = {}
        for name, labels in coords.items():
            values = np.asarray(list(labels), dtype=str)
            array = self.group.create_array(name, shape=values.shape, dtype=str, dimension_names=[name])
            if values.size:
                array[:] = values
            self.dim_sizes[name] = len(values)
        self.group.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, **attrs,
                                 "committed": dict(self.lengths)})

    @classmethod
    def reopen(cls, run_dir: Path, before_step: int) -> RunWriter:
        """Reopen the store of ``run_dir`` for appending, cut to the rows of steps before ``before_step``.

        Rows along ``step`` and ``eval_step`` recorded at ``before_step`` or later (written after the
        checkpoint a resume starts from) are dropped, so the resumed run appends them again.
        """
        writer = cls.__new__(cls)
        writer.path = run_dir / DATA_NAME
        try:
            writer.group = zarr.open_group(writer.path, mode="r+", zarr_format=3, use_consolidated=False)
        except OSError:
            raise  # not writable: the caller names the fix
        except Exception as err:  # zarr raises many types for a missing or damaged store
            raise StoreError(f"{writer.path} cannot be reopened ({type(err).__name__}: {err}); "
                             "the run cannot be resumed, start it again") from None
        committed = writer.group.attrs.get("committed", {})
        lengths = {dim: int(committed.get(dim, 0)) for dim in APPEND_DIMS}
        writer.dim_sizes, writer._arrays, writer._attrs = {}, {}, {}
        for name, array in writer.group.arrays():
            dims = tuple(array.metadata.dimension_names or ())
            if dims and dims[0] in APPEND_DIMS:
                writer._arrays[name] = array
            elif dims == (name,):
                writer.dim_sizes[name] = array.shape[0]
        writer.lengths = {dim: rows_before(writer._arrays[dim], lengths[dim], before_step)
                          if dim in writer._arrays else 0 for dim in APPEND_DIMS}
        cut_group(writer.group, writer.lengths)
        return writer

    def describe(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Give a variable its attributes (units, description, rules); stored when its array is created."""
        self._attrs[name] = dict(attrs)

    def _array(self, name: str, dims: Sequence[str], dtype: np.dtype) -> zarr.Array:
        array = self._arrays.get(name)
        if array is not None:
            return array
        append_dim = dims[0]
        shape = (self.lengths[append_dim], *(self.dim_sizes[d] for d in dims[1:]))
        chunks = (CHUNK_ROWS, *(max(1, self.dim_sizes[d]) for d in dims[1:]))
        fill = np.nan if np.issubdtype(dtype, np.floating) else 0
        array = self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=list(dims), fill_value=fill,
            attributes=self._attrs.get(name, {}),
        )
        self._arrays[name] = array
        return array

    def append(self, append_dim: str, columns: Mapping[str, tuple[Sequence[str], np.ndarray]]) -> None:
        """Append rows to every array along ``append_dim``, then commit the new length.

        ``columns`` maps a variable name to its dims (first one ``append_dim``) and a numpy array of rows.
        Arrays of this dimension that get no column in this append are padded with their fill value.
        """
        if append_dim not in APPEND_DIMS:
            raise ValueError(f"append dimension must be one of {APPEND_DIMS}, got {append_dim!r}")
        counts = {len(values) for _, values in columns.values()}
        if len(counts) != 1:
            raise ValueError(f"columns appended along {append_dim} differ in length: {sorted(counts)}")
        rows = counts.pop()
        if rows == 0:
            return
        start = self.lengths[append_dim]
        stop = start + rows
        for name, (dims, values) in columns.items():
            if dims[0] != append_dim:
                raise ValueError(f"variable {name} has dims {dims}, expected first dim {append_dim}")
            array = self._array(name, dims, values.dtype)
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = values
        for name, array in self._arrays.items():
            if name not in columns and array.metadata.dimension_names[0] == append_dim:
                array.resize((stop, *array.shape[1:]))
        self.lengths[append_dim] = stop
        self.group.attrs["committed"] = dict(self.lengths)


class _CommittedArray(BackendArray):
    """A lazy view of a Zarr array cut to its committed length, read only when indexed."""

    def __init__(self, array: zarr.Array, shape: tuple[int, ...]) -> None:
        self.array = array
        self.shape = shape
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        # xarray hands basic keys through unchanged, e.g. slice(None) for ``.values``: bound them by the
        # committed shape, or the read would return the uncommitted rows beyond it
        key = tuple(_bounded(k, size) for k, size in zip(key, self.shape, strict=True))
        try:
            return np.asarray(self.array[key])
        except Exception as err:  # a damaged chunk raises whatever its codec raises
            reason = " ".join(str(err).split())
            raise StoreError(f"{self.array.store_path} is unreadable ({type(err).__name__}: {reason}); "
                             "the store is damaged") from None


def _bounded(key: Any, size: int) -> Any:
    """A basic index (slice or integer) of a dimension of ``size``, made explicit so it cannot reach past it."""
    if isinstance(key, slice):
        return slice(*key.indices(size))
    if isinstance(key, (int, np.integer)):
        if not -size <= key < size:
            raise IndexError(f"index {key} is out of bounds for a dimension of size {size}")
        return int(key) % size
    return key


def _group_variables(root: zarr.Group) -> dict[str, xr.Variable]:
    """Lazy variables of the subgroups that commit their own lengths (``attrs["committed"]``, e.g. ``snapshots/``).

    Only arrays whose first dimension has a committed length are shown, cut to that length.
    """
    variables: dict[str, xr.Variable] = {}
    for _, group in root.groups():
        committed = group.attrs.get("committed")
        if not isinstance(committed, dict):
            continue
        for name, array in group.arrays():
            dims = tuple(array.metadata.dimension_names or ())
            if dims and dims[0] in committed:
                shape = (min(int(committed[dims[0]]), array.shape[0]), *array.shape[1:])
                variables[name] = xr.Variable(dims, indexing.LazilyIndexedArray(_CommittedArray(array, shape)),
                                              attrs=dict(array.attrs))
    return variables


def open_run(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a run directory (or its ``data.zarr``) as a lazy ``xarray.Dataset``.

    Works on finished, failed and still-running runs, from any process: only committed rows are shown.
    Dataset attributes carry the run's config (``config``), status and the path.
    """
    run_dir = Path(path)
    if run_dir.name == DATA_NAME:
        run_dir = run_dir.parent
    if not run_dir.exists():
        raise StoreError(f"no run directory at {run_dir}; check the path")
    data_path = run_dir / DATA_NAME
    if not (data_path / "zarr.json").exists():
        raise StoreError(f"{run_dir} holds no {DATA_NAME}; it is not a run directory of this toolkit")
    try:
        group = zarr.open_group(data_path, mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
    except Exception as err:  # zarr raises many types for damaged metadata
        raise StoreError(f"{data_path} is unreadable ({type(err).__name__}: {err}); the store is damaged") from None
    if attrs.get("format") != FORMAT:
        raise StoreError(f"{data_path} is a Zarr store but not a run of this toolkit (no '{FORMAT}' format tag)")
    committed = attrs.get("committed", {})
    try:
        with warnings.catch_warnings():
            # a write killed or in progress leaves what is not (yet) part of the hierarchy: an atomic write's
            # "zarr.<id>.partial" file beside zarr.json, or the directory of an array whose zarr.json was never
            # written (its flush did not complete, so none of its rows is committed)
            warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component")
            arrays = {name: array for name, array in group.arrays()}
            grouped = _group_variables(group)
    except Exception as err:
        raise StoreError(f"{data_path} has unreadable arrays ({type(err).__name__}: {err})") from None
    sizes = {dim: int(committed.get(dim, 0)) for dim in APPEND_DIMS}
    variables: dict[str, xr.Variable] = {}
    for name, array in arrays.items():
        dims = tuple(array.metadata.dimension_names or ())
        if not dims:
            continue
        if dims[0] in sizes:
            shape = (min(sizes[dims[0]], array.shape[0]), *array.shape[1:])
            data: Any = indexing.LazilyIndexedArray(_CommittedArray(array, shape))
        else:
            data = _CommittedArray(array, array.shape)._read((slice(None),) * array.ndim)
        variables[name] = xr.Variable(dims, data, attrs=dict(array.attrs))
    variables.update(grouped)
    for dim in APPEND_DIMS:  # before the first flush of a dimension: an empty coordinate, not a missing one
        variables.setdefault(dim, xr.Variable((dim,), np.zeros(0, dtype=np.int64)))
    coord_names = [n for n in variables if variables[n].dims == (n,)] + [n for n in ("epoch", "snap_epoch")
                                                                         if n in variables]
    data_vars = {n: v for n, v in variables.items() if n not in coord_names}
    dataset = xr.Dataset(data_vars, coords={n: variables[n] for n in coord_names})
    dataset.attrs.update({k: v for k, v in attrs.items() if k not in ("format", "committed")})
    dataset.attrs["run_dir"] = str(run_dir)
    meta_path = run_dir / "meta.json"
    if meta_path.exists():
        dataset.attrs["status"] = _status_of(meta_path)
    return dataset
