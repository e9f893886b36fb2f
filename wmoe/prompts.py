"""Prompts: learnable context tokens around the class name the user types.

paper: learned prompts (fixed prompts are what the paper improves on).
ours: `[V1..Vn] {normal_template}` and `[W1..Wn] {abnormal_template}` (AnomalyCLIP-style, one
context per state), tokenised once per class name and cached; n_ctx = 0 gives fixed text prompts.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .backbone import Backbone


class PromptLearner(nn.Module):
    def __init__(self, n_ctx: int, templates: tuple[str, str], backbone: Backbone):
        super().__init__()
        self.n_ctx, self.templates = n_ctx, templates
        self.ctx = nn.Parameter(torch.randn(2, n_ctx, backbone.text_width) * 0.02) if n_ctx else None
        self._backbone = [backbone]  # a reference, not a submodule: the backbone is owned by the model
        self._tokens = lru_cache(maxsize=1024)(self._tokenize)

    def _tokenize(self, class_name: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Token ids (2, 77), end-of-text positions (2,), and whether the text was cut to fit."""
        backbone = self._backbone[0]
        placeholder = " ".join(["X"] * self.n_ctx)
        texts = [f"{placeholder} {t.format(class_name)}".strip() for t in self.templates]
        ids = backbone.tokenizer(texts)
        lengths = (
            [len(backbone.tokenizer.encode(t)) + 2 for t in texts]
            if hasattr(backbone.tokenizer, "encode")
            else [0]
        )
        return ids, ids.argmax(dim=-1), max(lengths) > backbone.context_length

    def truncated(self, class_name: str) -> bool:
        """True when the prompt for `class_name` was cut to the text encoder's context length."""
        return self._tokens(class_name)[2]

    def forward(self, class_names: list[str], ctx_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Text features (B, K, 2, D) for B class names; ctx_bias (B, K, n_ctx, W) from CTDS, or None (K=1)."""
        backbone = self._backbone[0]
        device = backbone.clip.token_embedding.weight.device
        tokens = [self._tokens(name) for name in class_names]
        ids = torch.stack([t[0] for t in tokens]).to(device)  # (B, 2, 77)
        eot = torch.stack([t[1] for t in tokens]).to(device)  # (B, 2)
        T = int(eot.max()) + 1
        x = backbone.embed_tokens(ids[..., :T].flatten(0, 1)).unflatten(0, ids.shape[:2])  # (B, 2, T, W)
        B, K = len(class_names), 1 if ctx_bias is None else ctx_bias.shape[1]
        x = x[:, None].expand(B, K, 2, T, x.shape[-1])
        if self.n_ctx:
            ctx = (
                self.ctx[None, None] + backbone.clip.positional_embedding[1 : 1 + self.n_ctx]
            )  # (1, 1, 2, n, W)
            if ctx_bias is not None:
                ctx = ctx + ctx_bias[:, :, None]
            ctx = ctx.expand(B, K, 2, self.n_ctx, x.shape[-1])
            x = torch.cat([x[..., :1, :], ctx.to(x.dtype), x[..., 1 + self.n_ctx :, :]], dim=-2)
        feats = backbone.encode_text_embeddings(x.flatten(0, 2), eot[:, None].expand(B, K, 2).flatten())
        return feats.unflatten(0, (B, K, 2))
