"""Order parameters of the penultimate-layer representation, measured on a fixed probe set.

At each due step of its cadence (see :mod:`dynamics.probes.cadence`) the probe runs the model in eval mode
on the probe set (:mod:`dynamics.probes.probe_set`), reads the features h (by default the input of the
model's last ``nn.Linear``, flattened per sample; any module by name) and summarises them, without storing
them unless asked. Every quantity has a ``split`` dimension: ``train`` is computed on the training part of
the probe set, ``test`` on the held-out part. All arithmetic is float64 on the device.

- ``rep_nc1``: class separability NC1 = tr(S_W S_B^+)/C (Papyan et al. 2020), with
  S_W = mean_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, S_B = mean_c (mu_c - mu_G)(mu_c - mu_G)^T over the C
  classes present and mu_G the mean of all samples. S_B has rank <= C - 1, so the pseudo-inverse is taken
  through the thin SVD of the d x C matrix of centred class means, singular values s_j below
  max(d, C) * eps * max_j s_j counting as zero: NC1 = sum_j (u_j^T S_W u_j) / s_j^2. Lower is more ordered.
- ``rep_linear_acc``: accuracy of a closed-form ridge-regression probe on one-hot targets with an
  unpenalised intercept, ridge ``lambda = ridge * tr(K)/n`` (K the centred training Gram matrix, so the
  regularisation follows the feature scale). ``test``: fitted on the training part, evaluated on the test
  part; ``train``: exact leave-one-out accuracy on the training part, from the hat matrix
  (y_hat_{-i} = (y_hat_i - H_ii y_i) / (1 - H_ii)).
- ``rep_knn_acc``: k-nearest-neighbour accuracy (Euclidean distance, ``knn`` neighbours among the training
  part; leave-one-out for ``train``). The majority of the k nearest wins; a tie goes to the class whose
  neighbours are nearer (smaller sum of ranks r, 0 = nearest), then to the smaller class index (votes are
  the exact integers k^2 + k - r).
- ``rep_cka``: linear CKA (Kornblith et al. 2019) between the features of this measurement and those of
  the previous one, per split; the first measurement compares with the features when the probe attached
  (at initialisation, for a recorder created before training). 1 means the representation did not move
  (up to rotation and isotropic scale).

``features_dir`` keeps the raw features too: one ``step-<step>.npz`` per measurement (arrays ``features``
(n x d, float32), ``labels``, ``samples``), written through a temporary file and a rename; read them
back with :func:`load_features`. Files are written at measurement steps only, so this costs one
device-to-host transfer per measurement. The directory is the run's (``<run>/features``): replacing a run
(``overwrite``) clears it, and a resumed run deletes the files written after its checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynamics.errors import ConfigError, StoreError
from dynamics.probes.base import Context, Variable
from dynamics.probes.cadence import GeometricCadence, SparseProbe
from dynamics.probes.probe_set import ProbeSet, side_pass

SPLITS = ["train", "test"]
_FEATURE_FILE = re.compile(r"step-(\d+)\.npz")


def nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """NC1 = tr(S_W S_B^+)/C of ``features`` (n x d) with integer ``labels`` (see module docstring)."""
    h = features.double()
    onehot = F.one_hot(labels, num_classes).double()
    counts = onehot.sum(0)
    present = counts > 0
    means = (onehot.T @ h) / counts.clamp(min=1)[:, None]
    centred_means = (means - h.mean(0)) * present[:, None]
    u, s, _ = torch.linalg.svd(centred_means.T, full_matrices=False)
    cutoff = s.max() * max(h.shape[1], num_classes) * torch.finfo(torch.float64).eps
    inverse = torch.where(s > cutoff, 1.0 / s.clamp(min=torch.finfo(torch.float64).tiny) ** 2, 0.0)
    projected = (h - means[labels]) @ u
    return (projected.square().mean(0) * inverse).sum()


def ridge_accuracy(
    gram: torch.Tensor,
    cross_gram: torch.Tensor,
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    ridge: float = 1e-3,
) -> torch.Tensor:
    """Ridge-probe accuracies ``[leave-one-out on train, test]`` from centred Gram matrices.

    ``gram`` is the n x n Gram matrix of the training features centred by their mean, ``cross_gram`` the
    m x n products of the test features (centred by the same training mean) with the centred training ones.
    With A = K + lambda I, the dual coefficients are alpha = A^-1 (Y - mean Y), the fit is Y - lambda alpha
    and the hat matrix of the fit with intercept is H = 1/n + I - lambda A^-1 (one Cholesky factorisation).
    """
    n = gram.shape[0]
    targets = F.one_hot(y_train, num_classes).double()
    mean = targets.mean(0)
    scale = torch.diagonal(gram).sum() / n
    lam = ridge * torch.where(scale > 0, scale, torch.ones_like(scale))
    factor, _ = torch.linalg.cholesky_ex(gram + lam * torch.eye(n, dtype=gram.dtype, device=gram.device))
    alpha = torch.cholesky_solve(targets - mean, factor)
    inverse_factor = torch.linalg.solve_triangular(
        factor, torch.eye(n, dtype=gram.dtype, device=gram.device), upper=False
    )
    leverage = 1.0 / n + 1.0 - lam * inverse_factor.square().sum(0)
    loo = (targets - lam * alpha - leverage[:, None] * targets) / (1.0 - leverage)[:, None]
    test = mean + cross_gram @ alpha
    return torch.stack([(loo.argmax(1) == y_train).double().mean(), (test.argmax(1) == y_test).double().mean()])


def knn_accuracy(
    gram: torch.Tensor,
    cross_gram: torch.Tensor,
    test_norms: torch.Tensor,
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    k: int = 10,
) -> torch.Tensor:
    """k-NN accuracies ``[leave-one-out on train, test]`` from Gram matrices (see module docstring).

    ``gram``: n x n training Gram matrix; ``cross_gram``: m x n test-by-training products; ``test_norms``:
    the m squared norms of the test features (all with one common centring, which distances ignore).
    """
    train_norms = torch.diagonal(gram)
    own = train_norms[:, None] + train_norms[None, :] - 2 * gram
    own.fill_diagonal_(torch.inf)
    other = test_norms[:, None] + train_norms[None, :] - 2 * cross_gram
    k = min(k, gram.shape[0] - 1)
    # integer votes, exact in float64: k^2 per neighbour outweighs any sum of rank bonuses k - r (< k^2)
    weights = k * k + (k - torch.arange(k, device=gram.device, dtype=torch.float64))
    accuracies = []
    for distances, truth in ((own, y_train), (other, y_test)):
        nearest = distances.topk(k, dim=1, largest=False).indices
        votes = (F.one_hot(y_train[nearest], num_classes).double() * weights[None, :, None]).sum(1)
        accuracies.append((votes.argmax(1) == truth).double().mean())
    return torch.stack(accuracies)


def linear_cka(gram_a: torch.Tensor, gram_b: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two representations of the same samples, from their (uncentred or centred) Gram matrices."""

    def centre(gram: torch.Tensor) -> torch.Tensor:
        return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()

    a, b = centre(gram_a), centre(gram_b)
    return (a * b).sum() / torch.sqrt(a.square().sum() * b.square().sum())


def last_linear(model: nn.Module) -> str:
    """Name of the model's last ``nn.Linear`` in registration order (the classifier head, in most models)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(
            "the model has no nn.Linear whose input could serve as penultimate features; "
            "pass module='<name of the module whose input to read>'"
        )
    return names[-1]


class Representation(SparseProbe):
    """``rep_nc1``, ``rep_linear_acc``, ``rep_knn_acc``, ``rep_cka`` (step, split) on a fixed probe set.

    Args:
        probe_set: the samples to measure on (see :func:`~dynamics.probes.probe_set.make_probe_set`).
        module: name of the module whose input are the features; default the last ``nn.Linear``.
        cadence: when to measure; NaN is recorded at the other steps.
        every: the recorder's ``every`` (the probe counts recorded steps to know the step).
        ridge: relative ridge of the linear probe (times the mean squared centred feature norm).
        knn: neighbours of the k-NN probe.
        batch_size: samples per forward pass over the probe set.
        features_dir: if given, also write the raw features of each measurement there.
    """

    name = "representation"
    state_attrs = (*SparseProbe.state_attrs, "_previous")

    def __init__(
        self,
        probe_set: ProbeSet,
        *,
        module: str | None = None,
        cadence: GeometricCadence | None = None,
        every: int = 1,
        ridge: float = 1e-3,
        knn: int = 10,
        batch_size: int = 512,
        features_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(cadence or GeometricCadence(), every)
        if not ridge > 0:
            raise ConfigError(f"ridge must be > 0, got {ridge!r}")
        for label, value in (("knn", knn), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive integer, got {value!r}")
        self.probe_set = probe_set
        self.module_name = module
        self.ridge = ridge
        self.knn = knn
        self.batch_size = batch_size
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self._captured: list[torch.Tensor] = []
        self._reading = False
        self._handle: RemovableHandle | None = None
        self._previous: tuple[torch.Tensor, ...] = ()

    def attach(self, context: Context) -> None:
        name = self.module_name or last_linear(context.model)
        modules = dict(context.model.named_modules())
        if name not in modules:
            raise ConfigError(f"the model has no module {name!r}; pass one of its module names as module=")
        self.module_name = name
        self._handle = modules[name].register_forward_pre_hook(self._hook)
        if self.features_dir is not None:
            self.features_dir.mkdir(parents=True, exist_ok=True)
        self._previous = self._grams(self.features(context))[::2]

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self._reading:
            self._captured.append(args[0].detach().flatten(1))

    def features(self, context: Context) -> torch.Tensor:
        """Features of the whole probe set (training part first), float64, one row per sample."""
        rows = []
        x = self.probe_set.x
        with torch.no_grad(), side_pass(context):
            self._reading = True
            try:
                for start in range(0, len(x), self.batch_size):
                    self._captured.clear()
                    context.model(x[start : start + self.batch_size])
                    if len(self._captured) != 1:
                        raise ConfigError(
                            f"module {self.module_name!r} ran {len(self._captured)} times in one "
                            "forward pass; choose a module that runs once (module=)"
                        )
                    rows.append(self._captured[0].double())
            finally:
                self._reading = False
                self._captured.clear()
        return torch.cat(rows)

    def _grams(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training Gram, test-by-training and test Gram matrices, all centred by the training mean."""
        n = len(self.probe_set.x_train)
        centred = features - features[:n].mean(0)
        train, test = centred[:n], centred[n:]
        return train @ train.T, test @ train.T, test @ test.T

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"split": list(SPLITS)}

    def variables(self, context: Context) -> list[Variable]:
        common = {
            "units": "1",
            "num_classes": self.probe_set.num_classes,
            "module": self.module_name,
            "probe_samples": [len(self.probe_set.x_train), len(self.probe_set.x_test)],
            **self.cadence_attrs,
        }
        return [
            Variable(
                "rep_nc1",
                ("split",),
                {
                    **common,
                    "long_name": "NC1 class separability tr(S_W S_B^+)/C",
                    "description": "lower is more ordered",
                },
            ),
            Variable(
                "rep_linear_acc",
                ("split",),
                {
                    **common,
                    "long_name": "ridge linear-probe accuracy",
                    "ridge": self.ridge,
                    "description": "train: leave-one-out; test: held out",
                },
            ),
            Variable(
                "rep_knn_acc",
                ("split",),
                {
                    **common,
                    "long_name": "k-NN accuracy",
                    "k": self.knn,
                    "description": "train: leave-one-out; test: held out",
                },
            ),
            Variable("rep_cka", ("split",), {**common, "long_name": "linear CKA to the previous measurement"}),
        ]

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        features = self.features(context)
        probe = self.probe_set
        n = len(probe.x_train)
        gram, cross, test_gram = self._grams(features)
        cka = torch.stack([linear_cka(old, new) for old, new in zip(self._previous, (gram, test_gram), strict=True)])
        self._previous = (gram, test_gram)
        values = {
            "rep_nc1": torch.stack(
                [
                    nc1(features[:n], probe.y_train, probe.num_classes),
                    nc1(features[n:], probe.y_test, probe.num_classes),
                ]
            ),
            "rep_linear_acc": ridge_accuracy(gram, cross, probe.y_train, probe.y_test, probe.num_classes, self.ridge),
            "rep_knn_acc": knn_accuracy(
                gram, cross, torch.diagonal(test_gram), probe.y_train, probe.y_test, probe.num_classes, self.knn
            ),
            "rep_cka": cka,
        }
        if self.features_dir is not None:
            self._write(features)
        return {name: value.float() for name, value in values.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cadence and the previous Grams; feature files of later steps (written after the
        checkpoint, before an interruption) are deleted, since the resumed run writes them again."""
        super().load_state_dict(state)
        if self.features_dir is not None:
            for stale in self.features_dir.iterdir():
                match = _FEATURE_FILE.fullmatch(stale.name)
                if match and int(match.group(1)) > self.step:
                    stale.unlink()

    def _write(self, features: torch.Tensor) -> None:
        path = self.features_dir / f"step-{self.step:09d}.npz"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                features=features.float().cpu().numpy(),
                labels=self.probe_set.y.cpu().numpy(),
                samples=np.asarray(self.probe_set.sample_labels),
            )
        os.replace(tmp, path)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def load_features(features_dir: str | os.PathLike[str], steps: Callable[[int], bool] | None = None) -> xr.Dataset:
    """Raw probe features written by :class:`Representation`: ``features(step, sample, feature)``, ``label(sample)``.

    ``steps`` optionally selects which measurement steps to read (e.g. ``lambda s: s < 1000``).
    """
    directory = Path(features_dir)
    files = sorted(
        (int(m.group(1)), path)
        for path in (directory.iterdir() if directory.is_dir() else [])
        if (m := _FEATURE_FILE.fullmatch(path.name))
    )
    files = [(step, path) for step, path in files if steps is None or steps(step)]
    if not files:
        raise StoreError(f"no probe features (step-*.npz) in {directory}; record with features_dir set")
    arrays = []
    for _, path in files:
        with np.load(path) as data:
            arrays.append(data["features"])
            labels, samples = data["labels"], data["samples"]
    return xr.Dataset(
        {
            "features": (("step", "sample", "feature"), np.stack(arrays), {"long_name": "penultimate features"}),
            "label": (("sample",), labels),
        },
        coords={"step": [step for step, _ in files], "sample": samples},
    )
