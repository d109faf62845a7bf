"""The settings of a built-in capture run: one flat dataclass in sections, read from TOML/JSON files and flags.

Keys are the field names of :class:`RunConfig` (``batch_size``; a file may also spell it ``batch-size``).
Each field belongs to one section (``data``, ``model``, ``optimisation``, ``strategies``, ``probes``,
``run``) and carries its help text and, where its values are a fixed set, its choices, in the field's
metadata. A file holds the keys either flat or one table per section (``[optimisation]`` ``lr = 0.1``).
Precedence: defaults < config file < command-line flags. Every value is checked before anything runs, and
a bad one raises :class:`~dynamics.errors.ConfigError` with one line naming the key and the fix (the key in
``ConfigError.key``; the command line turns it into its flag).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dynamics.data import DATASETS
from dynamics.errors import ConfigError
from dynamics.models import ACTIVATIONS, MODELS
from dynamics.optim import OPTIMIZERS, SCHEDULES
from dynamics.paths import check_path
from dynamics.probes import PRESETS, PROBES, SKETCH_MODES, import_probe_modules
from dynamics.recorder import NONFINITE_POLICIES
from dynamics.steps import PRECISIONS
from dynamics.strategies.enlightenment import SIGNALS as ENP_SIGNALS
from dynamics.strategies.mixup import MODES as MIX_MODES
from dynamics.strategies.plp import UNITS as PLP_UNITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63 - 1
"""The largest seed: every seed must fit a signed 64-bit integer (torch's and NumPy's generators take it)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest float32: a learning rate or weight decay above it overflows the parameters' update."""

SECTIONS: dict[str, str] = {
    "data": "what is trained on",
    "model": "the architecture",
    "optimisation": "optimizer, learning-rate schedule, epochs and batches",
    "strategies": "what changes the training: Mixup/CutMix, Enlightenment Period strategies, PLP, cyclical training",
    "probes": "what is recorded: probe preset or list, cadence, trajectory sketch, snapshots, probe-set probes",
    "lmc": "linear mode connectivity: spawn steps, the children's training, the interpolation (dynamics.studies.lmc)",
    "run": "how the run executes: seed, device, precision, flushes, checkpoints, failures",
}
"""The sections of :class:`RunConfig`, in order, with what each holds."""


def _setting(
    default: Any, section: str, help: str, choices: Sequence[str] | None = None, metavar: str | None = None
) -> Any:
    """A RunConfig field with its section, help text, fixed choices (if any) and metavar in its metadata."""
    metadata: dict[str, Any] = {"section": section, "help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if metavar is not None:
        metadata["metavar"] = metavar
    return field(default=default, metadata=metadata)


def _probes_help() -> str:
    """The probes setting's help, from the probe registry's own declarations."""
    presets = "; ".join(f"{name} = {', '.join(members)}" for name, members in PRESETS.items())
    return f"a probe preset ({presets}) or a comma-separated list of the probes: {', '.join(PROBES)}"


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rerun a capture; written to the run's ``config.json`` (flat).

    The defaults are the quick MNIST-1D capture: a 3-block 1-D CNN trained with SGD for 30 epochs of
    62 steps, long enough for training accuracy to pass 50% well inside the run, short enough for about
    a minute on two CPU cores. ``dataclasses.fields(RunConfig)[i].metadata`` holds each field's
    ``section``, ``help`` and (for a fixed set of values) ``choices``; :meth:`section` gives one section.
    """

    # data
    dataset: str = _setting("mnist1d", "data", "data set", DATASETS)
    num_samples: int | None = _setting(
        None, "data", "samples to generate, train + test (mnist1d, gaussian, timeseries; None: the set's own)"
    )
    train_size: int | None = _setting(
        None,
        "data",
        "keep a seeded class-stratified subset of this many training samples (text: windows); None keeps all",
    )
    data_seed: int = _setting(
        0, "data", "seed of the data itself, apart from seed, so that seeds vary the training, not the data"
    )
    data_dir: str | None = _setting(
        None,
        "data",
        "folder of cifar10/cifar100 (archive or extracted), tinyimagenet (zip or folder), "
        "imagefolder (train/, val/); for text a UTF-8 file (None: Python's reference docs)",
    )
    image_size: int | None = _setting(
        None, "data", "side of the square images tinyimagenet/imagefolder are decoded to, once (None: 64)"
    )
    seq_len: int | None = _setting(
        None, "data", "characters per text window, time steps per timeseries sample (None: 128)"
    )
    augment: bool = _setting(
        True, "data", "random crop (pad 4) and horizontal flip of image training batches, on the device"
    )
    # model
    model: str = _setting("cnn", "model", "architecture", MODELS)
    width: int = _setting(32, "model", "channels (cnn) or hidden units (mlp)")
    depth: int = _setting(3, "model", "number of hidden blocks (mlp, cnn) or transformer blocks (lm)")
    activation: str = _setting("relu", "model", "activation function of every block, every model", tuple(ACTIVATIONS))
    width_mult: float = _setting(
        1.0,
        "model",
        "channel/embedding width multiplier of the reference architectures (resnets, vgg16_bn, "
        "googlenet, vits, lm, cnn_gru; mlp and cnn use width)",
    )
    patch_size: int | None = _setting(None, "model", "ViT patch size (None: image side / 8, so 4 at 32x32, 8 at 64x64)")
    # optimisation
    optimizer: str = _setting("sgd", "optimisation", "optimizer", OPTIMIZERS)
    lr: float = _setting(0.05, "optimisation", "base learning rate (> 0)")
    momentum: float = _setting(0.9, "optimisation", "SGD momentum in [0, 1)")
    nesterov: bool = _setting(False, "optimisation", "use Nesterov momentum (SGD)")
    weight_decay: float = _setting(0.0, "optimisation", "L2 (SGD) or decoupled (AdamW) weight decay")
    schedule: str = _setting("constant", "optimisation", "learning-rate schedule", SCHEDULES)
    warmup_steps: int = _setting(0, "optimisation", "linear warmup steps before the schedule")
    epochs: int = _setting(30, "optimisation", "passes over the training split")
    batch_size: int = _setting(128, "optimisation", "samples per optimizer step")
    # run (eval batch, seed, device and precision)
    eval_batch_size: int = _setting(2048, "run", "samples per evaluation forward pass")
    seed: int = _setting(0, "run", "training seed (initialisation, batch order, augmentation, mixing)")
    # probes
    every: int = _setting(1, "probes", "record every k-th optimizer step")
    probes: str = _setting("default", "probes", _probes_help(), metavar="PRESET|PROBE,...")
    probe_modules: str | None = _setting(
        None,
        "probes",
        "comma-separated importable modules that register probes (dynamics.probes.register_probe), imported "
        "before probes is read (and again on resume)",
        metavar="MODULE,...",
    )
    # run
    device: str = _setting("auto", "run", "auto (CUDA when present), cpu or cuda", DEVICES)
    threads: int | None = _setting(
        None, "run", "CPU threads of torch's operators (torch.set_num_threads) in the run; None: torch's default"
    )
    precision: str = _setting(
        "fp32",
        "run",
        "fp32, or bf16 autocast of the forward pass and loss (weights and optimizer state stay fp32)",
        PRECISIONS,
    )
    channels_last: bool = _setting(
        False, "run", "NHWC layout of image batches and convolution weights (faster on GPUs with tensor cores)"
    )
    compile: bool = _setting(
        False, "run", "torch.compile the model in place (module names and the Recorder's hooks are kept)"
    )
    flush_seconds: float = _setting(10.0, "run", "longest time between writes to the store")
    checkpoint_steps: int = _setting(
        0,
        "run",
        "checkpoint every this many optimizer steps (0: by time only); always before the first step and after the last",
    )
    checkpoint_seconds: float = _setting(
        300.0, "run", "checkpoint when this many seconds passed since the last one (0: by steps only)"
    )
    checkpoint_keep: int = _setting(2, "run", "newest checkpoints kept in <run>/checkpoints (>= 1)")
    deterministic: bool = _setting(
        False,
        "run",
        "deterministic kernels only (torch.use_deterministic_algorithms), for bit-identical reruns and resumes",
    )
    on_nonfinite: str = _setting(
        "stop",
        "run",
        "NaN/Inf loss or gradient: stop (run failed), skip (that step's update is not applied) or record",
        NONFINITE_POLICIES,
    )
    # probes: parameter trajectories (dynamics.probes.trajectory, dynamics.snapshots)
    sketch_dim: int = _setting(
        8, "probes", "random unit directions of the trajectory sketch traj_proj, per parameter tensor and for the model"
    )
    sketch_seed: int = _setting(
        0,
        "probes",
        "seed of the sketch's directions, apart from seed, so that runs of different seeds share one sketch",
    )
    sketch_mode: str = _setting(
        "sign",
        "probes",
        "sign: random sign directions (sketch_dim bits per parameter); dense: Gaussian "
        "directions (sketch_dim floats per parameter); hashed: sparse signs (one int32 per "
        "parameter)",
        SKETCH_MODES,
    )
    snapshots: bool = _setting(
        True,
        "probes",
        "keep full parameter snapshots: dense early (geometric in steps), at every epoch end and the last step",
    )
    snapshot_budget_mb: float = _setting(
        256.0, "probes", "most MiB all snapshots may take; beyond it the planned snapshots are thinned evenly"
    )
    # probes: phase-transition probes on a fixed probe set (dynamics.probes.representation / .fisher)
    representation: bool = _setting(
        False,
        "probes",
        "record order parameters of the penultimate features (NC1, "
        "ridge and k-NN probe accuracy, CKA) on the probe set",
    )
    fisher: bool = _setting(
        False, "probes", "record the Fisher-information trace (labels sampled from the model) on the probe set"
    )
    probe_samples: int = _setting(
        256,
        "probes",
        "training and test samples, each, in the probe set (seeded by data_seed: the same for every seed)",
    )
    probe_growth: float = _setting(
        0.1, "probes", "probe-set measurements at step 0, then max(1, ceil(probe_growth * step)) steps after each one"
    )
    probe_max_interval: int | None = _setting(
        None, "probes", "longest gap between probe-set measurements in steps; None leaves it unbounded"
    )
    store_features: bool = _setting(
        False,
        "probes",
        "also keep the raw probe-set features of each measurement in <run>/features/ (needs representation)",
    )
    # probes: curvature of the probe-set loss (dynamics.probes.sharpness / .hessian_trace / .noise_scale)
    sharpness: bool = _setting(
        False,
        "probes",
        "record the top Hessian eigenvalues (Lanczos) of the probe-set loss and the edge-of-stability ratio "
        "(top curvature over the optimizer's stability bound, 2/lr for plain SGD)",
    )
    sharpness_k: int = _setting(1, "probes", "Hessian eigenvalues the sharpness probe records, largest first")
    lanczos_steps: int = _setting(
        20,
        "probes",
        "Lanczos steps (Hessian-vector products) per sharpness run and per density vector (>= sharpness_k)",
    )
    hessian_trace: bool = _setting(
        False, "probes", "record Hutchinson's estimate of the Hessian trace of the probe-set loss and its error"
    )
    hessian_samples: int = _setting(
        20, "probes", "Rademacher vectors (Hessian-vector products) per Hessian trace estimate (>= 2)"
    )
    hessian_density: bool = _setting(
        False, "probes", "record the Hessian spectral density (stochastic Lanczos quadrature) at a sparser cadence"
    )
    hessian_density_vectors: int = _setting(
        4, "probes", "random start vectors per spectral density, each costing lanczos_steps Hessian-vector products"
    )
    hessian_density_growth: float = _setting(
        1.0,
        "probes",
        "spectral densities at step 0, then max(1, ceil(hessian_density_growth * step)) steps after each one",
    )
    noise_scale: bool = _setting(
        False,
        "probes",
        "record the gradient noise scale B_simple = tr(Sigma)/|G|^2 from per-sample gradients on the probe set",
    )
    # probes: gradient interference and activation revival of Mixup (dynamics.probes.interference)
    interference: bool = _setting(
        False,
        "probes",
        "record cos and interference ratio of clean vs mixed gradients, activation revival and ATD on the probe set",
    )
    interference_every: int = _setting(
        10, "probes", "steps between interference measurements (on the step's batch, after its update)"
    )
    interference_alpha: float = _setting(
        0.4, "probes", "Mixup alpha the interference probe mixes with when the run itself mixes nothing"
    )
    interference_samples: bool = _setting(
        False,
        "probes",
        "also record per-sample gradient statistics from one Gram of clean and mixed samples: "
        "clean-vs-mixed alignment, stiffness, gradient diversity, GSNR (costlier)",
    )
    # lmc: linear-mode-connectivity instability (dynamics.studies.lmc)
    lmc_spawn: str | None = _setting(
        None,
        "lmc",
        "comma-separated steps at which the training state is kept and two children are spawned from it "
        "(0: the initialisation); None: no linear-mode-connectivity measurement",
        metavar="STEP,...",
    )
    lmc_steps: int = _setting(200, "lmc", "optimizer steps each child trains from its spawn step (>= 1)")
    lmc_points: int = _setting(
        11, "lmc", "evenly spaced interpolation coefficients in [0, 1] at which the error is evaluated (2 to 1001)"
    )
    # strategies (dynamics.strategies; validated by validate_strategies there)
    mixup_alpha: float = _setting(
        0.0, "strategies", "Mixup Beta(alpha, alpha) concentration; 0 = off (Zhang et al. 2018)"
    )
    cutmix_alpha: float = _setting(
        0.0, "strategies", "CutMix Beta(alpha, alpha) concentration, images only; 0 = off (Yun et al. 2019)"
    )
    mix_prob: float = _setting(1.0, "strategies", "probability of mixing a batch (batch mode) or a pair/sample")
    switch_prob: float = _setting(0.5, "strategies", "probability of CutMix instead of Mixup when both are on")
    mix_mode: str = _setting("batch", "strategies", "one mixing coefficient per batch, pair or elem(ent)", MIX_MODES)
    label_smoothing: float = _setting(0.0, "strategies", "label smoothing of the training targets")
    enp_epochs: int | str | None = _setting(
        None,
        "strategies",
        "Enlightenment Period length in epochs, or auto (smoothed training accuracy reaches 50%); None: no period",
        metavar="N|auto",
    )
    enp_tau: float = _setting(10.0, "strategies", "EMA time constant in steps of the auto period detection")
    enp_threshold: float = _setting(0.5, "strategies", "smoothed training accuracy that ends the auto period")
    enp_signal: str = _setting(
        "clean_probe",
        "strategies",
        "accuracy the auto period detection smooths: clean_probe (fixed unmixed training samples, eval mode, "
        "no gradient, every enp_probe_every steps) or batch (each step's training batch, mixed under Mixup)",
        ENP_SIGNALS,
    )
    enp_probe_samples: int = _setting(
        512, "strategies", "training samples of the clean_probe signal (drawn once from data_seed; all if fewer)"
    )
    enp_probe_every: int = _setting(5, "strategies", "steps between clean_probe evaluations of the auto detection")
    mixup_pause: bool = _setting(
        False, "strategies", "no mixing during the Enlightenment Period, then the configured Mixup (arXiv 2504.01737)"
    )
    alpha_boost: float | None = _setting(
        None,
        "strategies",
        "mix with Beta(A, A) during the Enlightenment Period, then the configured alpha",
        metavar="A",
    )
    high_loss_removal: float | None = _setting(
        None,
        "strategies",
        "leave the fraction Q of highest-loss samples of each batch out during the period",
        metavar="Q",
    )
    plp: bool = _setting(False, "strategies", "Parameter Linear Prediction every three points (arXiv 2310.10958)")
    plp_k: float = _setting(1.0, "strategies", "PLP extrapolation factor k")
    plp_unit: str = _setting("iteration", "strategies", "PLP points are iterations or epochs", PLP_UNITS)
    plp_weights_only: bool = _setting(
        False, "strategies", "predict only weight tensors (ndim > 1), not biases/norm scales"
    )
    cyclical_factor: float = _setting(2.0, "strategies", "General Cyclical Training factor f >= 1 (arXiv 2202.08835)")
    cyclical_wd: str | None = _setting(None, "strategies", "cyclical weight decay MIN:MAX", metavar="MIN:MAX")
    cyclical_temperature: str | None = _setting(
        None, "strategies", "cyclical softmax temperature MIN:MAX of the training loss", metavar="MIN:MAX"
    )
    cyclical_clip: str | None = _setting(None, "strategies", "cyclical max gradient norm MIN:MAX", metavar="MIN:MAX")
    cyclical_focal: bool = _setting(False, "strategies", "train with the cyclical focal loss")
    focal_gamma_hc: float = _setting(3.0, "strategies", "cyclical focal loss exponent of (1 + p_t)")
    focal_gamma_pos: float = _setting(2.0, "strategies", "cyclical focal loss exponent of (1 - p_t)")
    focal_gamma_neg: float = _setting(2.0, "strategies", "cyclical focal loss exponent of p_c on other classes")
    focal_label_smoothing: float = _setting(0.1, "strategies", "label smoothing inside the cyclical focal loss")
    cyclical_batch_size: str | None = _setting(
        None, "strategies", "cyclical batch size MIN:MAX (integers)", metavar="MIN:MAX"
    )
    cyclical_aug: str | None = _setting(
        None,
        "strategies",
        "cyclical augmentation strength MIN:MAX: the Mixup alpha follows the schedule",
        metavar="MIN:MAX",
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain flat dict for JSON."""
        return asdict(self)

    def section(self, name: str) -> dict[str, Any]:
        """The values of one section (see :data:`SECTIONS`), by key, in field order."""
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; choose one of: {', '.join(SECTIONS)}", key="name")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["section"] == name}


SECTION_OF: dict[str, str] = {f.name: f.metadata["section"] for f in fields(RunConfig)}
"""The section of each RunConfig key."""


def lmc_spawn_steps(spec: str | None) -> tuple[int, ...]:
    """The spawn steps an ``lmc_spawn`` setting names, ascending (none for None); ConfigError if it is malformed."""
    if spec is None:
        return ()
    parts = [part.strip() for part in spec.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise ConfigError(
            f"lmc_spawn must be comma-separated steps >= 0 (e.g. '0,50,200'), got {spec!r}; fix it", key="lmc_spawn"
        )
    steps = [int(part) for part in parts]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"lmc_spawn {spec!r} lists a step twice; list each step once", key="lmc_spawn")
    return tuple(sorted(steps))


def probe_names(spec: str) -> tuple[str, ...]:
    """The probes a ``probes`` setting stands for: a preset's members, or the names of a comma-separated list."""
    if spec in PRESETS:
        return PRESETS[spec]
    return tuple(name.strip() for name in spec.split(","))


_POSITIVE_INTS = (
    "width",
    "depth",
    "epochs",
    "batch_size",
    "eval_batch_size",
    "every",
    "sketch_dim",
    "interference_every",
    "lmc_steps",
)
_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["choices"] for f in fields(RunConfig) if "choices" in f.metadata
}


def _coerce(key: str, value: Any, hint: str) -> Any:
    """Check one value against its field type (``int``, ``float``, ``str``, ``bool`` or a union of them).

    Ints are accepted for floats; for an ``int | str`` field a string of digits (as a flag gives it) becomes
    an int. Nothing else is converted.
    """
    kinds = hint.split(" | ")
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{key} must be set, got null; give it a value", key=key)
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
    raise ConfigError(f"{key} must be {expected}, got {value!r}; fix it", key=key)


def flatten_sections(values: Mapping[str, Any], source: str = "settings", key: str | None = None) -> dict[str, Any]:
    """Flat settings from a mapping that holds them flat, by section (``{"optimisation": {"lr": 0.1}}``), or both.

    Keys come back with underscores (``batch-size`` -> ``batch_size``); an unknown key is kept as given, for
    :func:`make_config` to refuse. A key in the wrong section, a table that is no section, or a key given twice
    raises ConfigError naming ``source`` (``key``: the parameter the errors are about, e.g. the file's path).
    """
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}

    def put(raw_key: Any, value: Any, place: str) -> None:
        name = str(raw_key).replace("-", "_")
        name = name if name in SECTION_OF else str(raw_key)
        if name in flat:
            raise ConfigError(f"{source} sets {name} twice ({where[name]} and {place}); keep one", key=key)
        flat[name], where[name] = value, place

    for raw_key, value in values.items():
        if not isinstance(value, Mapping):
            put(raw_key, value, "top level")
            continue
        if raw_key not in SECTIONS:
            raise ConfigError(
                f"{source} has a table {raw_key!r} that is no section; put its keys at the top level "
                f"or in a section: {', '.join(SECTIONS)}",
                key=key,
            )
        for inner_key, inner in value.items():
            name = str(inner_key).replace("-", "_")
            home = SECTION_OF.get(name)
            if home is None:
                valid = ", ".join(k for k, section in SECTION_OF.items() if section == raw_key)
                raise ConfigError(
                    f"{source}: unknown setting {inner_key!r} in [{raw_key}]; valid keys of [{raw_key}] are: {valid}",
                    key=key,
                )
            if home != raw_key:
                raise ConfigError(
                    f"{source}: {name} belongs in [{home}], not [{raw_key}]; move it to [{home}]", key=key
                )
            if isinstance(inner, Mapping):
                raise ConfigError(f"{source}: {name} in [{raw_key}] is a table; give it a plain value", key=key)
            put(inner_key, inner, f"[{raw_key}]")
    return flat


def make_config(values: Mapping[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a mapping of keys (or hyphenated keys) to values, flat or by section."""
    hints = {f.name: str(f.type) for f in fields(RunConfig)}
    checked: dict[str, Any] = {}
    for key, value in flatten_sections(values).items():
        if key not in hints:
            raise ConfigError(f"unknown setting {key!r}; valid keys are: {', '.join(sorted(hints))}")
        checked[key] = _coerce(key, value, hints[key])
    config = RunConfig(**checked)
    validate(config)
    return config


def _check_probes(spec: str, modules: str | None) -> None:
    """A preset name, or a comma-separated list of probes registered in ``dynamics.probes.PROBES`` (after importing
    ``modules``), each once."""
    import_probe_modules(modules)
    names = probe_names(spec)
    unknown = [name for name in names if name not in PROBES]
    if unknown:
        raise ConfigError(
            f"unknown probe {unknown[0]!r} in probes {spec!r}; give a preset ({', '.join(PRESETS)}) "
            f"or a comma-separated list of: {', '.join(PROBES)}",
            key="probes",
        )
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        raise ConfigError(f"probe {twice[0]!r} is listed twice in probes {spec!r}; list each probe once", key="probes")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, key=key)


def validate(config: RunConfig) -> None:
    """Raise ConfigError for the first value that cannot run."""
    for key, choices in _CHOICES.items():
        value = getattr(config, key)
        _check(value in choices, key, f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")
    _check_probes(config.probes, config.probe_modules)
    for key in _POSITIVE_INTS:
        value = getattr(config, key)
        _check(value >= 1, key, f"{key} must be a positive integer, got {value}; fix it")
    for key in ("num_samples", "train_size", "image_size", "seq_len", "patch_size", "threads"):
        value = getattr(config, key)
        _check(value is None or value >= 1, key, f"{key} must be a positive integer or None, got {value}; fix it")
    c = config
    _check(
        math.isfinite(c.lr) and c.lr > 0, "lr", f"lr must be a finite number > 0, got {c.lr}; pass a learning rate > 0"
    )
    _check(
        math.isfinite(c.width_mult) and c.width_mult > 0,
        "width_mult",
        f"width_mult must be a finite number > 0, got {c.width_mult}; fix it",
    )
    _check(
        math.isfinite(c.weight_decay) and c.weight_decay >= 0,
        "weight_decay",
        f"weight_decay must be a finite number >= 0, got {c.weight_decay}; fix it",
    )
    _check(0 <= c.momentum < 1, "momentum", f"momentum must lie in [0, 1), got {c.momentum}; pass e.g. 0.9")
    for key in ("lr", "weight_decay"):  # the optimizers multiply float32 parameters by them: larger ones overflow
        value = getattr(c, key)
        _check(
            value <= FLOAT32_MAX,
            key,
            f"{key} must be at most {FLOAT32_MAX:.4g} (float32's largest), got {value}; pass a smaller {key}",
        )
    if c.optimizer == "adamw" and c.lr * c.weight_decay > FLOAT32_MAX:  # AdamW scales by 1 - lr * weight_decay
        raise ConfigError(
            f"lr * weight_decay must be at most {FLOAT32_MAX:.4g} (float32's largest) for adamw, got "
            f"{c.lr * c.weight_decay:g}; lower lr or weight_decay",
            key=("lr", "weight_decay"),
        )
    if c.data_dir is not None:
        check_path(c.data_dir, "data_dir")
    _check(c.warmup_steps >= 0, "warmup_steps", f"warmup_steps must be >= 0, got {c.warmup_steps}; fix it")
    _check(
        math.isfinite(c.flush_seconds) and c.flush_seconds > 0,
        "flush_seconds",
        f"flush_seconds must be a finite number > 0, got {c.flush_seconds}; fix it",
    )
    _check(
        c.checkpoint_steps >= 0,
        "checkpoint_steps",
        f"checkpoint_steps must be >= 0 (0: by time only), got {c.checkpoint_steps}; fix it",
    )
    _check(
        math.isfinite(c.checkpoint_seconds) and c.checkpoint_seconds >= 0,
        "checkpoint_seconds",
        f"checkpoint_seconds must be a finite number >= 0 (0: by steps only), got {c.checkpoint_seconds}; fix it",
    )
    _check(c.checkpoint_keep >= 1, "checkpoint_keep", f"checkpoint_keep must be >= 1, got {c.checkpoint_keep}; fix it")
    for key in ("seed", "data_seed", "sketch_seed"):
        value = getattr(c, key)
        _check(0 <= value <= MAX_SEED, key, f"{key} must lie in [0, 2**63 - 1], got {value}; pass e.g. 0")
    _check(
        math.isfinite(c.snapshot_budget_mb) and c.snapshot_budget_mb > 0,
        "snapshot_budget_mb",
        f"snapshot_budget_mb must be a finite number > 0, got {c.snapshot_budget_mb}; fix it",
    )
    _check(c.probe_samples >= 2, "probe_samples", f"probe_samples must be >= 2, got {c.probe_samples}; fix it")
    _check(
        math.isfinite(c.probe_growth) and c.probe_growth > 0,
        "probe_growth",
        f"probe_growth must be a finite number > 0, got {c.probe_growth}; fix it",
    )
    _check(
        c.probe_max_interval is None or c.probe_max_interval >= 1,
        "probe_max_interval",
        f"probe_max_interval must be >= 1 or None, got {c.probe_max_interval}; fix it",
    )
    if c.store_features and not c.representation:
        raise ConfigError(
            "store_features needs representation=True (it keeps that probe's features); set "
            "representation=True or store_features=False",
            key=("store_features", "representation"),
        )
    if c.interference_samples and not c.interference:
        raise ConfigError(
            "interference_samples needs interference=True (it extends that probe); set "
            "interference=True or interference_samples=False",
            key=("interference_samples", "interference"),
        )
    _check(
        math.isfinite(c.interference_alpha) and c.interference_alpha > 0,
        "interference_alpha",
        f"interference_alpha must be a finite number > 0, got {c.interference_alpha}; fix it",
    )
    for key, least in (("sharpness_k", 1), ("hessian_samples", 2), ("hessian_density_vectors", 1)):
        value = getattr(c, key)
        _check(value >= least, key, f"{key} must be an integer >= {least}, got {value}; fix it")
    if c.lanczos_steps < c.sharpness_k:
        raise ConfigError(
            f"lanczos_steps must be >= sharpness_k ({c.sharpness_k}), got {c.lanczos_steps}; raise lanczos_steps",
            key=("lanczos_steps", "sharpness_k"),
        )
    _check(
        math.isfinite(c.hessian_density_growth) and c.hessian_density_growth > 0,
        "hessian_density_growth",
        f"hessian_density_growth must be a finite number > 0, got {c.hessian_density_growth}; fix it",
    )
    lmc_spawn_steps(c.lmc_spawn)
    _check(
        2 <= c.lmc_points <= 1001,
        "lmc_points",
        f"lmc_points must lie in [2, 1001] (both end points; each point is a test-split evaluation), got "
        f"{c.lmc_points}; fix it",
    )


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a ``.toml`` or ``.json`` file (by suffix), flat or one table per section, as a flat mapping.

    Errors about the file name it and have ``key="path"``.
    """
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path} must end in .toml or .json; rename it or convert it", key="path")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check its name and folder", key="path") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(
            f"config file {path} is unreadable ({reason}); fix its permissions or encoding", key="path"
        ) from None
    try:
        payload = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as err:
        detail = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is malformed ({detail}); fix its syntax", key="path") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings; see the README", key="path")
    return flatten_sections(payload, f"config file {path}", key="path")
