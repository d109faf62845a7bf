"""Representation and Fisher probes: every value against a float64 numpy / per-sample autograd reference,
and no side effect on training (bit-identical losses, gradients, activations, BN statistics, RNG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics import ConfigError, Recorder, open_run
from dynamics.collect import build_parser
from dynamics.config import make_config
from dynamics.data import Dataset, load_dataset
from dynamics.engine import train
from dynamics.models import build_model
from dynamics.probes import (
    Context,
    FisherTrace,
    GeometricCadence,
    Representation,
    fisher_trace,
    knn_accuracy,
    linear_cka,
    load_features,
    make_probe_set,
    nc1,
    ridge_accuracy,
    side_pass,
)

STORE_RTOL = 2e-6  # values are stored as float32
SMALL = {
    "dataset": "mnist1d",
    "num_samples": 1200,
    "epochs": 2,
    "batch_size": 64,
    "width": 8,
    "depth": 2,
    "probe_samples": 40,
    "probes": "default",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster on a shared machine


# ------------------------------------------------------------------ brute-force float64 references


def ref_nc1(h: np.ndarray, y: np.ndarray) -> float:
    classes = np.unique(y)
    means = np.stack([h[y == c].mean(0) for c in classes])
    within = sum(np.outer(v, v) for v in h - means[np.searchsorted(classes, y)]) / len(h)
    centred = means - h.mean(0)
    between = sum(np.outer(m, m) for m in centred) / len(classes)
    return float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10, hermitian=True)) / len(classes))


def ref_ridge(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int, ridge: float
) -> tuple[float, float]:
    """Primal ridge with an unpenalised intercept, refitted n times for leave-one-out."""
    targets = np.eye(classes)[y_train]
    centred = x_train - x_train.mean(0)
    lam = ridge * (centred**2).sum() / len(x_train)

    def fit_predict(x: np.ndarray, t: np.ndarray, query: np.ndarray) -> np.ndarray:
        xm, tm = x.mean(0), t.mean(0)
        weights = np.linalg.solve((x - xm).T @ (x - xm) + lam * np.eye(x.shape[1]), (x - xm).T @ (t - tm))
        return tm + (query - xm) @ weights

    loo = [
        fit_predict(np.delete(x_train, i, 0), np.delete(targets, i, 0), x_train[i : i + 1])[0].argmax()
        for i in range(len(x_train))
    ]
    test = fit_predict(x_train, targets, x_test).argmax(1)
    return float(np.mean(np.array(loo) == y_train)), float(np.mean(test == y_test))


def ref_knn(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int, k: int
) -> tuple[float, float]:
    """Majority of the k nearest, ties to the smaller sum of neighbour ranks, then the smaller class."""

    def vote(distances: np.ndarray) -> int:
        order = np.argsort(distances, kind="stable")[:k]
        counts = np.bincount(y_train[order], minlength=classes)
        rank_sums = np.array([np.flatnonzero(y_train[order] == c).sum() for c in range(classes)])
        best = [c for c in range(classes) if counts[c] == counts.max()]
        return min(best, key=lambda c: (rank_sums[c], c))

    own = ((x_train[:, None] - x_train[None]) ** 2).sum(-1)
    np.fill_diagonal(own, np.inf)
    other = ((x_test[:, None] - x_train[None]) ** 2).sum(-1)
    loo = np.array([vote(row) for row in own])
    test = np.array([vote(row) for row in other])
    return float(np.mean(loo == y_train)), float(np.mean(test == y_test))


def ref_cka(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    return float(np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def ref_fisher(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean squared norm of per-sample gradients of -log p(label|x), one autograd call per sample."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for xi, yi in zip(x, labels, strict=True):
        grads = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), params)
        total += sum(float(g.double().square().sum()) for g in grads)
    return total / len(x)


def all_references(features: np.ndarray, probe, previous: np.ndarray, ridge: float, k: int) -> dict[str, list]:
    n = len(probe.x_train)
    y_tr, y_te = probe.y_train.numpy(), probe.y_test.numpy()
    tr, te = features[:n], features[n:]
    linear, knn = (
        ref_ridge(tr, y_tr, te, y_te, probe.num_classes, ridge),
        ref_knn(tr, y_tr, te, y_te, probe.num_classes, k),
    )
    return {
        "rep_nc1": [ref_nc1(tr, y_tr), ref_nc1(te, y_te)],
        "rep_linear_acc": list(linear),
        "rep_knn_acc": list(knn),
        "rep_cka": [ref_cka(previous[:n], tr), ref_cka(previous[n:], te)],
    }


# ---------------------------------------------------------------------------- order parameters


def clustered(n: int, d: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d))
    return centres[y] + spread * rng.normal(size=(n, d)), y


@pytest.mark.parametrize("d", [12, 60])  # fewer and more features than samples
def test_order_parameters_match_brute_force(d: int) -> None:
    classes, k, ridge = 5, 7, 1e-2
    x, y = clustered(90, d, classes, 1.4 if d < 40 else 2.4, seed=d)
    (x_train, x_test), (y_train, y_test) = np.split(x, [50]), np.split(y, [50])
    mean = x_train.mean(0)
    tr, te = torch.tensor(x_train - mean), torch.tensor(x_test - mean)
    gram, cross, test_gram = tr @ tr.T, te @ tr.T, te @ te.T
    yt, ys = torch.tensor(y_train), torch.tensor(y_test)

    assert float(nc1(torch.tensor(x_train), yt, classes)) == pytest.approx(ref_nc1(x_train, y_train), rel=1e-9)
    got_linear = ridge_accuracy(gram, cross, yt, ys, classes, ridge).tolist()
    assert tuple(got_linear) == ref_ridge(x_train, y_train, x_test, y_test, classes, ridge)
    got_knn = knn_accuracy(gram, cross, torch.diagonal(test_gram), yt, ys, classes, k).tolist()
    assert tuple(got_knn) == ref_knn(x_train, y_train, x_test, y_test, classes, k)
    assert all(0.4 < a < 0.97 for a in got_linear + got_knn), "comparisons need accuracies away from 0 and 1"
    other = x_train @ np.random.default_rng(0).normal(size=(d, 7))
    uncentred = torch.tensor(other) @ torch.tensor(other).T
    assert float(linear_cka(gram, uncentred)) == pytest.approx(ref_cka(x_train, other), rel=1e-9)


@pytest.mark.parametrize(("labels", "winner"), [([1, 0, 1, 0], 1), ([1, 0, 0, 1], 0)])
def test_knn_ties_go_to_nearer_neighbours_then_smaller_class(labels: list[int], winner: int) -> None:
    # a query at 0 and neighbours at 1, 2, 3, 4 with k = 4: two votes each; rank sums 2 vs 4, or 3 vs 3
    x_train, y_train = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array(labels)
    tr = torch.tensor(x_train)
    query = (torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    for truth in (0, 1):
        got = knn_accuracy(tr @ tr.T, *query, torch.tensor(y_train), torch.tensor([truth]), 2, k=4)
        assert float(got[1]) == float(truth == winner)
    assert ref_knn(x_train, y_train, np.zeros((1, 1)), np.array([winner]), 2, 4)[1] == 1.0


def test_nc1_falls_as_classes_separate() -> None:
    values = [
        float(nc1(torch.tensor(x), torch.tensor(y), 4))
        for x, y in (clustered(200, 10, 4, spread, 0) for spread in (3.0, 1.0, 0.1))
    ]
    assert values[0] > values[1] > values[2] > 0


def test_nc1_is_zero_for_collapsed_classes() -> None:
    assert float(nc1(torch.eye(4, dtype=torch.float64).repeat(3, 1), torch.arange(4).repeat(3), 4)) == 0.0


# ------------------------------------------------------------------------------ the probes in training


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist1d", num_samples=1200, seed=0)


def cnn(data: Dataset, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=8, depth=2, activation="relu"
    )


def features_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Input of the head, read by the test's own hook on an eval-mode forward."""
    captured = []
    handle = model.head.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    handle.remove()
    return captured[0].double().numpy()


def test_recorded_values_match_brute_force_during_training(mnist: Dataset, tmp_path) -> None:
    every, steps, seed = 2, 24, 5
    probe = make_probe_set(mnist, 30, seed=1)
    torch.manual_seed(0)  # an MLP keeps the features (24) small enough for the numpy references to be quick
    model = build_model("mlp", input_shape=mnist.input_shape, num_classes=10, width=24, depth=2, activation="relu")
    cadence = GeometricCadence(growth=0.3)
    representation = Representation(probe, cadence=cadence, every=every, ridge=1e-2, knn=5)
    fisher = FisherTrace(probe, cadence=cadence, every=every, seed=seed, batch_size=16)
    previous = features_of(model, probe.x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    expected: dict[int, dict[str, list[float]]] = {}
    measured = cadence.steps(steps, every)
    order = torch.Generator().manual_seed(0)
    with Recorder(
        model, optimizer, tmp_path / "run", every=every, probes=["loss", "activations", representation, fisher]
    ) as recorder:
        for step in range(steps):
            index = torch.randint(0, len(mnist.x_train), (64,), generator=order)
            out = model(mnist.x_train[index])
            loss = F.cross_entropy(out, mnist.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss, output=out, target=mnist.y_train[index])
            if step in measured:
                features = features_of(model, probe.x)
                values = all_references(features, probe, previous, ridge=1e-2, k=5)
                previous = features
                model.eval()
                with torch.no_grad():
                    probs = model(probe.x).softmax(1)
                labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                values["fisher_trace"] = [ref_fisher(model, probe.x, labels)]
                model.train()
                expected[step] = values
    ds = open_run(tmp_path / "run")
    assert list(ds["step"].values) == list(range(0, steps, every))
    assert measured == [0, 2, 4, 6, 8, 12, 16, 22]
    for step in ds["step"].values.tolist():
        row = ds.sel(step=step)
        for name in ("rep_nc1", "rep_linear_acc", "rep_knn_acc", "rep_cka", "fisher_trace"):
            got = np.atleast_1d(row[name].values)
            if step not in expected:
                assert np.isnan(got).all(), f"{name} at unmeasured step {step}"
                continue
            want = expected[step][name]
            if name in ("rep_linear_acc", "rep_knn_acc"):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-7, err_msg=f"{name} step {step}")
            else:
                rtol = 1e-4 if name == "fisher_trace" else 5e-5  # float32 model and per-sample gradients
                np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"{name} step {step}")
    assert ds["rep_nc1"].attrs["num_classes"] == 10 and ds["rep_nc1"].attrs["module"] == "head"
    assert np.isfinite(ds["act_zero_frac"].values).all()


def test_fisher_trace_matches_per_sample_autograd(mnist: Dataset) -> None:
    torch.manual_seed(3)
    mlp = build_model("mlp", input_shape=mnist.input_shape, num_classes=10, width=16, depth=2, activation="tanh")
    x = mnist.x_train[:20]
    labels = torch.randint(0, 10, (20,))
    for model in (mlp, cnn(mnist)):
        with torch.enable_grad():
            got = float(fisher_trace(model, x, labels, batch_size=7))
        assert got == pytest.approx(ref_fisher(model, x, labels), rel=1e-5)


class Normed(nn.Module):
    """BatchNorm, Dropout and a module kept in eval mode on purpose: flags must come back as they were."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3))
        self.frozen = nn.BatchNorm1d(16).eval()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.body(x)))


def test_probes_change_nothing_in_the_model_or_the_rng(mnist: Dataset) -> None:
    torch.manual_seed(0)
    model = Normed().train()
    model.frozen.eval()
    model(mnist.x_train[:32]).sum().backward()  # gradients present, as after a training step
    probe = make_probe_set(mnist, 20, seed=0)
    context = Context(model, None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    for probe_object in (Representation(probe), FisherTrace(probe)):
        probe_object.attach(context)
        probe_object.measure_now(context)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert context.paused is False
    with side_pass(context):
        assert context.paused and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == flags


def test_training_is_bit_identical_with_the_probes_on(mnist: Dataset, tmp_path) -> None:
    runs = {}
    for name, extra in (("off", {}), ("on", {"representation": True, "fisher": True, "store_features": True})):
        train(make_config({**SMALL, **extra}), tmp_path / name, progress=False)
        runs[name] = open_run(tmp_path / name)
    off, on = runs["off"], runs["on"]
    shared = [v for v in off.data_vars if v in on.data_vars]
    assert {"loss", "grad_norm", "act_zero_frac", "act_mean", "update_norm", "val_loss"} <= set(shared)
    for name in shared:
        np.testing.assert_array_equal(off[name].values, on[name].values, err_msg=name)
    measured = GeometricCadence().steps(on.sizes["step"])
    for name in ("rep_nc1", "rep_linear_acc", "rep_knn_acc", "rep_cka", "fisher_trace"):
        finite = np.isfinite(on[name].values).reshape(on.sizes["step"], -1).all(1)
        assert np.flatnonzero(finite).tolist() == measured, name
    stored = load_features(tmp_path / "on" / "features")
    probe = make_probe_set(mnist, 40, seed=0)  # SMALL's data: 1200 MNIST-1D samples, data seed 0
    assert stored["step"].values.tolist() == measured and stored.sizes["feature"] == 8 * 40
    assert stored["sample"].values.tolist() == probe.sample_labels
    np.testing.assert_array_equal(stored["label"].values, probe.y.numpy())
    last = stored["features"].isel(step=-1).values.astype(np.float64)
    np.testing.assert_allclose(
        float(on["rep_nc1"].isel(step=measured[-1]).sel(split="train")),
        ref_nc1(last[:40], probe.y_train.numpy()),
        rtol=1e-4,
    )


def test_probe_set_is_stratified_seeded_and_prepared(mnist: Dataset) -> None:
    first = make_probe_set(mnist, 50, seed=3, prepare=lambda x: x * 2)
    again = make_probe_set(mnist, 50, seed=3, prepare=lambda x: x * 2)
    other = make_probe_set(mnist, 50, seed=4)
    assert torch.equal(first.index_train, again.index_train) and not torch.equal(first.index_train, other.index_train)
    assert torch.equal(first.x_train, mnist.x_train[first.index_train] * 2)
    assert torch.equal(first.y_test, mnist.y_test[first.index_test])
    quota = np.bincount(mnist.y_train.numpy(), minlength=10) * 50 / len(mnist.y_train)
    assert np.abs(np.bincount(first.y_train.numpy(), minlength=10) - quota).max() < 1
    assert first.sample_labels[0] == f"train/{int(first.index_train[0])}" and len(first.sample_labels) == 100
    whole = make_probe_set(mnist, 10_000, seed=0)
    assert len(whole.x_test) == len(mnist.x_test)


def test_bad_settings_are_config_errors(mnist: Dataset) -> None:
    sequence = Dataset(
        "text",
        torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 4, dtype=torch.long),
        torch.zeros(8, 4, dtype=torch.long),
        5,
        kind="sequence",
    )
    with pytest.raises(ConfigError, match="sequence"):
        make_probe_set(sequence, 4)
    for bad in (
        {"probe_samples": 1},
        {"probe_growth": 0.0},
        {"probe_growth": math.inf},
        {"probe_max_interval": 0},
        {"store_features": True},
    ):
        with pytest.raises(ConfigError):
            make_config(bad)
    for bad in ({"growth": -1.0}, {"max_interval": 0}):
        with pytest.raises(ConfigError):
            GeometricCadence(**bad)
    with pytest.raises(ConfigError, match="no module"):
        Representation(make_probe_set(mnist, 10), module="nope").attach(Context(cnn(mnist), None))
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    assert {
        "--representation",
        "--fisher",
        "--probe-samples",
        "--probe-growth",
        "--probe-max-interval",
        "--store-features",
    } <= flags


@pytest.mark.parametrize(("growth", "every", "max_interval"), [(0.1, 1, None), (0.5, 3, None), (0.3, 1, 4)])
def test_cadence_follows_its_rule(growth: float, every: int, max_interval: int | None) -> None:
    cadence = GeometricCadence(growth, max_interval)
    steps = cadence.steps(500, every)
    due = 0
    for recorded in range(0, 500, every):  # brute force: a measurement at the first recorded step past due
        if recorded >= due:
            assert recorded in steps
            gap = max(1, math.ceil(growth * recorded))
            due = recorded + (gap if max_interval is None else min(gap, max_interval))
        else:
            assert recorded not in steps
    if max_interval is not None:
        assert np.diff(steps).max() <= max_interval
    else:
        assert len(steps) < 500 / every / 3  # sparse late
