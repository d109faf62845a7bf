"""Curvature probes: sharpness, Hessian trace and density, noise scale, each against a brute-force reference
(the full Hessian from torch.func.hessian, per-sample autograd gradients), and no side effect on training."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from dynamics import ConfigError, Recorder, open_run
from dynamics.config import make_config
from dynamics.probes import (
    Context,
    GeometricCadence,
    HessianDensity,
    HessianOperator,
    HessianTrace,
    NoiseScale,
    Sharpness,
    hutchinson,
    noise_scale,
    slq,
    spectral_density,
    stability,
    top_eigenvalues,
)
from dynamics.probes.hessian import density_grid
from dynamics.probes.probe_set import ProbeSet
from figures.curvature import curvature_figure

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on a shared machine

CLASSES = 4


def tiny(seed: int = 0, norm: bool = False) -> nn.Module:
    """A float64 MLP of about a hundred parameters; ``norm`` adds BatchNorm and Dropout (eval-mode matters)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 10)] + ([nn.BatchNorm1d(10)] if norm else []) + [nn.Tanh()]
    layers += [nn.Dropout(0.3)] if norm else []
    return nn.Sequential(*layers, nn.Linear(10, CLASSES)).double()


def batch(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (n,), generator=generator)


def probe_set(x: torch.Tensor, y: torch.Tensor) -> ProbeSet:
    index = torch.arange(len(x))
    return ProbeSet(x, y, x[:2], y[:2], CLASSES, index, index[:2])


def full_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The n x n Hessian of the mean cross-entropy over the trainable parameters, the model in its current mode."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    sizes = [p.numel() for p in params.values()]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = {n: t.view_as(p) for (n, p), t in zip(params.items(), flat.split(sizes), strict=True)}
        return F.cross_entropy(functional_call(model, (parts, buffers), (x,)), y)

    return hessian(loss)(torch.cat([p.reshape(-1) for p in params.values()]))


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """B x n per-sample gradients of the cross-entropy, one autograd call per sample."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi, yi in zip(x, y, strict=True):
        grads = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double().numpy())
    return np.stack(rows)


# ------------------------------------------------------------------------------ the numerical methods


@pytest.mark.parametrize("batch_size", [24, 7])  # one chunk (graph reused) and several (recomputed)
def test_lanczos_matches_the_full_hessian(batch_size: int) -> None:
    model, (x, y) = tiny(), batch()
    full = full_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(full).flip(0)
    operator = HessianOperator(model, x, y, batch_size=batch_size)
    probe = torch.randn(operator.dim, dtype=torch.float64)
    np.testing.assert_allclose(operator(probe), full @ probe, rtol=1e-10, atol=1e-12)
    generator = torch.Generator().manual_seed(0)
    full = top_eigenvalues(operator, 3, operator.dim, generator)
    np.testing.assert_allclose(full, exact[:3], rtol=1e-4)
    top = top_eigenvalues(operator, 1, 40, generator)  # far fewer steps than parameters: the top one converges
    assert operator.dim > 100 and float(top[0]) == pytest.approx(float(exact[0]), rel=1e-4)


def test_hutchinson_lies_within_three_standard_errors() -> None:
    model, (x, y) = tiny(), batch()
    full = full_hessian(model, x, y)
    exact = float(full.trace())
    variance = 2 * float(full.square().sum() - full.diagonal().square().sum())  # Var z^T H z, Rademacher z
    operator = HessianOperator(model, x, y)
    samples, estimates, errors = 30, [], []
    for seed in range(8):  # each trial within 3 exact standard errors; the reported ones average to it
        mean, se = hutchinson(operator, samples, torch.Generator().manual_seed(seed))
        assert abs(float(mean) - exact) < 3 * math.sqrt(variance / samples), seed
        estimates.append(float(mean))
        errors.append(float(se))
    pooled = np.mean(estimates)
    assert abs(pooled - exact) < 3 * math.sqrt(variance / (samples * len(estimates)))
    assert np.mean(np.square(errors)) * samples == pytest.approx(variance, rel=0.35)


def test_slq_density_integrates_to_one_and_has_the_trace_as_mean() -> None:
    model, (x, y) = tiny(), batch()
    full = full_hessian(model, x, y)
    n = len(full)
    operator = HessianOperator(model, x, y)
    nodes, weights = slq(operator, 1, n, torch.Generator().manual_seed(0))  # full Lanczos: nodes in the spectrum
    spectrum = torch.linalg.eigvalsh(full)
    weighted = nodes[weights > 1e-10]
    assert (weighted[:, None] - spectrum[None, :]).abs().min(1).values.max() < 1e-8
    assert float(weighted.max()) == pytest.approx(float(spectrum[-1]), rel=1e-8)
    vectors = 24
    nodes, weights = slq(operator, vectors, 12, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(weights.sum(1), np.ones(vectors), rtol=1e-10)
    grid, sigma = density_grid(nodes, weights, 400)
    density = spectral_density(nodes, weights, grid, sigma)
    step = float(grid[1] - grid[0])
    assert float(density.sum()) * step == pytest.approx(1.0, abs=1e-3)
    per_vector = (weights * nodes).sum(1)  # q^T H q of each normalised start vector: tr(H)/n on average
    mean = float((grid * density).sum()) * step
    assert mean == pytest.approx(float(per_vector.mean()), rel=1e-3, abs=1e-6)
    error = float(per_vector.std()) / math.sqrt(vectors)
    assert abs(mean - float(full.trace()) / n) < 3 * error


def test_noise_scale_matches_per_sample_autograd() -> None:
    model, (x, y) = tiny(norm=True), batch()
    model.eval()
    got = [float(v) for v in noise_scale(model, x, y)]
    grads = per_sample_gradients(model, x, y)
    b = len(grads)
    mean = grads.mean(0)
    trace = ((grads - mean) ** 2).sum() / (b - 1)
    grad_sq = mean @ mean - trace / b
    np.testing.assert_allclose(got, [trace / grad_sq, trace, grad_sq], rtol=1e-8)


@pytest.mark.parametrize(
    ("make", "shift"),
    [
        (lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1), 0.0),
        (lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.999), weight_decay=0.05, amsgrad=True), 0.05),
    ],
)
def test_preconditioned_sharpness_matches_explicit_matrix(make, shift: float) -> None:
    model, (x, y) = tiny(), batch()
    optimizer = make(model.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    group = optimizer.param_groups[0]
    (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
    preconditioner = []
    for p in model.parameters():  # P = (1 - beta1^t) (sqrt(v_hat) + eps), t = 5
        second = optimizer.state[p]["max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"] / (1 - beta2**5)
        preconditioner.append(((1 - beta1**5) * (second.sqrt() + eps)).reshape(-1))
    root = torch.cat(preconditioner).rsqrt()
    full = full_hessian(model, x, y) + shift * torch.eye(len(root), dtype=torch.float64)
    exact = torch.linalg.eigvalsh(root[:, None] * full * root[None, :]).flip(0)
    context = Context(model, optimizer)
    probe = Sharpness(probe_set(x, y), k=2, steps=len(root))
    probe.attach(context)
    values = probe.measure_now(context)
    np.testing.assert_allclose(values["sharpness_precond"], exact[:2], rtol=1e-4)
    threshold = (2 + 2 * beta1) / ((1 - beta1) * lr)
    assert float(values["eos_threshold"]) == pytest.approx(threshold, rel=1e-12)
    assert float(values["eos_ratio"]) == pytest.approx(float(exact[0]) / threshold, rel=1e-4)
    assert stability(torch.optim.AdamW(model.parameters(), lr=0.5), context.params).threshold == pytest.approx(76.0)


@pytest.mark.parametrize(
    "options",
    [
        {"momentum": 0.0},
        {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.2},
        {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    ],
)
def test_sgd_threshold_separates_stable_from_unstable(options: dict) -> None:
    """torch's own SGD on a quadratic 0.5 a theta^2: stable just below a = eos_threshold, unstable just above."""
    for factor, stable in ((0.97, True), (1.03, False)):
        theta = nn.Parameter(torch.ones(1, dtype=torch.float64))
        optimizer = torch.optim.SGD([theta], lr=0.1, **options)
        curvature = factor * stability(optimizer, [theta]).threshold
        for _ in range(300):
            optimizer.zero_grad()
            (0.5 * curvature * theta.square()).sum().backward()
            optimizer.step()
        size = abs(float(theta.detach()))
        assert size < 1e-2 if stable else size > 1e2, (options, factor, size)


def test_probes_leave_model_and_rng_alone_and_resume() -> None:
    model, (x, y) = tiny(norm=True), batch()
    model.train()
    model(x).sum().backward()
    context = Context(model, torch.optim.SGD(model.parameters(), lr=0.1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    probes = [
        Sharpness(probe_set(x, y), k=2),
        HessianTrace(probe_set(x, y), samples=4),
        HessianDensity(probe_set(x, y), vectors=2, steps=5),
        NoiseScale(probe_set(x, y)),
    ]
    for probe in probes:
        probe.attach(context)
        probe.measure_now(context)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert model.training and torch.equal(torch.get_rng_state(), rng) and not context.paused
    trace = probes[1]
    saved = trace.state_dict()
    again = HessianTrace(probe_set(x, y), samples=4)
    again.attach(context)
    again.load_state_dict(saved)
    assert float(again.measure_now(context)["hessian_trace"]) == float(trace.measure_now(context)["hessian_trace"])


def test_training_is_bit_identical_and_records_the_brute_values(tmp_path: Path) -> None:
    x, y = batch(96, seed=2)
    probe = probe_set(*batch(20, seed=3))
    cadence, every, steps = GeometricCadence(0.5), 2, 16
    measured = cadence.steps(steps, every)
    runs, expected = {}, {}
    for name in ("off", "on"):
        model = tiny(norm=True)  # BatchNorm and Dropout: buffers and the RNG must be left alone
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
        on = name == "on"
        probes = ["loss"]
        if on:
            dim = sum(p.numel() for p in model.parameters())
            probes += [
                Sharpness(probe, cadence=cadence, every=every, k=2, steps=dim),
                HessianTrace(probe, cadence=cadence, every=every, samples=3),
                NoiseScale(probe, cadence=cadence, every=every),
            ]
        torch.manual_seed(0)
        with Recorder(model, optimizer, tmp_path / name, every=every, probes=probes) as recorder:
            for step in range(steps):
                index = torch.arange(step * 16, step * 16 + 16) % len(x)
                out = model(x[index])
                loss = F.cross_entropy(out, y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                recorder.step(loss=loss, output=out, target=y[index])
                if on and step in measured:
                    model.eval()
                    top = torch.linalg.eigvalsh(full_hessian(model, probe.x_train, probe.y_train)).flip(0)[:2]
                    expected[step] = (top.numpy(), float(noise_scale(model, probe.x_train, probe.y_train)[0]))
                    model.train()
        runs[name] = (open_run(tmp_path / name), [p.detach().clone() for p in model.parameters()])
    (off, params_off), (on, params_on) = runs["off"], runs["on"]
    np.testing.assert_array_equal(off["loss"].values, on["loss"].values)
    assert all(torch.equal(a, b) for a, b in zip(params_off, params_on, strict=True))
    finite = np.isfinite(on["hessian_trace"].values)
    assert on["step"].values[finite].tolist() == measured
    for step, (top, scale) in expected.items():
        row = on.sel(step=step)
        np.testing.assert_allclose(row["sharpness"].values, top, rtol=1e-4)
        assert float(row["noise_scale"]) == pytest.approx(scale, rel=1e-8)
        threshold = (2 + 2 * 0.9) / ((1 - 0.9) * 0.05)  # AdamW's default beta1 and the lr above
        assert float(row["eos_ratio"]) == pytest.approx(float(row["sharpness_precond"][0]) / threshold, rel=1e-10)


def test_bad_settings_name_their_parameter() -> None:
    for bad, key in (
        ({"sharpness_k": 0}, "sharpness_k"),
        ({"sharpness_k": 30}, ("lanczos_steps", "sharpness_k")),
        ({"hessian_samples": 1}, "hessian_samples"),
        ({"hessian_density_vectors": 0}, "hessian_density_vectors"),
        ({"hessian_density_growth": math.inf}, "hessian_density_growth"),
    ):
        with pytest.raises(ConfigError) as excinfo:
            make_config(bad)
        assert excinfo.value.keys == (key if isinstance(key, tuple) else (key,)), bad
    with pytest.raises(ConfigError) as excinfo:
        Sharpness(probe_set(*batch()), k=3, steps=2)
    assert excinfo.value.keys == ("steps",)


# ------------------------------------------------------------------------------ the command line and the figure


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    command = [
        sys.executable,
        "-m",
        "dynamics.collect",
        *("--dataset", "mnist1d", "--num-samples", "600", "--epochs", "1", "--batch-size", "64"),
        *("--width", "4", "--depth", "1", "--probes", "loss", "--probe-samples", "24", "--sharpness-k", "2"),
        *("--sharpness", "--hessian-trace", "--noise-scale", "--hessian-density", "--no-snapshots"),
        *("--threads", "1", "--no-progress", "--no-figure", "--out", str(out)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def test_cli_records_finite_curvature(cli_run: Path) -> None:
    ds = open_run(cli_run)
    measured = GeometricCadence().steps(ds.sizes["step"])
    for name in ("sharpness", "eos_ratio", "eos_threshold", "hessian_trace", "hessian_trace_se", "noise_scale"):
        finite = np.isfinite(ds[name].values).reshape(ds.sizes["step"], -1).all(1)
        assert np.flatnonzero(finite).tolist() == measured, name
    assert ds.sizes["eig"] == 2 and (np.diff(ds["sharpness"].values[measured], axis=1) <= 0).all()
    config = ds.attrs["config"]
    threshold = (2 + 2 * config["momentum"]) / config["lr"] - config["weight_decay"]
    np.testing.assert_allclose(ds["eos_threshold"].values[measured], threshold, rtol=1e-6)
    density = GeometricCadence(1.0).steps(ds.sizes["step"])
    assert np.flatnonzero(np.isfinite(ds["hessian_density"].values).all(1)).tolist() == density


def test_figure_draws_the_stored_values(cli_run: Path) -> None:
    ds = open_run(cli_run)
    fig = curvature_figure(ds)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    finite = np.isfinite(ds["hessian_trace"].values)
    np.testing.assert_array_equal(lines["hessian_trace"].get_xdata(), ds["step"].values[finite])
    np.testing.assert_allclose(lines["hessian_trace"].get_ydata(), ds["hessian_trace"].values[finite], rtol=1e-6)
    np.testing.assert_allclose(lines["sharpness"].get_ydata(), ds["sharpness"].isel(eig=0).values[finite], rtol=1e-6)
    np.testing.assert_allclose(lines["eos_threshold"].get_ydata(), ds["eos_threshold"].values[finite], rtol=1e-6)
    assert len(fig.axes) == 4
