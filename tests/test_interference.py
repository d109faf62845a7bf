"""Interference probe: gradient cos and ratio, activation revival and ATD against brute-force references on a
copy of the model (float64 numpy), and no side effect on training (bit-identical runs with the probe on)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics import ConfigError, Recorder, open_run
from dynamics.collect import build_parser
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.probes import Interference, ProbeSet
from dynamics.probes.flat_regions import GELU_LOW
from dynamics.strategies import Mixup

STORE_RTOL = 1e-6  # values are stored as float32 (6e-8 relative)
CLASSES = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster on a shared machine


def make_model() -> nn.Sequential:
    """BatchNorm, dropout and three activation kinds (output rules ReLU/Tanh, input rule GELU)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(12, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.GELU(),
        nn.Dropout(0.3),
        nn.Linear(16, CLASSES),
    )
    with torch.no_grad():  # units flat for (nearly) every sample in each layer: something to revive
        model[1].bias[:] = torch.linspace(-3.0, -1.0, 16)
        model[3].weight[:8].mul_(0.3)
        model[3].bias[:8] = torch.linspace(2.5, 1.0, 8)
        model[5].weight[:8].mul_(0.5)
        model[5].bias[:8] = torch.linspace(-3.5, -1.5, 8)
    return model


def probe_set() -> ProbeSet:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(20, 12, generator=generator)
    y = torch.arange(20) % CLASSES
    return ProbeSet(x[:12], y[:12], x[12:], y[12:], CLASSES, torch.arange(12), torch.arange(8))


def mask_hooks(model: nn.Module, masks: list[np.ndarray]) -> list:
    """Hooks appending each activation layer's boolean flat mask (rules from first principles) to ``masks``."""
    return [
        model[2].register_forward_hook(lambda m, a, out: masks.append(out.detach().numpy() == 0)),
        model[4].register_forward_hook(  # tanh' = 1 - y^2 <= 0.05
            lambda m, a, out: masks.append(1 - out.detach().double().numpy() ** 2 <= 0.05 + 1e-12)
        ),
        model[6].register_forward_pre_hook(lambda m, a: masks.append(a[0].detach().numpy() <= GELU_LOW)),
    ]


def reference(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    rng: torch.Tensor,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gradients (via .grad on ``model``, a copy) and flat masks of one training-mode pass from RNG state ``rng``."""
    torch.set_rng_state(rng)
    model.zero_grad()
    masks: list[np.ndarray] = []
    hooks = mask_hooks(model, masks)
    try:
        F.cross_entropy(model(x), target).backward()
    finally:
        for handle in hooks:
            handle.remove()
    return [p.grad.double().numpy().ravel() for p in model.parameters()], masks


def layer_activations(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Eval-mode activation vectors (samples x units) of the three activation layers."""
    model = copy.deepcopy(model).eval()
    rows: list[np.ndarray] = []
    hooks = [
        model[2].register_forward_hook(lambda m, a, out: rows.append(out.detach().double().numpy())),
        model[4].register_forward_hook(lambda m, a, out: rows.append(out.detach().double().numpy())),
        model[6].register_forward_hook(lambda m, a, out: rows.append(out.detach().double().numpy())),
    ]
    with torch.no_grad():
        model(x)
    for handle in hooks:
        handle.remove()
    return rows


def test_every_quantity_matches_a_brute_force_reference(tmp_path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probes = probe_set()
    mixer_args = {"num_classes": CLASSES, "mixup_alpha": 1.0, "mode": "elem", "seed": 11}
    probe = Interference(Mixup(**mixer_args), interval=1, probe_set=probes)
    reference_mixer = Mixup(**mixer_args)
    generator = torch.Generator().manual_seed(0)
    model.train()
    with Recorder(model, optimizer, tmp_path / "run", probes=["loss", "activations", probe]) as recorder:
        previous = layer_activations(model, probes.x_train)
        expected, strengths = [], []
        for _ in range(3):
            x = torch.randn(32, 12, generator=generator)
            y = torch.randint(0, CLASSES, (32,), generator=generator)
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            rng = torch.get_rng_state()
            mixed_x, mixed_y, _ = reference_mixer(x, y)
            # each sample's lambda back from the mixed input, mixed_x = lam x + (1 - lam) x_flipped, least squares
            xd, md, fd = x.double().numpy(), mixed_x.double().numpy(), x.flip(0).double().numpy()
            lam = ((md - fd) * (xd - fd)).sum(1) / ((xd - fd) ** 2).sum(1)
            strengths.append(np.minimum(lam, 1 - lam).mean())
            copy_model = copy.deepcopy(model)
            g_clean, flat_clean = reference(copy_model, x, F.one_hot(y, CLASSES).float(), rng)
            g_mixed, flat_mixed = reference(copy_model, mixed_x, mixed_y, rng)
            torch.set_rng_state(rng)  # the probe's passes start where training left the RNG
            current = layer_activations(model, probes.x_train)
            expected.append((g_clean, g_mixed, flat_clean, flat_mixed, previous, current))
            previous = current
            recorder.step(loss, out, y, inputs=x)
    ds = open_run(tmp_path / "run")
    np.testing.assert_allclose(ds["mix_strength"].values, strengths, rtol=STORE_RTOL)
    for step, (g_clean, g_mixed, flat_clean, flat_mixed, before, after) in enumerate(expected):
        row = ds.isel(step=step)
        norms = [(np.linalg.norm(c), np.linalg.norm(m)) for c, m in zip(g_clean, g_mixed, strict=True)]
        cos = np.array(
            [c @ m / (nc * nm) for (c, m), (nc, nm) in zip(zip(g_clean, g_mixed, strict=True), norms, strict=True)]
        )
        whole_c, whole_m = np.concatenate(g_clean), np.concatenate(g_mixed)
        cos_model = whole_c @ whole_m / (np.linalg.norm(whole_c) * np.linalg.norm(whole_m))
        assert np.all(np.abs(cos) < 0.999)  # ratios well away from 0: sqrt(1 - cos^2) is then accurate
        np.testing.assert_allclose(row["interference_cos"].values, cos, rtol=STORE_RTOL)
        np.testing.assert_allclose(row["interference_ratio"].values, np.sqrt(1 - cos**2), rtol=STORE_RTOL)
        np.testing.assert_allclose(float(row["interference_cos_model"]), cos_model, rtol=STORE_RTOL)
        np.testing.assert_allclose(float(row["interference_ratio_model"]), math.sqrt(1 - cos_model**2), rtol=STORE_RTOL)
        dead = [clean.all(axis=0) for clean in flat_clean]
        assert all(d.sum() > 0 for d in dead)  # every layer has units to revive (or not)
        revived = [(d & ~mixed.all(axis=0)).sum() / d.sum() for d, mixed in zip(dead, flat_mixed, strict=True)]
        np.testing.assert_allclose(row["revival_frac"].values, revived, rtol=STORE_RTOL)
        np.testing.assert_allclose(row["zero_frac_clean"].values, [m.mean() for m in flat_clean], rtol=STORE_RTOL)
        np.testing.assert_allclose(row["zero_frac_mixed"].values, [m.mean() for m in flat_mixed], rtol=STORE_RTOL)
        distances = [np.sqrt(((a - b) ** 2).sum(axis=1)) for a, b in zip(after, before, strict=True)]
        np.testing.assert_allclose(row["atd_mean"].values, [d.mean() for d in distances], rtol=STORE_RTOL)
        np.testing.assert_allclose(row["atd_var"].values, [d.var() for d in distances], rtol=STORE_RTOL)
    assert list(ds["layer"].values) == ["2", "4", "6"]


def test_revival_of_units_that_mixing_brings_back(tmp_path) -> None:
    """Mirrored pairs +-v: a unit reading sum(relu(x)) with weight -1 and bias 1 is dead on every clean sample
    and revives on a mixed sample (2 lam - 1) v with 6 |2 lam - 1| < 1 (numpy forward, no hooks)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
        model[2].weight.fill_(-1.0)
        model[2].bias.copy_(torch.tensor([1.0, -0.5]))  # the second unit never revives
    v = torch.tensor([3.0, -3.0, 3.0, -3.0])
    x = torch.cat([v.repeat(32, 1), -v.repeat(32, 1)])
    y = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    mixer_args = {"num_classes": 2, "mixup_alpha": 1.0, "mode": "elem", "seed": 2}
    with Recorder(model, None, tmp_path / "run", probes=[Interference(Mixup(**mixer_args), interval=1)]) as recorder:
        out = model(x)
        recorder.step(F.cross_entropy(out, y), out, y, inputs=x)
    mixed = Mixup(**mixer_args)(x, y)[0].double().numpy()
    hidden = [np.maximum(inputs, 0) for inputs in (x.double().numpy(), mixed)]
    second = [np.maximum(h.sum(1, keepdims=True) * -1.0 + np.array([1.0, -0.5]), 0) for h in hidden]
    assert (second[0] == 0).all() and (second[1][:, 0] > 0).any()  # the case is what it claims to be
    row = open_run(tmp_path / "run").isel(step=0)
    assert math.isnan(float(row["revival_frac"][0]))  # no unit of the first layer is flat for every clean sample
    np.testing.assert_array_equal(row["revival_frac"].values[1], 0.5)  # one of the two dead units revives
    for name, part in (("zero_frac_clean", 0), ("zero_frac_mixed", 1)):
        np.testing.assert_allclose(
            row[name].values, [(hidden[part] == 0).mean(), (second[part] == 0).mean()], rtol=STORE_RTOL
        )


def test_sample_alignment_matches_per_sample_autograd(tmp_path) -> None:
    """Mean over samples of cos(g_clean_i, g_mixed_i), BatchNorm on running statistics, from single-sample
    backward passes on a copy."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(16, 12), torch.arange(16) % CLASSES
    mixer_args = {"num_classes": CLASSES, "mixup_alpha": 1.0, "mode": "elem", "seed": 8}
    probe = Interference(Mixup(**mixer_args), interval=1, sample_alignment=True)
    with Recorder(model, None, tmp_path / "run", probes=[probe]) as recorder:
        out = model(x)
        recorder.step(F.cross_entropy(out, y), out, y, inputs=x)
    mixed_x, mixed_y, _ = Mixup(**mixer_args)(x, y)
    reference_model = copy.deepcopy(model)
    reference_model[1].eval()

    def sample_gradient(inputs: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        reference_model.zero_grad()
        F.cross_entropy(reference_model(inputs[None]), target[None]).backward()
        return np.concatenate([p.grad.double().numpy().ravel() for p in reference_model.parameters()])

    cosines, clean = [], []
    for i in range(len(x)):
        a = sample_gradient(x[i], F.one_hot(y[i], CLASSES).float())
        b = sample_gradient(mixed_x[i], mixed_y[i])
        cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        clean.append(a)
    run = open_run(tmp_path / "run")
    assert float(run["sample_align_cos"][0]) == pytest.approx(np.mean(cosines), rel=STORE_RTOL)

    # stiffness, gradient diversity and GSNR of the clean per-sample gradients, straight from their definitions
    g = np.stack(clean)
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = unit @ unit.T
    labels = y.numpy()
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(g), dtype=bool)
    diff = labels[:, None] != labels[None, :]
    assert float(run["stiffness_same"][0]) == pytest.approx(cos[same].mean(), rel=STORE_RTOL)
    assert float(run["stiffness_diff"][0]) == pytest.approx(cos[diff].mean(), rel=STORE_RTOL)
    diversity = (g**2).sum() / (g.sum(0) ** 2).sum()
    assert float(run["grad_diversity"][0]) == pytest.approx(diversity, rel=STORE_RTOL)
    bounds = np.cumsum([0, *(p.numel() for p in model.parameters())])
    for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        block = g[:, start:stop]
        gsnr = (block.mean(0) ** 2).sum() / block.var(0).sum()
        assert float(run["gsnr"][0, index]) == pytest.approx(gsnr, rel=STORE_RTOL)


def test_measuring_changes_nothing_training_reads(tmp_path) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = Interference(Mixup(CLASSES, 0.4, seed=1), interval=1, probe_set=probe_set(), sample_alignment=True)
    x, y = torch.randn(32, 12), torch.randint(0, CLASSES, (32,))
    with Recorder(model, optimizer, tmp_path / "run", probes=["activations", probe]) as recorder:
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        state = {name: t.clone() for name, t in model.state_dict().items()}
        grads = [p.grad.clone() for p in model.parameters()]
        momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        rng = torch.get_rng_state()
        recorder.step(loss, out, y, inputs=x)
        assert all(torch.equal(t, state[name]) for name, t in model.state_dict().items())
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
        assert all(
            torch.equal(optimizer.state[p]["momentum_buffer"], m)
            for p, m in zip(model.parameters(), momentum, strict=True)
        )
        assert torch.equal(torch.get_rng_state(), rng)
        assert model.training and not recorder.context.paused
    assert np.isfinite(open_run(tmp_path / "run")["interference_ratio_model"].values).all()


def test_activation_statistics_ignore_the_probe_passes(tmp_path) -> None:
    stats = {}
    for name, extra in (("off", []), ("on", [Interference(Mixup(CLASSES, 0.4, seed=1), interval=1)])):
        model = make_model()
        x, y = torch.randn(32, 12, generator=torch.Generator().manual_seed(1)), torch.arange(32) % CLASSES
        with Recorder(model, None, tmp_path / name, probes=["activations", *extra]) as recorder:
            for _ in range(2):
                out = model(x)
                loss = F.cross_entropy(out, y)
                recorder.step(loss, out, y, inputs=x)
        stats[name] = open_run(tmp_path / name)
    for variable in ("act_zero_frac", "act_dead_frac", "act_mean", "act_std"):
        np.testing.assert_array_equal(stats["on"][variable].values, stats["off"][variable].values)


SMALL = {
    "dataset": "mnist1d",
    "num_samples": 1200,
    "epochs": 2,
    "batch_size": 64,
    "width": 8,
    "depth": 2,
    "probe_samples": 40,
    "mixup_alpha": 0.4,
    "mix_mode": "elem",
}


@pytest.mark.parametrize(
    ("model", "probe"),
    [({"model": "cnn"}, {"interference_samples": True}), ({"model": "cnn_gru", "width_mult": 0.25}, {})],
)
def test_the_probe_leaves_training_bit_identical(tmp_path, model: dict[str, object], probe: dict[str, object]) -> None:
    """With Mixup (the probe mixes with a generator of its own) and, for cnn_gru, BatchNorm."""
    runs = {}
    for name, on in (("off", False), ("on", True)):
        config = make_config(
            {**SMALL, **model, **(probe if on else {}), "interference": on, "interference_every": 3, "every": 2}
        )
        train(config, tmp_path / name, progress=False)
        runs[name] = open_run(tmp_path / name)
    off, on = runs["off"], runs["on"]
    for variable in ("loss", "accuracy", "grad_norm", "act_zero_frac", "mixup_alpha", "val_loss", "snapshot"):
        np.testing.assert_array_equal(on[variable].values, off[variable].values)
    assert "interference_ratio" not in off
    steps = on["step"].values
    # every 3 steps at the first recorded (even) step at or after each due step: 0, 4, 8, ...
    measured = steps[np.isfinite(on["interference_ratio_model"].values)]
    np.testing.assert_array_equal(measured, np.arange(0, steps[-1] + 1, 4))
    assert np.isfinite(on["atd_mean"].sel(step=measured).values).all()
    if probe:
        assert np.isfinite(on["sample_align_cos"].sel(step=measured).values).all()


def test_bad_settings_are_one_line_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="interference_alpha"):
        make_config({"interference_alpha": 0.0})
    with pytest.raises(ConfigError, match="interference_every"):
        make_config({"interference_every": 0})
    with pytest.raises(ConfigError, match="interference=True"):
        make_config({"interference_samples": True})
    with pytest.raises(ConfigError, match="mixes"):
        Interference(Mixup(CLASSES, 0.0), interval=2)
    with pytest.raises(ConfigError, match="interval"):
        Interference(Mixup(CLASSES, 0.4), interval=0)
    model = make_model()
    with (
        Recorder(model, None, tmp_path / "run", probes=[Interference(Mixup(CLASSES, 0.4))]) as recorder,
        pytest.raises(ConfigError, match="inputs="),
    ):
        out = model(torch.randn(8, 12))
        recorder.step(F.cross_entropy(out, torch.zeros(8, dtype=torch.long)), out, torch.zeros(8, dtype=torch.long))
    args = build_parser().parse_args(["--interference", "--interference-every", "5", "--interference-alpha", "0.2"])
    assert (args.interference, args.interference_every, args.interference_alpha) == (True, 5, 0.2)


class WithUnusedActivation(nn.Module):
    """A linear model that registers an activation module it never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, CLASSES)
        self.unused = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_an_activation_that_never_runs_is_nan_for_revival_and_zero_for_atd(tmp_path) -> None:
    model = WithUnusedActivation()
    probe = Interference(Mixup(CLASSES, 0.4, seed=1), interval=1, probe_set=probe_set())
    x, y = torch.randn(8, 12), torch.arange(8) % CLASSES
    with Recorder(model, None, tmp_path / "run", probes=[probe]) as recorder:
        out = model(x)
        recorder.step(F.cross_entropy(out, y), out, y, inputs=x)
    row = open_run(tmp_path / "run").isel(step=0)
    assert [math.isnan(float(row[name][0])) for name in ("revival_frac", "zero_frac_clean", "zero_frac_mixed")] == [
        True,
        True,
        True,
    ]
    assert float(row["atd_mean"][0]) == 0.0 and float(row["atd_var"][0]) == 0.0
    assert np.isfinite(row["interference_ratio"].values).all()
