"""WMoE-CLIP: wavelet-enhanced mixture-of-experts prompt learning for zero-shot anomaly detection.

The public API is listed in `__all__`. Names are imported on first use, so torch-free modules
(`wmoe.metrics`, `wmoe.errors`) load without torch; type checkers and IDEs see the real imports below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.2.0"

if TYPE_CHECKING:
    from .checkpoint import CheckpointError, load_model, push_to_hub, save_pretrained
    from .config import DEFAULT_CLASS, ConfigError, WMoEConfig
    from .detector import Detector, EncodedBatch, Prediction
    from .errors import WMoEError
    from .features import BackboneFeatures, FeatureMismatchError
    from .hub import WeightsNotFoundError
    from .model import WMoECLIP, WMoEOutput
    from .musc import MuScError
    from .preprocess import ImageError, ImageInput, load_image
    from .samoe import MoEOutput
    from .winclip import WinCLIP

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "push_to_hub": "checkpoint",
    "save_pretrained": "checkpoint",
    "DEFAULT_CLASS": "config",
    "ConfigError": "config",
    "WMoEConfig": "config",
    "Detector": "detector",
    "EncodedBatch": "detector",
    "BackboneFeatures": "features",
    "FeatureMismatchError": "features",
    "Prediction": "detector",
    "WMoEError": "errors",
    "WeightsNotFoundError": "hub",
    "WMoECLIP": "model",
    "WMoEOutput": "model",
    "ImageError": "preprocess",
    "ImageInput": "preprocess",
    "load_image": "preprocess",
    "MoEOutput": "samoe",
    "WinCLIP": "winclip",
    "MuScError": "musc",
}
__all__ = [  # the public API, spelled out (the test suite checks it against _EXPORTS)
    "DEFAULT_CLASS",
    "BackboneFeatures",
    "CheckpointError",
    "ConfigError",
    "Detector",
    "EncodedBatch",
    "FeatureMismatchError",
    "ImageError",
    "ImageInput",
    "MoEOutput",
    "Prediction",
    "WMoECLIP",
    "WMoEConfig",
    "WMoEError",
    "WMoEOutput",
    "WeightsNotFoundError",
    "__version__",
    "load_image",
    "load_model",
    "push_to_hub",
    "save_pretrained",
    "WinCLIP",
    "MuScError",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'wmoe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
