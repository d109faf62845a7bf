"""The Recorder: attaches probes to any model and optimizer and streams what they measure to a run store.

Three lines in a user's loop::

    rec = Recorder(model, optimizer, run_dir)
    ...  # forward, backward, optimizer.step()
    rec.step(loss=loss, output=out, target=y)
    rec.close()

Values stay on the device; a flush (every ``flush_steps`` recorded steps or ``flush_seconds`` seconds,
whichever comes first, and at close) moves them to the host in one transfer and appends them to
``data.zarr``. The detached loss of every step is kept on the device and checked for NaN/Inf, together
with the recorded gradient norms, in one stacked operation every ``check_finite_every`` steps (on CUDA
without waiting: the flag is read one check later, see ``_periodic_check``), at each
flush and at close, so there is no host synchronisation (and no device work) per step. Only
``on_nonfinite="skip"`` checks every step (:meth:`Recorder.skip_nonfinite`: one synchronisation per step).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dynamics.errors import ConfigError, NonFiniteLossError, StoreError
from dynamics.probes import Context, GradNorm, Probe, SparseProbe, StepData, resolve_probes
from dynamics.rows import Rows
from dynamics.runinfo import environment, now_iso
from dynamics.runlock import RunLock
from dynamics.store import DATA_NAME, RunWriter, prepare_run_dir, read_json, write_json_atomic

Scalar = float | int | bool | torch.Tensor
_NO_SCALARS: Mapping[str, Scalar] = MappingProxyType({})
"""The extra scalars of a step that has none (one shared, read-only mapping)."""
NONFINITE_POLICIES = ("stop", "skip", "record")

STEP_ATTRS = {
    "step": {"long_name": "optimizer step", "description": "index of the optimizer step, contiguous from 0"},
    "epoch": {"long_name": "epoch of the step"},
    "lr": {"units": "1", "long_name": "learning rate", "description": "lr of the first parameter group"},
    "eval_step": {"long_name": "step of evaluation", "description": "last optimizer step before the evaluation"},
}


class Recorder:
    """Records the probes' variables at every ``every``-th optimizer step into ``run_dir``.

    Args:
        model: the module being trained; hooks are added to it, nothing else changes.
        optimizer: its optimizer, read for the learning rate (None records lr as NaN).
        run_dir: run directory to create (``config.json``, ``meta.json``, ``data.zarr``).
        every: record steps 0, every, 2*every, ...
        probes: a preset name (``"default"``, ``"minimal"``, ``"loss"``) or a list of probe names/instances.
        config: everything needed to rerun, written to ``config.json``.
        flush_steps / flush_seconds: the bound on unflushed recorded steps and on time between flushes.
        check_finite_every: steps between host checks for a non-finite loss or recorded gradient norm.
        on_nonfinite: ``"stop"`` raises NonFiniteLossError (run marked failed); ``"record"`` keeps going;
            ``"skip"`` keeps going too, the loop skipping the update of each step that
            :meth:`skip_nonfinite` flags. The first event (step, loss or gradient, first parameter with a
            non-finite gradient norm, first layer with a non-finite activation mean) goes to ``meta.json``
            under ``nonfinite``.
        overwrite: replace an existing run in ``run_dir``.
        resume: a checkpoint's :meth:`state_dict`: reopen the run in ``run_dir`` instead of creating it, cut
            its store to the steps before the checkpoint, restore the probes' state and continue from there.
        first_step: the index of the first step of a new run that continues another run's training (a
            branch, :class:`dynamics.engine.Branch`), so that its steps keep the numbering they continue.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        run_dir: str | os.PathLike[str],
        every: int = 1,
        *,
        probes: str | Sequence[str | Probe] = "default",
        config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        flush_steps: int = 1000,
        flush_seconds: float = 10.0,
        check_finite_every: int = 50,
        on_nonfinite: Literal["stop", "skip", "record"] = "stop",
        overwrite: bool = False,
        resume: Mapping[str, Any] | None = None,
        first_step: int = 0,
    ) -> None:
        if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
            raise ConfigError(f"first_step must be an integer >= 0, got {first_step!r}", key="first_step")
        for label, value in (
            ("every", every),
            ("flush_steps", flush_steps),
            ("check_finite_every", check_finite_every),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive integer, got {value!r}")
        if not flush_seconds > 0:
            raise ConfigError(f"flush_seconds must be positive, got {flush_seconds!r}")
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {on_nonfinite!r}")
        self.run_dir = Path(run_dir)
        self.every = every
        self.flush_steps = flush_steps
        self.flush_seconds = flush_seconds
        self.check_finite_every = check_finite_every
        self.on_nonfinite = on_nonfinite
        self.epoch = 0
        """Epoch stamped on the following steps; set it from the training loop."""
        self.context = Context(model, optimizer)
        if not self.context.params:
            raise ConfigError(
                "the model has no trainable parameters (none, or all with requires_grad=False); "
                "give the Recorder the module being trained"
            )
        self.probes = resolve_probes(probes)
        self.device = self.context.params[0].device
        self.dtype = torch.float64 if any(p.dtype == torch.float64 for p in self.context.params) else torch.float32
        """The dtype of the recorded values: float64 for a model with float64 parameters, else float32."""
        frozen = [name for name, p in self.context.model.named_parameters() if not p.requires_grad]
        if self.context.world_size > 1:
            side = [p.name for p in self.probes if isinstance(p, SparseProbe)]
            if side:
                raise ConfigError(
                    f"the probes {side} run their own passes on the model and do not support a "
                    "distributed run yet; leave them out of probes"
                )
        self.writes = self.context.world_size == 1 or dist.get_rank() == 0
        """Whether this process writes the run: in a distributed run only rank 0 does (the others measure and
        take part in the reductions)."""
        if self.writes:
            self._lock = prepare_run_dir(self.run_dir, overwrite) if resume is None else RunLock(self.run_dir)
        else:
            self._lock = _NotWriting()
        """This process's write lock on the run directory, held until ``close`` (``dynamics.runlock``)."""

        try:
            for probe in self.probes:
                probe.attach(self.context)
            coords: dict[str, list[str]] = {}
            self._dims: dict[str, tuple[str, ...]] = {}
            variable_attrs: dict[str, dict[str, Any]] = {}
            for probe in self.probes:
                coords.update(probe.coords(self.context))
                for variable in probe.variables(self.context):
                    self._dims[variable.name] = ("step", *variable.dims)
                    variable_attrs[variable.name] = {**variable.attrs, "probe": probe.name}
            self._coords = coords
            self._preparing = [p for p in self.probes if type(p).before_recorded_step is not Probe.before_recorded_step]
            """The probes that prepare recorded steps (the others' hook does nothing): called per step."""
            self._layout: list[tuple[str, int, tuple[int, ...]]] = []
            """(variable, values, shape) of every recorded variable, in row order."""
            for probe in self.probes:
                for variable in probe.variables(self.context):
                    shape = tuple(len(coords[dim]) for dim in variable.dims)
                    self._layout.append((variable.name, math.prod(shape), shape))
            try:
                if not self.writes:
                    self._writer = _NotWriting()
                elif resume is None:
                    self._writer = RunWriter(
                        self.run_dir,
                        coords,
                        {
                            "every": every,
                            "probes": [p.name for p in self.probes],
                            "config": dict(config or {}),
                        },
                    )
                    write_json_atomic(self.run_dir / "config.json", dict(config or {}))
                else:
                    self._writer = RunWriter.reopen(self.run_dir, int(resume["step"]))
            except OSError as err:
                raise write_failed(self.run_dir / DATA_NAME, err) from None
            for name, attrs in {**STEP_ATTRS, **variable_attrs}.items():
                self._writer.describe(name, attrs)

            if resume is None:
                self._meta: dict[str, Any] = {
                    "status": "running",
                    "error": None,
                    "started": now_iso(),
                    "finished": None,
                    "seed": seed,
                    "every": every,
                    "probes": [p.name for p in self.probes],
                    "steps": 0,
                    "last_flush": None,
                    "on_nonfinite": on_nonfinite,
                    "frozen_params": frozen,
                    "world_size": self.context.world_size,
                    **environment(self.device),
                }
            else:
                self._meta = read_json(self.run_dir / "meta.json")
                for key in ("nonfinite", "failed_step", "first_nonfinite_step"):  # events after the checkpoint
                    self._meta.pop(key, None)
                self._meta.update(
                    status="running",
                    error=None,
                    finished=None,
                    steps=self._writer.lengths["step"],
                    resumed=[*self._meta.get("resumed", []), {"step": int(resume["step"]), "at": now_iso()}],
                )
            self._write_meta()

            self._step = first_step
            self.context.recording = first_step % every == 0
            self._rows = Rows(self.dtype)
            self._rows_verified = False
            self._host_rows: list[tuple[int, int, float]] = []
            self._extras: list[dict[str, Scalar]] = []
            self._eval_rows: list[tuple[int, dict[str, Scalar]]] = []
            self._unchecked_losses: list[torch.Tensor] = []
            """Detached losses of the steps since the last host check, oldest first (scanned in one stack)."""
            self._rows_checked = 0
            """Rows of ``_rows`` already scanned for non-finite gradient norms."""
            self._pending_flag: tuple[Any, torch.Tensor] | None = None
            """CUDA: the event and pinned host flag of a periodic check in flight (``_periodic_check``)."""
            self._first_bad_step = -1
            self._first_bad_value = math.nan
            self._skipped_steps = 0
            self._skip_this_step = False
            self._last_flush = time.monotonic()
            self._closed = False
            if resume is not None:
                self._restore(resume)
        except BaseException:  # a failed start leaves no hooks on the model and the directory to the next writer
            for probe in self.probes:
                probe.detach()
            self._lock.release()
            raise

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume recording at the next step (see ``resume``).

        Flushes first, so the store holds exactly the steps before it; with ``on_nonfinite="stop"`` a
        diverged loss raises NonFiniteLossError here rather than being checkpointed.
        """
        self._check_finite()
        self.flush()
        return {
            "step": self._step,
            "epoch": self.epoch,
            "probes": [p.state_dict() for p in self.probes],
            "first_bad_step": self._first_bad_step,
            "first_bad_value": self._first_bad_value,
            "nonfinite": self._meta.get("nonfinite"),
            "skipped_steps": self._skipped_steps,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (after the probes were attached)."""
        if len(state["probes"]) != len(self.probes):
            raise StoreError(
                f"the checkpoint holds {len(state['probes'])} probe states but the run has "
                f"{len(self.probes)} probes; resume with the run's own config.json"
            )
        self._step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.context.recording = self._step % self.every == 0
        for probe, probe_state in zip(self.probes, state["probes"], strict=True):
            probe.load_state_dict(probe_state)
        self._first_bad_step = int(state["first_bad_step"])
        self._first_bad_value = float(state["first_bad_value"])
        self._skipped_steps = int(state["skipped_steps"])
        if state["nonfinite"] is not None:
            self._meta["nonfinite"] = state["nonfinite"]
        if self._skipped_steps:
            self._meta["skipped_steps"] = self._skipped_steps

    @property
    def steps_done(self) -> int:
        """Number of optimizer steps seen so far (the index the next step will get)."""
        return self._step

    def step(
        self,
        loss: torch.Tensor | float,
        output: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        *,
        inputs: torch.Tensor | None = None,
        **scalars: Scalar,
    ) -> None:
        """Mark the end of one optimizer step; call it after ``optimizer.step()``.

        ``inputs`` is the step's clean model input (before mixing), for probes that rerun the batch.
        ``scalars`` are extra per-step values (floats or 0-d tensors) recorded under their own names,
        e.g. hyperparameters a strategy applied; a name missing at some recorded step is NaN there.
        """
        if self._closed:
            raise RuntimeError("Recorder.step() after close(); create a new Recorder for a new run")
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss), device=self.device, dtype=self.dtype)
        if loss.numel() != 1:
            StepData(loss).check()  # raises the error that names the shape
        if self._first_bad_step < 0:
            self._unchecked_losses.append(loss.detach())
        if self.on_nonfinite == "skip":
            scalars = {**scalars, "skipped": float(self._skip_this_step)}
            self._skip_this_step = False
        context = self.context
        if context.recording:
            self._record(StepData(loss, output, target, inputs), scalars)
        step = self._step = self._step + 1
        context.recording = recording = step % self.every == 0
        if recording:
            for probe in self._preparing:
                probe.before_recorded_step(context)
        if step % self.check_finite_every == 0:
            self._periodic_check()
        if len(self._rows) >= self.flush_steps or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _record(self, data: StepData, scalars: Mapping[str, Scalar]) -> None:
        context = self.context
        context.step = self._step
        if not self._rows_verified:
            data.check()
        with torch.no_grad():
            values = [v for probe in self.probes for v in probe.measure(context, data).values()]
        if not self._rows_verified:
            self._verify_first_row(values, data)
        self._rows.append(values)
        optimizer = context.optimizer
        lr = optimizer.param_groups[0]["lr"] if optimizer is not None else math.nan
        # a tensor lr (capturable/fused optimizers) is copied, not read: float() would sync with the device
        lr = lr.detach().clone() if isinstance(lr, torch.Tensor) else float(lr)
        self._host_rows.append((self._step, self.epoch, lr))
        self._extras.append(
            {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}
            if scalars
            else _NO_SCALARS
        )

    def _verify_first_row(self, values: list[torch.Tensor], data: StepData) -> None:
        """At the first recorded step: the probes measured what they declared; keep the class count seen."""
        sizes = [v.numel() for v in values]
        if sizes != [size for _, size, _ in self._layout]:
            raise RuntimeError(
                f"the probes measured values of sizes {sizes}, but declared variables "
                f"{self._layout}: measure() must return variables() in order"
            )
        if data.output is not None and data.output.dim() >= 2 and "num_classes" not in self._meta:
            self._meta["num_classes"] = int(data.output.shape[-1])
            self._write_meta()
        self._rows_verified = True

    def record_eval(self, **values: Scalar) -> None:
        """Record evaluation results (e.g. ``val_loss``, ``val_accuracy``) at the last completed step."""
        if self._closed:
            raise RuntimeError("Recorder.record_eval() after close()")
        self._eval_rows.append(
            (self._step - 1, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in values.items()})
        )

    def note(self, **values: float | int | str) -> None:
        """Store summary results (e.g. final accuracies) under ``results`` in ``meta.json``."""
        self._meta.setdefault("results", {}).update(values)
        self._write_meta()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run extra forward/backward passes (probes, diagnostics) without them being recorded."""
        previous = self.context.paused
        self.context.paused = True
        try:
            yield
        finally:
            self.context.paused = previous

    def skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss or a gradient is NaN/Inf, so that the loop skips ``optimizer.step()``.

        For ``on_nonfinite="skip"``: call it between ``backward()`` and ``optimizer.step()``. It costs one
        fused norm over the gradients and one host synchronisation per step. A flagged step is counted
        (``skipped_steps`` in ``meta.json``) and recorded with ``skipped`` = 1 (0 at the other steps).
        """
        grads = [p.grad for p in self.context.params if p.grad is not None]
        values = [loss.detach().reshape(()).float(), *(n.float() for n in torch._foreach_norm(grads))]
        self._skip_this_step = not bool(torch.isfinite(torch.stack(values)).all())
        if self._skip_this_step:
            self._skipped_steps += 1
            self._meta["skipped_steps"] = self._skipped_steps
        return self._skip_this_step

    def _columns(self, name: str) -> slice | None:
        """Where variable ``name`` lies in a recorded row, or None when it is not recorded."""
        offset = 0
        for variable, size, _ in self._layout or ():
            if variable == name:
                return slice(offset, offset + size)
            offset += size
        return None

    def _nonfinite_flags(self, losses: list[torch.Tensor], first_row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The losses as float64 and, on the device, one flag per loss then per row from ``first_row``: non-finite
        loss, or a non-finite gradient norm of a parameter that had a gradient."""
        values = torch.stack([loss.reshape(()).double() for loss in losses])
        flags = [~torch.isfinite(values)]
        if self._columns("grad_norm") is not None and len(self._rows) > first_row:
            flags.append(~self._finite_gradients(first_row).all(1))
        return values, torch.cat(flags)

    def _periodic_check(self) -> None:
        """The check every ``check_finite_every`` steps. On a CUDA device the training loop never waits for it: one
        flag (some unchecked step non-finite) is copied to pinned host memory without blocking and read at a
        later check, once the copy has landed (``Event.query``); a raised flag runs the full scan then."""
        if self.device.type != "cuda":
            self._check_finite()
            return
        if self._pending_flag is not None:
            landed, flag = self._pending_flag
            if not landed.query():
                return
            self._pending_flag = None
            if bool(flag):
                self._check_finite()
                return
        if not self._unchecked_losses or self._first_bad_step >= 0:
            return
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(self._nonfinite_flags(self._unchecked_losses, self._rows_checked)[1].any(), non_blocking=True)
        landed = torch.cuda.Event()
        landed.record()
        self._pending_flag = (landed, flag)

    def _scan_losses(self) -> None:
        """Find the first non-finite loss or recorded gradient norm among the unchecked steps (one host transfer)."""
        losses, self._unchecked_losses = self._unchecked_losses, []
        first_row, self._rows_checked = self._rows_checked, len(self._rows)
        if not losses or self._first_bad_step >= 0:
            return
        first_step = self._step - len(losses)
        values, flags = self._nonfinite_flags(losses, first_row)
        bad = flags.nonzero().flatten().tolist()
        if not bad:
            return
        steps = [first_step + i if i < len(values) else self._host_rows[first_row + i - len(values)][0] for i in bad]
        step = min(steps)
        self._first_bad_step = step
        self._first_bad_value = float(values[step - first_step])
        self._meta["nonfinite"] = {
            "step": step,
            "kind": "gradient" if math.isfinite(self._first_bad_value) else "loss",
            "loss": str(self._first_bad_value),
            **self._locate(step),
        }

    def _finite_gradients(self, first_row: int) -> torch.Tensor:
        """Per row from ``first_row`` and parameter: whether the recorded gradient norm is finite or the parameter
        had no gradient at that step (recorded as NaN, which is no divergence)."""
        finite = torch.isfinite(self._rows.tensor(first_row)[:, self._columns("grad_norm")])
        absent = next(probe.absent for probe in self.probes if isinstance(probe, GradNorm))
        for row, (step, _, _) in enumerate(self._host_rows[first_row:]):
            if step in absent:
                finite[row, absent[step]] = True
        return finite

    def _locate(self, step: int) -> dict[str, str | None]:
        """First parameter with a non-finite gradient norm and first layer with a non-finite activation mean at
        ``step``, from its recorded row (None where the step or the variable is not recorded)."""
        found: dict[str, str | None] = {"param": None, "layer": None}
        index = next((i for i, (row_step, _, _) in enumerate(self._host_rows) if row_step == step), None)
        if index is None:
            return found
        row = self._rows.tensor(index)[0]
        for key, variable in (("param", "grad_norm"), ("layer", "act_mean")):
            columns = self._columns(variable)
            labels = self._coords.get(key)
            if columns is not None and labels:
                finite = self._finite_gradients(index)[0] if key == "param" else torch.isfinite(row[columns])
                bad = (~finite).nonzero().flatten().tolist()
                found[key] = labels[bad[0]] if bad else None
        return found

    def _check_finite(self) -> None:
        self._scan_losses()
        bad_step = self._first_bad_step
        if bad_step < 0 or self.on_nonfinite != "stop":
            if bad_step >= 0:
                self._meta["first_nonfinite_step"] = bad_step
            return
        error = self._nonfinite_error()
        self._meta["failed_step"] = bad_step
        self.close(status="failed", error=str(error))
        raise error

    def _nonfinite_error(self) -> NonFiniteLossError:
        """The error describing the first non-finite event (``meta["nonfinite"]``)."""
        event = self._meta["nonfinite"]
        where = ", ".join(f"first {key} {event[key]}" for key in ("param", "layer") if event[key])
        return NonFiniteLossError(self._first_bad_step, self._first_bad_value, event["kind"], where or None)

    def flush(self) -> None:
        """Move everything recorded to the store now (one device-to-host transfer per kind of value)."""
        self._last_flush = time.monotonic()
        if not len(self._rows) and not self._eval_rows:
            return
        self._scan_losses()  # the rows leave the device now: look at their gradient norms first
        try:
            if self.writes and len(self._rows):
                self._writer.append("step", self._step_columns())
            if self.writes and self._eval_rows:
                self._writer.append("eval_step", self._eval_columns())
        except OSError as err:
            raise write_failed(self.run_dir / DATA_NAME, err) from None
        self._meta["steps"] = self._writer.lengths["step"]
        self._meta["last_flush"] = now_iso()
        self._rows.clear()
        self._host_rows, self._extras, self._eval_rows = [], [], []
        for probe in self.probes:
            if isinstance(probe, GradNorm):
                probe.absent.clear()
        self._rows_checked = 0
        self._write_meta()

    def _step_columns(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        matrix = self._rows.tensor().cpu().numpy()
        columns: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        offset = 0
        for name, size, shape in self._layout:
            block = matrix[:, offset : offset + size].reshape(len(matrix), *shape)
            columns[name] = (self._dims[name], block)
            offset += size
        steps, epochs, lrs = zip(*self._host_rows, strict=True)
        columns["step"] = (("step",), np.asarray(steps, dtype=np.int64))
        columns["epoch"] = (("step",), np.asarray(epochs, dtype=np.int64))
        columns["lr"] = (("step",), np.asarray(_host_floats(lrs), dtype=np.float64))
        columns.update(_scalar_columns("step", self._extras))
        return columns

    def _eval_columns(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        steps = np.asarray([step for step, _ in self._eval_rows], dtype=np.int64)
        return {
            "eval_step": (("eval_step",), steps),
            **_scalar_columns("eval_step", [values for _, values in self._eval_rows]),
        }

    def _write_meta(self) -> None:
        if not self.writes:
            return
        try:
            write_json_atomic(self.run_dir / "meta.json", self._meta)
        except OSError as err:
            raise write_failed(self.run_dir / "meta.json", err) from None

    def close(self, status: Literal["finished", "failed"] = "finished", error: str | None = None) -> None:
        """Flush, remove the hooks and mark the run finished (or failed, with ``error``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            self._scan_losses()
            if self._first_bad_step >= 0 and self.on_nonfinite != "stop":
                self._meta["first_nonfinite_step"] = self._first_bad_step
            if status == "finished" and self.on_nonfinite == "stop" and self._first_bad_step >= 0:
                status, error = "failed", str(self._nonfinite_error())
                self._meta["failed_step"] = self._first_bad_step
        finally:
            for probe in self.probes:
                probe.detach()
            self._meta.update(status=status, error=error, finished=now_iso())
            try:
                self._write_meta()
            finally:
                self._lock.release()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.close(status="failed", error=f"{kind.__name__}: {value}")


class _NotWriting:
    """The store and lock of a process that does not write the run (a distributed run's other ranks)."""

    lengths = MappingProxyType({"step": 0, "eval_step": 0})

    def describe(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Nothing to describe."""

    def release(self) -> None:
        """No lock to release."""


def write_failed(path: Path, err: OSError) -> StoreError:
    """The one-line error of a failed write (disk full, read-only directory), naming the fix."""
    return StoreError(
        f"writing {path} failed ({err.strerror or err}); free disk space or make the run "
        "directory writable (or choose another run directory)"
    )


def _host_floats(values: Sequence[float | torch.Tensor]) -> list[float]:
    """Python floats of a mix of floats and 0-d tensors, the tensors moved to the host in one transfer."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return list(values)
    host = iter(torch.stack([t.reshape(()).double() for t in tensors]).cpu().tolist())
    return [next(host) if isinstance(v, torch.Tensor) else v for v in values]


def _scalar_columns(
    append_dim: str, rows: Sequence[Mapping[str, Scalar]]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Columns of per-row extra scalars; tensors move to the host in one stacked transfer per name."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        present = [row[name] for row in rows if name in row]
        tensors = [v for v in present if isinstance(v, torch.Tensor)]
        host = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
        values = [
            (next(host) if isinstance(row[name], torch.Tensor) else float(row[name])) if name in row else math.nan
            for row in rows
        ]
        columns[name] = ((append_dim,), np.asarray(values, dtype=np.float64))
    return columns
