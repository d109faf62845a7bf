"""Every recorded variable against a brute-force reference: own hooks, parameter copies, float64 numpy."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics import NonFiniteLossError, Recorder, open_run
from dynamics.probes.flat_regions import flat_rule

RTOL = 1e-6
SLOPE = 0.05
ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.GELU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Softplus]


class Net(nn.Module):
    """Conv then dense layers with every supported activation type, some of them in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.conv_act = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        width = 4 * 12
        for act in ACTIVATIONS:
            layers += [nn.Linear(width, 16), act()]
            width = 16
        self.dense = nn.Sequential(*layers)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dense(self.conv_act(self.conv(x)).flatten(1)))


@functools.cache
def tail_threshold(module: nn.Module, side: str) -> float:
    """Edge of the tail where |f'(x)| <= SLOPE, from autograd derivatives (independent of the rule).

    A dense grid walks in from the far tail to the first steep point; float64 bisection then refines the
    edge between the last flat and the first steep grid point.
    """

    def slopes(x: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        module.forward(x).sum().backward()  # forward() skips hooks, so nothing is captured
        return x.grad.abs()

    grid = torch.linspace(-30.0, 0.0, 30001, dtype=torch.float64)
    if side == "high":
        grid = -grid
    steep = (slopes(grid) > SLOPE).nonzero()
    first_steep = int(steep[0])
    flat_x, steep_x = float(grid[first_steep - 1]), float(grid[first_steep])
    for _ in range(60):
        mid = (flat_x + steep_x) / 2
        if float(slopes(torch.tensor([mid], dtype=torch.float64))[0]) <= SLOPE:
            flat_x = mid
        else:
            steep_x = mid
    return flat_x


def reference_flat(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """Flat mask from the pre-activation, by the documented slope criterion."""
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        return x <= 0
    low = tail_threshold(module, "low")
    if isinstance(module, nn.Tanh | nn.Sigmoid):
        return (x <= low) | (x >= tail_threshold(module, "high"))
    return x <= low


class Reference:
    """Captures activations with its own hooks and computes every variable in float64."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = {name: m for name, m in model.named_modules() if flat_rule(m) is not None}
        self.captured: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in self.modules}
        for name, module in self.modules.items():
            module.register_forward_pre_hook(self._pre(name))
            module.register_forward_hook(self._post(name))
        self.pending: dict[str, np.ndarray] = {}

    def _pre(self, name):
        def hook(module, args):
            self.pending[name] = args[0].detach().double().numpy().copy()

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.captured[name].append((self.pending.pop(name), output.detach().double().numpy().copy()))

        return hook

    def activations(self) -> dict[str, dict[str, float]]:
        stats = {}
        for name, passes in self.captured.items():
            module = self.modules[name]
            flats = [reference_flat(module, x) for x, _ in passes]
            ys = np.concatenate([y.ravel() for _, y in passes])
            dead = np.logical_and.reduce([f.all(axis=0) for f in flats])
            stats[name] = {
                "act_zero_frac": np.mean(np.concatenate([f.ravel() for f in flats])),
                "act_dead_frac": dead.mean(),
                "act_mean": ys.mean(),
                "act_std": ys.std(),
            }
            passes.clear()
        return stats


def train_and_compare(
    tmp_path,
    every: int,
    accumulate: int = 1,
    batches: tuple[int, ...] = (24,) * 7,
    threads: tuple[int, ...] | None = None,
) -> None:
    """Seven steps of ``Net`` recorded and recomputed by ``Reference``; ``batches`` are the steps' batch sizes
    and ``threads`` torch's thread count at each step (unchanged when None)."""
    torch.manual_seed(0)
    model = Net()
    reference = Reference(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    initial = [p.detach().double().clone() for p in model.parameters()]
    previous = [p.clone() for p in initial]
    x_all = torch.randn(7, accumulate, max(batches), 1, 12) * 3
    y_all = torch.randint(0, 5, (7, accumulate, max(batches)))
    expected: dict[int, dict[str, object]] = {}
    recorder = Recorder(model, optimizer, tmp_path / "run", every=every, flush_steps=2)
    for step in range(7):
        if threads is not None:
            torch.set_num_threads(threads[step])
        optimizer.zero_grad()
        batch = batches[step]
        for micro in range(accumulate):
            out = model(x_all[step, micro, :batch])
            loss = F.cross_entropy(out, y_all[step, micro, :batch])
            loss.backward()
        grads = [p.grad.detach().double().clone() for p in model.parameters()]
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.01)  # recorded norms must be pre-clipping
        optimizer.step()
        recorder.step(loss=loss, output=out, target=y_all[step, micro, :batch])
        params = [p.detach().double().clone() for p in model.parameters()]
        acts = reference.activations()
        if step % every == 0:
            expected[step] = {
                "loss": float(loss.detach()),
                "accuracy": float((out.argmax(1) == y_all[step, micro, :batch]).double().mean()),
                "grad_norm": [float(g.norm()) for g in grads],
                "param_norm": [float(p.norm()) for p in params],
                "dist_from_init": [float((p - p0).norm()) for p, p0 in zip(params, initial, strict=True)],
                "update_norm": [float((p - q).norm()) for p, q in zip(params, previous, strict=True)],
                "lr": 0.5,
                "acts": acts,
            }
        previous = params
    recorder.close()

    ds = open_run(tmp_path / "run")
    assert list(ds.step.values) == sorted(expected)
    assert list(ds.param.values) == names
    assert list(ds.layer.values) == list(reference.modules)
    for step, want in expected.items():
        got = ds.sel(step=step)
        for var in ("loss", "accuracy", "lr"):
            np.testing.assert_allclose(float(got[var]), want[var], rtol=RTOL, err_msg=f"{var} step {step}")
        for var in ("grad_norm", "param_norm", "dist_from_init", "update_norm"):
            np.testing.assert_allclose(got[var].values, want[var], rtol=RTOL, atol=1e-12, err_msg=f"{var} step {step}")
        for layer, stats in want["acts"].items():
            for var, value in stats.items():
                np.testing.assert_allclose(
                    float(got[var].sel(layer=layer)), value, rtol=RTOL, atol=1e-12, err_msg=f"{var} {layer} step {step}"
                )


@pytest.mark.parametrize("every", [1, 3])
def test_every_variable_matches_brute_force(tmp_path, every):
    train_and_compare(tmp_path, every)


def test_gradient_accumulation_pools_passes(tmp_path):
    train_and_compare(tmp_path, every=1, accumulate=2)


def test_batch_sizes_and_thread_counts_that_change_between_steps(tmp_path):
    """Steps that change the batch size or torch's thread count are measured as exactly as the others."""
    previous = torch.get_num_threads()
    try:
        train_and_compare(tmp_path, every=1, batches=(24, 24, 700, 700, 24, 700, 700), threads=(1, 1, 1, 2, 2, 2, 1))
    finally:
        torch.set_num_threads(previous)


class MixedPrecision(nn.Module):
    """Float32 parameters, a float64 one, one unused."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 4, dtype=torch.float64))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.linear(x).double() * self.scale).float()


def test_gradient_norms_of_mixed_dtypes_accumulated_and_clipped(tmp_path):
    """Gradients of float32 and float64 parameters, over two accumulated backward passes and clipping, equal the
    pre-clipping norms; a parameter without a gradient has norm NaN (there is none to measure)."""
    torch.manual_seed(3)
    model = MixedPrecision()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with Recorder(model, optimizer, tmp_path / "run", probes=["grad_norm"]) as recorder:
        for _ in range(3):
            optimizer.zero_grad()
            for _ in range(2):
                x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
                loss = F.cross_entropy(model(x), y)
                loss.backward()
            expected.append([np.nan if p.grad is None else float(p.grad.double().norm()) for p in model.parameters()])
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3)
            optimizer.step()
            recorder.step(loss=loss)
    got = open_run(tmp_path / "run")["grad_norm"].values
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0.0)
    assert np.isnan(got[:, -2:]).all() and (got[:, :-2] > 0).all()
    assert got.dtype == np.float64  # a model with float64 parameters is recorded in float64


def test_sparse_gradients_are_measured_as_their_dense_norm(tmp_path):
    """A sparse embedding gradient (repeated indices, so duplicates must be summed) next to dense ones."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Flatten(), nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with Recorder(model, optimizer, tmp_path / "run", probes=["grad_norm"]) as recorder:
        for _ in range(3):
            x, y = torch.tensor([[1, 1, 2], [2, 5, 1]]), torch.randint(0, 3, (2,))
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            assert model[0].weight.grad.is_sparse
            expected.append([float(p.grad.to_dense().double().norm()) for p in model.parameters()])
            optimizer.step()
            recorder.step(loss=loss)
    np.testing.assert_allclose(open_run(tmp_path / "run")["grad_norm"].values, expected, rtol=RTOL, atol=0.0)


def test_parameters_given_new_storage_or_dtype_mid_run_are_measured_again(tmp_path):
    """Parameters moved to new storage (step 3) and to float64 (step 4) are measured as brute force says."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 300), nn.ReLU(), nn.Linear(300, 60), nn.ReLU(), nn.Linear(60, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with Recorder(model, optimizer, tmp_path / "run") as recorder:
        for step in range(6):
            if step == 3:
                for param in model.parameters():
                    param.data = param.data.clone()
            if step == 4:
                model.double()
            dtype = next(model.parameters()).dtype
            x, y = torch.randn(40, 6, dtype=dtype), torch.randint(0, 3, (40,))
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            grads = [float(p.grad.double().norm()) for p in model.parameters()]
            optimizer.step()
            recorder.step(loss=loss, output=out, target=y)
            expected.append((grads, [float(p.detach().double().norm()) for p in model.parameters()]))
    run = open_run(tmp_path / "run")
    np.testing.assert_allclose(run["grad_norm"].values, [g for g, _ in expected], rtol=RTOL)
    np.testing.assert_allclose(run["param_norm"].values, [n for _, n in expected], rtol=RTOL)


def test_activation_variables_are_not_trivial(tmp_path):
    """The reference comparison above must exercise non-zero flat and dead fractions, or it proves little."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 8), nn.Tanh())
    with torch.no_grad():
        model[0].bias[:32] = -100.0  # half the units can never fire
        model[2].weight.mul_(50.0)  # tanh saturates
    with Recorder(model, None, tmp_path / "run") as rec:
        out = model(torch.randn(16, 4))
        out.sum().backward()
        rec.step(loss=out.sum())
    ds = open_run(tmp_path / "run")
    assert float(ds.act_dead_frac.sel(layer="1")[0]) >= 0.5
    assert float(ds.act_zero_frac.sel(layer="3")[0]) > 0.5
    assert math.isnan(float(ds.accuracy[0]))
    assert math.isnan(float(ds.lr[0]))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_flat_rule_threshold_is_the_slope_criterion(activation):
    """The stored rule's tail threshold equals where |f'(x)| crosses 0.05, found by bisection here."""
    module = activation()
    rule = flat_rule(module)
    if isinstance(module, nn.ReLU | nn.LeakyReLU):
        assert rule.low == 0.0 and rule.high is None
        return
    low = tail_threshold(module, "low")
    to_rule_space = (lambda v: v) if rule.space == "input" else (lambda v: float(module(torch.tensor(v))))
    assert rule.low == pytest.approx(to_rule_space(low), rel=1e-5, abs=1e-6)
    if rule.high is not None:
        assert rule.high == pytest.approx(to_rule_space(tail_threshold(module, "high")), rel=1e-5)


def test_nonfinite_loss_stops_and_keeps_data(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(model, optimizer, tmp_path / "run", check_finite_every=4)
    with pytest.raises(NonFiniteLossError) as caught:
        for step in range(10):
            loss = model(torch.ones(1, 3)).sum() * (float("nan") if step == 5 else 1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.step(loss)
    assert caught.value.step == 5
    ds = open_run(tmp_path / "run")
    assert list(ds.step.values) == list(range(8))
    assert ds.attrs["status"] == "failed"
    assert np.isnan(ds.loss.values[5]) and np.isfinite(ds.loss.values[:5]).all()


def test_run_opens_with_empty_steps_before_the_first_flush(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, tmp_path / "run") as recorder:
        early = open_run(tmp_path / "run")
        assert early.sizes["step"] == 0 and early.sizes["eval_step"] == 0
        assert early.step.values.tolist() == [] and early.attrs["status"] == "running"
        for _ in range(3):
            loss = model(torch.ones(1, 3)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.step(loss)
        recorder.flush()
        assert open_run(tmp_path / "run").step.values.tolist() == [0, 1, 2]
