"""``python -m dynamics.collect``: train a built-in model with the Recorder on, then draw its overview.

With no arguments it captures the default run (MNIST-1D, 1-D CNN; see :class:`dynamics.config.RunConfig`)
into ``runs/<timestamp>-mnist1d-cnn-s0``. Settings come from defaults, then ``--config FILE`` (TOML or
JSON, same keys as the flags with underscores), then the flags. Usage errors print one line and exit 2;
a diverging loss marks the run failed (keeping every recorded step) and exits 1.

``--resume RUN_DIR`` continues an interrupted run from its newest checkpoint with the settings of its own
``config.json``; only ``--no-progress`` and ``--check`` may come with it, since any other flag would make
the continued run differ from the one it continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from analyses.enlightenment import enlightenment_period
from analyses.overview import plot_overview
from dynamics.cli import UsageParser
from dynamics.config import RunConfig, make_config, read_config_file
from dynamics.data import DATASETS
from dynamics.engine import RunResult, default_run_dir, train
from dynamics.errors import ConfigError, DynamicsError, NonFiniteLossError, StoreError
from dynamics.models import MODELS
from dynamics.store import open_run, read_json
from dynamics.strategies import validate_strategies

USAGE_ERROR = 2
RUN_FAILED = 1

_HELP = {
    "dataset": f"data set ({', '.join(DATASETS)})",
    "num_samples": "samples to generate, train + test (mnist1d, gaussian, timeseries; default: the set's own)",
    "train_size": "keep a seeded class-stratified subset of this many training samples (text: windows)",
    "data_seed": "seed of the data, apart from the training seed",
    "data_dir": "folder of cifar10/cifar100 (archive or extracted), tinyimagenet (zip or folder), "
                "imagefolder (train/, val/); for text a UTF-8 file (None: Python's reference docs)",
    "image_size": "side of the square images tinyimagenet/imagefolder are decoded to, once (None: 64)",
    "seq_len": "characters per text window, time steps per timeseries sample (None: 128)",
    "augment": "random crop (pad 4) and horizontal flip of image training batches, on the device",
    "model": f"architecture ({', '.join(MODELS)})",
    "width": "channels (cnn) or hidden units (mlp)",
    "depth": "number of hidden blocks (mlp, cnn) or transformer blocks (lm)",
    "activation": "activation function of every block, every model",
    "width_mult": "width multiplier of the reference architectures (resnets, vgg16_bn, googlenet, vits, lm, cnn_gru)",
    "patch_size": "ViT patch size (None: image side / 8)",
    "optimizer": "sgd or adamw",
    "lr": "base learning rate (> 0)",
    "momentum": "SGD momentum in [0, 1)",
    "nesterov": "use Nesterov momentum (SGD)",
    "weight_decay": "L2 (SGD) or decoupled (AdamW) weight decay",
    "schedule": "learning-rate schedule: constant, step, cosine",
    "warmup_steps": "linear warmup steps before the schedule",
    "epochs": "passes over the training split",
    "batch_size": "samples per optimizer step",
    "eval_batch_size": "samples per evaluation forward pass",
    "seed": "training seed (initialisation and batch order)",
    "every": "record every k-th optimizer step",
    "probes": "probe preset: default, minimal, loss, trajectory",
    "device": "auto (CUDA when present), cpu or cuda",
    "precision": "fp32, or bf16 autocast of forward pass and loss",
    "channels_last": "NHWC layout of image batches and conv weights (GPU speed)",
    "compile": "torch.compile the model (in place; recording keeps working)",
    "flush_seconds": "longest time between writes to the store",
    "checkpoint_steps": "checkpoint every N optimizer steps (0: by time only); also before the first, after the last",
    "checkpoint_seconds": "checkpoint when this many seconds passed since the last one (0: by steps only)",
    "checkpoint_keep": "newest checkpoints kept in RUN/checkpoints",
    "deterministic": "deterministic kernels only (torch.use_deterministic_algorithms): bit-identical reruns",
    "on_nonfinite": "NaN/Inf loss or gradient: stop (run failed, exit 1), skip (no update that step) or record",
    "sketch_dim": "random directions of the trajectory sketch traj_proj (probes default, trajectory)",
    "sketch_seed": "seed of the sketch's directions (keep it to compare runs in one sketch)",
    "sketch_mode": "sign (random signs, sketch_dim bits per parameter), dense (Gaussian, sketch_dim floats per "
                   "parameter) or hashed (sparse signs, one int32 per parameter)",
    "snapshots": "keep full parameter snapshots: geometric in steps, every epoch end, the last step",
    "snapshot_budget_mb": "most MiB all snapshots may take; more are thinned evenly",
    "representation": "record NC1, ridge/k-NN probe accuracy and CKA of the penultimate features on the probe set",
    "fisher": "record the Fisher-information trace (model-sampled labels) on the probe set",
    "probe_samples": "training and test samples, each, in the seeded probe set",
    "probe_growth": "probe-set measurements at step 0, then ceil(growth * step) steps apart (>= 1)",
    "probe_max_interval": "longest gap between probe-set measurements in steps (default: none)",
    "store_features": "also keep the raw probe-set features in RUN/features/ (with --representation)",
    "interference": "record clean-vs-mixed gradient cos and interference ratio, activation revival and ATD",
    "interference_every": "steps between interference measurements",
    "interference_alpha": "Mixup alpha of the interference probe when the run mixes nothing",
    "interference_samples": "also record per-sample gradient statistics from one Gram of clean and mixed samples: "
                            "clean-vs-mixed alignment, stiffness, gradient diversity, GSNR (costlier)",
    "mixup_alpha": "Mixup Beta(alpha, alpha) concentration; 0 = off (Zhang et al. 2018)",
    "cutmix_alpha": "CutMix Beta(alpha, alpha) concentration, images only; 0 = off (Yun et al. 2019)",
    "mix_prob": "probability of mixing a batch (batch mode) or a pair/sample",
    "switch_prob": "probability of CutMix instead of Mixup when both are on",
    "mix_mode": "one lam per batch, pair or elem(ent)",
    "label_smoothing": "label smoothing of the training targets",
    "enp_epochs": "Enlightenment Period length in epochs, or auto (smoothed train accuracy reaches 50%%)",
    "enp_tau": "EMA time constant in steps of the auto period detection",
    "enp_threshold": "smoothed training accuracy that ends the auto period",
    "mixup_pause": "no mixing during the Enlightenment Period, then the configured Mixup (arXiv 2504.01737)",
    "alpha_boost": "mix with Beta(A, A) during the Enlightenment Period, then the configured alpha",
    "high_loss_removal": "leave the fraction Q of highest-loss samples of each batch out during the period",
    "plp": "Parameter Linear Prediction every three points (arXiv 2310.10958)",
    "plp_k": "PLP extrapolation factor k",
    "plp_unit": "PLP points are iterations or epochs",
    "plp_weights_only": "predict only weight tensors (ndim > 1), not biases/norm scales",
    "cyclical_factor": "General Cyclical Training factor f >= 1 (arXiv 2202.08835)",
    "cyclical_wd": "cyclical weight decay MIN:MAX",
    "cyclical_temperature": "cyclical softmax temperature MIN:MAX of the training loss",
    "cyclical_clip": "cyclical max gradient norm MIN:MAX",
    "cyclical_focal": "train with the cyclical focal loss",
    "focal_gamma_hc": "cyclical focal loss exponent of (1 + p_t)",
    "focal_gamma_pos": "cyclical focal loss exponent of (1 - p_t)",
    "focal_gamma_neg": "cyclical focal loss exponent of p_c on other classes",
    "focal_label_smoothing": "label smoothing inside the cyclical focal loss",
    "cyclical_batch_size": "cyclical batch size MIN:MAX (integers)",
    "cyclical_aug": "cyclical augmentation strength MIN:MAX: the Mixup alpha follows the schedule",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; every RunConfig field is a flag whose default is 'not given'."""
    parser = UsageParser(prog="python -m dynamics.collect", description=__doc__.splitlines()[0],
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="TOML or JSON file of settings; flags override it")
    parser.add_argument("--out", help="run directory (default runs/<timestamp>-<dataset>-<model>-s<seed>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--check", action="store_true",
                        help="validate the settings, print them as JSON and exit without training")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the interrupted run in RUN_DIR from its newest checkpoint, with its own "
                             "config.json (only --no-progress and --check may be added)")
    defaults = RunConfig()
    for field in fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        text = f"{_HELP[field.name]} (default: {default})"
        if str(field.type) == "bool":
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(field.type).removesuffix(" | None"), str)
            parser.add_argument(flag, dest=field.name, type=kind, help=text, metavar=field.name.upper())
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < config file < flags."""
    given: dict[str, Any] = vars(args)
    values: dict[str, Any] = read_config_file(given["config"]) if "config" in given else {}
    names = {field.name for field in fields(RunConfig)}
    values.update({key: value for key, value in given.items() if key in names})
    return make_config(values)


RESUME_COMPANIONS = ("resume", "no_progress", "check")


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The settings of the run ``--resume`` continues, read from its ``config.json``."""
    extra = [name for name in vars(args) if name not in RESUME_COMPANIONS]
    if extra:
        raise ConfigError(f"--resume continues {args.resume} with its own config.json; drop "
                          f"--{extra[0].replace('_', '-')} (other flags would change the run)")
    try:
        return make_config(read_json(Path(args.resume) / "config.json"))
    except StoreError as err:
        raise ConfigError(f"--resume {args.resume}: {err}") from None


def report(result: RunResult, figure: tuple[Path, Path]) -> str:
    """The closing summary: accuracies, where the Enlightenment Period ended, and the paths."""
    period = enlightenment_period(open_run(result.run_dir))
    if period.end_step is None:
        enp = f"not reached (smoothed training accuracy never reached {period.threshold:.0%})"
    else:
        enp = (f"ended at step {period.end_step} of {result.steps} ({period.fraction:.1%} of training; "
               f"first step with smoothed training accuracy >= {period.threshold:.0%})")
    return "\n".join([
        f"final accuracy       train {result.train_accuracy:.4f}   test {result.test_accuracy:.4f}",
        f"Enlightenment Period {enp}",
        f"run                  {result.run_dir.resolve()}",
        f"overview figure      {figure[0].resolve()}",
        f"                     {figure[1].resolve()}",
    ])


def _fail(error: BaseException | str) -> None:
    """Print ``error: ...`` as exactly one printable line on stderr (control characters escaped)."""
    text = " ".join(str(error).split("\n"))
    print("error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        resume = "resume" in args
        config = resume_config(args) if resume else config_from_args(args)
        validate_strategies(config)
        run_dir = Path(args.resume) if resume else Path(args.out) if "out" in args else default_run_dir(config)
        if "check" in args:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
    except ConfigError as err:
        _fail(err)
        return USAGE_ERROR
    try:
        result = train(config, run_dir, overwrite="overwrite" in args, progress="no_progress" not in args,
                       resume=resume)
        figure = plot_overview(open_run(run_dir), run_dir / "overview")
        print(report(result, figure))
    except ConfigError as err:
        _fail(err)
        return USAGE_ERROR
    except NonFiniteLossError as err:
        _fail(f"{err} (run marked failed in {run_dir / 'meta.json'}; recorded steps kept)")
        return RUN_FAILED
    except DynamicsError as err:
        _fail(err)
        return RUN_FAILED
    except KeyboardInterrupt:
        print(f"interrupted; the run is marked failed and keeps every recorded step in {run_dir} "
              f"(continue it with --resume {run_dir})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
