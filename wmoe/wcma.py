"""WCMA: wavelet cross-modal attention that refines the text embeddings with frequency features.

paper: one-level Haar decomposition of the CLIP patch features into F_L (LL) and F_LH, F_HL, F_HH;
F_H = F_LH + F_HL + F_HH; F_p = F_H * W_h + F_L (W_h learnable, element-wise); the text
embeddings are refined by cross-modal interaction with F_p.
ours: per tapped layer, the two text embeddings attend to F_p (multi-head cross-attention,
pre-norm), added back through a zero-initialised tanh gate so training starts from plain CLIP.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .precision import full_precision

with warnings.catch_warnings():  # pytorch_wavelets imports the deprecated pkg_resources
    warnings.simplefilter("ignore", UserWarning)
    from pytorch_wavelets import DWTForward


class WCMA(nn.Module):
    def __init__(self, dim: int, num_layers: int, wavelet: str = "haar", heads: int = 8):
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.dwt = DWTForward(J=1, wave=wavelet, mode="zero")
        self.w_h = nn.Parameter(torch.ones(num_layers, dim))
        self.norm_text = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.norm_freq = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(num_layers)
        )
        self.gate = nn.Parameter(torch.zeros(num_layers))

    def frequency_features(self, tokens: torch.Tensor, grid: tuple[int, int], layer: int) -> torch.Tensor:
        """Patch tokens (B, N, D) -> F_p (B, N', D) on the half-resolution grid (odd sides padded)."""
        h, w = grid
        x = tokens.transpose(1, 2).unflatten(-1, (h, w))  # (B, D, h, w)
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        low, (high,) = self.dwt(x.float())  # (B, D, h', w'), (B, D, 3, h', w')
        f_p = high.sum(dim=2) * self.w_h[layer][:, None, None] + low
        return f_p.flatten(2).transpose(1, 2).to(tokens.dtype)

    def forward(
        self, text: torch.Tensor, taps: list[torch.Tensor], grid: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Text (B, K, 2, D) and L tapped layers -> L refined text tensors (B, K, 2, D), in float32 whatever
        the autocast around it (the refined text sets the patch-text logits)."""
        B, K = text.shape[:2]
        refined = []
        with full_precision(text.device):
            q_all = text.float().flatten(1, 2)  # (B, 2K, D)
            for layer, tokens in enumerate(taps):
                f_p = self.norm_freq[layer](self.frequency_features(tokens.float(), grid, layer))
                q = self.norm_text[layer](q_all)
                out, _ = self.attn[layer](q, f_p, f_p, need_weights=False)
                refined.append((q_all + torch.tanh(self.gate[layer]) * out).unflatten(1, (K, 2)))
        return refined
