"""Full parameter snapshots at a sparse cadence: dense early (geometric in steps), at every epoch end, the last step.

The sketch (``traj_proj``) follows the path at every step in k dimensions; snapshots keep the whole vector
theta at a few hundred points, enough for trajectory PCA, the linearity of the path and the loss surface
around it (``analyses.trajectory``).

**Layout.** A Zarr group ``snapshots`` inside the run's ``data.zarr`` holds ``snapshot(snap_step, flat)``
(float32: the trainable parameters in ``named_parameters`` order, each flattened row-major, at their
``param_offsets``), ``snap_step(snap_step)`` and ``snap_epoch(snap_step)``. ``snap_step`` ``s`` is the state
after optimizer step ``s`` (the step ``traj_proj`` and ``dist_from_init`` are recorded at); ``-1`` is the
initial state. ``open_run`` exposes them lazily next to the other variables.

**Crash safety** as for the rest of the store: a write first grows and fills the arrays, then commits the
new length in the group's attributes (``committed``), and readers trust only committed rows. Snapshots are
copied on the device when taken and written in one transfer at the next flush (``flush_seconds`` after the
previous one, when ``flush_bytes`` are pending, or at close).

**Budget.** :func:`snapshot_steps` plans the steps before training; when the planned snapshots would exceed
``budget_bytes``, it keeps as many as fit, evenly spread over the planned list (by position, so the early
density is kept), always with the first and the last.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
import xarray as xr
import zarr
from torch import nn

from dynamics.errors import ConfigError, StoreError
from dynamics.store import DATA_NAME, checked_array_options, cut_group, rows_before, writable_arrays

GROUP = "snapshots"
INITIAL_STEP = -1
"""``snap_step`` of the initial parameters, before the first optimizer step."""
CHUNK_COLUMNS = 1 << 16
"""Parameters per stored chunk of one snapshot (256 KiB of float32); readers go through columns in such blocks."""


def snapshot_steps(
    total_steps: int,
    epoch_ends: Iterable[int] = (),
    *,
    growth: float = 0.1,
    snapshot_bytes: int = 0,
    budget_bytes: float | None = None,
) -> list[int]:
    """The planned snapshot steps: -1 (initial), a geometric cadence, every epoch end and the last step.

    The geometric part is :class:`~dynamics.probes.cadence.GeometricCadence` with ``growth`` (every step up
    to ``1/growth``, then about ``ln(10)/growth`` per decade). With ``budget_bytes``, at most
    ``budget_bytes // snapshot_bytes`` snapshots are kept, evenly spread over the planned list.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
    from dynamics.probes.cadence import GeometricCadence  # here: readers of snapshots need no probes

    steps = {INITIAL_STEP, total_steps - 1, *GeometricCadence(growth).steps(total_steps)}
    steps.update(int(s) for s in epoch_ends if 0 <= int(s) < total_steps)
    planned = sorted(steps)
    if budget_bytes is None:
        return planned
    if not budget_bytes > 0:
        raise ConfigError(f"budget_bytes must be > 0, got {budget_bytes!r}; fix it", key="budget_bytes")
    fit = int(budget_bytes // max(snapshot_bytes, 1))
    if fit < 2:
        raise ConfigError(
            f"a snapshot takes {snapshot_bytes / 2**20:.1f} MiB, so the budget of "
            f"{budget_bytes / 2**20:.1f} MiB holds fewer than two (initial and final); "
            "raise budget_bytes or record no snapshots",
            key="budget_bytes",
        )
    if fit >= len(planned):
        return planned
    keep = np.unique(np.round(np.linspace(0, len(planned) - 1, fit)).astype(int))
    return [planned[i] for i in keep]


@dataclass(frozen=True)
class ParamSlice:
    """Where one parameter tensor lies in a snapshot row."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def columns(self) -> slice:
        """Its columns in a snapshot row (the ``flat`` dimension)."""
        return slice(self.offset, self.offset + self.numel)


def param_layout(ds: xr.Dataset) -> list[ParamSlice]:
    """The parameter tensors of the ``snapshot`` variable of run ``ds`` (from ``open_run``), in row order."""
    if "snapshot" not in ds.variables:
        raise ConfigError(
            "the run has no parameter snapshots; record them (snapshots=True, the engine's default, "
            "or a SnapshotWriter in your loop)"
        )
    attrs = ds["snapshot"].attrs
    return [
        ParamSlice(str(name), tuple(int(n) for n in shape), int(offset))
        for name, shape, offset in zip(attrs["param_names"], attrs["param_shapes"], attrs["param_offsets"], strict=True)
    ]


class SnapshotWriter:
    """Takes full snapshots of the trainable parameters of ``model`` at the planned ``steps`` into ``run_dir``.

    Create it after the Recorder of the same run (which creates ``data.zarr``); call :meth:`observe` after
    every optimizer step (after anything that changes the parameters, e.g. PLP) and :meth:`close` at the
    end (or use it as a context manager). With ``-1`` among ``steps`` the initial state is taken at once.

    Args:
        model: the module being trained.
        run_dir: the run directory.
        steps: the steps to snapshot (e.g. from :func:`snapshot_steps`); others are skipped.
        flush_seconds: longest time a taken snapshot waits on the device before it is written.
        flush_bytes: write as soon as this many bytes of snapshots are pending.
        resume_step: continue a resumed run at this step: the stored snapshots of later steps are dropped
            (taken after the checkpoint) and only planned steps from ``resume_step`` on are taken.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | os.PathLike[str],
        steps: Iterable[int],
        *,
        flush_seconds: float = 10.0,
        flush_bytes: int = 256 * 2**20,
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / DATA_NAME / GROUP
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        offsets = np.cumsum([0] + [p.numel() for p in self.params]).tolist()
        self.layout = [ParamSlice(name, tuple(p.shape), offsets[i]) for i, (name, p) in enumerate(named)]
        self.numel = int(offsets[-1])
        self.steps = sorted(set(int(s) for s in steps))
        self.flush_seconds = flush_seconds
        self.flush_bytes = flush_bytes
        self.written = 0
        """Snapshots committed to the store so far."""
        self._next = 0
        self._pending: list[tuple[int, int, torch.Tensor]] = []
        self._arrays: dict[str, zarr.Array] = {}
        self._group: zarr.Group | None = None
        self._last_flush = time.monotonic()
        self._closed = False
        if resume_step is not None:
            self._reopen(resume_step)
        elif self.steps and self.steps[0] == INITIAL_STEP:
            self._take(INITIAL_STEP, 0)
            self._next = 1

    def _reopen(self, resume_step: int) -> None:
        """Reopen the stored snapshots (if any were written), cut to the steps before ``resume_step``."""
        self._next = bisect.bisect_left(self.steps, resume_step)
        if not (self.path / "zarr.json").exists():
            return
        self._group = zarr.open_group(self.path, mode="r+", zarr_format=3, use_consolidated=False)
        self._arrays = writable_arrays(self._group)
        committed = int(self._group.attrs.get("committed", {}).get("snap_step", 0))
        self.written = rows_before(self._arrays["snap_step"], committed, resume_step)
        cut_group(self._group, {"snap_step": self.written})

    def observe(self, step: int, epoch: int) -> None:
        """Call after optimizer step ``step``: snapshot it if planned; write pending snapshots when due."""
        while self._next < len(self.steps) and self.steps[self._next] < step:
            self._next += 1  # a planned step that was never observed
        if self._next < len(self.steps) and self.steps[self._next] == step:
            self._take(step, epoch)
            self._next += 1
            if len(self._pending) * 4 * self.numel >= self.flush_bytes:
                self.flush()
        if self._pending and time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _take(self, step: int, epoch: int) -> None:
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in self.params]) if self.params else torch.zeros(0)
        self._pending.append((step, epoch, flat))

    def _open(self) -> None:
        if not (self.path.parent / "zarr.json").exists():
            raise StoreError(
                f"{self.path.parent} does not exist; create the Recorder of the run before its SnapshotWriter"
            )
        self._group = zarr.open_group(self.path, mode="w", zarr_format=3, attributes={"committed": {"snap_step": 0}})
        layout = {
            "param_names": [s.name for s in self.layout],
            "param_shapes": [list(s.shape) for s in self.layout],
            "param_offsets": [s.offset for s in self.layout],
        }
        self._arrays = {
            "snapshot": self._group.create_array(
                "snapshot",
                shape=(0, self.numel),
                chunks=(1, max(1, min(self.numel, CHUNK_COLUMNS))),
                dtype=np.float32,
                dimension_names=["snap_step", "flat"],
                fill_value=np.nan,
                **checked_array_options(),
                attributes={
                    "long_name": "parameter snapshot",
                    "units": "param",
                    **layout,
                    "description": "trainable parameters after optimizer step snap_step (-1: initial), "
                    "flattened row-major and concatenated at param_offsets",
                },
            ),
            "snap_step": self._group.create_array(
                "snap_step",
                shape=(0,),
                chunks=(512,),
                dtype=np.int64,
                dimension_names=["snap_step"],
                **checked_array_options(),
                attributes={"long_name": "step of the snapshot", "description": "-1: the initial parameters"},
            ),
            "snap_epoch": self._group.create_array(
                "snap_epoch",
                shape=(0,),
                chunks=(512,),
                dtype=np.int64,
                dimension_names=["snap_step"],
                **checked_array_options(),
                attributes={"long_name": "epoch of the snapshot"},
            ),
        }

    def flush(self) -> None:
        """Write the pending snapshots (one device-to-host transfer), then commit their count."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        if self._group is None:
            self._open()
        steps, epochs, flats = zip(*self._pending, strict=True)
        rows = torch.stack(flats).cpu().numpy()
        start, stop = self.written, self.written + len(rows)
        try:
            for name, values in (
                ("snapshot", rows),
                ("snap_step", np.asarray(steps, dtype=np.int64)),
                ("snap_epoch", np.asarray(epochs, dtype=np.int64)),
            ):
                array = self._arrays[name]
                array.resize((stop, *array.shape[1:]))
                array[start:stop] = values
            self._group.attrs["committed"] = {"snap_step": stop}
        except OSError as err:
            raise StoreError(
                f"writing snapshots to {self.path} failed ({err.strerror or err}); "
                "free disk space or lower snapshot_budget_mb"
            ) from None
        self.written = stop
        self._pending = []

    def close(self) -> None:
        """Write what is pending; idempotent."""
        if not self._closed:
            self._closed = True
            self.flush()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def snapshot_bytes(params: Sequence[torch.Tensor]) -> int:
    """Bytes one snapshot of ``params`` takes in the store (float32)."""
    return 4 * sum(p.numel() for p in params if p.requires_grad)
