"""WMoECLIP: image -> backbone taps -> prompts (CTDS) -> text refinement (WCMA) -> maps -> SA-MoE.

paper: frozen CLIP with CTDS, WCMA and SA-MoE. ours: the patch projection, the map recipe and the
score combination (see each module's docstring). Every module is a config switch, and can also be
skipped per call (`skip=`) so one loaded model serves the ablations of the Compare view.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .anomaly_map import abnormal_logits, gaussian_blur, upsample
from .backbone import Backbone, seeded
from .config import WMoEConfig
from .ctds import CTDS
from .errors import ArgumentError
from .features import BackboneFeatures, FeatureMismatchError
from .patch_projection import PatchProjection
from .prompts import PromptLearner
from .samoe import SAMoE
from .wcma import WCMA

SKIPPABLE = frozenset({"ctds", "wcma", "projection", "moe", "routing"})


@dataclass
class WMoEOutput:
    """Everything one forward pass computes; maps are at the model's input size unless noted."""

    anomaly_map: torch.Tensor  # (B, H, W) abnormal probability, smoothed
    layer_maps: torch.Tensor  # (B, L, H, W) per tapped layer, unsmoothed
    image_score: torch.Tensor  # (B,) in [0, 1]
    cls_score: torch.Tensor  # (B,) global embedding vs the two prompts
    moe_score: torch.Tensor | None = None  # (B,)
    routing_weights: torch.Tensor | None = None  # (B, E), rows sum to 1
    expert_scores: torch.Tensor | None = None  # (B, E) in [0, 1]
    expert_maps: torch.Tensor | None = None  # (B, E, h, w) attention over the patch grid, rows sum to 1
    mu: torch.Tensor | None = None  # (B, latent) CTDS posterior mean
    logvar: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None  # (B, H, W) std of the map over CTDS samples


class WMoECLIP(nn.Module):
    def __init__(
        self, config: WMoEConfig, backbone: Backbone | None = None, load_backbone_weights: bool = True
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone or Backbone(config, load_weights=load_backbone_weights)
        D, L = self.backbone.embed_dim, len(config.layers)
        latent = config.latent_dim if config.use_ctds else 0
        with seeded(config.seed):  # the heads' initial values depend on config.seed only
            self.prompts = PromptLearner(
                config.n_ctx, (config.normal_template, config.abnormal_template), self.backbone
            )
            self.projection = PatchProjection(D, L) if config.use_projection else None
            self.ctds = (
                CTDS(D, config.latent_dim, config.n_ctx, self.backbone.text_width)
                if config.use_ctds
                else None
            )
            self.wcma = WCMA(D, L, config.wavelet) if config.use_wcma else None
            self.moe = SAMoE(D, L, config.num_experts, latent, config.top_k) if config.use_moe else None

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters WMoE-CLIP learns: everything outside the frozen backbone."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("backbone.")}

    def forward(
        self,
        inputs: torch.Tensor | BackboneFeatures,
        class_names: list[str],
        *,
        skip: frozenset[str] | set[str] = frozenset(),
        ctds_samples: int = 0,
        timings: dict[str, float] | None = None,
    ) -> WMoEOutput:
        """`heads(encode(images))` for images (B, 3, S, S) normalised for CLIP; `heads(features)` for
        features already computed (shared or cached). One class name per image."""
        if isinstance(inputs, torch.Tensor):
            inputs = self.encode(inputs, timings=timings)
        return self.heads(inputs, class_names, skip=skip, ctds_samples=ctds_samples, timings=timings)

    def encode(
        self,
        images: torch.Tensor,
        layers: Sequence[int] | None = None,
        timings: dict[str, float] | None = None,
        raw: Sequence[int] = (),
    ) -> BackboneFeatures:
        """The frozen part: the backbone's features of images (B, 3, S, S).

        layers: blocks to tap (1-based); this model's own by default, or a superset shared with
        other models on the same backbone. raw: blocks whose raw outputs are also kept (`wmoe.musc`).
        """
        clock = _Clock(timings, images.device)
        layers = self.config.layers if layers is None else tuple(sorted(set(layers)))
        raw = tuple(sorted(set(raw)))
        if raw:
            g, taps, kept = self.backbone.encode_image(images, layers, raw=raw)
        else:
            (g, taps), kept = self.backbone.encode_image(images, layers), []
        clock.tick("backbone")
        return BackboneFeatures(
            g,
            dict(zip(layers, taps, strict=True)),
            self.backbone.grid,
            tuple(images.shape[-2:]),
            dict(zip(raw, kept, strict=True)),
        )

    def heads(
        self,
        features: BackboneFeatures,
        class_names: list[str],
        *,
        skip: frozenset[str] | set[str] = frozenset(),
        ctds_samples: int = 0,
        timings: dict[str, float] | None = None,
    ) -> WMoEOutput:
        """The learned part on backbone features; one class name per image.

        skip: modules to bypass in this call ("ctds", "wcma", "projection", "moe", "routing" =
        uniform expert weights). ctds_samples: extra latent samples for the uncertainty map.
        """
        unknown = set(skip) - SKIPPABLE
        if unknown:
            raise ArgumentError(f"unknown modules to skip {sorted(unknown)}; choose from {sorted(SKIPPABLE)}")
        if features.grid != self.backbone.grid:
            raise FeatureMismatchError(
                f"features on a {features.grid} patch grid; this model's backbone has {self.backbone.grid}"
            )
        g = features.embedding
        clock = _Clock(timings, g.device)
        cfg, (H, W) = self.config, features.image_size
        taps = features.taps(cfg.layers)

        if self.projection is not None and "projection" not in skip:
            taps = self.projection(taps)
        g = F.normalize(g, dim=-1)
        mu = logvar = z = bias = None
        use_ctds = self.ctds is not None and "ctds" not in skip
        if use_ctds:
            mu, logvar = self.ctds.encode(g)
            z = CTDS.sample(mu, logvar, 1)[:, 0] if self.training else mu
            latents = z[:, None]
            if ctds_samples > 0:
                latents = torch.cat([latents, CTDS.sample(mu, logvar, ctds_samples)], dim=1)
            bias = self.ctds.decode(latents)
        text = F.normalize(self.prompts(class_names, bias), dim=-1)  # (B, K, 2, D)
        clock.tick("text")

        if self.wcma is not None and "wcma" not in skip:
            layer_text = [F.normalize(t, dim=-1) for t in self.wcma(text, taps, self.backbone.grid)]
        else:
            layer_text = [text] * len(taps)
        clock.tick("wcma")

        unit_taps = [F.normalize(t, dim=-1) for t in taps]
        h, w = self.backbone.grid
        logits = torch.stack(
            [abnormal_logits(t, lt, cfg.temperature) for t, lt in zip(unit_taps, layer_text, strict=True)], 1
        )
        logits = logits.unflatten(-1, (h, w))  # (B, L, K, h, w)
        probs = torch.sigmoid(logits)
        layer_maps = upsample(probs[:, :, 0], (H, W))
        anomaly_map = gaussian_blur(layer_maps.mean(1, keepdim=True), cfg.smoothing_sigma)[:, 0]
        uncertainty = None
        if use_ctds and ctds_samples > 0:
            sampled = gaussian_blur(upsample(probs[:, :, 1:].mean(1), (H, W)), cfg.smoothing_sigma)
            uncertainty = sampled.std(dim=1)
        cls_score = torch.sigmoid(
            (text[:, 0, 1] - text[:, 0, 0]).float().mul(g.float()).sum(-1) / cfg.temperature
        )
        clock.tick("maps")

        out = WMoEOutput(
            anomaly_map=anomaly_map,
            layer_maps=layer_maps,
            image_score=cls_score,
            cls_score=cls_score,
            mu=mu,
            logvar=logvar,
            uncertainty_map=uncertainty,
        )
        if self.moe is not None and "moe" not in skip:
            feats = torch.stack(unit_taps, 0).mean(0)
            moe = self.moe(logits[:, :, 0], feats, g, z, uniform="routing" in skip)
            out.moe_score, out.routing_weights = moe.score, moe.weights
            out.expert_scores, out.expert_maps = moe.expert_scores, moe.expert_maps
            out.image_score = (1 - cfg.moe_score_weight) * cls_score + cfg.moe_score_weight * moe.score
        clock.tick("moe")
        return out


class _Clock:
    """Adds the seconds since the last tick to timings[stage]; synchronises CUDA so times are real."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device):
        self.timings, self.device, self.last = timings, device, time.perf_counter()

    def tick(self, stage: str):
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now
