"""Record a Hugging Face ``transformers.Trainer`` training: ``Trainer(..., callbacks=[DynamicsCallback("runs/x")])``.

How the callback gets what the Recorder needs (``Trainer`` hands callbacks neither the loss nor the batch):

* **Loss**: a forward hook on the model keeps the ``loss`` the model returns in each training forward pass
  (train mode, gradients on), detached, on the device, no host synchronisation. The recorded loss of an
  optimizer step pools its micro-batches as ``Trainer`` does, so it equals the training loss ``Trainer``
  logs with ``logging_steps=1``: their mean, or their sum when the model was given ``num_items_in_batch``
  (it then normalised each loss over the whole accumulated batch). The loss must come from the model (the
  usual case: ``labels`` in the inputs); a ``Trainer`` that computes it elsewhere (``compute_loss_func``,
  ``label_smoothing_factor``, an overridden ``compute_loss`` that does not pass the labels) stops the run
  with a ``ConfigError``.
* **Accuracy**: recorded for one prediction per sample (2-D ``logits`` and integer ``labels`` of one per
  sample: sequence or image classification); NaN for token-level heads (language models, token
  classification), whose ``-100`` ignored positions the accuracy would count as misses.
* **Step**: one Recorder step per optimizer step, in ``on_optimizer_step`` (after ``optimizer.step()``,
  before the learning-rate schedule steps and before ``zero_grad``); ``lr`` is the rate the step applied.
  ``grad_norm`` is per parameter before clipping (``Trainer`` logs the total norm before clipping:
  ``sqrt(sum(grad_norm**2))``).
* **Activations**: besides ``nn.ReLU``, ``nn.GELU``... the ``activations`` probe is given
  :func:`hf_flat_rule`, which also knows the activation classes of ``transformers.activations``
  (``GELUActivation`` of BERT, ``NewGELUActivation`` of GPT-2, ``SiLUActivation`` of Llama...).
* **Evaluation**: ``on_evaluate`` records ``eval_loss`` (and ``eval_accuracy`` when ``compute_metrics``
  returns ``accuracy``) as ``val_loss`` / ``val_accuracy`` at the last completed step.
* The run is closed ``finished`` in ``on_train_end``. ``Trainer`` has no callback for a training that
  raises: such a run stays ``running`` in ``meta.json`` (as one killed would; its lock goes with the
  process), unless the caller closes it: ``callback.close(status="failed", error=...)``.

Multi-process training (``torchrun``) builds the Recorder in every process in ``on_train_begin``, after the
process group exists; only rank 0 writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

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
from dynamics.probes import PRESETS, ActivationStats, FlatRule, Probe, flat_rule
from dynamics.probes.flat_regions import GELU_LOW, SILU_LOW, SLOPE
from dynamics.recorder import Recorder

try:
    import transformers
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers import activations as hf_activations
except ModuleNotFoundError as err:
    missing_framework(err, ("transformers",), __name__, "Hugging Face transformers", "hf")

GELU_TANH_LOW = -2.355164
"""x below which the tanh approximation of GELU has |f'(x)| <= 0.05 (solved numerically, as GELU_LOW)."""
QUICK_GELU_LOW = SILU_LOW / 1.702
"""QuickGELU is x * sigmoid(1.702 x) = SiLU(1.702 x) / 1.702: its slope at x is SiLU's at 1.702 x."""
MISH_LOW = -4.111718
"""x below which Mish'(x) stays within -0.05..0 (solved numerically)."""
RELU2_HIGH = SLOPE / 2
"""relu(x)^2 has slope 2x: flat for x <= 0.025, i.e. y <= 0.025^2."""


def _laplace_rule() -> FlatRule:
    # LaplaceActivation: y = Phi((x - 0.707107) / 0.282095), slope phi(z) / sigma <= SLOPE for |z| >= z_edge
    sigma = 0.282095
    z_edge = math.sqrt(-2 * math.log(SLOPE * sigma * math.sqrt(2 * math.pi)))
    y_low = 0.5 * (1 + math.erf(-z_edge / math.sqrt(2)))
    return FlatRule(
        y_low,
        1 - y_low,
        "output",
        f"|x - 0.7071| >= {z_edge * sigma:.4f} (|f'| <= {SLOPE}), i.e. y <= {y_low:.4f} or y >= {1 - y_low:.4f}",
        nonnegative=True,
    )


def _classes(*names: str) -> tuple[type, ...]:
    """The classes of ``transformers.activations`` among ``names`` that this version has."""
    return tuple(cls for name in names if isinstance(cls := getattr(hf_activations, name, None), type))


def _left_tail(low: float, what: str) -> FlatRule:
    return FlatRule(low, None, "input", f"x <= {low:.4f} (|f'| <= {SLOPE} on the left tail; {what})")


def _clipped_gelu(module: nn.Module) -> FlatRule:
    high = float(module.max)
    if high < 4:  # GELU(x) = x within 1e-4 from x = 4 on: only there is "x >= max" the clipped end
        return _left_tail(GELU_LOW, "clipped GELU")
    return FlatRule(GELU_LOW, high, "input", f"x <= {GELU_LOW:.4f} or x >= {high:g} (left tail, clipped end)")


_HF_RULES: list[tuple[tuple[type, ...], Any]] = [
    (_classes("GELUActivation"), lambda m: _left_tail(GELU_LOW, "GELU")),
    (
        _classes("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation", "AccurateGELUActivation"),
        lambda m: _left_tail(GELU_TANH_LOW, "tanh-approximated GELU"),
    ),
    (_classes("QuickGELUActivation"), lambda m: _left_tail(QUICK_GELU_LOW, "x sigmoid(1.702 x)")),
    (_classes("SiLUActivation"), lambda m: _left_tail(SILU_LOW, "SiLU")),
    ((*_classes("MishActivation"), nn.Mish), lambda m: _left_tail(MISH_LOW, "Mish")),
    (_classes("ClippedGELUActivation"), _clipped_gelu),
    (
        _classes("ReLUSquaredActivation"),
        lambda m: FlatRule(
            RELU2_HIGH**2, None, "output", f"y <= {RELU2_HIGH**2:g} (x <= {RELU2_HIGH}, relu(x)^2)", nonnegative=True
        ),
    ),
    (_classes("LaplaceActivation"), lambda m: _laplace_rule()),
    ((nn.Hardswish,), lambda m: FlatRule(-3.0, None, "input", "x <= -3 (y == 0, hardswish)")),
]
"""(classes, rule of a module) for activation modules the core rules (``flat_rule``) do not know."""


def hf_flat_rule(module: nn.Module) -> FlatRule | None:
    """The flat-region rule of an activation module: the core rule (:func:`dynamics.probes.flat_rule`) or, for
    the activation classes of ``transformers.activations`` (and ``nn.Mish``, ``nn.Hardswish``), the rule of
    the function it computes, by the same criterion (|slope| <= 0.05 on a tail). None for any other module
    (also ``LinearActivation``, ``XIELUActivation`` and ``SqrtSoftplusActivation``, which have none here)."""
    rule = flat_rule(module)
    if rule is not None:
        return rule
    for classes, make in _HF_RULES:
        if classes and isinstance(module, classes):
            return make(module)
    return None


def hf_probes(probes: str | Sequence[str | Probe]) -> str | list[str | Probe]:
    """``probes`` with the ``activations`` probe (by name, or in a preset) replaced by one that knows the
    activation classes of ``transformers`` (:func:`hf_flat_rule`); an unknown preset name is passed on for the
    Recorder to refuse."""
    if isinstance(probes, str):
        if probes not in PRESETS:
            return probes
        probes = PRESETS[probes]
    return [ActivationStats(hf_flat_rule) if item == "activations" else item for item in probes]


EVAL_METRICS = {"eval_loss": "val_loss", "eval_accuracy": "val_accuracy"}
"""``Trainer`` evaluation metric -> recorded variable."""


class DynamicsCallback(TrainerCallback):
    """Records a ``transformers.Trainer`` training into ``run_dir`` (see the module docstring).

    Args:
        run_dir: the run directory to create.
        every: record optimizer steps 0, every, 2*every, ...
        probes: a preset name or a list of probe names/instances, as for the Recorder.
        hf_activations: record the activation classes of ``transformers`` too (:func:`hf_probes`; default True).
        eval_metrics: ``Trainer`` metric -> recorded variable (default :data:`EVAL_METRICS`).
        config: settings added to the run's ``config.json`` (the callback adds the ``TrainingArguments``, with
            tokens masked, and the model's config).
        recorder_options: further Recorder arguments (``flush_steps``, ``flush_seconds``, ``on_nonfinite``
            ``"stop"``/``"record"``, ``overwrite``...; ``seed`` defaults to ``args.seed``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        every: int = 1,
        probes: str | Sequence[str | Probe] = "default",
        *,
        hf_activations: bool = True,
        eval_metrics: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        **recorder_options: Any,
    ) -> None:
        refuse_skip(recorder_options.get("on_nonfinite", "stop"))
        self.run_dir = Path(run_dir)
        self.every = every
        self.probes = hf_probes(probes) if hf_activations else probes
        self.eval_metrics = dict(EVAL_METRICS if eval_metrics is None else eval_metrics)
        self.config = dict(config or {})
        self.recorder_options = recorder_options
        self.recorder: Recorder | None = None
        """The run's Recorder, from ``on_train_begin``."""
        self._closed = False
        self._optimizer: AppliedLR | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._losses: list[torch.Tensor] = []
        self._normalised = False
        """Whether this step's losses came normalised over the accumulated batch (``num_items_in_batch``)."""
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._recorded_step = -1
        """``state.global_step`` after the last recorded optimizer step."""

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if self.recorder is not None:
            raise ConfigError(
                f"this DynamicsCallback already recorded a training into {self.run_dir}; give each train() its "
                "own DynamicsCallback and run_dir"
            )
        if model is None:
            raise ConfigError("Trainer gave DynamicsCallback no model in on_train_begin")
        self._optimizer = AppliedLR(optimizer) if optimizer is not None else None
        options = {"seed": args.seed, **self.recorder_options}
        self.recorder = Recorder(
            model,
            self._optimizer,
            self.run_dir,
            self.every,
            probes=self.probes,
            config=json_safe({**self._settings(args, model), **self.config}),
            **options,
        )
        self.recorder.epoch = int(round(state.epoch or 0.0))
        self._recorded_step = state.global_step
        self._hook = model.register_forward_hook(self._capture, with_kwargs=True)

    @staticmethod
    def _settings(args: TrainingArguments, model: nn.Module) -> dict[str, Any]:
        model_config = getattr(model, "config", None)
        return {
            "integration": "transformers",
            "transformers_version": transformers.__version__,
            "model": type(model).__qualname__,
            "model_config": model_config.to_dict() if hasattr(model_config, "to_dict") else None,
            "training_args": args.to_dict(),
        }

    def _open(self) -> Recorder | None:
        """The Recorder while the training records (after ``on_train_begin``, before it is closed)."""
        return None if self._closed else self.recorder

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: keep the loss (and, at recorded steps, logits and labels) of a training forward pass."""
        recorder = self._open()
        if recorder is None or not module.training or not torch.is_grad_enabled():
            return
        labels = kwargs.get("labels")
        if isinstance(output, Mapping):
            loss, logits = output.get("loss"), output.get("logits")
        elif isinstance(output, tuple | list) and output and labels is not None:
            loss, logits = output[0], output[1] if len(output) > 1 else None
        else:
            loss = logits = None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        self._losses.append(loss.detach())
        self._normalised = kwargs.get("num_items_in_batch") is not None
        if (
            recorder.context.recording
            and isinstance(logits, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and logits.dim() == 2
            and labels.shape == logits.shape[:1]
            and not labels.is_floating_point()
        ):
            self._outputs.append(logits.detach())
            self._targets.append(labels.detach())

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if (recorder := self._open()) is not None:
            recorder.epoch = int(round(state.epoch or 0.0))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self._open() is not None and self._optimizer is not None:
            self._optimizer.capture()  # the schedule steps after the optimizer: this is the rate the step applies

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        self._record(state.global_step + 1)  # global_step counts this step once on_step_end comes

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self._recorded_step != state.global_step:  # transformers without on_optimizer_step
            self._record(state.global_step)

    def _record(self, global_step: int) -> None:
        recorder = self._open()
        if recorder is None:
            return
        self._recorded_step = global_step
        losses, outputs, targets = self._losses, self._outputs, self._targets
        self._losses, self._outputs, self._targets = [], [], []
        if not losses:
            self.close(status="failed", error="no loss from the model")
            raise ConfigError(
                "the model returned no loss in the training forward passes of this step; DynamicsCallback "
                "records the loss the model computes from the labels in its inputs, not one computed outside it "
                "(compute_loss_func, label_smoothing_factor or an overridden compute_loss)"
            )
        output, target = joined(outputs), joined(targets)
        if output is None or target is None or len(outputs) != len(losses):
            output = target = None
        recorder.step(loss=pooled_loss(losses, total=self._normalised), output=output, target=target)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs,
    ) -> None:
        recorder = self._open()
        if recorder is None or recorder.steps_done == 0 or not metrics:
            return
        values = eval_values(metrics, self.eval_metrics)
        if values:
            recorder.record_eval(**values)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.close()

    def close(self, status: Literal["finished", "failed"] = "finished", error: str | None = None) -> None:
        """Close the run (``on_train_end`` does; call it with ``status="failed"`` when ``train()`` raised)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if (recorder := self._open()) is not None:
            self._closed = True
            recorder.close(status=status, error=error)
