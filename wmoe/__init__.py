"""WMoE-CLIP: wavelet-enhanced mixture-of-experts prompt learning for zero-shot anomaly detection."""
from .checkpoint import CheckpointError, load_model, push_to_hub, save_pretrained
from .config import ConfigError, WMoEConfig
from .detector import Detector, Prediction
from .hub import WeightsNotFoundError
from .model import WMoECLIP, WMoEOutput
from .preprocess import ImageError

__all__ = ["CheckpointError", "ConfigError", "Detector", "ImageError", "Prediction", "WMoECLIP", "WMoEConfig",
           "WMoEOutput", "WeightsNotFoundError", "load_model", "push_to_hub", "save_pretrained"]
