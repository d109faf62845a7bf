"""The trajectory sketch: theta_t - theta_0 of every parameter tensor projected on k fixed random unit directions.

``traj_proj(step, param, proj)`` holds, per parameter tensor ``i`` and direction ``j``, the dot product
``d_ij . (theta_i,t - theta_i,0)`` with a unit vector ``d_ij`` of the tensor's size (elements in row-major
order of the tensor); ``traj_proj_total(step, proj)`` the same for ``k`` unit directions of the whole model
(the parameters concatenated in ``named_parameters`` order). Norms and distances say how far parameters
moved; the sketch keeps *where* they went, at a cost that can stay on: one float64 matrix-vector product
per tensor on the device, no host synchronisation. It projects theta_t itself and subtracts the projection
of theta_0 taken at ``attach``: in float64 the cancellation costs nothing measurable (relative error about
1e-16 sqrt(n) |theta| / |theta_t - theta_0|), and no copy of theta_0 or pass over theta_t - theta_0 is needed.

**Directions are regenerated, never stored.** Parameter ``i`` (index in the recorder's trainable-parameter
list) gets its own CPU generator, ``torch.Generator("cpu").manual_seed(param_seed(seed, i))`` with
``param_seed`` a 64-bit ``numpy.random.SeedSequence([seed, i])`` draw, so a direction depends only on
``(seed, i, k, numel, mode)``, all kept in the attributes of ``traj_proj``. Draws are made on the CPU in
float32, normalised in float64, then moved to the parameter's device. Dot products accumulate in float64
(a float32 matrix-vector product over 10^4 elements already errs by ~1e-6 relative, over 10^6 by ~1e-5);
values are stored as float32 like every recorded variable.

- ``mode="dense"`` (default): ``g_i = torch.randn((k, n_i), generator)``; ``d_ij = g_ij / |g_ij|``, uniform on
  the unit sphere. Memory: ``8 k`` bytes per parameter element (64 with k = 8: 16 times a float32 model;
  1.5 MB for the MNIST-1D CNN, 0.7 GB for ResNet-18); use ``hashed`` for large models.
- ``mode="hashed"``: a sparse sign sketch for large models. ``b_i = torch.randint(0, 2k, (n_i,), generator,
  dtype=int32)`` puts each element in one direction ``b mod k`` with sign ``+`` (``b < k``) or ``-``;
  ``d_ij`` is that sign pattern over its ``c_ij`` elements divided by ``sqrt(c_ij)`` (a zero vector, and a
  zero projection, when ``c_ij = 0``). Memory: one int32 per parameter element whatever ``k``; the k
  directions of a tensor are orthonormal (disjoint supports). Cost: one ``index_add_`` per tensor.

**Whole-model directions** combine the per-tensor ones with weights ``w_ij`` (dense: ``|g_ij|``; hashed:
``sqrt(c_ij)``): ``D_j = concat_i(w_ij d_ij) / sqrt(sum_i w_ij^2)``. Dense ``D_j`` is then exactly the
normalised Gaussian ``concat_i(g_ij)``, uniform on the model's unit sphere; hashed ``D_j`` is the model-wide
sign sketch. So ``traj_proj_total[j] = sum_i w_ij traj_proj[i, j] / sqrt(sum_i w_ij^2)``: no second pass.

Since every ``d_ij`` has unit norm, ``|traj_proj[i, j]| <= dist_from_init[i]`` at every step, and for
dense directions ``E[traj_proj[i, j]^2] = dist_from_init[i]^2 / n_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dynamics import native
from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Probe, StepData, Variable

SKETCH_MODES: tuple[str, ...] = ("dense", "hashed")


def param_seed(seed: int, index: int) -> int:
    """The 64-bit seed of parameter tensor ``index``'s directions: ``SeedSequence([seed, index])``'s first word."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _draw(numel: int, k: int, seed: int, index: int, mode: str) -> torch.Tensor:
    """The raw CPU draw of one tensor: Gaussian ``(k, numel)`` float32 (dense) or int32 bins ``(numel,)`` (hashed)."""
    generator = torch.Generator(device="cpu").manual_seed(param_seed(seed, index))
    if mode == "dense":
        return torch.randn((k, numel), generator=generator, dtype=torch.float32)
    return torch.randint(0, 2 * k, (numel,), generator=generator, dtype=torch.int32)


def _hashed_counts(bins: torch.Tensor, k: int) -> torch.Tensor:
    """Elements per hashed direction: ``c_j`` = number of bins equal to ``j`` or ``j + k``."""
    counts = torch.bincount(bins.long(), minlength=2 * k).double()
    return counts[:k] + counts[k:]


def _check(k: int, seed: int, mode: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"sketch dimension k must be a positive integer, got {k!r}; fix --sketch-dim")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"sketch seed must be an integer >= 0, got {seed!r}; fix --sketch-seed")
    if mode not in SKETCH_MODES:
        raise ConfigError(f"unknown sketch mode {mode!r}; choose one of: {', '.join(SKETCH_MODES)} (--sketch-mode)")


def sketch_directions(numels: Sequence[int], k: int = 8, seed: int = 0,
                      mode: str = "dense") -> tuple[list[np.ndarray], np.ndarray]:
    """The sketch's directions as dense float64 matrices, regenerated from the seed (a reference; not used per step).

    Returns ``(per_param, total)``: ``per_param[i]`` is ``(k, numels[i])`` with the unit rows ``d_ij`` (a zero
    row for an empty hashed direction) and ``total`` is ``(k, sum(numels))`` with the unit rows ``D_j``.
    """
    _check(k, seed, mode)
    per_param, weights = [], []
    for index, numel in enumerate(numels):
        raw = _draw(numel, k, seed, index, mode)
        if mode == "dense":
            gaussian = raw.double().numpy()
            norms = np.linalg.norm(gaussian, axis=1)
            per_param.append(gaussian / np.where(norms > 0, norms, 1.0)[:, None])
            weights.append(norms)
        else:
            counts = _hashed_counts(raw, k).numpy()
            bins = raw.long().numpy()
            dense = np.zeros((k, numel))
            dense[bins % k, np.arange(numel)] = np.where(bins < k, 1.0, -1.0)
            per_param.append(dense / np.sqrt(np.where(counts > 0, counts, 1.0))[:, None])
            weights.append(np.sqrt(counts))
    w = np.stack(weights, axis=1) if weights else np.zeros((k, 0))
    total_norm = np.sqrt((w ** 2).sum(axis=1))
    blocks = [d * (w[:, i] / np.where(total_norm > 0, total_norm, 1.0))[:, None] for i, d in enumerate(per_param)]
    total = np.concatenate(blocks, axis=1) if blocks else np.zeros((k, 0))
    return per_param, total


class Sketch(Probe):
    """``traj_proj(step, param, proj)`` and ``traj_proj_total(step, proj)``: the trajectory sketch (module docstring).

    Args:
        k: directions per parameter tensor and for the whole model (``proj`` has ``k`` labels ``"0"``...).
        seed: seed of the directions; keep it fixed to compare runs in one sketch space.
        mode: ``"dense"`` (Gaussian directions, k floats per parameter element) or ``"hashed"`` (sparse sign
            directions, one int32 per element).
    """

    name = "sketch"
    state_attrs = ("_origin",)

    def __init__(self, k: int = 8, seed: int = 0, mode: str = "dense") -> None:
        _check(k, seed, mode)
        self.k = k
        self.seed = seed
        self.mode = mode
        self._directions: list[torch.Tensor] = []
        """Dense: the float32 Gaussian draws ``g_i`` ``(k, n_i)``; hashed: int32 bins ``(n_i,)``; on the parameter's
        device."""
        self._unit64: list[torch.Tensor] | None = None
        """Dense, made on first use by the torch operations: float64 unit rows ``g_ij / |g_ij|``."""
        self._origin: torch.Tensor | None = None
        """The projections of theta_0, ``(P, k)`` float64, subtracted from those of theta_t."""
        self._scale: torch.Tensor | None = None
        """``1 / |g_ij|`` (dense) or ``1 / sqrt(c_ij)`` (hashed) as ``(P, k)`` float64 (0 for empty directions)."""
        self._weights: torch.Tensor | None = None
        """``w_ij / sqrt(sum_i w_ij^2)`` as ``(P, k)``: the whole-model combination."""

    def attach(self, context: Context) -> None:
        self._directions, self._unit64 = [], None
        weights, scales = [], []
        for index, param in enumerate(context.params):
            raw = _draw(param.numel(), self.k, self.seed, index, self.mode)
            if self.mode == "dense":
                norms = raw.double().norm(dim=1)
                weights.append(norms)
                scales.append(torch.where(norms > 0, 1.0 / norms, 0.0))
            else:
                counts = _hashed_counts(raw, self.k)
                weights.append(counts.sqrt())
                scales.append(torch.where(counts > 0, counts.rsqrt(), 0.0))
            self._directions.append(raw.to(param.device))
        device = context.params[0].device if context.params else torch.device("cpu")
        w = torch.stack(weights) if weights else torch.zeros((0, self.k), dtype=torch.float64)
        norm = w.square().sum(0).sqrt()
        self._weights = (w / torch.where(norm > 0, norm, 1.0)).to(device)
        self._scale = (torch.stack(scales) if scales else torch.zeros((0, self.k), dtype=torch.float64)).to(device)
        self._params = native.TensorList(context.params)
        self._tables = native.TensorList(self._directions)
        self._raw = torch.empty((len(context.params), 2 * self.k), dtype=torch.float64, device=device)
        self._origin = None
        with torch.no_grad():
            self._origin = self._project(context.params)[0].clone()

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"param": list(context.param_names), "proj": [str(j) for j in range(self.k)]}

    def variables(self, context: Context) -> list[Variable]:
        attrs = {"units": "param", "seed": self.seed, "k": self.k, "mode": self.mode,
                 "param_numel": [int(p.numel()) for p in context.params],
                 "directions": "regenerated from (seed, parameter index, k, numel, mode): "
                               "dynamics.probes.trajectory.sketch_directions"}
        return [
            Variable("traj_proj", ("param", "proj"), {**attrs, "long_name": "trajectory sketch per parameter",
                                                      "description": "d_ij . (theta_i - theta_i,0), d_ij unit"}),
            Variable("traj_proj_total", ("proj",), {**attrs, "long_name": "trajectory sketch of the whole model",
                                                    "description": "D_j . (theta - theta_0), D_j unit"}),
        ]

    def _project(self, params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``d_ij . theta_i`` minus the origin once set, ``(P, k)`` float64, and the whole-model ``(k,)`` float64."""
        library = native.kernels() if native.supports(params) else None
        if library is not None:
            return self._project_native(library)
        if self.mode == "dense":
            if self._unit64 is None:  # float64 unit rows, made once where the native kernels are not used
                self._unit64 = [d.double() * s[:, None] for d, s in zip(self._directions, self._scale, strict=True)]
            proj = torch.stack([torch.mv(d, p.reshape(-1).double())
                                for d, p in zip(self._unit64, params, strict=True)])
        else:
            sums = torch.zeros((len(params), 2 * self.k), dtype=torch.float64, device=self._weights.device)
            for row, bins, p in zip(sums, self._directions, params, strict=True):
                row.index_add_(0, bins, p.reshape(-1).double())
            proj = (sums[:, :self.k] - sums[:, self.k:]) * self._scale
        proj = proj if self._origin is None else proj.sub_(self._origin)
        return proj, (proj * self._weights).sum(0)

    def _project_native(self, library: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``_project`` in one native call: the dot products, scaling, origin and whole-model sum."""
        count = self._params.count
        projection = torch.empty((count, self.k), dtype=torch.float64)
        total = torch.empty(self.k, dtype=torch.float64)
        sketch = library.dense_sketch_f32 if self.mode == "dense" else library.hashed_sketch_f32
        sketch(count, self._params.pointers(), self._tables.pointers(), self._params.numel_address, self.k,
               self._scale.data_ptr(), None if self._origin is None else self._origin.data_ptr(),
               self._weights.data_ptr(), self._raw.data_ptr(), projection.data_ptr(), total.data_ptr())
        return projection, total

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        proj, total = self._project(context.params)
        return {"traj_proj": proj, "traj_proj_total": total}
