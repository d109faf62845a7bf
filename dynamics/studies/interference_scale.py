"""Does gradient interference shrink with scale? Train the study's grid of MNIST-1D sizes x CNN widths x seeds.

``python -m dynamics.studies.interference_scale [--quick]`` captures, for every training-set size x CNN width
x seed, two runs with the same data and seed: *always-Mixup* (with the interference probe,
:mod:`dynamics.probes.interference`) and *Mixup Pause* (no Mixup until the online-detected Enlightenment
Period ends, then the same Mixup). Runs go to ``--root`` (one directory per run, ``n<size>-w<width>-<strategy>
-s<seed>``; finished runs are skipped, so an interrupted study resumes). Then it hands the runs to the
analysis, :mod:`analyses.interference` (which only reads them), and the figure, :mod:`figures.interference`:
``interference_study.json`` and ``figures/interference_scale.png/.pdf`` go to ``--out`` (default the runs'
folder), and the one sentence that says whether the data support the claim is printed. ``python -m
analyses.interference --runs DIR`` summarises and ``python -m figures DIR`` draws again without training.

*Budget*: every run trains about ``steps`` optimizer steps (epochs = round(steps / steps per epoch), at least
1), so larger sets see fewer epochs: a fixed-compute comparison that keeps the quick preset on two CPU cores
under 30 minutes. The test split (20% of the generated samples) is the same for every size.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from analyses.interference import STRATEGIES, finished, summarise, write_summary
from dynamics.cli import RUN_FAILED, UsageParser, fail, one_line_errors
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.errors import ConfigError, DynamicsError
from figures.interference import STUDY_NAME, draw_study
from figures.registry import FIGURE_DIR

USAGE_ERROR = 2


@dataclass(frozen=True)
class Preset:
    """A grid of the study: training-set sizes, CNN widths, seeds and the step budget of every run."""

    sizes: tuple[int, ...]
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    num_samples: int = 20_000
    batch_size: int = 64


PRESETS = {
    "quick": Preset(sizes=(500, 2000, 4000, 16000), widths=(4, 8, 16, 32), seeds=(0, 1), steps=500),
    "full": Preset(
        sizes=(500, 1000, 2000, 4000, 8000, 16000), widths=(4, 8, 16, 32, 64), seeds=(0, 1, 2, 3, 4), steps=2000
    ),
}
"""``quick``: 4 x 4 x 2 seeds x 2 strategies = 64 runs of ~500 steps; ``full``: 300 runs of ~2000 steps."""

BASE: dict[str, Any] = {
    "dataset": "mnist1d",
    "model": "cnn",
    "depth": 3,
    "mixup_alpha": 1.0,
    "probes": "loss",
    "snapshots": False,
    "interference_every": 10,
    "probe_samples": 64,
    "enp_epochs": "auto",
    "device": "cpu",
}
"""Settings shared by every run of the study (the rest are RunConfig defaults)."""


def run_settings(preset: Preset, size: int, width: int, seed: int, strategy: str) -> dict[str, Any]:
    """RunConfig settings of one run of the study."""
    steps_per_epoch = size // preset.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"training-set size {size} is smaller than the batch size {preset.batch_size}; "
            "raise --sizes or lower --batch-size"
        )
    epochs = max(1, round(preset.steps / steps_per_epoch))
    return {
        **BASE,
        "num_samples": preset.num_samples,
        "train_size": size,
        "width": width,
        "seed": seed,
        "batch_size": preset.batch_size,
        "epochs": epochs,
        "interference": strategy == "mixup",
        "mixup_pause": strategy == "pause",
    }


def run_name(size: int, width: int, seed: int, strategy: str) -> str:
    """Directory name of one run: ``n<size>-w<width>-<strategy>-s<seed>``."""
    return f"n{size}-w{width}-{strategy}-s{seed}"


def capture(preset: Preset, root: Path, *, progress: bool = True) -> int:
    """Train every run of ``preset`` missing from ``root`` (finished runs are kept); returns how many ran."""
    plan = [
        (size, width, seed, strategy)
        for size in preset.sizes
        for width in preset.widths
        for seed in preset.seeds
        for strategy in STRATEGIES
    ]
    configs = [(root / run_name(*key), make_config(run_settings(preset, *key))) for key in plan]
    todo = [(path, config) for path, config in configs if not finished(path)]
    for path, config in tqdm(
        todo, desc="interference study", unit="run", disable=not progress or None, dynamic_ncols=True
    ):
        train(config, path, overwrite=True, progress=False)
    return len(todo)


def default_root(quick: bool) -> Path:
    """Where the study keeps its runs unless ``--root`` says otherwise."""
    return Path("runs") / ("interference-study-quick" if quick else "interference-study")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a usage error raises ConfigError (one line, exit status 2, from :func:`main`)."""
    parser = UsageParser(prog="python -m dynamics.studies.interference_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick preset (CPU, under 30 minutes)")
    parser.add_argument(
        "--root", type=Path, default=None, help="where the runs are kept (default: runs/interference-study[-quick])"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON and figure (default: the runs)")
    parser.add_argument("--sizes", type=_ints, help="training-set sizes, e.g. 500,2000 (overrides the preset)")
    parser.add_argument("--widths", type=_ints, help="CNN widths, e.g. 4,8 (overrides the preset)")
    parser.add_argument("--seeds", type=_ints, help="training seeds, e.g. 0,1 (overrides the preset)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (overrides the preset)")
    parser.add_argument("--num-samples", type=int, help="MNIST-1D samples generated, train + test")
    parser.add_argument("--batch-size", type=int, help="samples per step")
    parser.add_argument(
        "--train-only", action="store_true", help="only capture the missing runs; do not summarise and draw them"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Capture the missing runs, then summarise and draw them; prints the conclusion and the written paths."""
    try:
        args = parse_args(argv)
        preset = PRESETS["quick" if args.quick else "full"]
        overrides = {
            key: getattr(args, key)
            for key in ("sizes", "widths", "seeds", "steps", "num_samples", "batch_size")
            if getattr(args, key) is not None
        }
        preset = Preset(**{**asdict(preset), **overrides})
        root = args.root or default_root(args.quick)
        capture(preset, root, progress=not args.no_progress)
        if args.train_only:
            print(root)
            return 0
        summary = summarise(root)
        out = args.out or root
        paths = [write_summary(summary, out), *draw_study(root, out / FIGURE_DIR / STUDY_NAME)]
    except ConfigError as err:
        fail(err)
        return USAGE_ERROR
    except DynamicsError as err:  # a run failed (marked so in its meta.json, its data kept)
        fail(err)
        return RUN_FAILED
    print(summary["conclusion"])
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
