"""Device-side augmentation and normalisation against per-sample brute-force references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamics.augment import InputPipeline, crop_flip
from dynamics.data import Dataset
from dynamics.errors import ConfigError


def reference_crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """One sample at a time: zero-pad, slice the window, mirror if asked."""
    _, _, h, w = images.shape
    out = []
    for image, t, s, f in zip(images, top.tolist(), left.tolist(), flip.tolist(), strict=True):
        window = F.pad(image, (padding,) * 4)[:, t : t + h, s : s + w]
        out.append(window.flip(-1) if f else window)
    return torch.stack(out)


def image_data(n: int = 12, channels: int = 3, size: int = 8, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % 3
    return Dataset(
        "img", x, y, x[:4], y[:4], 3, kind="image", mean=(0.5, 0.4, 0.3)[:channels], std=(0.25, 0.2, 0.1)[:channels]
    )


@pytest.mark.parametrize(("padding", "shape"), [(4, (9, 3, 8, 8)), (2, (5, 1, 6, 10)), (0, (3, 2, 5, 5))])
def test_crop_flip_matches_per_sample_reference(padding, shape):
    generator = torch.Generator().manual_seed(padding)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    n = shape[0]
    for _ in range(5):
        top, left = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
        flip = torch.randint(0, 2, (n,), generator=generator).bool()
        out = crop_flip(images, top, left, flip, padding)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert torch.equal(out, reference_crop_flip(images, top, left, flip, padding))


def test_crop_flip_extremes():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    centre = crop_flip(images, torch.tensor([2, 2]), torch.tensor([2, 2]), torch.tensor([False, True]), 2)
    assert torch.equal(centre[0], images[0]) and torch.equal(centre[1], images[1].flip(-1))
    corner = crop_flip(images, torch.tensor([0, 4]), torch.tensor([0, 4]), torch.tensor([False, False]), 2)
    assert torch.equal(corner[0, 0, 2:, 2:], images[0, 0, :2, :2]) and corner[0, 0, :2].sum() == 0
    assert torch.equal(corner[1, 0, :2, :2], images[1, 0, 2:, 2:]) and corner[1, 0, 2:].sum() == 0


def test_pipeline_normalises_like_the_float_formula():
    data = image_data()
    pipeline = InputPipeline(data, torch.device("cpu"), augment=False)
    out = pipeline(data.x_train, True)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (data.x_train.double() / 255 - mean) / std, rtol=1e-5, atol=1e-5, check_dtype=False)
    assert out.dtype == torch.float32 and data.x_train.dtype == torch.uint8  # stored bytes untouched


def test_pipeline_computes_missing_statistics():
    data = image_data()
    bare = Dataset("img", data.x_train, data.y_train, data.x_test, data.y_test, 3, kind="image")
    out = InputPipeline(bare, torch.device("cpu"), augment=False)(data.x_train, False)
    per_channel = out.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3), atol=1e-5, rtol=0)


def test_pipeline_augments_training_batches_only_and_reproducibly():
    data = image_data(n=64)
    a = InputPipeline(data, torch.device("cpu"), seed=5)
    b = InputPipeline(data, torch.device("cpu"), seed=5)
    plain = InputPipeline(data, torch.device("cpu"), augment=False)
    first, second = a(data.x_train, True), b(data.x_train, True)
    assert torch.equal(first, second)  # same seed, same crops and flips
    assert not torch.equal(first, a(data.x_train, True))  # a fresh draw per batch
    assert torch.equal(a(data.x_train, False), plain(data.x_train, False))  # evaluation batches: no augmentation

    # every augmented sample is some crop/flip of its own image: find it by brute force over the 162 options
    normalised = plain(data.x_train, False)
    zero = plain(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), False)[0, :, 0, 0].view(3, 1, 1)
    padded = F.pad(normalised - zero, (4,) * 4) + zero  # padding with the normalised value of a black pixel
    offsets = set()

    def window(image: torch.Tensor, top: int, left: int, mirror: bool) -> torch.Tensor:
        crop = image[:, top : top + 8, left : left + 8]
        return crop.flip(-1) if mirror else crop

    for i in range(len(first)):
        found = [
            (t, s, f)
            for t in range(9)
            for s in range(9)
            for f in (False, True)
            if torch.allclose(window(padded[i], t, s, f), first[i], atol=1e-5)
        ]
        assert found, i
        offsets.update(found)
    assert len({o[2] for o in offsets}) == 2 and len({o[0] for o in offsets}) > 4  # flips and many offsets


def test_channels_last_layout_and_errors():
    data = image_data()
    out = InputPipeline(data, torch.device("cpu"), channels_last=True)(data.x_train, True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    signal = Dataset("sig", torch.randn(4, 1, 8), torch.arange(4), torch.randn(2, 1, 8), torch.arange(2), 4)
    pipeline = InputPipeline(signal, torch.device("cpu"))
    assert pipeline(signal.x_train, True) is signal.x_train  # other kinds pass through
    with pytest.raises(ConfigError, match="channels_last"):
        InputPipeline(signal, torch.device("cpu"), channels_last=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_cpu():
    data = image_data(n=32)
    cuda = torch.device("cuda")
    images = data.x_train.to(cuda)
    top, left = torch.randint(0, 9, (2, 32), device=cuda)
    flip = torch.randint(0, 2, (32,), device=cuda).bool()
    out = crop_flip(images, top, left, flip, 4)
    assert torch.equal(out.cpu(), reference_crop_flip(data.x_train, top.cpu(), left.cpu(), flip.cpu(), 4))
    pipeline = InputPipeline(data, cuda, channels_last=True)
    assert pipeline(images, True).device.type == "cuda"
