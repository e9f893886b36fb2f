"""Routing statistics across images: how SA-MoE spreads its experts over a batch, a class, a dataset.

The entropy of one image's routing weights w (E experts, summing to 1) is -sum(w * ln w) in nats: 0 when
one expert takes everything, ln E for uniform routing. A class's summary is the mean of its images'
weights and the mean of their entropies (not the entropy of the mean: a class whose images each pick
one expert, a different one each, has a low mean entropy and a flat mean routing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError


@dataclass(frozen=True)
class RoutingSummary:
    """Routing of a group of images."""

    images: int
    mean_weights: np.ndarray  # (E,) mean routing weight of each expert, sums to 1
    entropy: float  # mean per-image routing entropy, nats
    max_entropy: float  # ln E: the entropy of uniform routing

    @property
    def normalized_entropy(self) -> float:
        """entropy / ln E in [0, 1]: 1 = uniform routing, 0 = one expert per image."""
        return self.entropy / self.max_entropy if self.max_entropy > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "mean_weights": [round(float(w), 6) for w in self.mean_weights],
            "entropy": round(self.entropy, 6),
            "normalized_entropy": round(self.normalized_entropy, 6),
        }


def _weights(weights) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ArgumentError(f"need routing weights of shape (images, experts), got {w.shape}")
    if not np.isfinite(w).all() or (w < -1e-6).any():
        raise ArgumentError("routing weights must be finite and non-negative")
    return w


def routing_entropy(weights) -> np.ndarray:
    """Per-image routing entropy in nats: (N, E) weights -> (N,)."""
    w = np.clip(_weights(weights), 0.0, None)
    w = w / w.sum(1, keepdims=True).clip(1e-12)
    return -(w * np.log(np.where(w > 0, w, 1.0))).sum(1)


def summarize_routing(weights) -> RoutingSummary:
    """One summary of (N, E) routing weights."""
    w = _weights(weights)
    return RoutingSummary(
        images=w.shape[0],
        mean_weights=w.mean(0),
        entropy=float(routing_entropy(w).mean()),
        max_entropy=float(np.log(w.shape[1])),
    )


def routing_by_class(weights, class_names: Sequence[str]) -> dict[str, RoutingSummary]:
    """A summary per class name, in the order the names first appear; (N, E) weights, N names."""
    w = _weights(weights)
    if len(class_names) != w.shape[0]:
        raise ArgumentError(f"{w.shape[0]} routing rows but {len(class_names)} class names")
    names = np.asarray(class_names, dtype=object)
    return {c: summarize_routing(w[names == c]) for c in dict.fromkeys(class_names)}
