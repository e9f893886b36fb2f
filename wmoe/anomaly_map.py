"""Anomaly maps: patch-text cosine similarity -> abnormal probability -> image-sized, smoothed map.

ours (docs/design.md): softmax over (normal, abnormal) at the configured temperature, upsampled to the
input size, averaged over layers, Gaussian smoothing. Values stay probabilities in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import full_precision


def abnormal_logits(tokens: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Unit patch tokens (B, N, D) and unit text (B, K, 2, D) -> logit(abnormal) (B, K, N)."""
    with full_precision(tokens.device):
        sims = torch.einsum("bnd,bksd->bksn", tokens.float(), text.float()) / temperature  # (B, K, 2, N)
        return sims[:, :, 1] - sims[:, :, 0]  # softmax over two classes = sigmoid of the difference


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W), bilinear."""
    return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (B, C, H, W) maps; sigma in pixels; edges replicated."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    k = kernel[None, None, None].expand(maps.shape[1], 1, 1, -1)
    out = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="replicate"), k, groups=maps.shape[1])
    return F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="replicate"), k.transpose(-1, -2), groups=maps.shape[1]
    )
