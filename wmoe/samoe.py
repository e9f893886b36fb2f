"""SA-MoE: a semantic-aware mixture of experts that aggregates context for the image score.

paper: a mixture-of-experts module aggregates contextual information for image-level scoring.
ours: each expert is a light context aggregator, a dilated 3x3 convolution (dilation 1, 2, 4, 8, ...)
over the per-layer anomaly-logit maps followed by attention pooling with its own query over the
patch features; it gives an anomaly logit and a spatial attention map. The router is conditioned
on the global semantics (the CLIP embedding g and the CTDS latent) and gives softmax weights,
optionally kept to the top k. A load-balancing term keeps the experts from collapsing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .precision import full_precision


@dataclass
class MoEOutput:
    """What SA-MoE computes for a batch of B images and E experts."""

    score: torch.Tensor  # (B,) routed mixture of the expert scores, in [0, 1]
    weights: torch.Tensor  # (B, E) routing weights, rows sum to 1
    expert_scores: torch.Tensor  # (B, E) each expert's own score, in [0, 1]
    expert_maps: torch.Tensor  # (B, E, h, w) each expert's attention over the patch grid, rows sum to 1


class SAMoE(nn.Module):
    def __init__(self, dim: int, num_layers: int, num_experts: int, latent_dim: int = 0, top_k: int = 0):
        super().__init__()
        self.top_k, self.dim = top_k, dim
        self.context = nn.ModuleList()
        for e in range(num_experts):
            d = 2 ** (e % 4)
            conv = nn.Conv2d(num_layers, 1, 3, padding=d, dilation=d)
            with torch.no_grad():  # start as the mean over layers at the centre tap
                conv.weight.zero_()
                conv.weight[0, :, 1, 1] = 1.0 / num_layers
                conv.bias.zero_()
            self.context.append(conv)
        self.query = nn.Parameter(torch.randn(num_experts, dim) * 0.02)
        self.sharpness = nn.Parameter(torch.tensor([2.0 ** (e % 4) for e in range(num_experts)]))
        self.scale = nn.Parameter(torch.ones(num_experts))
        self.bias = nn.Parameter(torch.zeros(num_experts))
        self.router = nn.Linear(dim + latent_dim, num_experts)
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)
        self.latent_dim = latent_dim

    def route(self, g: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Routing weights (B, E) from unit global embeddings and CTDS latents (zeros when absent)."""
        if self.latent_dim:
            z = torch.zeros(g.shape[0], self.latent_dim, device=g.device, dtype=g.dtype) if z is None else z
            g = torch.cat([g, z.to(g.dtype)], dim=-1)
        weights = self.router(g).float().softmax(dim=-1)
        if self.top_k:
            kept = weights.topk(self.top_k, dim=-1).indices
            weights = torch.zeros_like(weights).scatter(-1, kept, weights.gather(-1, kept))
            weights = weights / weights.sum(-1, keepdim=True)
        return weights

    def forward(
        self,
        layer_logits: torch.Tensor,
        feats: torch.Tensor,
        g: torch.Tensor,
        z: torch.Tensor | None,
        uniform: bool = False,
    ) -> MoEOutput:
        """layer_logits (B, L, h, w) anomaly logits per layer; feats (B, N, D) unit patch features.
        In float32 whatever the autocast around it: the context logits feed a softmax and a sigmoid."""
        B, _, h, w = layer_logits.shape
        with full_precision(layer_logits.device):
            layer_logits, feats, g = layer_logits.float(), feats.float(), g.float()
            ctx = torch.cat([conv(layer_logits) for conv in self.context], dim=1).flatten(2)  # (B, E, N)
            attn_logits = (feats @ self.query.t()).transpose(1, 2) / math.sqrt(self.dim)
            attn = (attn_logits + self.sharpness[None, :, None] * ctx).softmax(dim=-1)  # (B, E, N)
            logits = self.scale * (attn * ctx).sum(-1) + self.bias  # (B, E)
            scores = torch.sigmoid(logits)
            weights = torch.full_like(scores, 1.0 / scores.shape[1]) if uniform else self.route(g, z)
        return MoEOutput(
            score=(weights * scores).sum(-1),
            weights=weights,
            expert_scores=scores,
            expert_maps=attn.unflatten(-1, (h, w)),
        )

    @staticmethod
    def balance_loss(weights: torch.Tensor) -> torch.Tensor:
        """E * sum_e mean_b(w_be)^2 - 1: zero when the experts are used equally, grows as they collapse."""
        usage = weights.mean(0)
        return usage.numel() * usage.pow(2).sum() - 1.0
