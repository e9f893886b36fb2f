"""The training loss: image BCE + lambda * per-layer (focal + Dice) + beta * KL + gamma * balance.

paper: the paper's loss is not available. ours (docs/design.md): binary cross-entropy on the image score;
for every tapped layer, focal loss on the abnormal probability plus Dice(abnormal, mask) and
Dice(normal, 1 - mask) (summed over layers, the AnomalyCLIP convention); the CTDS KL term and
the SA-MoE load-balancing term. Images without a pixel mask contribute the image term only.
Always computed in float32 outside autocast, so bf16 training does not lose the small terms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .ctds import CTDS
from .errors import ArgumentError
from .model import WMoEOutput
from .samoe import SAMoE

EPS = 1e-6  # probabilities are clamped to [EPS, 1 - EPS] before any log


@dataclass
class LossWeights:
    """The weights of the loss terms (training config `loss:`)."""

    pixel: float = 1.0  # lambda: per-layer focal + Dice terms
    kl: float = 1e-3  # beta: CTDS KL divergence
    balance: float = 0.01  # gamma: SA-MoE load balancing
    focal_gamma: float = 2.0  # focusing exponent of the focal loss
    dice_smooth: float = 1.0  # added to numerator and denominator of every Dice ratio

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ArgumentError(f"loss weight {name} must be a number >= 0, got {value!r}")


def focal_loss(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean binary focal loss -(1 - p_t)^gamma log(p_t) of probabilities (N, ...) against 0/1 targets."""
    p = prob.clamp(EPS, 1 - EPS)
    p_t = torch.where(target, p, 1 - p)
    return (-(1 - p_t).pow(gamma) * p_t.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the first axis of 1 - (2 |p m| + s) / (|p| + |m| + s), each item flattened."""
    p, m = prob.flatten(1), target.flatten(1).to(prob.dtype)
    return (1 - (2 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)).mean()


def wmoe_loss(
    out: WMoEOutput,
    labels: torch.Tensor,
    masks: torch.Tensor,
    has_mask: torch.Tensor,
    weights: LossWeights | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (detached) for one batch.

    labels (B,) 0/1 image labels; masks (B, H, W) bool at the model input size; has_mask (B,) bool,
    False for images whose pixels are not annotated (they get the image term only).
    """
    w = weights or LossWeights()
    device = out.image_score.device
    with torch.autocast(device.type, enabled=False):
        score = out.image_score.float().clamp(EPS, 1 - EPS)
        image = F.binary_cross_entropy(score, labels.float())
        zero = torch.zeros((), device=device)
        # the maps enter every step, at zero weight when no image has a mask: every head then takes part in
        # every step (without SA-MoE the image term alone would leave WCMA and the patch projection out, and
        # DistributedDataParallel would wait for their gradients)
        focal = dice = 0.0 * out.layer_maps.float().sum()
        if bool(has_mask.any()):
            maps = out.layer_maps[has_mask].float()  # (M, L, H, W) abnormal probability per layer
            target = masks[has_mask].bool()
            if maps.shape[-2:] != target.shape[-2:]:
                raise ArgumentError(
                    f"masks are {tuple(target.shape[-2:])} but the maps are {tuple(maps.shape[-2:])}: "
                    "load masks at the model's input size"
                )
            for layer in range(maps.shape[1]):
                p = maps[:, layer]
                focal = focal + focal_loss(p, target, w.focal_gamma)
                dice = dice + dice_loss(p, target, w.dice_smooth) + dice_loss(1 - p, ~target, w.dice_smooth)
        kl = CTDS.kl(out.mu.float(), out.logvar.float()) if out.mu is not None else zero
        balance = SAMoE.balance_loss(out.routing_weights.float()) if out.routing_weights is not None else zero
        total = image + w.pixel * (focal + dice) + w.kl * kl + w.balance * balance
    parts = {"image": image, "focal": focal, "dice": dice, "kl": kl, "balance": balance, "total": total}
    return total, {k: v.detach() for k, v in parts.items()}
