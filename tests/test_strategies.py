"""Each strategy against its definition, with numbers worked out independently of the implementation."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analyses import smooth_ema
from dynamics import ConfigError, open_run
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.strategies import (
    PLP,
    CyclicalFocalLoss,
    Mixup,
    StrategyPlan,
    cyclical_eta,
    cyclical_value,
    high_loss_keep_mask,
)

SMALL = {"dataset": "gaussian", "num_samples": 400, "epochs": 4, "batch_size": 40, "model": "mlp", "width": 16}


# ---- General Cyclical Training schedule: E = 11 epochs (E - 1 = 10), values by hand ----
@pytest.mark.parametrize(
    ("factor", "epoch", "eta"),
    [
        (1, 0, 1.0),
        (1, 5, 0.5),
        (1, 10, 0.0),  # plain ramp: 1 - e/10
        (2, 0, 1.0),
        (2, 3, 0.4),
        (2, 5, 0.0),
        (2, 6, 0.2),
        (2, 10, 1.0),  # 2e < 11: 1 - 2e/10, else 2e/10 - 1
        (4, 2, 0.2),
        (4, 3, 0.2 / 3),
        (4, 7, 1.8 / 3),
        (4, 10, 1.0),  # 4e >= 11: (4e/10 - 1)/3
    ],
)
def test_cyclical_schedule_values(factor: float, epoch: int, eta: float) -> None:
    assert cyclical_eta(epoch, 11, factor) == pytest.approx(eta, abs=1e-12)
    assert cyclical_value(epoch, 11, 1.0, 3.0, factor) == pytest.approx(3.0 - 2.0 * eta, abs=1e-12)


def test_cyclical_schedule_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        cyclical_eta(0, 10, 0.5)
    with pytest.raises(ConfigError):
        cyclical_eta(10, 10, 2)
    assert cyclical_eta(0, 1, 2) == 1.0


# ---- Cyclical focal loss against a direct numpy formula ----
def focal_numpy(
    logits: np.ndarray, labels: np.ndarray, eta: float, g_hc: float, g_pos: float, g_neg: float, eps: float
) -> np.ndarray:
    losses = []
    for row, label in zip(logits.astype(np.float64), labels, strict=True):
        p = np.exp(row - row.max())
        p /= p.sum()
        total = 0.0
        for c in range(len(row)):
            smoothed = (1 - eps) * (c == label) + eps / len(row)
            if c == label:
                w = (1 - eta) * (1 - p[c]) ** g_pos + eta * (1 + p[c]) ** g_hc
            else:
                w = (1 - eta) * p[c] ** g_neg + eta
            total -= smoothed * w * math.log(p[c])
        losses.append(total)
    return np.array(losses)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_cyclical_focal_loss_matches_formula(eta: float) -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 5, generator=generator) * 2
    labels = torch.randint(0, 5, (9,), generator=generator)
    loss = CyclicalFocalLoss(3.0, 2.0, 2.5, 0.1, reduction="none")(logits, labels, eta)
    expected = focal_numpy(logits.numpy(), labels.numpy(), eta, 3.0, 2.0, 2.5, 0.1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    assert CyclicalFocalLoss()(logits, labels, eta).item() == pytest.approx(
        focal_numpy(logits.numpy(), labels.numpy(), eta, 3, 2, 2, 0.1).mean(), rel=1e-5
    )


# ---- Parameter Linear Prediction ----
def test_plp_scalar_example_from_the_paper() -> None:
    """Plain SGD, lr 1, from 0 with gradients 1, 2, 4: points -1, -3, -7, prediction -8 (k=1), -11 (k=2)."""
    for k, predicted in ((1.0, -8.0), (2.0, -11.0)):
        theta = torch.nn.Parameter(torch.zeros(()))
        optimizer = torch.optim.SGD([theta], lr=1.0)
        plp = PLP([theta], k=k)
        applied = []
        for gradient in (1.0, 2.0, 4.0):
            theta.grad = torch.tensor(gradient)
            optimizer.step()
            applied.append(plp.observe())
        assert applied == [False, False, True]
        assert theta.item() == predicted
        # the cycle restarts: the next three points come after the prediction
        for gradient in (1.0, 1.0):
            theta.grad = torch.tensor(gradient)
            optimizer.step()
            assert not plp.observe()
        theta.grad = torch.tensor(1.0)
        optimizer.step()
        assert plp.observe() and theta.item() == predicted - 2.5 - k  # points p-1, p-2, p-3: m23 + k s


def test_plp_leaves_momentum_and_buffers_and_biases_alone() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    plp = PLP(model.parameters(), weights_only=True)
    points = []
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
        points.append({name: p.detach().clone() for name, p in model.named_parameters()})
        momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        running = model[1].running_mean.clone()
        applied = plp.observe()
    assert applied
    for p, buffer in zip(model.parameters(), momentum, strict=True):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], buffer)
    assert torch.equal(model[1].running_mean, running)
    first, second, third = points
    for name, p in model.named_parameters():
        if p.ndim > 1:
            expected = third[name] + (second[name] - first[name]) / 2
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(p.detach(), third[name])


# ---- Mixup / CutMix ----
def recovered_lams(x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """Per-sample lam solving mixed_i - x_mirror = lam (x_i - x_mirror) by least squares."""
    mirror = x.flip(0)
    a, b = (x - mirror).flatten(1), (mixed - mirror).flatten(1)
    return (a * b).sum(1) / (a * a).sum(1)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_inputs_and_soft_targets(mode: str) -> None:
    x, y = torch.randn(8, 1, 12).double(), torch.arange(8) % 3
    mixer = Mixup(3, mixup_alpha=0.4, mode=mode, label_smoothing=0.1, seed=3)
    mixed, target, info = mixer(x, y)
    lam = recovered_lams(x, mixed)
    np.testing.assert_allclose(
        mixed.numpy(), (lam.view(-1, 1, 1) * x + (1 - lam.view(-1, 1, 1)) * x.flip(0)).numpy(), atol=1e-12
    )
    smooth = F.one_hot(y, 3).double() * 0.9 + 0.1 / 3
    expected = lam.view(-1, 1) * smooth + (1 - lam.view(-1, 1)) * smooth.flip(0)
    np.testing.assert_allclose(target.double().numpy(), expected.numpy(), atol=1e-6)
    assert ((lam > 0) & (lam < 1)).all() and info.applied == 1.0 and info.kind == "mixup"
    if mode == "batch":
        assert torch.allclose(lam, lam[0].expand(8))
    if mode == "pair":
        assert torch.allclose(lam, lam.flip(0)) and not torch.allclose(lam, lam[0].expand(8))


def test_mixup_probability_leaves_samples_clean() -> None:
    x, y = torch.randn(4000, 3).double(), torch.zeros(4000, dtype=torch.long)
    mixed, _, info = Mixup(2, mixup_alpha=1.0, prob=0.3, mode="elem", seed=0)(x, y)
    clean = (mixed == x).all(1).double().mean().item()
    assert abs(clean - 0.7) < 0.03 and abs(info.applied - 0.3) < 0.03


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_cutmix_pastes_one_box_and_weights_targets_by_area(mode: str) -> None:
    x = torch.arange(6 * 2 * 10 * 12, dtype=torch.float64).view(6, 2, 10, 12)
    y = torch.arange(6) % 4
    mixed, target, info = Mixup(4, mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode, seed=5)(x, y)
    assert info.kind == "cutmix"
    for i in range(6):
        from_mirror = (mixed[i] == x[5 - i]) & (mixed[i] != x[i])
        assert ((mixed[i] == x[i]) | from_mirror).all()
        box = from_mirror[0]
        assert torch.equal(box, from_mirror[1])
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows):
            assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        lam = 1 - box.double().mean().item()
        expected = lam * F.one_hot(y[i], 4).double() + (1 - lam) * F.one_hot(y[5 - i], 4).double()
        np.testing.assert_allclose(target[i].double().numpy(), expected.numpy(), atol=1e-6)


def test_cutmix_on_signals_is_refused() -> None:
    with pytest.raises(ConfigError, match="CutMix"):
        Mixup(3, mixup_alpha=0.0, cutmix_alpha=1.0)(torch.randn(4, 1, 40), torch.zeros(4, dtype=torch.long))


# ---- High-Loss Removal ----
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.99])
def test_high_loss_removal_drops_exactly_the_top_losses(fraction: float) -> None:
    losses = torch.randperm(40).double()
    keep = high_loss_keep_mask(losses, fraction)
    removed = int(math.floor(fraction * 40))
    expected = np.ones(40)
    expected[np.argsort(-losses.numpy())[:removed]] = 0
    np.testing.assert_array_equal(keep.numpy(), expected)


def test_high_loss_removal_loss_is_mean_of_kept_samples() -> None:
    torch.manual_seed(0)
    config = make_config({**SMALL, "enp_epochs": 1, "high_loss_removal": 0.25})
    model = torch.nn.Linear(5, 3)
    plan = StrategyPlan(config, model, torch.optim.SGD(model.parameters(), lr=0.1), 3, seed=0)
    plan.start_epoch(0, 0)
    out, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    inputs, target = plan.prepare(out, y)
    per_sample = F.cross_entropy(out, y, reduction="none").numpy()
    kept = np.sort(per_sample)[:6]
    assert plan.loss(out, target).item() == pytest.approx(kept.mean(), rel=1e-6)
    assert plan.scalars()["removed_frac"] == 0.25


# ---- Recorded hyperparameters match what was applied ----
def test_recorded_cyclical_hyperparameters_match_the_schedule(tmp_path) -> None:
    config = make_config(
        {
            **SMALL,
            "epochs": 5,
            "momentum": 0.0,
            "lr": 0.5,
            "cyclical_factor": 2.0,
            "cyclical_wd": "0.001:0.004",
            "cyclical_temperature": "0.5:2",
            "cyclical_clip": "0.05:0.2",
            "cyclical_batch_size": "20:80",
            "cyclical_focal": True,
        }
    )
    train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    epoch = ds["epoch"].values
    eta = {0: 1.0, 1: 0.5, 2: 0.0, 3: 0.5, 4: 1.0}  # E = 5, f = 2: 2e < 5 -> 1 - 2e/4, else 2e/4 - 1
    want = np.array([eta[e] for e in epoch])
    np.testing.assert_allclose(ds["weight_decay"].values, 0.004 - 0.003 * want, rtol=1e-12)
    np.testing.assert_allclose(ds["temperature"].values, 2.0 - 1.5 * want, rtol=1e-12)
    np.testing.assert_allclose(ds["clip_norm"].values, 0.2 - 0.15 * want, rtol=1e-12)
    np.testing.assert_allclose(ds["focal_eta"].values, want, rtol=1e-12)
    sizes = np.rint(80 - 60 * want)
    np.testing.assert_array_equal(ds["batch_size"].values, sizes)
    counts = np.bincount(epoch)
    np.testing.assert_array_equal(counts, [320 // int(80 - 60 * eta[e]) for e in range(5)])


def test_clipping_bounds_the_update_and_grad_norm_is_before_clipping(tmp_path) -> None:
    config = make_config({**SMALL, "epochs": 2, "momentum": 0.0, "lr": 0.5, "cyclical_clip": "0.02:0.05"})
    train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    grad = np.sqrt((ds["grad_norm"].values.astype(np.float64) ** 2).sum(1))
    update = np.sqrt((ds["update_norm"].values.astype(np.float64) ** 2).sum(1))
    clip = ds["clip_norm"].values
    assert (grad > clip).any()
    np.testing.assert_allclose(update, 0.5 * np.minimum(grad, clip), rtol=2e-4)


def test_plp_in_the_engine_records_where_it_jumped(tmp_path) -> None:
    config = make_config({**SMALL, "epochs": 1, "plp": True})
    train(config, tmp_path / "r", progress=False)
    applied = open_run(tmp_path / "r")["plp_applied"].values
    np.testing.assert_array_equal(applied, (np.arange(len(applied)) % 3 == 2).astype(float))


# ---- Enlightenment strategies in a capture ----
def collect(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args, "--no-progress"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


QUICK = ["--num-samples", "2000", "--epochs", "4", "--batch-size", "32"]


def test_mixup_pause_for_two_epochs(tmp_path) -> None:
    result = collect(*QUICK, "--mixup-alpha", "0.4", "--mixup-pause", "--enp-epochs", "2", "--out", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ds = open_run(tmp_path / "r")
    early = ds["epoch"].values < 2
    np.testing.assert_array_equal(ds["mix_applied"].values, np.where(early, 0.0, 1.0))
    np.testing.assert_array_equal(ds["enp_active"].values, early.astype(float))
    np.testing.assert_allclose(ds["mixup_alpha"].values, np.where(early, 0.0, 0.4), rtol=1e-7)


def test_mixup_pause_auto_switches_at_the_detected_step(tmp_path) -> None:
    config = make_config(
        {
            "num_samples": 2000,
            "epochs": 4,
            "batch_size": 32,
            "mixup_alpha": 0.4,
            "mixup_pause": True,
            "enp_epochs": "auto",
            "enp_signal": "batch",  # the batch is unmixed during the pause: its accuracy is the recorded one
        }
    )
    train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    smoothed = smooth_ema(ds["step"].values, ds["accuracy"].values.astype(np.float64), 10.0)
    detected = int(np.argmax(smoothed >= 0.5))
    assert smoothed[detected] >= 0.5 and 0 < detected < ds.sizes["step"] - 1
    inside = ds["step"].values <= detected
    np.testing.assert_array_equal(ds["enp_active"].values, inside.astype(float))
    np.testing.assert_array_equal(ds["mix_applied"].values, np.where(inside, 0.0, 1.0))
    np.testing.assert_allclose(ds["enp_accuracy"].values, np.where(inside, smoothed, np.nan), rtol=1e-6)


def test_alpha_boost_uses_the_boosted_alpha_only_in_the_period(tmp_path) -> None:
    config = make_config({**SMALL, "mixup_alpha": 0.2, "alpha_boost": 1.5, "enp_epochs": 1})
    train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    early = ds["epoch"].values < 1
    np.testing.assert_allclose(ds["mixup_alpha"].values, np.where(early, 1.5, 0.2), rtol=1e-7)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mixup-alpha", "-0.2"], ["alpha", ">= 0"]),
        (["--high-loss-removal", "1.0", "--enp-epochs", "1"], ["--high-loss-removal", "[0, 1)"]),
        (["--cyclical-wd", "0.01:0.001"], ["--cyclical-wd", "MIN"]),
        (["--cyclical-factor", "0.5", "--cyclical-wd", "0:0.01"], ["--cyclical-factor", ">= 1"]),
        (["--cutmix-alpha", "1.0"], ["CutMix", "image"]),
        (["--mixup-pause", "--enp-epochs", "1"], ["--mixup-alpha"]),
        (["--alpha-boost", "2"], ["--enp-epochs"]),
        (["--enp-epochs", "soon"], ["--enp-epochs"]),
    ],
)
def test_invalid_strategy_settings_fail_at_start_up(tmp_path, args: list[str], words: list[str]) -> None:
    result = collect("--epochs", "1", *args, "--out", "r", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "r").exists()
