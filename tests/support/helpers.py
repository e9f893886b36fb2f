"""Helpers shared by the tests (fixtures live in conftest.py)."""

import torch


def randomize_heads(model, seed: int = 0, std: float = 0.05):
    """Give every learned parameter non-trivial values (zero-initialised modules are identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model
