"""Evaluate the loss surface around a recorded parameter trajectory and write it into the run directory.

``python -m dynamics.surface RUN_DIR`` rebuilds the run's model from its config (``dynamics.models``,
``dynamics.data``), evaluates training loss and accuracy on the plane of the first two principal directions of
the snapshot path through the final point, ``theta(a, b) = theta_final + a v1 + b v2`` (``v1``, ``v2`` unit
vectors in parameter space, :func:`analyses.trajectory.principal_directions`), writes
``RUN_DIR/loss_surface.json`` and then runs the trajectory analysis (``python -m analyses.trajectory RUN_DIR``),
which reads it, and draws the path over it (``RUN_DIR/figures/trajectory.png``, :mod:`figures.trajectory`). The
analysis itself never builds a model.

The grid contains ``(0, 0)`` exactly and covers the path's extent plus ``margin`` of it on each side, with
about ``resolution`` points per axis. It is evaluated on a fixed set of training samples (the first
``num_samples`` of the training split, in order) with :func:`dynamics.steps.evaluate_split`: eval mode; models
with BatchNorm get their running statistics recomputed on those samples at every grid point, since snapshots
hold parameters, not buffers.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from analyses.trajectory import (
    SURFACE_NAME,
    LossSurface,
    Trajectory,
    explained_ratios,
    load_trajectory,
    principal_directions,
)
from analyses.trajectory import main as analyse
from dynamics.augment import InputPipeline
from dynamics.cli import UsageParser, fail, one_line_errors
from dynamics.data import Dataset, load_dataset
from dynamics.errors import ConfigError, DynamicsError
from dynamics.models import build_model
from dynamics.snapshots import ParamSlice
from dynamics.steps import evaluate_split
from dynamics.store import open_run, write_json_atomic
from figures.registry import FIGURE_DIR
from figures.trajectory import NAME as TRAJECTORY
from figures.trajectory import draw_trajectory

USAGE_ERROR = 2


def grid_axis(coords: np.ndarray, resolution: int, margin: float) -> np.ndarray:
    """About ``resolution`` evenly spaced values covering ``coords`` plus ``margin`` of their range, 0 included."""
    low, high = float(coords.min()), float(coords.max())
    pad = margin * max(high - low, 1e-12)
    low, high = min(low - pad, 0.0), max(high + pad, 0.0)
    step = (high - low) / max(resolution - 1, 1)
    return step * np.arange(math.floor(low / step), math.ceil(high / step) + 1)


def rebuild(config: Mapping[str, Any], device: torch.device) -> tuple[nn.Module, Dataset]:
    """The run's model (initialised with its seed) and data set, rebuilt from its config (``ds.attrs["config"]``)."""
    if not isinstance(config, Mapping) or "model" not in config or "dataset" not in config:
        raise ConfigError(
            "the run's config names no built-in model and dataset (a custom training loop?); "
            "pass model= and data= to loss_surface"
        )
    data = load_dataset(
        config["dataset"],
        num_samples=config.get("num_samples"),
        train_size=config.get("train_size"),
        seed=config.get("data_seed", 0),
        data_dir=config.get("data_dir"),
        image_size=config.get("image_size"),
        seq_len=config.get("seq_len"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.get("seed", 0))
        model = build_model(
            config["model"],
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            width=config.get("width", 32),
            depth=config.get("depth", 3),
            activation=config.get("activation", "relu"),
            width_mult=config.get("width_mult", 1.0),
            patch_size=config.get("patch_size"),
            kind=data.kind,
        )
    return model.to(device), data


def fixed_samples(
    data: Dataset, num_samples: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, Callable[..., torch.Tensor] | None]:
    """The first ``num_samples`` training samples of ``data`` on ``device``, and the input preparation (images)."""
    x, y = data.x_train[:num_samples].to(device), data.y_train[:num_samples].to(device)
    prepare = InputPipeline(data, device, augment=False) if data.kind == "image" else None
    return x, y, prepare


def _recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, batch_size: int, prepare: Callable[..., torch.Tensor] | None
) -> None:
    """Recompute BatchNorm running statistics on ``x`` (cumulative averages over its batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            inputs = x[start : start + batch_size]
            model(inputs if prepare is None else prepare(inputs, False))


def load_parameters(model: nn.Module, layout: Sequence[ParamSlice], theta: torch.Tensor) -> None:
    """Copy the flat snapshot vector ``theta`` into the parameters of ``model`` named in ``layout``."""
    params = dict(model.named_parameters())
    missing = [s.name for s in layout if s.name not in params]
    if missing:
        raise ConfigError(f"the model has no parameter(s) {missing[:3]} of the snapshots; pass the run's model")
    with torch.no_grad():
        for piece in layout:
            params[piece.name].copy_(theta[piece.columns].view(piece.shape))


def loss_surface(
    ds: xr.Dataset,
    traj: Trajectory,
    *,
    model: nn.Module | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    prepare: Callable[..., torch.Tensor] | None = None,
    resolution: int = 17,
    num_samples: int = 1024,
    batch_size: int = 256,
    margin: float = 0.2,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> LossSurface:
    """Loss and accuracy on the PC1-PC2 plane through the final snapshot (module docstring).

    ``model``/``data`` (inputs, targets) default to the run's own, rebuilt from its config; ``prepare`` turns
    stored inputs into model inputs. The grid has about ``resolution`` points per axis over the path's
    extent plus ``margin`` of it on each side.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ConfigError(f"resolution must be an integer >= 2, got {resolution!r}; fix --resolution")
    for label, value, flag in (("num_samples", num_samples, "--samples"), ("batch_size", batch_size, "--batch-size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}; fix {flag}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rebuilt = model is None
    if model is None or data is None:
        built, dataset = rebuild(ds.attrs.get("config") or {}, device)
        model = built if model is None else model
        if data is None:
            x, y, prepare = fixed_samples(dataset, num_samples, device)
            data = (x, y)
    x, y = data
    final, directions, path = principal_directions(ds, traj)
    a, b = grid_axis(path[:, 0], resolution, margin), grid_axis(path[:, 1], resolution, margin)
    theta = torch.as_tensor(final, dtype=torch.float32, device=device)
    v1, v2 = (torch.as_tensor(d, dtype=torch.float32, device=device) for d in directions)
    loss = torch.empty((len(b), len(a)), dtype=torch.float64, device=device)
    accuracy = torch.empty_like(loss)
    layout = traj.layout
    bar = tqdm(total=len(a) * len(b), desc="loss surface", unit="point", disable=not progress)
    with bar:
        for i, beta in enumerate(b.tolist()):
            for j, alpha in enumerate(a.tolist()):
                load_parameters(model, layout, theta + alpha * v1 + beta * v2)
                _recalibrate_batchnorm(model, x, batch_size, prepare)
                loss[i, j], accuracy[i, j] = evaluate_split(model, x, y, batch_size, prepare=prepare)
                bar.update()
    ratios = explained_ratios(traj, 2)
    settings = {
        "resolution": resolution,
        "margin": margin,
        "batch_size": batch_size,
        "device": str(device),
        "model": "rebuilt from the run's config" if rebuilt else "given",
    }
    return LossSurface(
        a,
        b,
        loss.cpu().numpy(),
        accuracy.cpu().numpy(),
        path,
        traj.steps,
        int(y.numel()),
        (float(ratios[0]), float(ratios[1])),
        settings,
    )


def write_surface(surface: LossSurface, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``surface`` to ``RUN_DIR/loss_surface.json`` (atomically); returns the path."""
    path = Path(run_dir) / SURFACE_NAME
    write_json_atomic(path, surface.to_json())
    return path


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    resolution: int = 17,
    num_samples: int = 1024,
    batch_size: int = 256,
    margin: float = 0.2,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Path:
    """Evaluate the loss surface of the recorded run ``run_dir`` (its own model and data) and write it there."""
    ds = open_run(run_dir)
    surface = loss_surface(
        ds,
        load_trajectory(ds, progress=progress),
        resolution=resolution,
        num_samples=num_samples,
        batch_size=batch_size,
        margin=margin,
        device=device,
        progress=progress,
    )
    return write_surface(surface, run_dir)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dynamics.surface RUN_DIR``: evaluate and write the surface, then run the trajectory analysis."""
    parser = UsageParser(prog="python -m dynamics.surface", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run recorded with snapshots")
    parser.add_argument("--resolution", type=int, default=17, help="grid points per axis (default 17)")
    parser.add_argument(
        "--samples", type=int, default=1024, help="training samples the loss surface is evaluated on (default 1024)"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device of the model")
    parser.add_argument(
        "--no-analysis",
        action="store_true",
        help="only write the surface; do not run python -m analyses.trajectory and draw the figure afterwards",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    try:
        args = parser.parse_args(argv)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        path = evaluate_run(
            args.run_dir,
            resolution=args.resolution,
            num_samples=args.samples,
            batch_size=args.batch_size,
            device=None if args.device == "auto" else args.device,
            progress=not args.no_progress,
        )
    except (DynamicsError, OSError) as err:
        fail(err)
        return USAGE_ERROR
    print(f"loss surface written {path.resolve()}")
    if args.no_analysis:
        return 0
    status = analyse([str(args.run_dir), *(["--no-progress"] if args.no_progress else [])])
    if status == 0:
        try:
            png, pdf = draw_trajectory(args.run_dir, args.run_dir / FIGURE_DIR / TRAJECTORY)
        except (DynamicsError, OSError) as err:
            fail(err)
            return USAGE_ERROR
        print(f"trajectory figure    {png.resolve()}\n                     {pdf.resolve()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
