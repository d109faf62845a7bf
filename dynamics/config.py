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
from dynamics.probes import PRESETS, SKETCH_MODES
from dynamics.recorder import NONFINITE_POLICIES
from dynamics.steps import PRECISIONS

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
    data_dir: str | None = None
    """Where file data sets are (cifar10/100, tinyimagenet, imagefolder); for text, the text file."""
    image_size: int | None = None
    """Side of the square images decoded from tinyimagenet/imagefolder; None takes 64."""
    seq_len: int | None = None
    """Window length of text and timeseries samples; None takes 128."""
    augment: bool = True
    """Random crop (4-pixel padding) and horizontal flip of image training batches, on the device."""
    model: str = "cnn"
    width: int = 32
    depth: int = 3
    activation: str = "relu"
    width_mult: float = 1.0
    """Channel/embedding width multiplier of the reference architectures (not mlp/cnn, which use width)."""
    patch_size: int | None = None
    """ViT patch size; None takes image side / 8 (4 at 32x32, 8 at 64x64)."""
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
    precision: str = "fp32"
    """fp32, or bf16 autocast of the forward pass and loss (weights and optimizer state stay fp32)."""
    channels_last: bool = False
    """NHWC memory layout of image batches and convolution weights (faster on GPUs with tensor cores)."""
    compile: bool = False
    """torch.compile the model in place (module names and the Recorder's hooks are kept)."""
    flush_seconds: float = 10.0
    # Checkpoints, resume and failures (dynamics.checkpoint)
    checkpoint_steps: int = 0
    """Checkpoint every this many optimizer steps (0: by time only); always before the first and after the last."""
    checkpoint_seconds: float = 300.0
    """Checkpoint when this many seconds passed since the last one (0: by steps only)."""
    checkpoint_keep: int = 2
    """Newest checkpoints kept in <run>/checkpoints (>= 1)."""
    deterministic: bool = False
    """Deterministic kernels only (torch.use_deterministic_algorithms), for bit-identical reruns and resumes."""
    on_nonfinite: str = "stop"
    """NaN/Inf loss or gradient: stop (run failed), skip (that step's update is not applied) or record."""
    # Parameter trajectories (dynamics.probes.trajectory, dynamics.snapshots)
    sketch_dim: int = 8
    """Random unit directions of the trajectory sketch (traj_proj), per parameter tensor and for the model."""
    sketch_seed: int = 0
    """Seed of the sketch's directions, apart from ``seed`` so that runs of different seeds share one sketch."""
    sketch_mode: str = "sign"
    """sign: random sign directions (sketch_dim bits per parameter); dense: Gaussian directions (sketch_dim
    floats per parameter); hashed: sparse signs (one int32 per parameter)."""
    snapshots: bool = True
    """Keep full parameter snapshots: dense early (geometric in steps), at every epoch end and the last step."""
    snapshot_budget_mb: float = 256.0
    """Most MiB all snapshots may take; beyond it the planned snapshots are thinned evenly."""
    # Phase-transition probes on a fixed probe set (dynamics.probes.representation / .fisher)
    representation: bool = False
    """Record order parameters of the penultimate features (NC1, ridge and k-NN probe accuracy, CKA)."""
    fisher: bool = False
    """Record the Fisher-information trace (labels sampled from the model) on the probe set."""
    probe_samples: int = 256
    """Training and test samples, each, in the probe set (seeded by data_seed: the same for every seed)."""
    probe_growth: float = 0.1
    """Probe-set measurements at step 0, then max(1, ceil(probe_growth * step)) steps after each one."""
    probe_max_interval: int | None = None
    """Longest gap between probe-set measurements in steps; None leaves it unbounded."""
    store_features: bool = False
    """Also keep the raw probe-set features of each measurement in <run>/features/ (needs representation)."""
    # Gradient interference and activation revival of Mixup (dynamics.probes.interference)
    interference: bool = False
    """Record cos/interference ratio of clean vs mixed gradients, activation revival and ATD on the probe set."""
    interference_every: int = 10
    """Steps between interference measurements (on the step's batch, after its update)."""
    interference_alpha: float = 0.4
    """Mixup alpha the interference probe mixes with when the run itself mixes nothing."""
    interference_samples: bool = False
    """Also record per-sample gradient statistics: clean-vs-mixed alignment, stiffness, diversity, GSNR (one Gram)."""
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


_POSITIVE_INTS = ("width", "depth", "epochs", "batch_size", "eval_batch_size", "every", "sketch_dim",
                  "interference_every")
_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "model": MODELS, "activation": tuple(ACTIVATIONS), "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES, "probes": tuple(PRESETS), "device": DEVICES, "precision": PRECISIONS,
    "sketch_mode": SKETCH_MODES, "on_nonfinite": NONFINITE_POLICIES,
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
    for key in ("num_samples", "train_size", "image_size", "seq_len", "patch_size"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value}; fix {_flag(key)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(f"learning rate must be a finite number > 0, got {config.lr}; fix --lr")
    if not (math.isfinite(config.width_mult) and config.width_mult > 0):
        raise ConfigError(f"width_mult must be a finite number > 0, got {config.width_mult}; fix --width-mult")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {config.weight_decay}; fix --weight-decay")
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"momentum must lie in [0, 1), got {config.momentum}; fix --momentum")
    if config.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {config.warmup_steps}; fix --warmup-steps")
    if not (math.isfinite(config.flush_seconds) and config.flush_seconds > 0):
        raise ConfigError(f"flush_seconds must be > 0, got {config.flush_seconds}; fix --flush-seconds")
    if config.checkpoint_steps < 0:
        raise ConfigError(f"checkpoint_steps must be >= 0 (0: by time only), got {config.checkpoint_steps}; "
                          "fix --checkpoint-steps")
    if not (math.isfinite(config.checkpoint_seconds) and config.checkpoint_seconds >= 0):
        raise ConfigError(f"checkpoint_seconds must be a finite number >= 0 (0: by steps only), got "
                          f"{config.checkpoint_seconds}; fix --checkpoint-seconds")
    if config.checkpoint_keep < 1:
        raise ConfigError(f"checkpoint_keep must be >= 1, got {config.checkpoint_keep}; fix --checkpoint-keep")
    if config.sketch_seed < 0:
        raise ConfigError(f"sketch_seed must be >= 0, got {config.sketch_seed}; fix --sketch-seed")
    if not (math.isfinite(config.snapshot_budget_mb) and config.snapshot_budget_mb > 0):
        raise ConfigError(f"snapshot_budget_mb must be a finite number > 0, got {config.snapshot_budget_mb}; "
                          "fix --snapshot-budget-mb")
    if config.probe_samples < 2:
        raise ConfigError(f"probe_samples must be >= 2, got {config.probe_samples}; fix --probe-samples")
    if not (math.isfinite(config.probe_growth) and config.probe_growth > 0):
        raise ConfigError(f"probe_growth must be a finite number > 0, got {config.probe_growth}; fix --probe-growth")
    if config.probe_max_interval is not None and config.probe_max_interval < 1:
        raise ConfigError(f"probe_max_interval must be >= 1, got {config.probe_max_interval}; "
                          "fix --probe-max-interval")
    if config.store_features and not config.representation:
        raise ConfigError("store_features keeps the representation probe's features; add --representation")
    if config.interference_samples and not config.interference:
        raise ConfigError("interference_samples extends the interference probe; add --interference")
    if not (math.isfinite(config.interference_alpha) and config.interference_alpha > 0):
        raise ConfigError(f"interference_alpha must be a finite number > 0, got {config.interference_alpha}; "
                          "fix --interference-alpha")


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
