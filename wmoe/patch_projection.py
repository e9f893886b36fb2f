"""Patch projection (ours, switchable): a per-layer residual linear map of the patch tokens.

The paper does not say; APRIL-GAN, AdaCLIP and VCP-CLIP learn one. Zero-initialised, so an
untrained projection is the identity and training starts from plain CLIP features.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchProjection(nn.Module):
    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        for linear in self.linears:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t + linear(t) for t, linear in zip(taps, self.linears, strict=True)]
