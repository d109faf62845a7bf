"""The run directory and its Zarr store: crash-safe appends, and a lazy reader that works mid-run.

A run directory holds ``config.json``, ``meta.json`` and ``data.zarr``. Every array of ``data.zarr`` that
grows with training has ``step`` or ``eval_step`` as its first dimension. An append first grows and fills
the arrays, then commits the new lengths in the group's attributes; every file write is atomic (Zarr's
local store writes a temporary file and renames it). A reader therefore trusts only the committed
lengths, so a process killed at any moment, even mid-flush, leaves a store that opens and holds every
committed row; a reader in another process sees a consistent prefix while the run is writing.

Every chunk the writer stores ends in a CRC-32C checksum (Zarr's ``crc32c`` codec, after the compression), and
every chunk is written, even one that holds only fill values (the one exception: the rows before a variable's
array was created, see ``FIRST_ROW``, are not stored). A reader therefore tells damage from absence:
``open_run`` lists each array's chunk files once and names the first one missing within the committed
length, and a read names the chunk whose checksum or decoding fails, or that vanished after ``open_run``
(always a :class:`StoreError`, never a fill value read in its place). Arrays of stores written before the
checksum (no ``crc32c`` codec) are read as before, unverified.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.codecs import Crc32cCodec, ZstdCodec

from dynamics.errors import ConfigError, StoreError
from dynamics.runlock import LOCK_NAME, RunLock

FORMAT = "dynamics-run"
FORMAT_VERSION = 1
APPEND_DIMS = ("step", "eval_step")
CHUNK_ROWS = 512
DATA_NAME = "data.zarr"
FIRST_ROW = "first_stored_row"
"""Attribute of an array created after earlier appends (a variable first given then): its earlier rows hold the
fill value without being stored, so only the chunks from this row on must exist."""
DAMAGED = "the store is damaged (restore the run directory from a copy, or record the run again)"


def checked_array_options() -> dict[str, Any]:
    """Keyword arguments of ``zarr.Group.create_array`` for an array the reader verifies: every chunk ends in a
    CRC-32C checksum (after the zstd compression), and chunks holding only fill values are written too, so a
    missing chunk file within the committed length always means damage."""
    return {"compressors": (ZstdCodec(), Crc32cCodec()), "config": {"write_empty_chunks": True}}


def writable_arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    """The arrays of ``group`` opened to write every chunk, even one of fill values only (see
    :func:`checked_array_options`); the setting is read when an array is opened."""
    with zarr.config.set({"array.write_empty_chunks": True}):
        return dict(group.arrays())


def distinct_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """``paths`` as a list, refusing (ConfigError) one that names the same run as an earlier one: the same
    directory by another spelling, a symbolic link to it, or its ``data.zarr``."""
    runs = [Path(path) for path in paths]
    seen: dict[Any, Path] = {}
    for run in runs:
        target = run.parent if run.name == DATA_NAME else run
        try:
            info = target.stat()
            key: Any = (info.st_dev, info.st_ino)
        except OSError:
            key = os.path.realpath(target)
        if key in seen:
            raise ConfigError(f"{run} is the same run as {seen[key]}; pass each run directory once")
        seen[key] = run
    return runs


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


RUN_STATES = ("finished", "failed", "running", "killed", "pending")
"""What :func:`run_state` returns: ``killed`` is a run marked running whose writer is gone (e.g. SIGKILL)."""


def run_state(run_dir: str | os.PathLike[str]) -> str:
    """``finished``, ``failed``, ``running`` (a live process writes it), ``killed`` (marked running, but no
    process writes it any more) or ``pending`` (no ``meta.json``: never started). A damaged ``meta.json``
    counts as failed."""
    run_dir = Path(run_dir)
    path = run_dir / "meta.json"
    if not path.exists():
        return "pending"
    try:
        status = read_json(path).get("status")
    except StoreError:
        return "failed"
    if status == "running":
        return "running" if RunLock.holder(run_dir) is not None else "killed"
    return "finished" if status == "finished" else "failed"


def still_running(run_dirs: Iterable[str | os.PathLike[str]], what: str = "results") -> list[Path]:
    """The runs among ``run_dirs`` whose status is ``running`` (a live process writes them), with one warning
    naming them: ``what`` is drawn or computed from them covers only the steps recorded so far (partial)."""
    running = [Path(run) for run in run_dirs if run_state(run) == "running"]
    if running:
        more = f" and {len(running) - 3} more" if len(running) > 3 else ""
        names = ", ".join(str(run) for run in running[:3]) + more
        warnings.warn(f"{len(running)} run(s) still running ({names}); {what} from them are partial", stacklevel=2)
    return running


def prepare_run_dir(run_dir: Path, overwrite: bool) -> RunLock:
    """Create an empty run directory and take its write lock, refusing to clobber anything that is not an
    explicitly replaced run, or a run another process is writing (the lock is taken before anything is removed)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is a file, not a directory; choose another run_dir", key="run_dir")
    replace = run_dir.is_dir() and any(entry.name != LOCK_NAME for entry in run_dir.iterdir())
    if replace:
        meta_path = run_dir / "meta.json"
        if not meta_path.exists():
            raise ConfigError(
                f"run_dir={run_dir} exists and is not a run directory; choose an empty or new run_dir", key="run_dir"
            )
        if not overwrite:
            status = _status_of(meta_path)
            raise ConfigError(
                f"run_dir={run_dir} already holds a {status} run; pass overwrite=True to replace it or choose another "
                "run_dir",
                key=("run_dir", "overwrite"),
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create run_dir={run_dir} ({err.strerror}); choose a writable run_dir", key="run_dir"
        ) from None
    lock = RunLock(run_dir)
    if replace:
        outputs = ("figures", "overview.png", "overview.pdf", "loss_surface.json")  # drawn or derived from the run
        for name in ("config.json", "meta.json", DATA_NAME, *outputs, "features", "checkpoints"):
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
    for array in writable_arrays(group).values():
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
        self.group = zarr.open_group(
            self.path, mode="w", zarr_format=3, attributes={"format": FORMAT, "format_version": FORMAT_VERSION}
        )
        self.lengths = dict.fromkeys(APPEND_DIMS, 0)
        self.dim_sizes: dict[str, int] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._attrs: dict[str, dict[str, Any]] = {}
        for name, labels in coords.items():
            values = np.asarray(list(labels), dtype=str)
            array = self.group.create_array(
                name, shape=values.shape, dtype=str, dimension_names=[name], **checked_array_options()
            )
            if values.size:
                array[:] = values
            self.dim_sizes[name] = len(values)
        self.group.attrs.update(
            {"format": FORMAT, "format_version": FORMAT_VERSION, **attrs, "committed": dict(self.lengths)}
        )

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
            raise StoreError(
                f"{writer.path} cannot be reopened ({type(err).__name__}: {err}); "
                "the run cannot be resumed, start it again"
            ) from None
        committed = writer.group.attrs.get("committed", {})
        lengths = {dim: int(committed.get(dim, 0)) for dim in APPEND_DIMS}
        writer.dim_sizes, writer._arrays, writer._attrs = {}, {}, {}
        for name, array in writable_arrays(writer.group).items():
            dims = tuple(array.metadata.dimension_names or ())
            if dims and dims[0] in APPEND_DIMS:
                writer._arrays[name] = array
            elif dims == (name,):
                writer.dim_sizes[name] = array.shape[0]
        writer.lengths = {
            dim: rows_before(writer._arrays[dim], lengths[dim], before_step) if dim in writer._arrays else 0
            for dim in APPEND_DIMS
        }
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
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            dimension_names=list(dims),
            fill_value=fill,
            attributes={**self._attrs.get(name, {}), **({FIRST_ROW: shape[0]} if shape[0] else {})},
            **checked_array_options(),
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
                array[start:stop] = array.fill_value  # stored, so that every chunk in the committed length exists
        self.lengths[append_dim] = stop
        self.group.attrs["committed"] = dict(self.lengths)


class _CommittedArray(BackendArray):
    """A lazy view of a Zarr array cut to its committed length, read only when indexed.

    For an array whose chunks carry a checksum, a read checks that the chunks it covers still exist (Zarr reads a
    missing chunk as fill values), and a chunk that fails its checksum or decoding is named in the StoreError.
    """

    def __init__(self, array: zarr.Array, shape: tuple[int, ...]) -> None:
        self.array = array
        self.shape = shape
        self.dtype = np.dtype(array.dtype)
        root = getattr(array.store, "root", None)
        self.directory = Path(str(root)) / array.path if root is not None else None
        """The array's folder in a local store (None in any other store: nothing is checked on disk)."""
        self.checked = any(isinstance(codec, Crc32cCodec) for codec in getattr(array.metadata, "codecs", ()))
        """Whether the chunks carry a checksum (stores written before it do not, and are not verified)."""
        self.first_row = int(array.attrs.get(FIRST_ROW, 0))
        """Rows before it were never stored (see FIRST_ROW): a chunk holding no committed row from it on may lack."""

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        # xarray hands basic keys through unchanged, e.g. slice(None) for ``.values``: bound them by the
        # committed shape, or the read would return the uncommitted rows beyond it
        key = tuple(_bounded(k, size) for k, size in zip(key, self.shape, strict=True))
        try:
            values = np.asarray(self.array[key])
        except Exception as err:  # a damaged chunk raises whatever its codec raises
            raise self._damage(self._chunks_of(key), err) from None
        # checked after the read: a chunk deleted before or during it was read as fill values
        self._check_present(self._chunks_of(key), lambda key: (self.directory / key).is_file())
        return values

    def check_chunks(self) -> None:
        """Raise StoreError naming the first chunk of the committed shape whose file is missing (one listing)."""
        if not self.checked or self.directory is None:
            return
        present = {
            Path(root, name).relative_to(self.directory).as_posix()
            for root, _, names in os.walk(self.directory)
            for name in names
        }
        self._check_present(
            itertools.product(
                *(range(-(-size // chunk)) for size, chunk in zip(self.shape, self.array.chunks, strict=True))
            ),
            present.__contains__,
        )

    def _chunks_of(self, key: tuple[Any, ...]) -> Iterable[tuple[int, ...]]:
        """The chunk coordinates a bounded basic key covers, in order."""
        spans = []
        for k, chunk in zip(key, self.array.chunks, strict=True):
            if isinstance(k, slice):
                rows = range(k.start, k.stop, k.step)
                spans.append(range(min(rows) // chunk, max(rows) // chunk + 1) if rows else range(0))
            else:
                spans.append(range(k // chunk, k // chunk + 1))
        return itertools.product(*spans)

    def _check_present(self, chunks: Iterable[tuple[int, ...]], exists: Any) -> None:
        if self.directory is None:
            return
        if not (self.directory / "zarr.json").is_file():
            raise StoreError(
                f"{self.directory} is gone: the run directory was moved or deleted after open_run; "
                "open it again where it is now"
            )
        if not self.checked:
            return
        for coords in chunks:
            if coords and min((coords[0] + 1) * self.array.chunks[0], self.shape[0]) <= self.first_row:
                continue  # only rows from before the array was created: fill values, never stored
            if not exists(self.array.metadata.encode_chunk_key(coords)):
                raise StoreError(f"{self._name()}: {self._chunk(coords)} is missing; {DAMAGED}")

    def _damage(self, chunks: Iterable[tuple[int, ...]], err: Exception) -> StoreError:
        """The StoreError of a read that raised ``err``: the first chunk that fails alone is named."""
        for coords in chunks:
            region = tuple(
                slice(i * chunk, min((i + 1) * chunk, size))
                for i, chunk, size in zip(coords, self.array.chunks, self.array.shape, strict=True)
            )
            try:
                self.array[region]
            except Exception as chunk_err:
                return StoreError(
                    f"{self._name()}: {self._chunk(coords)} is unreadable ({_reason(chunk_err)}); {DAMAGED}"
                )
        return StoreError(f"{self._name()} is unreadable ({_reason(err)}); {DAMAGED}")

    def _name(self) -> str:
        return str(self.directory) if self.directory is not None else str(self.array.store_path)

    def _chunk(self, coords: tuple[int, ...]) -> str:
        """E.g. ``chunk 0 (rows 0-511, file c/0)``: the rows are those of the committed length."""
        label = ",".join(str(i) for i in coords)
        if not coords:
            return f"chunk {label or '()'} (file {self.array.metadata.encode_chunk_key(coords)})"
        first = coords[0] * self.array.chunks[0]
        last = min(first + self.array.chunks[0], max(self.shape[0], first + 1)) - 1
        return f"chunk {label} (rows {first}-{last}, file {self.array.metadata.encode_chunk_key(coords)})"


def _reason(err: Exception) -> str:
    """One short line for an exception of Zarr or a codec."""
    text = " ".join(str(err).split())
    if "checksum" in text.lower():
        text = "checksum mismatch"
    return f"{type(err).__name__}: {text[:200]}"


def _bounded(key: Any, size: int) -> Any:
    """A basic index (slice or integer) of a dimension of ``size``, made explicit so it cannot reach past it."""
    if isinstance(key, slice):
        return slice(*key.indices(size))
    if isinstance(key, (int, np.integer)):
        if not -size <= key < size:
            raise IndexError(f"index {key} is out of bounds for a dimension of size {size}")
        return int(key) % size
    return key


def _attrs_of(array: zarr.Array) -> dict[str, Any]:
    """The attributes of a variable: those of its array, less the store's own bookkeeping."""
    return {key: value for key, value in array.attrs.items() if key != FIRST_ROW}


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
                lazy = _CommittedArray(array, shape)
                lazy.check_chunks()
                variables[name] = xr.Variable(dims, indexing.LazilyIndexedArray(lazy), attrs=_attrs_of(array))
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
        shape = (min(sizes[dims[0]], array.shape[0]), *array.shape[1:]) if dims[0] in sizes else array.shape
        lazy = _CommittedArray(array, shape)
        lazy.check_chunks()  # every chunk file of the committed rows exists (a listing; nothing is read)
        if dims[0] in sizes:
            data: Any = indexing.LazilyIndexedArray(lazy)
        else:
            data = lazy._read((slice(None),) * array.ndim)
        variables[name] = xr.Variable(dims, data, attrs=_attrs_of(array))
    variables.update(grouped)
    for dim in APPEND_DIMS:  # before the first flush of a dimension: an empty coordinate, not a missing one
        variables.setdefault(dim, xr.Variable((dim,), np.zeros(0, dtype=np.int64)))
    coord_names = [n for n in variables if variables[n].dims == (n,)] + [
        n for n in ("epoch", "snap_epoch") if n in variables
    ]
    data_vars = {n: v for n, v in variables.items() if n not in coord_names}
    dataset = xr.Dataset(data_vars, coords={n: variables[n] for n in coord_names})
    dataset.attrs.update({k: v for k, v in attrs.items() if k not in ("format", "committed")})
    dataset.attrs["run_dir"] = str(run_dir)
    meta_path = run_dir / "meta.json"
    if meta_path.exists():
        dataset.attrs["status"] = _status_of(meta_path)
    return dataset
