"""Optimizers and schedules: construction, learning rates against hand-computed values, and every error."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynamics.errors import ConfigError
from dynamics.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule


def params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3))]


def lr_trace(name: str, steps: int, *, lr: float = 1.0, **kwargs: object) -> list[float]:
    """Learning rate used by each of ``steps`` optimizer steps, with the schedule stepped after each."""
    optimizer = build_optimizer("sgd", params(), lr=lr)
    schedule = build_schedule(optimizer, name, **kwargs)
    trace = []
    for _ in range(steps):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return trace


def test_registries():
    assert OPTIMIZERS == ("sgd", "adamw")
    assert SCHEDULES == ("constant", "step", "cosine")


def test_sgd():
    opt = build_optimizer("sgd", params(), lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-4)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    settings = (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"])
    assert settings == (0.05, 0.8, True, 1e-4)
    plain = build_optimizer("sgd", params(), lr=0.1).param_groups[0]
    assert (plain["momentum"], plain["nesterov"], plain["weight_decay"]) == (0.9, False, 0.0)
    assert build_optimizer("sgd", params(), lr=0.1, momentum=0.0).param_groups[0]["momentum"] == 0.0


def test_adamw():
    opt = build_optimizer("adamw", params(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.01)
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (1e-3, (0.8, 0.99), 0.01)


def test_sgd_step_is_plain_sgd_without_momentum():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer("sgd", [p], lr=0.5, momentum=0.0)
    p.grad = torch.tensor([0.2, 0.4])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([0.9, -2.2]))


def test_constant():
    assert lr_trace("constant", 5, lr=0.3, total_steps=5) == [0.3] * 5


def test_constant_with_warmup():
    trace = lr_trace("constant", 7, lr=0.2, total_steps=10, warmup_steps=4)
    assert trace == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2], abs=1e-12)


def test_step_default_step_size_is_a_third():
    trace = lr_trace("step", 32, total_steps=30, gamma=0.5)  # step_size 10
    assert trace[0] == trace[9] == 1.0
    assert trace[10] == trace[19] == pytest.approx(0.5)
    assert trace[20] == trace[29] == pytest.approx(0.25)
    assert trace[30] == trace[31] == pytest.approx(0.125)


def test_step_explicit_with_warmup():
    trace = lr_trace("step", 10, lr=2.0, total_steps=10, warmup_steps=2, step_size=4, gamma=0.1)
    expected = [0.0, 1.0, 2.0, 2.0, 0.2, 0.2, 0.2, 0.2, 0.02, 0.02]
    assert trace == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_with_warmup():
    trace = lr_trace("cosine", 13, lr=0.1, total_steps=10, warmup_steps=2)
    # after warmup, progress p = (t - 2) / 8 and lr = 0.1 * (1 + cos(pi p)) / 2
    half_root2 = math.sqrt(2) / 2
    assert trace[0] == 0.0
    assert trace[1] == pytest.approx(0.05)
    assert trace[2] == pytest.approx(0.1)
    assert trace[4] == pytest.approx(0.05 * (1 + half_root2))  # p = 1/4
    assert trace[6] == pytest.approx(0.05)  # p = 1/2
    assert trace[8] == pytest.approx(0.05 * (1 - half_root2))  # p = 3/4
    assert trace[10:] == [0.0, 0.0, 0.0]


def test_cosine_without_warmup():
    trace = lr_trace("cosine", 5, lr=1.0, total_steps=4)
    assert trace == pytest.approx([1.0, 0.5 + math.sqrt(2) / 4, 0.5, 0.5 - math.sqrt(2) / 4, 0.0])


def test_cosine_all_warmup():
    trace = lr_trace("cosine", 5, lr=1.0, total_steps=4, warmup_steps=4)
    assert trace == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0])


def test_schedule_state_round_trip_and_adamw():
    opt = build_optimizer("adamw", params(), lr=0.01)
    sched = build_schedule(opt, "cosine", total_steps=20, warmup_steps=5)
    for _ in range(7):
        opt.step()
        sched.step()
    fresh_opt = build_optimizer("adamw", params(), lr=0.01)
    fresh = build_schedule(fresh_opt, "constant", total_steps=1)
    fresh.load_state_dict(sched.state_dict())
    for _ in range(3):
        opt.step()
        sched.step()
        fresh_opt.step()
        fresh.step()
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005 * (1 + math.cos(math.pi * 5 / 15)))


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("adam", {"lr": 0.1}, "choose one of: sgd, adamw"),
        ("sgd", {"lr": 0.0}, "lr must be"),
        ("sgd", {"lr": -1.0}, "lr must be"),
        ("adamw", {"lr": float("nan")}, "lr must be"),
        ("sgd", {"lr": float("inf")}, "lr must be"),
        ("sgd", {"lr": 0.1, "weight_decay": -0.1}, "weight_decay must be"),
        ("sgd", {"lr": 0.1, "momentum": 1.0}, "momentum must"),
        ("sgd", {"lr": 0.1, "momentum": -0.5}, "momentum must"),
        ("sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": True}, "nesterov needs momentum > 0"),
        ("adamw", {"lr": 0.1, "nesterov": True}, "nesterov applies to sgd only"),
        ("adamw", {"lr": 0.1, "betas": (0.9, 1.0)}, "betas"),
        ("adamw", {"lr": 0.1, "betas": (0.9,)}, "betas"),
    ],
)
def test_optimizer_errors(name, kwargs, needle):
    with pytest.raises(ConfigError) as excinfo:
        build_optimizer(name, params(), **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message and needle in message and "--" not in message
    assert excinfo.value.key in {*kwargs, "name"}


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("linear", {"total_steps": 10}, "choose one of: constant, step, cosine"),
        ("cosine", {"total_steps": 0}, "total_steps must be"),
        ("cosine", {"total_steps": 10.0}, "total_steps must be"),
        ("constant", {"total_steps": True}, "total_steps must be"),
        ("constant", {"total_steps": 10, "warmup_steps": -1}, "warmup_steps must be"),
        ("constant", {"total_steps": 10, "warmup_steps": 2.5}, "warmup_steps must be"),
        ("cosine", {"total_steps": 10, "warmup_steps": 11}, "exceeds the run's total_steps"),
        ("step", {"total_steps": 10, "step_size": 0}, "step_size must be"),
        ("step", {"total_steps": 10, "gamma": 0.0}, "gamma must be"),
        ("step", {"total_steps": 10, "gamma": float("nan")}, "gamma must be"),
    ],
)
def test_schedule_errors(name, kwargs, needle):
    optimizer = build_optimizer("sgd", params(), lr=0.1)
    with pytest.raises(ConfigError) as excinfo:
        build_schedule(optimizer, name, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message and needle in message and "--" not in message
    assert excinfo.value.key in {*kwargs, "name"}
