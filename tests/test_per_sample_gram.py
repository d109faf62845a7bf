"""Per-sample gradient Grams and their statistics against torch.func per-sample gradients (float64, 1e-4 relative)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dynamics.errors import ConfigError
from dynamics.models import build_model
from dynamics.models.resnet import BasicBlock
from dynamics.models.transformer import ViT
from dynamics.probes import (
    alignment,
    gradient_diversity,
    gsnr_aggregate,
    gsnr_elementwise,
    per_sample_gram,
    per_sample_gram_with_moments,
    stiffness,
)

RTOL = 1e-4
psg = importlib.import_module("dynamics.probes.per_sample_gram")  # the package exports a function of that name
Case = tuple[nn.Module, Callable, torch.Tensor, torch.Tensor]


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target, reduction="none")


def token_cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss: the sum over positions of next-token cross-entropy."""
    return F.cross_entropy(out.transpose(1, 2), target, reduction="none").sum(1)


class AttentionBlock(nn.Module):
    """Pre-norm block with nn.MultiheadAttention (whose out_proj weight is used outside out_proj's forward)."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.head(x.mean(1))


class Odd(nn.Module):
    """Embedding with padding_idx tied to the output head, a grouped strided dilated circular Conv1d followed
    by an in-place ReLU, a Linear called twice, and a bare parameter."""

    def __init__(self, vocab: int = 13, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, dim, 3, stride=2, dilation=2, groups=2, padding=2, padding_mode="circular")
        self.act = nn.ReLU(inplace=True)
        self.mix = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.randn(dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(self.embed(ids).transpose(1, 2))).transpose(1, 2)
        h = self.mix(torch.tanh(self.mix(h))) * self.scale
        return self.head(h.mean(1))


def resnet_block() -> nn.Module:
    """A strided BasicBlock (projection shortcut with BatchNorm) and a head, BatchNorm with nontrivial stats."""
    model = nn.Sequential(BasicBlock(3, 6, 2, "relu"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


def make_case(name: str) -> Case:
    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", input_shape=(1, 40), num_classes=10, width=16, depth=2, activation="relu")
        x, y, loss = torch.randn(12, 1, 40), torch.randint(0, 10, (12,)), cross_entropy
    elif name == "cnn":
        model = build_model("cnn", input_shape=(1, 40), num_classes=10, width=6, depth=2, activation="relu")
        x, y, loss = torch.randn(12, 1, 40), torch.randint(0, 10, (12,)), cross_entropy
    elif name == "resnet_block":
        model = resnet_block().eval()
        x, y, loss = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)), cross_entropy
    elif name == "vit":
        model = ViT((3, 8, 8), 5, dim=8, depth=1, heads=2, patch_size=4)
        x, y, loss = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,)), cross_entropy
    elif name == "mha":
        model = AttentionBlock()
        x, y, loss = torch.randn(6, 5, 8), torch.randint(0, 3, (6,)), cross_entropy
    elif name == "lm":
        model = build_model(
            "lm", input_shape=(6,), num_classes=11, width=1, depth=1, activation="gelu", width_mult=1 / 32
        )
        x, y, loss = torch.randint(0, 11, (6, 6)), torch.randint(0, 11, (6, 6)), token_cross_entropy
    else:
        model = Odd()
        ids = torch.randint(0, 13, (8, 9))
        ids[:, -2:] = 0  # padding tokens
        x, y, loss = ids, torch.randint(0, 13, (8,)), cross_entropy
    model = model.double()
    return model, loss, x.double() if x.is_floating_point() else x, y


CASES = ("mlp", "cnn", "resnet_block", "vit", "mha", "lm", "odd")


def reference(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients (B, *shape) of every trainable parameter by torch.func, the brute-force reference."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(theta: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (theta, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0)).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def flat_all(per: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in per.values()], 1)


def assert_gram(gram: torch.Tensor, per_sample: torch.Tensor) -> None:
    flat = per_sample.flatten(1)
    expected = flat @ flat.T
    torch.testing.assert_close(gram, expected, rtol=RTOL, atol=RTOL * float(expected.abs().max()) + 1e-30)


@pytest.fixture(params=["auto", "ghost", "materialise"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with the cost-based choice, or force the ghost identity / materialised per-sample gradients."""
    if request.param != "auto":
        forced = request.param == "ghost"
        monkeypatch.setattr(psg, "_choose_ghost", lambda ghost, materialise: forced)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_gram_matches_torch_func(case: str, path: str) -> None:
    model, loss_fn, x, y = make_case(case)
    per = reference(model, loss_fn, x, y)
    grams = per_sample_gram(model, loss_fn, x, y)
    assert list(grams) == [*per, "total"]
    for name, g in per.items():
        assert_gram(grams[name], g)
    assert_gram(grams["total"], flat_all(per))


@pytest.mark.parametrize("case", CASES)
def test_moments_match_torch_func(case: str, path: str) -> None:
    model, loss_fn, x, y = make_case(case)
    per = reference(model, loss_fn, x, y)
    grams, moments = per_sample_gram_with_moments(model, loss_fn, x, y)
    assert list(moments) == list(per)
    for name, g in per.items():
        assert_gram(grams[name], g)
        scale = float(g.square().sum(0).max())
        torch.testing.assert_close(moments[name].sum, g.sum(0), rtol=RTOL, atol=RTOL * scale**0.5)
        torch.testing.assert_close(moments[name].sum_sq, g.square().sum(0), rtol=RTOL, atol=RTOL * scale)


def test_float32_model_agrees_with_float64_reference() -> None:
    model, loss_fn, x, y = make_case("cnn")
    per = reference(model, loss_fn, x, y)
    grams = per_sample_gram(model.float(), loss_fn, x.float(), y)
    expected = flat_all(per) @ flat_all(per).T
    torch.testing.assert_close(grams["total"], expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def test_statistics_match_brute_force() -> None:
    model, loss_fn, x, y = make_case("cnn")
    g = flat_all(reference(model, loss_fn, x, y))
    grams, moments = per_sample_gram_with_moments(model, loss_fn, x, y)
    gram = grams["total"]
    batch = len(g)

    cos = F.cosine_similarity(g.unsqueeze(1), g.unsqueeze(0), dim=2)
    dots = g @ g.T
    pairs = [(i, j) for i in range(batch) for j in range(batch) if i != j]
    same = [(i, j) for i, j in pairs if y[i] == y[j]]
    diff = [(i, j) for i, j in pairs if y[i] != y[j]]
    assert same and diff
    result = stiffness(gram, y)
    for value, chosen, matrix in (
        (result.same, same, cos),
        (result.diff, diff, cos),
        (result.sign_same, same, dots.sign()),
        (result.sign_diff, diff, dots.sign()),
    ):
        expected = torch.stack([matrix[i, j] for i, j in chosen]).mean()
        torch.testing.assert_close(value, expected, rtol=RTOL, atol=1e-8)

    total = g.sum(0)
    torch.testing.assert_close(gradient_diversity(gram), g.square().sum() / total.square().sum(), rtol=RTOL, atol=0)
    mean = g.mean(0)
    var = g.var(0, correction=0)
    torch.testing.assert_close(gsnr_aggregate(gram), mean.square().sum() / var.sum(), rtol=RTOL, atol=0)

    name = "blocks.1.conv.weight"
    layer = reference(model, loss_fn, x, y)[name].flatten(1)
    layer_mean, layer_var = layer.mean(0), layer.var(0, correction=0)
    keep = layer_var > 0
    expected = (layer_mean[keep].square() / layer_var[keep]).mean()
    torch.testing.assert_close(gsnr_elementwise(moments[name], batch), expected, rtol=RTOL, atol=0)
    torch.testing.assert_close(
        gsnr_aggregate(grams[name]), layer_mean.square().sum() / layer_var.sum(), rtol=RTOL, atol=0
    )


def test_alignment_of_clean_and_mixed_batches() -> None:
    model, loss_fn, x, y = make_case("cnn")
    n = len(x)
    lam = 0.7
    perm = torch.roll(torch.arange(n), 1)
    mixed = lam * x + (1 - lam) * x[perm]
    # soft-label Mixup loss, per sample: lam * CE(y) + (1 - lam) * CE(y[perm]); the clean half uses lam = 1
    weights = torch.cat([torch.ones(n), torch.full((n,), lam)]).double()

    def mix_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = target[:, 2].double() / 1000
        return w * F.cross_entropy(out, target[:, 0], reduction="none") + (1 - w) * F.cross_entropy(
            out, target[:, 1], reduction="none"
        )

    both = torch.cat([x, mixed])
    targets = torch.stack([torch.cat([y, y]), torch.cat([y, y[perm]]), (weights * 1000).round().long()], 1)
    g = flat_all(reference(model, mix_loss, both, targets))
    result = alignment(per_sample_gram(model, mix_loss, both, targets)["total"])
    expected_pairs = F.cosine_similarity(g[:n], g[n:], dim=1)
    torch.testing.assert_close(result.pair_cos, expected_pairs, rtol=RTOL, atol=1e-8)
    clean, mix = g[:n].mean(0), g[n:].mean(0)
    torch.testing.assert_close(result.mean_cos, F.cosine_similarity(clean, mix, dim=0), rtol=RTOL, atol=1e-8)
    perp = mix - (mix @ clean) / (clean @ clean) * clean
    torch.testing.assert_close(result.mean_ratio, perp.norm() / mix.norm(), rtol=RTOL, atol=1e-8)


def test_mixup_pair_of_a_logistic_unit_is_nearly_orthogonal_to_the_clean_pair() -> None:
    """The paper's toy model: one logistic unit w.x + b with BCE, near-zero init so sigmoid ~ 1/2.

    A sample's weight gradient is (sigmoid(w.x + b) - y) x ~ (1/2 - y) x. For a positive x_i (y = 1) and a
    negative x_j (y = 0) the clean pair's gradient is ~ (x_j - x_i) / 2. The Mixup sample
    x_m = lam x_i + (1 - lam) x_j with label lam has gradient ~ (1/2 - lam) x_m, along lam x_i + (1 - lam) x_j.
    With unit-norm inputs <x_i + x_j, x_j - x_i> = |x_j|^2 - |x_i|^2 = 0, so at lam = 1/2 the two gradients
    are orthogonal, and near it (lam = 0.45) nearly so: in d = 4096 dimensions x_i and x_j are nearly
    orthogonal, the cosine is about (1 - 2 lam) / sqrt(2 (lam^2 + (1 - lam)^2)) ~ 0.1 and the interference
    ratio r = |g_mix - proj_{g_clean} g_mix| / |g_mix| = sqrt(1 - cos^2) > 0.95 (the bias gradients, ~ 0 on
    both sides at sigmoid = 1/2, do not change this). The Gram is over [x_i, x_j; x_m, x_m]: both clean
    samples have the Mixup pair x_m as counterpart, so the clean mean gradient is the pair's and the mixed
    mean gradient is x_m's. (Mixing both ways, x_m and x_m' = lam x_j + (1 - lam) x_i, would not do: their
    gradients nearly cancel, leaving a small remainder parallel to x_i - x_j.)
    """
    torch.manual_seed(0)
    d, lam = 4096, 0.45
    unit = nn.Linear(d, 1).double()
    nn.init.normal_(unit.weight, std=1e-4)
    nn.init.zeros_(unit.bias)
    xi, xj = F.normalize(torch.randn(2, d, dtype=torch.float64), dim=1)
    clean = torch.stack([xi, xj])
    mixed = (lam * xi + (1 - lam) * xj).expand(2, d)
    x = torch.cat([clean, mixed])
    y = torch.tensor([1.0, 0.0, lam, lam], dtype=torch.float64)

    def bce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out.squeeze(1), target, reduction="none")

    result = alignment(per_sample_gram(unit, bce, x, y)["total"])
    g = flat_all(reference(unit, bce, x, y))
    g_clean, g_mix = g[0] + g[1], g[2]
    perp = g_mix - (g_mix @ g_clean) / (g_clean @ g_clean) * g_clean
    ratio = perp.norm() / g_mix.norm()
    torch.testing.assert_close(result.mean_ratio, ratio, rtol=RTOL, atol=0)
    assert ratio > 0.95


def state(model: nn.Module) -> tuple:
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.grad.clone() for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [m.training for m in model.modules()],
        torch.get_rng_state(),
    )


def assert_same_state(before: tuple, after: tuple) -> None:
    for a, b in zip(before[:3], after[:3], strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)
    assert before[3] == after[3]
    assert torch.equal(before[4], after[4])


def test_leaves_parameters_grads_buffers_modes_and_rng_unchanged() -> None:
    model, loss_fn, x, y = make_case("resnet_block")
    model = nn.Sequential(nn.Dropout(0.3), model)  # train-mode dropout draws from the global RNG
    model.train()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = state(model)
    per_sample_gram(model, loss_fn, x, y, batchnorm="eval")
    assert_same_state(before, state(model))


def test_train_mode_batchnorm_raises_or_uses_running_statistics() -> None:
    model, loss_fn, x, y = make_case("resnet_block")
    expected = reference(model, loss_fn, x, y)  # eval mode
    model.train()
    with pytest.raises(ConfigError, match="BatchNorm"):
        per_sample_gram(model, loss_fn, x, y)
    grams = per_sample_gram(model, loss_fn, x, y, batchnorm="eval")
    assert model.training and model[0].bn1.training
    assert_gram(grams["total"], flat_all(expected))
    model[0].bn1.track_running_stats = False
    model[0].bn1.running_mean = model[0].bn1.running_var = None
    with pytest.raises(ConfigError, match="running statistics"):
        per_sample_gram(model.eval(), loss_fn, x, y, batchnorm="eval")


def test_rejects_batch_losses_and_unknown_policy() -> None:
    model, loss_fn, x, y = make_case("mlp")
    with pytest.raises(ConfigError, match="one loss per sample"):
        per_sample_gram(model, lambda out, t: F.cross_entropy(out, t), x, y)
    with pytest.raises(ConfigError, match="batchnorm"):
        per_sample_gram(model, loss_fn, x, y, batchnorm="train")
