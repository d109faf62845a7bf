"""The settings of a built-in capture run: one flat dataclass, read from TOML/JSON files and CLI flags.

Keys are the field names of :class:`RunConfig` (``batch_size``; a file may also spell it ``batch-size``).
Precedence: defaults < config file < command-line flags. Every value is checked before anything runs,
and a bad one raises :class:`~dynamics.errors.ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dynamics.data import DATASETS
from dynamics.errors import ConfigError
from dynamics.models import ACTIVATIONS, MODELS
from dynamics.optim import OPTIMIZERS, SCHEDULES
from dynamics.probes import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rerun a capture; written to the run's ``config.json``.

    The defaults are the quick MNIST-1D capture: a 3-block 1-D CNN trained with SGD for 30 epochs of
    62 steps, long enough for training accuracy to pass 50% well inside the run, short enough for about
    a minute on two CPU cores.
    """

    dataset: str = "mnist1d"
    num_samples: int | None = None
    """Samples generated (train + test); None takes the dataset's default."""
    train_size: int | None = None
    """Keep a seeded class-stratified subset of this many training samples; None keeps all."""
    data_seed: int = 0
    """Seed of the data itself, kept apart from ``seed`` so that seeds vary the training, not the data."""
    model: str = "cnn"
    width: int = 32
    depth: int = 3
    activation: str = "relu"
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 2048
    seed: int = 0
    every: int = 1
    probes: str = "default"
    device: str = "auto"
    flush_seconds: float = 10.0
    # Training strategies (dynamics.strategies; validated by validate_strategies there)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mix_mode: str = "batch"
    label_smoothing: float = 0.0
    enp_epochs: int | str | None = None
    """Length of the Enlightenment Period in epochs, or "auto" (smoothed training accuracy reaches 50%)."""
    enp_tau: float = 10.0
    enp_threshold: float = 0.5
    mixup_pause: bool = False
    alpha_boost: float | None = None
    high_loss_removal: float | None = None
    plp: bool = False
    plp_k: float = 1.0
    plp_unit: str = "iteration"
    plp_weights_only: bool = False
    cyclical_factor: float = 2.0
    cyclical_wd: str | None = None
    cyclical_temperature: str | None = None
    cyclical_clip: str | None = None
    cyclical_focal: bool = False
    focal_gamma_hc: float = 3.0
    focal_gamma_pos: float = 2.0
    focal_gamma_neg: float = 2.0
    focal_label_smoothing: float = 0.1
    cyclical_batch_size: str | None = None
    cyclical_aug: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


_POSITIVE_INTS = ("width", "depth", "epochs", "batch_size", "eval_batch_size", "every")
_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "model": MODELS, "activation": tuple(ACTIVATIONS), "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES, "probes": tuple(PRESETS), "device": DEVICES,
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _coerce(key: str, value: Any, hint: str) -> Any:
    """Check one value against its field type (``int``, ``float``, ``str``, ``bool`` or a union of them).

    Ints are accepted for floats; for an ``int | str`` field a string of digits (as a flag gives it) becomes
    an int. Nothing else is converted.
    """
    kinds = hint.split(" | ")
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{key} must be set, got null; give a value ({_flag(key)})")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if "int" in kinds and isinstance(value, str) and value.isdigit():
        return int(value)
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "int" in kinds and is_number and isinstance(value, int):
        return value
    if "float" in kinds and is_number:
        return float(value)
    if "str" in kinds and isinstance(value, str):
        return value
    expected = " or ".join(kind for kind in kinds if kind != "None")
    raise ConfigError(f"{key} must be {expected}, got {value!r}; fix it ({_flag(key)})")


def make_config(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a mapping of field names (or hyphenated names) to values."""
    hints = {f.name: str(f.type) for f in fields(RunConfig)}
    known = set(hints)
    checked: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ConfigError(f"unknown setting {raw_key!r}; valid keys are: {', '.join(sorted(known))}")
        checked[key] = _coerce(key, value, hints[key])
    config = RunConfig(**checked)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Raise ConfigError for the first value that cannot run."""
    for key, choices in _CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)} ({_flag(key)})")
    for key in _POSITIVE_INTS:
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be a positive integer, got {getattr(config, key)}; fix {_flag(key)}")
    for key in ("num_samples", "train_size"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value}; fix {_flag(key)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(f"learning rate must be a finite number > 0, got {config.lr}; fix --lr")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {config.weight_decay}; fix --weight-decay")
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"momentum must lie in [0, 1), got {config.momentum}; fix --momentum")
    if config.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {config.warmup_steps}; fix --warmup-steps")
    if not (math.isfinite(config.flush_seconds) and config.flush_seconds > 0):
        raise ConfigError(f"flush_seconds must be > 0, got {config.flush_seconds}; fix --flush-seconds")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a ``.toml`` or ``.json`` file (by suffix), as a flat mapping."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path} must end in .toml or .json; rename it or convert it (--config)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path (--config)") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"config file {path} is unreadable ({reason}); fix its permissions (--config)") from None
    try:
        payload = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as err:
        detail = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is malformed ({detail}); fix its syntax (--config)") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings; see README (--config)")
    nested = [key for key, value in payload.items() if isinstance(value, dict)]
    if nested:
        raise ConfigError(f"config file {path} has nested tables {nested}; put every key at the top level")
    return payload
