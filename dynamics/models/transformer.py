"""Pre-norm transformers: ViT-Tiny/Small for 32x32 and 64x64 images, and a small causal character-level LM.

Both stack the same :class:`Block` (LayerNorm, multi-head self-attention through
``F.scaled_dot_product_attention`` (flash/memory-efficient kernels on a GPU), LayerNorm, a two-layer MLP
with one activation module per block) and share the initialisation of timm's ViT: truncated normal
(std 0.02) for linear weights, position embeddings and the class token, zero biases. No dropout, so a
run is a deterministic function of its seed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.layers import check_width_mult, image_shape
from dynamics.models.mlp import check_positive_int, make_activation


class Attention(nn.Module):
    """Multi-head self-attention: one ``qkv`` projection, scaled dot-product attention, output ``proj``."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with ``mlp`` = ``fc1``, ``act``, ``fc2``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, activation: str, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, mlp_dim), act=make_activation(activation), fc2=nn.Linear(mlp_dim, dim))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _dims(dim: int, heads: int, width_mult: float) -> tuple[int, int]:
    """Embedding width scaled by ``width_mult`` and rounded to a multiple of ``heads``; its 4x MLP width."""
    scaled = max(1, round(dim * check_width_mult(width_mult) / heads)) * heads
    return scaled, 4 * scaled


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Vision transformer: ``patch_embed`` (strided conv), class token, learned ``pos_embed``, ``blocks``,
    final ``norm`` and ``head`` on the class token.

    ``patch_size`` defaults to ``height // 8`` (4 at 32x32, 8 at 64x64: 64 patches plus the class token).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        dim: int,
        depth: int,
        heads: int,
        patch_size: int | None = None,
        width_mult: float = 1.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        channels, height, width = image_shape(input_shape, "a vit")
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        patch = height // 8 if patch_size is None else patch_size
        check_positive_int("patch_size", patch, "pass one that divides the image side")
        if height % patch or width % patch:
            raise ConfigError(
                f"patch_size {patch} must divide the image size {height}x{width}; fix it", key="patch_size"
            )
        dim, mlp_dim = _dims(dim, heads, width_mult)
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (height // patch) * (width // patch), dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim, activation, causal=False) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)
        for tensor in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(tensor, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_tiny(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    patch_size: int | None = None,
    width_mult: float = 1.0,
    activation: str = "gelu",
) -> ViT:
    """ViT-Tiny: width 192, 12 blocks, 3 heads, MLP 768."""
    return ViT(
        input_shape,
        num_classes,
        dim=192,
        depth=12,
        heads=3,
        patch_size=patch_size,
        width_mult=width_mult,
        activation=activation,
    )


def vit_small(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    patch_size: int | None = None,
    width_mult: float = 1.0,
    activation: str = "gelu",
) -> ViT:
    """ViT-Small: width 384, 12 blocks, 6 heads, MLP 1536."""
    return ViT(
        input_shape,
        num_classes,
        dim=384,
        depth=12,
        heads=6,
        patch_size=patch_size,
        width_mult=width_mult,
        activation=activation,
    )


class CausalLM(nn.Module):
    """Character-level causal transformer: ``embed`` + learned ``pos_embed``, ``blocks``, ``norm``, ``head``.

    Inputs are token ids ``(N, T)`` with ``T`` at most the context length (``input_shape[0]``); outputs are
    next-token logits ``(N, T, vocab)``. Width 256 x ``width_mult``, 4 heads, ``depth`` blocks.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        vocab_size: int,
        *,
        depth: int = 4,
        width_mult: float = 1.0,
        activation: str = "gelu",
        heads: int = 4,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ConfigError(
                f"the lm needs token sequences shaped (length,), got samples shaped "
                f"{tuple(input_shape)}; use the text data set",
                key="input_shape",
            )
        check_positive_int("vocab_size", vocab_size, "pass the vocabulary size")
        check_positive_int("depth", depth, "pass e.g. 4")
        dim, mlp_dim = _dims(256, heads, width_mult)
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, input_shape[0], dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim, activation, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:  # GPT-2: residual projections scaled down with depth
            for linear in (block.attn.proj, block.mlp.fc2):
                nn.init.trunc_normal_(linear.weight, std=0.02 / math.sqrt(2 * depth))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(N, T, vocab)`` of token ids ``(N, T)``."""
        return self.head(self.norm(self.blocks(self.embed(ids) + self.pos_embed[:, : ids.shape[1]])))
