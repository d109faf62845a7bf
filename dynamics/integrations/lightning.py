"""Record a PyTorch Lightning training with the Recorder: ``Trainer(callbacks=[DynamicsCallback("runs/x")])``.

The protocol between the ``LightningModule`` and the callback:

* ``training_step`` returns the loss, or a dict with ``"loss"`` and optionally ``"output"`` (the model's
  output for the batch, batch first, e.g. logits) and ``"target"`` (class indices of shape
  ``output.shape[:-1]``, or soft targets of the output's shape). With output and target the training
  ``accuracy`` is recorded (argmax agreement), else it is NaN. The key names are settable.
* One Recorder step per *optimizer* step: with ``accumulate_grad_batches`` > 1 the callback pools the
  micro-batches of a step. The recorded ``loss`` is the mean of their losses as ``training_step`` returned
  them (before Lightning divides each by ``accumulate_grad_batches``), accuracy and activation statistics
  are over all of them, ``grad_norm`` is of the accumulated gradient before clipping and ``lr`` the rate the
  step applied (read before the optimizer step; Lightning steps per-step schedules before the callback sees
  the end of the batch).
* Evaluation: after each validation run (not the sanity check), the logged metrics ``val_loss`` and
  ``val_acc`` (or ``val_accuracy``) are recorded as ``val_loss`` / ``val_accuracy`` at the last completed step.
  It reads ``trainer.callback_metrics`` in ``on_validation_end``, so metrics the module logs in its own
  ``on_validation_epoch_end`` are included.
* The run is closed ``finished`` at the end of ``fit`` and ``failed`` (with the error) when ``fit`` raises.

The Recorder is built in ``on_fit_start``, after the strategy has set up the process group, wrapped the
model and built the optimizers: under DDP every process records (and takes part in the reductions) and only
rank 0 writes the run. One callback records one ``fit``; a resumed ``fit`` (``ckpt_path``) is a new run
whose step 0 is the first step after the checkpoint, in a new ``run_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dynamics.errors import ConfigError
from dynamics.integrations.common import (
    AppliedLR,
    eval_values,
    joined,
    json_safe,
    missing_framework,
    pooled_loss,
    refuse_skip,
)
from dynamics.probes import Probe
from dynamics.recorder import Recorder

try:
    import lightning
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ModuleNotFoundError as err:
    missing_framework(err, ("lightning",), __name__, "PyTorch Lightning (the lightning package)", "lightning")

EVAL_METRICS = {"val_loss": "val_loss", "val_acc": "val_accuracy", "val_accuracy": "val_accuracy"}
"""Logged validation metric -> recorded variable (a later entry wins when several are logged)."""


class DynamicsCallback(Callback):
    """Records a ``LightningModule``'s training into ``run_dir`` (see the module docstring for the protocol).

    Args:
        run_dir: the run directory to create.
        every: record optimizer steps 0, every, 2*every, ...
        probes: a preset name or a list of probe names/instances, as for the Recorder.
        output_key / target_key: the keys of the ``training_step`` dict holding the output and the target.
        eval_metrics: logged validation metric -> recorded variable (default :data:`EVAL_METRICS`).
        config: settings added to the run's ``config.json`` (the callback adds the module's ``hparams`` and the
            trainer's settings).
        recorder_options: further Recorder arguments (``seed``, ``flush_steps``, ``flush_seconds``,
            ``on_nonfinite`` ``"stop"``/``"record"``, ``overwrite``...).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        every: int = 1,
        probes: str | Sequence[str | Probe] = "default",
        *,
        output_key: str = "output",
        target_key: str = "target",
        eval_metrics: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        **recorder_options: Any,
    ) -> None:
        refuse_skip(recorder_options.get("on_nonfinite", "stop"))
        self.run_dir = Path(run_dir)
        self.every = every
        self.probes = probes
        self.output_key = output_key
        self.target_key = target_key
        self.eval_metrics = dict(EVAL_METRICS if eval_metrics is None else eval_metrics)
        self.config = dict(config or {})
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        """The run's Recorder, from ``on_fit_start``."""
        self._closed = False
        self._optimizer: AppliedLR | None = None
        self._global_step = 0
        self._losses: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is not None:
            raise ConfigError(
                f"this DynamicsCallback already recorded a fit into {self.run_dir}; give each fit its own "
                "DynamicsCallback and run_dir"
            )
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self._optimizer = AppliedLR(optimizer) if optimizer is not None else None
        options = dict(self.recorder_options)
        if "seed" not in options and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
            options["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        self.recorder = Recorder(
            pl_module,
            self._optimizer,
            self.run_dir,
            self.every,
            probes=self.probes,
            config=json_safe({**self._settings(trainer, pl_module), **self.config}),
            **options,
        )
        self.recorder.epoch = trainer.current_epoch
        self._global_step = trainer.global_step

    @staticmethod
    def _settings(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return {
            "integration": "lightning",
            "lightning_version": lightning.__version__,
            "module": type(pl_module).__qualname__,
            "hparams": dict(pl_module.hparams),
            "trainer": {
                "max_epochs": trainer.max_epochs,
                "max_steps": trainer.max_steps,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "gradient_clip_val": trainer.gradient_clip_val,
                "precision": trainer.precision,
                "strategy": type(trainer.strategy).__name__,
                "world_size": trainer.world_size,
                "automatic_optimization": pl_module.automatic_optimization,
            },
            "optimizer": type(trainer.optimizers[0]).__name__ if trainer.optimizers else None,
        }

    def _open(self) -> Recorder | None:
        """The Recorder while the fit records (after ``on_fit_start``, before it is closed)."""
        return None if self._closed else self.recorder

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (recorder := self._open()) is not None:
            recorder.epoch = trainer.current_epoch

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        recorded = self._optimizer
        if recorded is not None and (
            optimizer is recorded.optimizer or getattr(optimizer, "_optimizer", None) is recorded.optimizer
        ):
            recorded.capture()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        recorder = self._open()
        if recorder is None:
            return
        loss, output, target = self._unpack(outputs)
        if loss is not None:
            self._losses.append(loss.detach())
            if recorder.context.recording and output is not None and target is not None:
                self._outputs.append(output.detach())
                self._targets.append(target.detach())
        if trainer.global_step == self._global_step:
            return  # accumulating: no optimizer step in this batch
        self._global_step = trainer.global_step
        losses, outputs_, targets = self._losses, self._outputs, self._targets
        self._losses, self._outputs, self._targets = [], [], []
        if not losses:
            raise ConfigError(
                "training_step returned no loss for the batches of this optimizer step; return the loss, or a "
                "dict with 'loss', so that DynamicsCallback can record it"
            )
        # automatic optimization hands on_train_batch_end the loss divided by accumulate_grad_batches
        accumulate = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        output, target = joined(outputs_), joined(targets)
        if output is None or target is None or len(outputs_) != len(losses):
            output = target = None
        recorder.step(loss=pooled_loss(losses, scale=float(accumulate)), output=output, target=target)

    def _unpack(self, outputs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if isinstance(outputs, torch.Tensor):
            return outputs, None, None
        if not isinstance(outputs, Mapping):
            return None, None, None
        loss, output, target = (outputs.get(key) for key in ("loss", self.output_key, self.target_key))
        tensors = [value if isinstance(value, torch.Tensor) else None for value in (loss, output, target)]
        return tensors[0], tensors[1], tensors[2]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recorder = self._open()
        if recorder is None or trainer.sanity_checking or recorder.steps_done == 0:
            return
        values = eval_values(trainer.callback_metrics, self.eval_metrics)
        if values:
            recorder.record_eval(**values)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (recorder := self._open()) is not None:
            self._closed = True
            recorder.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if (recorder := self._open()) is not None:
            self._closed = True
            recorder.close(status="failed", error=f"{type(exception).__name__}: {exception}")
