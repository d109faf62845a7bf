"""Device-side input pipeline: uint8 images -> augmented, normalised float batches, with no per-sample Python.

Image sets stay uint8 on the device (see :class:`dynamics.data.Dataset`). For a training batch one
gather does the random crop (zero padding of ``padding`` pixels on every side, as in the reference CIFAR
recipes) and the horizontal flip of every sample at once; the offsets and flips come from a seeded
generator on the device, so augmentation is reproducible and never synchronises with the host. Then the
bytes are converted to float and normalised per channel (``(x / 255 - mean) / std`` as one multiply-add),
optionally in channels_last memory format for convolutional models. Other data kinds pass through.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamics.data import Dataset, channel_stats
from dynamics.errors import ConfigError


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Crop ``images`` ``(N, C, H, W)``, zero-padded by ``padding``, at per-sample offsets, flipping where asked.

    Sample ``i`` becomes ``pad(images[i])[:, top[i]:top[i] + H, left[i]:left[i] + W]``, mirrored left-right
    when ``flip[i]``; offsets lie in ``[0, 2 * padding]``. One ``torch.gather`` over the flattened padded
    images does every sample (same dtype as the input; no per-sample Python).
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    width = w + 2 * padding
    columns = torch.arange(w, device=images.device)
    columns = torch.where(flip[:, None], columns.flip(0), columns) + left[:, None]  # (N, W)
    rows = top[:, None] + torch.arange(h, device=images.device)  # (N, H)
    index = (rows[:, :, None] * width + columns[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)


class InputPipeline:
    """Turns stored batches of a data set into model inputs on its device.

    For image data: ``train`` batches get a random crop (``padding`` pixels) and horizontal flip when
    ``augment`` is on; every batch is normalised with the data set's channel statistics (computed from its
    training split if the data set carries none) and, with
    ``channels_last``, laid out NHWC (faster convolutions on tensor cores). Other kinds are returned as they
    are; ``channels_last`` needs image data.
    """

    def __init__(
        self,
        data: Dataset,
        device: torch.device,
        *,
        augment: bool = True,
        channels_last: bool = False,
        seed: int = 0,
        padding: int = 4,
    ) -> None:
        if channels_last and data.kind != "image":
            raise ConfigError(
                f"channels_last needs image data; {data.name} is {data.kind} data, so set channels_last=False",
                key="channels_last",
            )
        self.image = data.kind == "image"
        self.augment = augment and self.image
        self.padding = padding
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=device).manual_seed(seed)
        if self.image:
            stats = (data.mean, data.std) if data.mean is not None else channel_stats(data.x_train.cpu().numpy())
            mean, std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in stats)
            self.scale = 1.0 / (255.0 * std)
            self.shift = -mean / std

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Model input for the stored batch ``x`` (augmented only when ``train``)."""
        if not self.image:
            return x
        if train and self.augment:
            n = len(x)
            offsets = torch.randint(0, 2 * self.padding + 1, (2, n), device=x.device, generator=self.generator)
            flip = torch.randint(0, 2, (n,), device=x.device, generator=self.generator).bool()
            x = crop_flip(x, offsets[0], offsets[1], flip, self.padding)
        return torch.addcmul(self.shift, x.contiguous(memory_format=self.memory_format).float(), self.scale)
