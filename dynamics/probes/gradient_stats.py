"""Statistics of per-sample gradients computed from their Gram matrix G[i, j] = <g_i, g_j> (science.md, section 4).

Every function takes a Gram from :func:`~dynamics.probes.per_sample_gram.per_sample_gram` (one parameter
tensor's, or ``"total"`` for the whole model) and returns float64 device tensors; nothing synchronises with
the host. Sample statistics use population moments (divide by B) throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamics.errors import ConfigError
from dynamics.probes.per_sample_gram import Moments


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) = G_ij / sqrt(G_ii G_jj); NaN in the rows and columns of zero gradients."""
    norms = gram.diagonal().double().sqrt()
    return gram.double() / (norms.unsqueeze(1) * norms.unsqueeze(0))


@dataclass(frozen=True)
class Stiffness:
    """Stiffness of Fort et al. (2019): means over pairs i != j of cos(g_i, g_j) and of sign(<g_i, g_j>).

    ``same`` / ``sign_same`` average the pairs of one class, ``diff`` / ``sign_diff`` the pairs of two
    classes; NaN where there is no such pair. Pairs with a zero gradient are left out of the cosine means.
    """

    same: torch.Tensor
    diff: torch.Tensor
    sign_same: torch.Tensor
    sign_diff: torch.Tensor


def stiffness(gram: torch.Tensor, labels: torch.Tensor) -> Stiffness:
    """Cosine and sign stiffness within and between the classes ``labels`` (B integers) of the Gram's samples."""
    if labels.shape != (len(gram),):
        raise ConfigError(f"stiffness needs one label per sample, shape ({len(gram)},), got {tuple(labels.shape)}")
    cos = cosine_matrix(gram)
    sign = gram.double().sign()
    off = ~torch.eye(len(gram), dtype=torch.bool, device=gram.device)
    same = (labels.unsqueeze(1) == labels.unsqueeze(0)) & off
    diff = (labels.unsqueeze(1) != labels.unsqueeze(0)) & off
    return Stiffness(cos[same].nanmean(), cos[diff].nanmean(), sign[same].mean(), sign[diff].mean())


def gradient_diversity(gram: torch.Tensor) -> torch.Tensor:
    """Gradient diversity of Yin et al. (2018): sum_i |g_i|^2 / |sum_i g_i|^2 = trace(G) / 1^T G 1."""
    gram = gram.double()
    return gram.trace() / gram.sum()


def gsnr_aggregate(gram: torch.Tensor) -> torch.Tensor:
    """Layer-aggregate gradient signal-to-noise ratio: |mean g|^2 / sum over elements of Var g (population).

    With m = mean_i g_i, |m|^2 = 1^T G 1 / B^2 and the summed variance is trace(G) / B - |m|^2. This is a
    ratio of sums over the tensor's elements, not the mean of the per-element GSNR (E g)^2 / Var g of Liu
    et al. (2020); that one is :func:`gsnr_elementwise`.
    """
    gram = gram.double()
    batch = len(gram)
    signal = gram.sum() / batch**2
    return signal / (gram.trace() / batch - signal)


def gsnr_elementwise(moments: Moments, batch: int) -> torch.Tensor:
    """Mean over elements of the per-element GSNR (E g)^2 / Var g of Liu et al. (2020), population variance.

    ``moments`` holds one tensor's per-element sums of g and g^2 over ``batch`` samples
    (:func:`~dynamics.probes.per_sample_gram.per_sample_gram_with_moments`); elements whose per-sample
    gradients are all equal (zero variance) are left out.
    """
    mean = moments.sum.double() / batch
    var = moments.sum_sq.double() / batch - mean.square()
    keep = var > 0
    return (mean[keep].square() / var[keep]).mean()


@dataclass(frozen=True)
class Alignment:
    """Alignment of clean and mixed gradients from one Gram over the concatenated batch [clean; mixed].

    ``pair_cos`` (n,): cos(g_clean_i, g_mixed_i) of each clean sample and its mixed counterpart.
    ``mean_cos``: cos of the clean batch-mean gradient and the mixed batch-mean gradient.
    ``mean_ratio``: the interference ratio |g_m - proj_{g_c} g_m| / |g_m| of those two mean gradients
    (the sine of their angle), from |g_m|^2 - <g_m, g_c>^2 / |g_c|^2.
    """

    pair_cos: torch.Tensor
    mean_cos: torch.Tensor
    mean_ratio: torch.Tensor


def alignment(gram: torch.Tensor) -> Alignment:
    """Clean-vs-mixed alignment from the 2n x 2n Gram of [clean samples; their mixed counterparts], in order."""
    if len(gram) % 2:
        raise ConfigError(f"alignment needs the Gram of [clean; mixed], an even number of samples, got {len(gram)}")
    gram = gram.double()
    n = len(gram) // 2
    cos = cosine_matrix(gram)
    pair_cos = cos[torch.arange(n, device=gram.device), torch.arange(n, 2 * n, device=gram.device)]
    cc, cm, mm = gram[:n, :n].sum(), gram[:n, n:].sum(), gram[n:, n:].sum()
    mean_cos = cm / (cc * mm).sqrt()
    mean_ratio = ((mm - cm.square() / cc).clamp(min=0) / mm).sqrt()
    return Alignment(pair_cos, mean_cos, mean_ratio)
