"""BackboneFeatures: what the frozen backbone computes for a batch, the input of the learned heads.

The backbone is nearly all of the cost, so these features are computed once per image and shared:
by the variants of Compare, by several detectors on one backbone, and by every epoch of training
(through the feature cache). Patch tokens are keyed by their 1-based block index, so one pass that
taps the union of several models' layers serves all of them. Methods that score the raw block outputs
(MuSc, `wmoe.musc`) find them in `raw`, from the same pass, only for the blocks asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import WMoEError


class FeatureMismatchError(WMoEError, ValueError):
    """Features that cannot serve this model: another backbone, missing layers, another device or dtype."""


@dataclass(frozen=True)
class BackboneFeatures:
    """The global embedding and the tapped patch tokens of a batch, in CLIP's joint space (and, for the
    blocks asked for, the raw block outputs)."""

    embedding: torch.Tensor  # (B, D) global image embedding, not normalised
    patches: dict[int, torch.Tensor]  # 1-based block index -> (B, N, D) patch tokens after ln_post and proj
    grid: tuple[int, int]  # patch grid (h, w), N = h * w
    image_size: tuple[int, int]  # (H, W) of the model input
    raw: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> (B, N, W) before ln_post and proj

    def __len__(self) -> int:
        return self.embedding.shape[0]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.patches))

    def taps(self, layers: Sequence[int]) -> list[torch.Tensor]:
        """The patch tokens of these blocks, in this order; a clear error when one was not tapped."""
        have = f"these features tap blocks {list(self.layers)}; the model needs {list(layers)}"
        return _pick(self.patches, layers, have, "encode with the union of the layers every model needs")

    def raw_taps(self, layers: Sequence[int]) -> list[torch.Tensor]:
        """The raw block outputs of these blocks, in this order; a clear error when one was not kept."""
        have = f"these features keep the raw outputs of blocks {sorted(self.raw)}"
        have += f"; the method needs {list(layers)}"
        return _pick(self.raw, layers, have, "encode with raw=... naming them")

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BackboneFeatures:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return BackboneFeatures(
            move(self.embedding),
            {k: move(v) for k, v in self.patches.items()},
            self.grid,
            self.image_size,
            {k: move(v) for k, v in self.raw.items()},
        )

    def select(self, layers: Iterable[int]) -> BackboneFeatures:
        """Only these blocks' patch tokens and raw outputs (e.g. what one model needs, before storing)."""
        layers = list(layers)
        return BackboneFeatures(
            self.embedding,
            dict(zip(layers, self.taps(layers), strict=True)),
            self.grid,
            self.image_size,
            {k: v for k, v in self.raw.items() if k in layers},
        )

    def item(self, i: int) -> BackboneFeatures:
        """Image i alone, as a batch of one."""
        return BackboneFeatures(
            self.embedding[i : i + 1],
            {k: v[i : i + 1] for k, v in self.patches.items()},
            self.grid,
            self.image_size,
            {k: v[i : i + 1] for k, v in self.raw.items()},
        )

    @staticmethod
    def cat(parts: Sequence[BackboneFeatures]) -> BackboneFeatures:
        """Batches with the same layers, grid and input size, stacked into one."""
        first = parts[0]
        shape = lambda f: (f.layers, sorted(f.raw), f.grid, f.image_size)  # noqa: E731
        for p in parts[1:]:
            if shape(p) != shape(first):
                raise FeatureMismatchError(
                    "cannot stack features of (layers, raw blocks, grid, input) "
                    f"{shape(p)} with {shape(first)}"
                )
        return BackboneFeatures(
            torch.cat([p.embedding for p in parts]),
            {k: torch.cat([p.patches[k] for p in parts]) for k in first.layers},
            first.grid,
            first.image_size,
            {k: torch.cat([p.raw[k] for p in parts]) for k in first.raw},
        )


def _pick(store: dict[int, torch.Tensor], layers: Sequence[int], have: str, fix: str) -> list[torch.Tensor]:
    """store[k] for each of `layers`, in order, or FeatureMismatchError naming what is missing and the fix."""
    missing = sorted(set(layers) - set(store))
    if missing:
        raise FeatureMismatchError(f"{have} (missing {missing}): {fix}")
    return [store[k] for k in layers]
