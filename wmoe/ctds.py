"""CTDS: a VAE on the global image embedding whose latent conditions the prompt context.

paper: a variational autoencoder models global semantics and integrates them into the prompts.
ours: MLP sizes; the decoded bias is added to every learnable context token (both prompts);
the decoder's last layer is zero-initialised so an untrained CTDS leaves the prompts unchanged;
inference uses the mean, and K samples give a spread of prompts (the uncertainty map).
"""

from __future__ import annotations

import torch
from torch import nn


class CTDS(nn.Module):
    def __init__(self, embed_dim: int, latent_dim: int, n_ctx: int, text_width: int, hidden: int = 256):
        super().__init__()
        self.n_ctx, self.text_width = n_ctx, text_width
        self.encoder = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, n_ctx * text_width)
        )
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)

    def encode(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit global embeddings (B, D) -> mean and log-variance (B, latent)."""
        mu, logvar = self.encoder(g).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, k: int) -> torch.Tensor:
        """k reparameterised samples (B, k, latent)."""
        eps = torch.randn(mu.shape[0], k, mu.shape[1], device=mu.device, dtype=mu.dtype)
        return mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (..., latent) -> context bias (..., n_ctx, text_width)."""
        return self.decoder(z).unflatten(-1, (self.n_ctx, self.text_width))

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|g) || N(0, I)), summed over the latent, averaged over the batch."""
        return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
