"""WMoE-CLIP: wavelet-enhanced mixture-of-experts prompt learning for zero-shot anomaly detection.

Names are imported on first use, so `wmoe.metrics` loads without torch.
"""

from importlib import import_module

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "load_model": "checkpoint",
    "push_to_hub": "checkpoint",
    "save_pretrained": "checkpoint",
    "ConfigError": "config",
    "WMoEConfig": "config",
    "Detector": "detector",
    "Prediction": "detector",
    "WeightsNotFoundError": "hub",
    "WMoECLIP": "model",
    "WMoEOutput": "model",
    "ImageError": "preprocess",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'wmoe' has no attribute {name!r}")
