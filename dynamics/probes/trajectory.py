"""The trajectory sketch: theta_t - theta_0 of every parameter tensor projected on k fixed random unit directions.

``traj_proj(step, param, proj)`` holds, per parameter tensor ``i`` and direction ``j``, the dot product
``d_ij . (theta_i,t - theta_i,0)`` with a unit vector ``d_ij`` of the tensor's size (elements in row-major
order of the tensor); ``traj_proj_total(step, proj)`` the same for ``k`` unit directions of the whole model
(the parameters concatenated in ``named_parameters`` order). Norms and distances say how far parameters
moved; the sketch keeps *where* they went, at a cost that can stay on. It projects theta_t itself and
subtracts the projection of theta_0 taken at ``attach``: in float64 the cancellation costs nothing measurable
(relative error about 1e-16 sqrt(n) |theta| / |theta_t - theta_0|), and no copy of theta_0 is needed. One
float64 matrix-vector product (or ``index_add_``) per tensor on the device, no host synchronisation.

**Directions are regenerated, never stored.** Parameter ``i`` (index in the recorder's trainable-parameter
list) gets its own CPU generator, ``torch.Generator("cpu").manual_seed(param_seed(seed, i))`` with
``param_seed`` a 64-bit ``numpy.random.SeedSequence([seed, i])`` draw, so a direction depends only on
``(seed, i, k, numel, mode)``, all kept in the attributes of ``traj_proj``. Draws are made on the CPU, kept
in a compact form on the parameter's device, and dot products accumulate in float64 (a float32
matrix-vector product over 10^4 elements already errs by ~1e-6 relative, over 10^6 by ~1e-5); values are
stored as float32 like every recorded variable.

- ``mode="sign"`` (default): ``b_i = torch.randint(0, 2, (k, n_i), generator, dtype=uint8)``; ``d_ij = (2 b_ij
  - 1) / sqrt(n_i)``, a random sign (Rademacher) direction: every element in every direction, like a Gaussian
  sketch, with the same Johnson-Lindenstrauss guarantees. Memory: ``k`` bits per parameter element (one byte
  with k = 8: a quarter of a float32 model) kept, and the float64 unit rows made from them on first use.
- ``mode="dense"``: ``g_i = torch.randn((k, n_i), generator)``; ``d_ij = g_ij / |g_ij|``, uniform on the unit
  sphere. Memory: ``4 k`` bytes per parameter element (float32 draws), and ``8 k`` more on first use (float64
  unit rows: 0.7 GB for ResNet-18); read in full at every step.
- ``mode="hashed"``: a sparse sign sketch for large models. ``b_i = torch.randint(0, 2k, (n_i,), generator,
  dtype=int32)`` puts each element in one direction ``b mod k`` with sign ``+`` (``b < k``) or ``-``;
  ``d_ij`` is that sign pattern over its ``c_ij`` elements divided by ``sqrt(c_ij)`` (a zero vector, and a
  zero projection, when ``c_ij = 0``). Memory: one int32 per parameter element whatever ``k``; the k
  directions of a tensor are orthonormal (disjoint supports). Cost: one ``index_add_`` per tensor.

**Whole-model directions** combine the per-tensor ones with weights ``w_ij`` (sign: ``sqrt(n_i)``; dense:
``|g_ij|``; hashed: ``sqrt(c_ij)``): ``D_j = concat_i(w_ij d_ij) / sqrt(sum_i w_ij^2)``. Sign ``D_j`` is then the
model-wide random sign direction, dense ``D_j`` exactly the normalised Gaussian ``concat_i(g_ij)``, uniform on
the model's unit sphere, and hashed ``D_j`` the model-wide sparse sign sketch. So
``traj_proj_total[j] = sum_i w_ij traj_proj[i, j] / sqrt(sum_i w_ij^2)``: no second pass.

Since every ``d_ij`` has unit norm, ``|traj_proj[i, j]| <= dist_from_init[i]`` at every step, and for
sign and dense directions ``E[traj_proj[i, j]^2] = dist_from_init[i]^2 / n_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Probe, StepData, Variable

SKETCH_MODES: tuple[str, ...] = ("sign", "dense", "hashed")


def param_seed(seed: int, index: int) -> int:
    """The 64-bit seed of parameter tensor ``index``'s directions: ``SeedSequence([seed, index])``'s first word."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _draw(numel: int, k: int, seed: int, index: int, mode: str) -> torch.Tensor:
    """The raw CPU draw of one tensor: Gaussian ``(k, numel)`` float32 (dense), bits ``(k, numel)`` uint8 (sign)
    or int32 bins ``(numel,)`` (hashed)."""
    generator = torch.Generator(device="cpu").manual_seed(param_seed(seed, index))
    if mode == "dense":
        return torch.randn((k, numel), generator=generator, dtype=torch.float32)
    if mode == "sign":
        return torch.randint(0, 2, (k, numel), generator=generator, dtype=torch.uint8)
    return torch.randint(0, 2 * k, (numel,), generator=generator, dtype=torch.int32)


def _hashed_counts(bins: torch.Tensor, k: int) -> torch.Tensor:
    """Elements per hashed direction: ``c_j`` = number of bins equal to ``j`` or ``j + k``."""
    counts = torch.bincount(bins.long(), minlength=2 * k).double()
    return counts[:k] + counts[k:]


def _row_weights(raw: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """``w_ij`` of one tensor, float64 ``(k,)``: the norm of each raw direction before it is made a unit vector."""
    if mode == "dense":
        return raw.double().norm(dim=1)
    if mode == "sign":
        return torch.full((k,), float(raw.shape[1]), dtype=torch.float64).sqrt()
    return _hashed_counts(raw, k).sqrt()


def _check(k: int, seed: int, mode: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer (sketch directions), got {k!r}", key="k")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (sketch directions), got {seed!r}", key="seed")
    if mode not in SKETCH_MODES:
        raise ConfigError(f"unknown sketch mode {mode!r}; choose one of: {', '.join(SKETCH_MODES)}", key="mode")


def sketch_directions(
    numels: Sequence[int], k: int = 8, seed: int = 0, mode: str = "sign"
) -> tuple[list[np.ndarray], np.ndarray]:
    """The sketch's directions as dense float64 matrices, regenerated from the seed (a reference; not used per step).

    Returns ``(per_param, total)``: ``per_param[i]`` is ``(k, numels[i])`` with the unit rows ``d_ij`` (a zero
    row for an empty hashed direction) and ``total`` is ``(k, sum(numels))`` with the unit rows ``D_j``.
    """
    _check(k, seed, mode)
    per_param, weights = [], []
    for index, numel in enumerate(numels):
        raw = _draw(numel, k, seed, index, mode)
        if mode == "hashed":
            bins = raw.long().numpy()
            rows = np.zeros((k, numel))
            rows[bins % k, np.arange(numel)] = np.where(bins < k, 1.0, -1.0)
        else:
            rows = raw.double().numpy() if mode == "dense" else 2.0 * raw.double().numpy() - 1.0
        norms = np.linalg.norm(rows, axis=1)
        per_param.append(rows / np.where(norms > 0, norms, 1.0)[:, None])
        weights.append(norms)
    w = np.stack(weights, axis=1) if weights else np.zeros((k, 0))
    total_norm = np.sqrt((w**2).sum(axis=1))
    blocks = [d * (w[:, i] / np.where(total_norm > 0, total_norm, 1.0))[:, None] for i, d in enumerate(per_param)]
    total = np.concatenate(blocks, axis=1) if blocks else np.zeros((k, 0))
    return per_param, total


class Sketch(Probe):
    """``traj_proj(step, param, proj)`` and ``traj_proj_total(step, proj)``: the trajectory sketch (module docstring).

    Args:
        k: directions per parameter tensor and for the whole model (``proj`` has ``k`` labels ``"0"``...).
        seed: seed of the directions; keep it fixed to compare runs in one sketch space.
        mode: ``"sign"`` (random sign directions, k bits per parameter element), ``"dense"`` (Gaussian
            directions, k floats per element) or ``"hashed"`` (sparse sign directions, one int32 per element).
    """

    name = "sketch"
    state_attrs = ("_origin",)

    def __init__(self, k: int = 8, seed: int = 0, mode: str = "sign") -> None:
        _check(k, seed, mode)
        self.k = k
        self.seed = seed
        self.mode = mode
        self._tables: list[torch.Tensor] = []
        """The directions of each tensor in compact form on its device: the float32 Gaussian draws ``(k, n_i)``
        (dense), the bits packed over directions ``(ceil(k / 8), n_i)`` uint8 (sign), int32 bins ``(n_i,)`` (hashed)."""
        self._rows64: list[torch.Tensor] | None = None
        """Dense and sign, made on first use by the torch operations: the float64 unit rows ``d_ij``."""
        self._origin: torch.Tensor | None = None
        """The projections of theta_0, ``(P, k)`` float64, subtracted from those of theta_t."""
        self._scale: torch.Tensor | None = None
        """``1 / w_ij`` as ``(P, k)`` float64 (0 for an empty hashed direction): raw sums to unit projections."""
        self._weights: torch.Tensor | None = None
        """``w_ij / sqrt(sum_i w_ij^2)`` as ``(P, k)``: the whole-model combination."""

    def attach(self, context: Context) -> None:
        self._tables, self._rows64 = [], None
        weights = []
        for index, param in enumerate(context.params):
            raw = _draw(param.numel(), self.k, self.seed, index, self.mode)
            weights.append(_row_weights(raw, self.k, self.mode))
            if self.mode == "sign":
                raw = torch.from_numpy(np.packbits(raw.numpy(), axis=0, bitorder="little"))
            self._tables.append(raw.to(param.device))
        device = context.params[0].device if context.params else torch.device("cpu")
        w = torch.stack(weights) if weights else torch.zeros((0, self.k), dtype=torch.float64)
        norm = w.square().sum(0).sqrt()
        self._weights = (w / torch.where(norm > 0, norm, 1.0)).to(device)
        self._scale = torch.where(w > 0, 1.0 / w, 0.0).to(device)
        self._origin = None
        with torch.no_grad():
            self._origin = self._project(context)[0].clone()

    def _unit_rows(self) -> list[torch.Tensor]:
        """Dense and sign directions as float64 unit rows ``(k, n_i)`` (for the torch operations), made once."""
        if self._rows64 is None:
            rows = []
            for table, scale in zip(self._tables, self._scale, strict=True):
                if self.mode == "sign":
                    shifts = torch.arange(8, device=table.device, dtype=torch.uint8)
                    bits = (table.unsqueeze(1) >> shifts[:, None]) & 1
                    table = bits.reshape(-1, table.shape[1])[: self.k].double() * 2.0 - 1.0
                rows.append(table.double() * scale[:, None])
            self._rows64 = rows
        return self._rows64

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"param": list(context.param_names), "proj": [str(j) for j in range(self.k)]}

    def variables(self, context: Context) -> list[Variable]:
        attrs = {
            "units": "param",
            "seed": self.seed,
            "k": self.k,
            "mode": self.mode,
            "param_numel": [int(p.numel()) for p in context.params],
            "directions": "regenerated from (seed, parameter index, k, numel, mode): "
            "dynamics.probes.trajectory.sketch_directions",
        }
        return [
            Variable(
                "traj_proj",
                ("param", "proj"),
                {
                    **attrs,
                    "long_name": "trajectory sketch per parameter",
                    "description": "d_ij . (theta_i - theta_i,0), d_ij unit",
                },
            ),
            Variable(
                "traj_proj_total",
                ("proj",),
                {
                    **attrs,
                    "long_name": "trajectory sketch of the whole model",
                    "description": "D_j . (theta - theta_0), D_j unit",
                },
            ),
        ]

    def _project(self, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """``d_ij . theta_i`` minus the origin once set, ``(P, k)`` float64, and the whole-model ``(k,)`` float64."""
        params = context.params
        if self.mode == "hashed":
            sums = torch.zeros((len(params), 2 * self.k), dtype=torch.float64, device=self._weights.device)
            for row, bins, p in zip(sums, self._tables, params, strict=True):
                row.index_add_(0, bins, p.reshape(-1).double())
            proj = (sums[:, : self.k] - sums[:, self.k :]) * self._scale
        else:
            proj = torch.stack(
                [torch.mv(d, p.reshape(-1).double()) for d, p in zip(self._unit_rows(), params, strict=True)]
            )
        proj = proj if self._origin is None else proj.sub_(self._origin)
        return proj, (proj * self._weights).sum(0)

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        proj, total = self._project(context)
        return {"traj_proj": proj, "traj_proj_total": total}
