"""Parameter trajectories of a recorded run: the shape of the path, its local linearity, the loss around it.

``python -m analyses.trajectory RUN_DIR`` prints a summary; ``python -m figures RUN_DIR --only trajectory``
(:mod:`figures.trajectory`) draws it. Sources: the parameter snapshots (``snapshot(snap_step, flat)``, see
``dynamics.snapshots``), the trajectory sketch (``traj_proj``, every recorded step), ``update_norm``/
``dist_from_init`` and the Enlightenment Period (:func:`analyses.overview.run_period`: the one a strategy tracked
online, else that of the clean batches' smoothed accuracy).

**Gram matrices.** The snapshots are read once, in column blocks, into one ``S x S`` Gram matrix of the
displacements ``theta_s - theta_first`` per module (a module: the parameters sharing a name prefix, e.g.
``blocks.0.conv``) and for the whole model (group ``"model"``). Everything but the loss surface follows from
these in float64, whatever the model's size: memory ``O(groups * S^2)``.

**PCA** of the snapshots as points (centred on their mean): explained-variance ratios per group, the path's
coordinates (scores) on the components, and, over time, the fraction of the variance of the path *so far*
(snapshots up to that step) that its own first 1, 2, 3 components explain.

**Local linearity** is the relative error of the three-point prediction of Parameter Linear Prediction
(``dynamics.strategies.plp.plp_prediction``: ``m23 + k s``) over every window of four consecutive points
``theta_1..theta_4`` at steps ``s_1 < ... < s_4``. The prediction extrapolates the midpoints ``m12 -> m23`` by
``k`` of their spacing; with evenly spaced points PLP's ``k = 1`` lands at the time of ``m34 = (theta_3 +
theta_4)/2``, which is where the parameters went. With uneven spacing (snapshots) ``k = (s_4 - s_2) /
(s_3 - s_1)`` keeps that meaning. The error is ``|prediction - m34| / |m34 - m23|``: 0 on any constant-speed
straight line, about 1 or more when the extrapolation is no better than standing still. Two sources:

- *snapshots*: exact, at the snapshots' spacing (one step early on, growing later: the scale PLP with a
  coarser unit, e.g. epochs, works at), per module and for the whole model;
- *sketch* (``traj_proj``): every recorded step, so PLP's own iteration unit, estimated from the ``k``
  random projections (``|P e|^2 ~ (k/n)|e|^2``; per module the parameters are weighted by their size) and
  pooled over a centred sliding window of ``window`` windows, sqrt(sum err^2 / sum span^2).

**Movement during the Enlightenment Period**: the share of the path length (sum of the per-step update
norms ``update_norm``, each weighted by the steps it stands for when ``every > 1``) travelled up to the end
of the period, per module and overall; and the share of the final distance from initialisation reached by
then (``dist_from_init``). Without ``update_norm`` the path length is the sum of the chords between
snapshots, a lower bound.

**Loss surface** on the plane of the first two principal directions through the final point,
``theta(a, b) = theta_final + a v1 + b v2`` (``v1``, ``v2`` unit vectors in parameter space, from
:func:`principal_directions`). Evaluating it rebuilds the model and runs it on training samples, so it is not
done here: ``python -m dynamics.surface RUN_DIR`` (:mod:`dynamics.surface`) evaluates it and writes
``RUN_DIR/loss_surface.json``, which this module reads (:func:`read_loss_surface`). Like every
analysis, this module only reads stores and files; it imports no model, data set or training code.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from analyses.enlightenment import EnlightenmentPeriod, check_arguments
from analyses.overview import module_of, run_period
from dynamics.cli import UsageParser, fail, one_line_errors
from dynamics.errors import ConfigError, DynamicsError, StoreError
from dynamics.plp_formula import plp_prediction
from dynamics.snapshots import CHUNK_COLUMNS, ParamSlice, param_layout
from dynamics.store import open_run, read_json

WHOLE = "model"
"""Group label of the whole model (the other groups are modules)."""
SURFACE_NAME = "loss_surface.json"
"""File of the loss surface in the run directory, written by ``python -m dynamics.surface``."""
SURFACE_FORMAT = "dynamics-loss-surface"
SURFACE_COMMAND = "python -m dynamics.surface"
FIGURE_COMMAND = "python -m figures RUN_DIR --only trajectory"
"""The command that draws the trajectory figure (:mod:`figures.trajectory`)."""
_SURFACE_FLAGS = ("--resolution", "--samples", "--batch-size", "--device")
"""Options of the loss-surface evaluation, which ``python -m analyses.trajectory`` took before it moved."""
USAGE_ERROR = 2


@dataclass(frozen=True)
class Trajectory:
    """Displacement Gram matrices of the snapshots: ``gram[g, s, t] = <theta_s - theta_0, theta_t - theta_0>``.

    ``theta_0`` is the first snapshot; ``groups[0]`` is the whole model, then one group per module.
    """

    steps: np.ndarray
    epochs: np.ndarray
    groups: tuple[str, ...]
    gram: np.ndarray
    layout: tuple[ParamSlice, ...]


def load_trajectory(ds: xr.Dataset, *, progress: bool = False) -> Trajectory:
    """Read the snapshots of run ``ds`` (from ``open_run``) once, in column blocks, into Gram matrices."""
    layout = param_layout(ds)
    snapshot = ds["snapshot"]
    count = snapshot.sizes["snap_step"]
    if count < 2:
        raise ConfigError(
            f"the run has {count} parameter snapshot(s); trajectories need at least two "
            "(let the run go on, or raise --snapshot-budget-mb)"
        )
    modules = list(dict.fromkeys(module_of(s.name) for s in layout))
    group_of = [1 + modules.index(module_of(s.name)) for s in layout]
    gram = np.zeros((1 + len(modules), count, count))
    numel = snapshot.sizes["flat"]
    starts = range(0, numel, CHUNK_COLUMNS)
    for start in tqdm(starts, desc="reading snapshots", unit="block", disable=not progress or len(starts) < 4):
        stop = min(start + CHUNK_COLUMNS, numel)
        block = np.asarray(snapshot[:, start:stop].values)
        for index, piece in enumerate(layout):
            low, high = max(piece.offset, start), min(piece.offset + piece.numel, stop)
            if low < high:
                moved = block[:, low - start : high - start].astype(np.float64)
                moved = moved - moved[0]
                gram[group_of[index]] += moved @ moved.T
    gram[0] = gram[1:].sum(0)
    return Trajectory(
        np.asarray(ds["snap_step"].values, dtype=np.int64),
        np.asarray(ds["snap_epoch"].values, dtype=np.int64)
        if "snap_epoch" in ds.variables
        else np.zeros(count, dtype=np.int64),
        (WHOLE, *modules),
        gram,
        tuple(layout),
    )


# ------------------------------------------------------------------------------------------------ PCA


def _centred(gram: np.ndarray) -> np.ndarray:
    """The Gram matrix of the points centred on their mean: H G H with H = I - 11^T/S."""
    return gram - gram.mean(0, keepdims=True) - gram.mean(1, keepdims=True) + gram.mean()


def _eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of the centred Gram matrix."""
    values, vectors = np.linalg.eigh(_centred(gram))
    return np.clip(values[::-1], 0.0, None), vectors[:, ::-1]


def _ratios(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    total = values.sum()
    if total > 0:
        kept = values[:n] / total
        out[: kept.size] = kept
    return out


def _prefix_explained(gram: np.ndarray, ends: np.ndarray, n_components: int, batch: int = 16) -> np.ndarray:
    """Cumulative explained ratios ``(len(ends), n_components)`` of the prefixes ``[0, end]`` of the path.

    Each prefix's centred Gram matrix is zero-padded to ``S x S`` (adding only zero eigenvalues), so batches
    of prefixes go through one stacked ``eigvalsh`` (one LAPACK call per matrix is slow under OpenBLAS
    threading). A prefix whose points all coincide gives NaN.
    """
    size = len(gram)
    out = np.full((len(ends), n_components), np.nan)
    for first in range(0, len(ends), batch):
        chunk = ends[first : first + batch]
        stack = np.zeros((len(chunk), size, size))
        for row, end in enumerate(chunk):
            stack[row, : end + 1, : end + 1] = _centred(gram[: end + 1, : end + 1])
        values = np.clip(np.linalg.eigvalsh(stack)[:, ::-1], 0.0, None)
        for row, vals in enumerate(values):
            ratios = _ratios(vals, n_components)
            if np.isfinite(ratios[0]):  # components beyond the prefix's rank add nothing: the sum stays at 1
                out[first + row] = np.cumsum(np.nan_to_num(ratios))
    return out


def trajectory_pca(traj: Trajectory, n_components: int = 10, *, max_points: int = 100) -> xr.Dataset:
    """PCA of the snapshot path of every group.

    Returns ``explained_ratio(group, component)``, ``scores(group, snap_step, component)`` (coordinates of
    each snapshot on the components, centred on the mean point) and ``explained_over_time(group, snap_step,
    component)``: the fraction of the variance of the snapshots up to ``snap_step`` explained by their own
    first ``component`` components (cumulative; computed at up to ``max_points`` evenly spread snapshots,
    NaN elsewhere and at the first snapshot).
    """
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ConfigError(f"n_components must be a positive integer, got {n_components!r}")
    count = len(traj.steps)
    ratio = np.full((len(traj.groups), n_components), np.nan)
    scores = np.full((len(traj.groups), count, n_components), np.nan)
    over_time = np.full((len(traj.groups), count, n_components), np.nan)
    ends = np.unique(np.round(np.linspace(1, count - 1, min(max_points, count - 1))).astype(int))
    for g, gram in enumerate(traj.gram):
        values, vectors = _eigh(gram)
        n = min(n_components, count)
        ratio[g] = _ratios(values, n_components)
        scores[g, :, :n] = vectors[:, :n] * np.sqrt(values[:n])
        over_time[g, ends] = _prefix_explained(gram, ends, n_components)
    coords = {"group": list(traj.groups), "component": np.arange(1, n_components + 1), "snap_step": traj.steps}
    return xr.Dataset(
        {
            "explained_ratio": (("group", "component"), ratio, {"long_name": "explained variance ratio"}),
            "scores": (
                ("group", "snap_step", "component"),
                scores,
                {"long_name": "principal coordinates", "units": "param"},
            ),
            "explained_over_time": (
                ("group", "snap_step", "component"),
                over_time,
                {
                    "long_name": "cumulative explained variance of the path so far",
                    "description": "PCA of the snapshots up to snap_step; first `component` components",
                },
            ),
        },
        coords=coords,
    )


# ------------------------------------------------------------------------------------------ linearity


def _windows(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows of four consecutive points: indices ``(W, 4)``, error and span coefficients ``(W, 4)``, ``k``.

    The error ``plp_prediction(theta1, theta2, theta3, k) - (theta3 + theta4)/2`` and the span
    ``(theta3 + theta4)/2 - (theta2 + theta3)/2`` are linear in the four points; their coefficients sum to 0,
    so they may be applied to displacements from any origin.
    """
    steps = np.asarray(steps, dtype=np.float64)
    count = len(steps) - 3
    if count < 1:
        empty = np.zeros((0, 4))
        return empty.astype(int), empty, empty, np.zeros(0)
    index = np.arange(count)[:, None] + np.arange(4)
    s = steps[index]
    k = (s[:, 3] - s[:, 1]) / (s[:, 2] - s[:, 0])
    basis = np.eye(3)
    predicted = plp_prediction(basis[0], basis[1], basis[2], k[:, None])  # (W, 3) coefficients of theta1..3
    error = np.concatenate([predicted, np.zeros((count, 1))], axis=1) - [0.0, 0.0, 0.5, 0.5]
    span = np.tile([0.0, -0.5, 0.0, 0.5], (count, 1))
    return index, error, span, k


def _quadratic(gram: np.ndarray, index: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """``|sum_a coef[w, a] theta[index[w, a]]|^2`` for every window ``w`` from the Gram matrix."""
    block = gram[index[:, :, None], index[:, None, :]]
    return np.clip(np.einsum("wa,wab,wb->w", coef, block, coef), 0.0, None)


def linearity_error(traj: Trajectory) -> xr.DataArray:
    """Relative error of PLP's three-point prediction over every window of four consecutive snapshots.

    Dims ``(window, group)``; coordinates ``step`` (the third point's step, the point PLP would replace),
    ``span`` (steps from the first to the fourth point) and ``k`` (the factor used, 1 for even spacing).
    """
    index, error, span, k = _windows(traj.steps)
    with np.errstate(invalid="ignore", divide="ignore"):  # a group that does not move: NaN
        values = (
            np.stack(
                [np.sqrt(_quadratic(g, index, error)) / np.sqrt(_quadratic(g, index, span)) for g in traj.gram], axis=1
            )
            if len(index)
            else np.zeros((0, len(traj.groups)))
        )
    values = np.where(np.isfinite(values), values, np.nan)
    steps = traj.steps[index[:, 2]] if len(index) else np.zeros(0, dtype=np.int64)
    spans = traj.steps[index[:, 3]] - traj.steps[index[:, 0]] if len(index) else np.zeros(0, dtype=np.int64)
    return xr.DataArray(
        values,
        dims=("window", "group"),
        name="linearity_error",
        coords={"group": list(traj.groups), "step": ("window", steps), "span": ("window", spans), "k": ("window", k)},
        attrs={
            "long_name": "relative error of the PLP three-point prediction",
            "description": "|m23 + k s - m34| / |m34 - m23| over four consecutive snapshots",
        },
    )


def sketch_linearity(ds: xr.Dataset, *, window: int = 25) -> xr.DataArray:
    """PLP's relative error at the recorded steps, estimated from the trajectory sketch (module docstring).

    Dims ``(step, group)``, ``step`` being the third point of each window of four consecutive recorded
    points (the initial state, a zero sketch, counts as a point before step 0); pooled over a centred
    sliding window of ``window`` windows (of all of them when there are fewer).
    """
    if "traj_proj" not in ds.variables:
        raise ConfigError(
            "the run has no trajectory sketch (traj_proj); record it with the 'sketch' probe "
            "(probes='default' or 'trajectory')"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    proj = np.asarray(ds["traj_proj"].transpose("step", "param", "proj").values, dtype=np.float64)
    total = np.asarray(ds["traj_proj_total"].transpose("step", "proj").values, dtype=np.float64)
    steps = np.concatenate([[-1], np.asarray(ds["step"].values)])
    proj = np.concatenate([np.zeros((1, *proj.shape[1:])), proj])
    total = np.concatenate([np.zeros((1, total.shape[1])), total])
    index, error, span, _ = _windows(steps)
    params = [str(p) for p in ds["param"].values]
    numel = np.asarray(ds["traj_proj"].attrs["param_numel"], dtype=np.float64)
    modules = list(dict.fromkeys(module_of(p) for p in params))

    def squares(points: np.ndarray, coef: np.ndarray) -> np.ndarray:
        combined = np.einsum("wa,wa...->w...", coef, points[index])
        return np.square(combined).sum(-1)

    # |e_i|^2 ~ (n_i / k) |P_i e_i|^2: per module, weight each parameter's squared projections by its size
    weights = np.array([[module_of(p) == m for p in params] for m in modules], dtype=np.float64) * numel
    err = np.column_stack([squares(total, error), squares(proj, error) @ weights.T])  # (W, 1 + modules)
    spans = np.column_stack([squares(total, span), squares(proj, span) @ weights.T])
    kernel = np.ones(min(window, len(index)))  # np.convolve's 'same' would return the kernel's length otherwise
    with np.errstate(invalid="ignore", divide="ignore"):  # a group that does not move: NaN
        values = (
            np.stack(
                [
                    np.sqrt(np.convolve(e, kernel, "same") / np.convolve(s, kernel, "same"))
                    for e, s in zip(err.T, spans.T, strict=True)
                ],
                axis=1,
            )
            if len(index)
            else np.zeros((0, 1 + len(modules)))
        )
    values = np.where(np.isfinite(values), values, np.nan)
    return xr.DataArray(
        values,
        dims=("step", "group"),
        name="sketch_linearity_error",
        coords={"step": steps[index[:, 2]] if len(index) else np.zeros(0, dtype=np.int64), "group": [WHOLE, *modules]},
        attrs={
            "long_name": "relative error of the PLP three-point prediction (sketch estimate)",
            "window": window,
            "k": int(ds["traj_proj"].attrs.get("k", proj.shape[-1])),
        },
    )


# ------------------------------------------------------------------------------------------- movement


@dataclass(frozen=True)
class Movement:
    """How much of the movement happens during the Enlightenment Period ``[0, end_step]``.

    Attributes:
        end_step: the period's last step (None: not reached, shares NaN).
        path_share: share of the whole model's path length travelled up to ``end_step``.
        displacement_share: ``|theta_end - theta_0| / |theta_T - theta_0|`` (NaN without ``dist_from_init``).
        by_module: ``path_share`` of every module.
        source: ``"update_norm"`` or ``"snapshots"`` (chords between snapshots, a lower bound of the path).
        cumulative: cumulative path length as a fraction of the total, ``(step, group)``.
    """

    end_step: int | None
    path_share: float
    displacement_share: float
    by_module: dict[str, float]
    source: str
    cumulative: xr.DataArray


def _grouped_norm(values: np.ndarray, params: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Whole-model and per-module L2 norms of per-parameter norms ``values (T, param)``: ``(T, 1 + modules)``."""
    modules = list(dict.fromkeys(module_of(p) for p in params))
    squared = np.square(values)
    columns = [squared.sum(1)] + [squared[:, [module_of(p) == m for p in params]].sum(1) for m in modules]
    return [WHOLE, *modules], np.sqrt(np.stack(columns, axis=1))


def movement_share(ds: xr.Dataset, period: EnlightenmentPeriod, traj: Trajectory | None = None) -> Movement:
    """The share of the path (and of the distance from init) covered during the Enlightenment Period."""
    if "update_norm" in ds.variables and ds.sizes.get("step", 0):
        steps = np.asarray(ds["step"].values)
        params = [str(p) for p in ds["param"].values]
        groups, norms = _grouped_norm(
            np.asarray(ds["update_norm"].transpose("step", "param").values, dtype=np.float64), params
        )
        gaps = np.diff(np.append(steps, steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)))
        lengths = np.nancumsum(norms * gaps[:, None], axis=0)
        source = "update_norm"
    elif traj is not None:
        steps = traj.steps
        groups = list(traj.groups)
        chords = np.stack(
            [
                np.sqrt(np.clip(np.diagonal(g)[1:] + np.diagonal(g)[:-1] - 2 * np.diagonal(g, 1), 0, None))
                for g in traj.gram
            ],
            axis=1,
        )
        lengths = np.concatenate([np.zeros((1, len(groups))), np.cumsum(chords, axis=0)])
        source = "snapshots"
    else:
        raise ConfigError("the run has neither update_norm nor snapshots; record the 'update_norm' probe")
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = lengths / lengths[-1]
    cumulative = xr.DataArray(
        fraction, dims=("step", "group"), coords={"step": steps, "group": groups}, name="path_fraction"
    )
    if not period.reached:
        return Movement(None, math.nan, math.nan, dict.fromkeys(groups[1:], math.nan), source, cumulative)
    at_end = np.flatnonzero(steps <= period.end_step)
    row = fraction[at_end[-1]] if at_end.size else np.zeros(len(groups))
    displacement = math.nan
    if "dist_from_init" in ds.variables:
        _, dist = _grouped_norm(
            np.asarray(
                ds["dist_from_init"].sel(step=[period.end_step, int(ds["step"][-1])]).transpose("step", "param").values,
                dtype=np.float64,
            ),
            [str(p) for p in ds["param"].values],
        )
        displacement = float(dist[0, 0] / dist[1, 0]) if dist[1, 0] > 0 else math.nan
    return Movement(
        period.end_step,
        float(row[0]),
        displacement,
        dict(zip(groups[1:], map(float, row[1:]), strict=True)),
        source,
        cumulative,
    )


# -------------------------------------------------------------------------------------- loss surface


@dataclass(frozen=True)
class LossSurface:
    """Loss and accuracy on ``theta_final + a v1 + b v2``: ``loss[i, j]`` at ``(a[j], b[i])``.

    ``path`` holds the snapshots' ``(a, b)`` coordinates (their projection on the plane), ``steps`` their
    steps; ``samples`` is the number of evaluated samples; ``explained`` the ratios of PC1 and PC2;
    ``settings`` how it was evaluated (grid, samples, batch size, device; empty when not recorded).
    """

    a: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    path: np.ndarray
    steps: np.ndarray
    samples: int
    explained: tuple[float, float]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``loss_surface.json`` (float64 values round-trip exactly; NaN as ``NaN``)."""
        return {
            "format": SURFACE_FORMAT,
            "version": 1,
            "a": self.a.tolist(),
            "b": self.b.tolist(),
            "loss": self.loss.tolist(),
            "accuracy": self.accuracy.tolist(),
            "path": self.path.tolist(),
            "steps": self.steps.tolist(),
            "samples": int(self.samples),
            "explained": [float(v) for v in self.explained],
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> LossSurface:
        """The surface held by a ``loss_surface.json`` object (:meth:`to_json`)."""
        if payload.get("format") != SURFACE_FORMAT:
            raise StoreError(
                f"the loss surface file does not hold a {SURFACE_FORMAT} object; rerun {SURFACE_COMMAND} RUN_DIR"
            )
        try:
            a, b = np.asarray(payload["a"], dtype=np.float64), np.asarray(payload["b"], dtype=np.float64)
            loss = np.asarray(payload["loss"], dtype=np.float64).reshape(len(b), len(a))
            accuracy = np.asarray(payload["accuracy"], dtype=np.float64).reshape(len(b), len(a))
            path = np.asarray(payload["path"], dtype=np.float64).reshape(-1, 2)
            steps = np.asarray(payload["steps"], dtype=np.int64)
            first, second = (float(v) for v in payload["explained"])
            return cls(
                a,
                b,
                loss,
                accuracy,
                path,
                steps,
                int(payload["samples"]),
                (first, second),
                dict(payload.get("settings") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"the loss surface file is damaged ({err}); rerun {SURFACE_COMMAND} RUN_DIR") from None


def principal_directions(ds: xr.Dataset, traj: Trajectory, n: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The final snapshot ``(N,)``, the first ``n`` principal directions ``(n, N)`` (unit, in parameter space)
    and the snapshots' coordinates relative to the final point ``(S, n)``, all float64.

    ``v_i = D^T u_i / sqrt(lambda_i)`` with ``D`` the displacements (centring is not needed: ``u_i`` is
    orthogonal to the ones vector); a second pass over the snapshots.
    """
    values, vectors = _eigh(traj.gram[0])
    if not (values[:n] > 0).all():
        raise ConfigError(f"the snapshots span fewer than {n} dimensions; record more snapshots or a longer run")
    weights = vectors[:, :n] / np.sqrt(values[:n])
    snapshot = ds["snapshot"]
    numel = snapshot.sizes["flat"]
    directions = np.empty((n, numel))
    final = np.empty(numel)
    for start in range(0, numel, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, numel)
        block = np.asarray(snapshot[:, start:stop].values, dtype=np.float64)
        final[start:stop] = block[-1]
        directions[:, start:stop] = weights.T @ (block - block[0])
    scores = vectors[:, :n] * np.sqrt(values[:n])
    return final, directions, scores - scores[-1]


def explained_ratios(traj: Trajectory, n: int = 2) -> np.ndarray:
    """Explained variance ratios of the whole model's first ``n`` principal components (NaN-padded)."""
    return _ratios(_eigh(traj.gram[0])[0], n)


def surface_path(ds: xr.Dataset) -> Path | None:
    """Where the loss surface of run ``ds`` is kept (None for a dataset that is not an opened run)."""
    run_dir = ds.attrs.get("run_dir")
    return Path(str(run_dir)) / SURFACE_NAME if run_dir else None


def read_loss_surface(ds: xr.Dataset, traj: Trajectory | None = None) -> LossSurface | None:
    """The loss surface written into the run directory by ``python -m dynamics.surface``; None when absent.

    With ``traj``, a surface computed from other snapshots (the run went on, or was resumed and cut, after
    it was evaluated) raises ConfigError: its plane is not the one of the path.
    """
    path = surface_path(ds)
    if path is None or not path.exists():
        return None
    surface = LossSurface.from_json(read_json(path))
    if traj is not None and not np.array_equal(surface.steps, traj.steps):
        raise ConfigError(
            f"{path} was computed from {len(surface.steps)} snapshots, the run now holds "
            f"{len(traj.steps)}; rerun {SURFACE_COMMAND} {path.parent}"
        )
    return surface


# ----------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class TrajectoryReport:
    """Everything :func:`analyse_trajectory` computes for one run."""

    ds: xr.Dataset
    trajectory: Trajectory
    pca: xr.Dataset
    linearity: xr.DataArray
    sketch_linearity: xr.DataArray | None
    period: EnlightenmentPeriod | None
    movement: Movement | None
    surface: LossSurface | None
    surface_note: str | None = None
    """Why there is no loss surface (not computed, or stale), when ``surface`` was asked for and is None."""


def analyse_trajectory(
    ds: xr.Dataset,
    *,
    surface: bool = True,
    threshold: float = 0.5,
    tau: float = 10.0,
    window: int = 25,
    progress: bool = False,
) -> TrajectoryReport:
    """PCA, linearity (snapshots and sketch), movement during the Enlightenment Period; with ``surface`` the
    loss surface stored in the run directory by ``python -m dynamics.surface``, if there is one (read only)."""
    threshold, tau = check_arguments(threshold, tau)
    traj = load_trajectory(ds, progress=progress)
    period = run_period(ds, threshold=threshold, tau=tau)
    sketch = sketch_linearity(ds, window=window) if "traj_proj" in ds.variables else None
    movement = movement_share(ds, period, traj) if period is not None else None
    stored, note = None, None
    if surface:
        try:
            stored = read_loss_surface(ds, traj)
        except DynamicsError as err:
            note = str(err)
        if stored is None and note is None:
            where = ds.attrs.get("run_dir") or "RUN_DIR"
            note = f"not computed; {SURFACE_COMMAND} {where} evaluates it (it rebuilds the model)"
    return TrajectoryReport(
        ds, traj, trajectory_pca(traj), linearity_error(traj), sketch, period, movement, stored, note
    )


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


def _during(report: TrajectoryReport, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of ``steps`` inside and after the Enlightenment Period (all False/True when unknown)."""
    period = report.period
    if period is None or not period.reached:
        return np.zeros(len(steps), dtype=bool), np.ones(len(steps), dtype=bool)
    return steps <= period.end_step, steps > period.end_step


def summary(report: TrajectoryReport) -> str:
    """The text summary printed by the CLI."""
    traj, pca = report.trajectory, report.pca
    numel = sum(s.numel for s in traj.layout)
    lines = [
        f"snapshots            {len(traj.steps)} (steps {traj.steps[0]}..{traj.steps[-1]}; -1 = initial), "
        f"{numel:,} parameters in {len(traj.groups) - 1} modules"
    ]
    ratio = pca["explained_ratio"].sel(group=WHOLE).values
    modules = ", ".join(f"{g} {float(pca['explained_ratio'].sel(group=g, component=1)):.0%}" for g in traj.groups[1:])
    lines.append(
        f"PCA (whole model)    PC1 {ratio[0]:.1%}, PC2 {ratio[1]:.1%}, PC3 {ratio[2]:.1%} "
        f"of the path's variance; PC1 per module: {modules}"
    )
    lin = report.linearity
    during, after = _during(report, lin["step"].values)
    lines.append(
        f"linearity            relative error of PLP's prediction over snapshot windows (whole model): "
        f"median {_median(lin.sel(group=WHOLE).values[during]):.3f} during the Enlightenment Period, "
        f"{_median(lin.sel(group=WHOLE).values[after]):.3f} after"
    )
    if report.sketch_linearity is not None:
        sketch = report.sketch_linearity.sel(group=WHOLE)
        during, after = _during(report, sketch["step"].values)
        lines.append(
            f"                     iteration unit (sketch, k = {sketch.attrs['k']}): median "
            f"{_median(sketch.values[during]):.3f} during, {_median(sketch.values[after]):.3f} after"
        )
    period, movement = report.period, report.movement
    if period is None or movement is None:
        lines.append("Enlightenment Period unknown (no clean training accuracy recorded)")
    elif not period.reached:
        lines.append(
            f"Enlightenment Period not ended (smoothed accuracy < {period.threshold:.0%}): all movement is in it"
        )
    else:
        lines.append(
            f"Enlightenment Period ends at step {period.end_step} ({period.fraction:.1%} of training): "
            f"{movement.path_share:.1%} of the path length ({movement.source}) and "
            f"{movement.displacement_share:.1%} of the final distance from init"
        )
    surface = report.surface
    if surface is not None:
        center = surface.loss[np.argmin(np.abs(surface.b)), np.argmin(np.abs(surface.a))]
        lines.append(
            f"loss surface         {len(surface.a)}x{len(surface.b)} grid on the PC1-PC2 plane through the "
            f"final point, {surface.samples} training samples: loss {center:.4f} at the final point, "
            f"min {np.nanmin(surface.loss):.4f}"
        )
    elif report.surface_note is not None:
        lines.append(f"loss surface         {report.surface_note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analyses.trajectory RUN_DIR``: print the summary (``python -m figures`` draws the figure);
    returns the exit status."""
    parser = UsageParser(prog="python -m analyses.trajectory", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run recorded with snapshots")
    parser.add_argument(
        "--no-surface", action="store_true", help=f"leave out the loss surface stored by {SURFACE_COMMAND}"
    )
    parser.add_argument("--window", type=int, default=25, help="sliding window of the sketch estimate (default 25)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)  # drawing moved to python -m figures
    for flag in _SURFACE_FLAGS:  # the evaluation's settings, which moved to dynamics.surface
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    try:
        args = parser.parse_args(argv)
        if args.out is not None:
            raise ConfigError(f"this analysis only prints its summary; {FIGURE_COMMAND} --out DIR draws the figure")
        given = [flag for flag in _SURFACE_FLAGS if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            several = len(given) > 1
            raise ConfigError(
                f"{'/'.join(given)} set{'' if several else 's'} how the loss surface is evaluated, "
                f"which rebuilds the model: pass {'them' if several else 'it'} to {SURFACE_COMMAND} "
                "RUN_DIR, which writes the surface and then runs this analysis"
            )
        report = analyse_trajectory(
            open_run(args.run_dir), surface=not args.no_surface, window=args.window, progress=not args.no_progress
        )
    except (DynamicsError, OSError) as err:
        fail(err)
        return USAGE_ERROR
    print(summary(report))
    print(f"trajectory figure    {FIGURE_COMMAND.replace('RUN_DIR', str(args.run_dir))} draws it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
