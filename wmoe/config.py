"""WMoEConfig: every choice of the model, as data saved beside the weights (config.json).

paper: the three modules CTDS, WCMA and SA-MoE exist and can be switched; Haar wavelets.
ours: the numbers (layers, prompt length, latent size, experts, temperature, smoothing).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import WMoEError

CONFIG_NAME = "config.json"
DEFAULT_CLASS = "object"  # the class name used when the user gives none
FORMAT_VERSION = 1


class ConfigError(WMoEError, ValueError):
    """A config.json that does not describe a WMoE-CLIP model we can build."""


@dataclass
class WMoEConfig:
    """All settings of a WMoE-CLIP model. `WMoEConfig()` is the real model; `tiny()` is for tests."""

    backbone: str = "ViT-L-14-336"  # open_clip model name (or a config in wmoe/model_configs)
    pretrained: str | None = "openai"  # open_clip pretrained tag; None = random backbone weights
    backbone_weights: str | None = None  # local weights file, overrides the tag (also WMOE_BACKBONE_WEIGHTS)
    image_size: int = 518
    layers: tuple[int, ...] = (6, 12, 18, 24)  # 1-based transformer blocks whose patch tokens we tap
    n_ctx: int = 12  # learnable context tokens per prompt; 0 = fixed text prompts
    normal_template: str = "{}"
    abnormal_template: str = "damaged {}"
    latent_dim: int = 32  # CTDS VAE latent size
    wavelet: str = "haar"
    num_experts: int = 4
    top_k: int = 0  # 0 = dense routing, else keep the k largest routing weights
    temperature: float = 0.07
    smoothing_sigma: float = 4.0  # Gaussian sigma in pixels of the model input; 0 = off
    moe_score_weight: float = 0.5  # image score = (1 - w) * CLS-vs-text + w * MoE
    use_ctds: bool = True
    use_wcma: bool = True
    use_moe: bool = True
    use_projection: bool = True
    seed: int = 0  # initialisation seed of the learnable parts (and of a random backbone)

    def __post_init__(self):
        self.layers = tuple(int(x) for x in self.layers)
        if not self.layers or min(self.layers) < 1:
            raise ConfigError(f"layers must be 1-based block indices, got {self.layers}")
        if self.n_ctx < 0 or self.num_experts < 1 or self.latent_dim < 1:
            raise ConfigError("n_ctx must be >= 0, num_experts and latent_dim >= 1")
        if self.use_ctds and self.n_ctx == 0:
            raise ConfigError("CTDS conditions the learnable context tokens: use_ctds needs n_ctx > 0")
        if not 0 <= self.top_k <= self.num_experts:
            raise ConfigError(f"top_k must be in 0..num_experts ({self.num_experts}), got {self.top_k}")
        for name in ("normal_template", "abnormal_template"):
            if getattr(self, name).count("{}") != 1:
                raise ConfigError(
                    f"{name} must contain '{{}}' once (the class name), got {getattr(self, name)!r}"
                )
        if not 0.0 <= self.moe_score_weight <= 1.0:
            raise ConfigError("moe_score_weight must be in [0, 1]")

    @classmethod
    def tiny(cls, **overrides) -> WMoEConfig:
        """A tiny random backbone (wmoe/model_configs/wmoe-tiny.json) that builds offline in ~0.1 s."""
        base = dict(
            backbone="wmoe-tiny",
            pretrained=None,
            image_size=104,
            layers=(1, 2, 3, 4),
            n_ctx=4,
            latent_dim=8,
            smoothing_sigma=1.0,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def baseline(cls, **overrides) -> WMoEConfig:
        """Training-free CLIP: fixed natural-language prompts, every learned module off."""
        base = dict(
            n_ctx=0,
            normal_template="a photo of a flawless {}.",
            abnormal_template="a photo of a damaged {}.",
            use_ctds=False,
            use_wcma=False,
            use_moe=False,
            use_projection=False,
        )
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> WMoEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> WMoEConfig:
        """Strict: unknown or missing fields are errors that name the source, never guessed."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown fields {unknown}")
            if missing:
                parts.append(f"missing fields {missing}")
            raise ConfigError(f"{source}: {' and '.join(parts)}; is it a WMoE-CLIP config of this version?")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: {e}") from e

    def to_json(self, info: dict | None = None) -> str:
        """The text of config.json: the config and an `info` block (training metadata)."""
        return (
            json.dumps(
                {"wmoe_format": FORMAT_VERSION, "config": self.to_dict(), "info": info or {}}, indent=2
            )
            + "\n"
        )

    @classmethod
    def load(cls, path: str | Path) -> tuple[WMoEConfig, dict]:
        """Read config.json; returns the config and its `info` block (training metadata)."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a readable JSON file ({e})") from e
        if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
            raise ConfigError(
                f"{path}: expected {{'wmoe_format', 'config', 'info'}}, got another JSON layout"
            )
        if payload.get("wmoe_format") != FORMAT_VERSION:
            raise ConfigError(
                f"{path}: wmoe_format {payload.get('wmoe_format')!r}, this version reads {FORMAT_VERSION}"
            )
        return cls.from_dict(payload["config"], source=str(path)), dict(payload.get("info") or {})
