"""The dtype vocabulary: the one spelling of compute precisions for the API, the CLI, the app and training."""

from __future__ import annotations

import torch

from .errors import WMoEError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's own names, accepted too


class PrecisionError(WMoEError, ValueError):
    """A precision name outside `DTYPES`."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A name from `DTYPES` (or torch's own name), a torch dtype, or None (fp32) -> a torch dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise PrecisionError(f"unsupported dtype {dtype}; choose one of {sorted(DTYPES)}")
        return dtype
    name = ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise PrecisionError(f"unknown precision {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The vocabulary's name of a torch dtype (for logs, results and the app)."""
    return next(name for name, d in DTYPES.items() if d == dtype)


def full_precision(device: torch.device | str):
    """Autocast switched off for a block: float32 tensors stay float32 through its matmuls and convolutions.

    Under autocast `x.float() @ y.float()` still runs in bf16/fp16; the small heads whose logits are
    divided by a temperature (0.07) compute inside this, at a negligible cost next to the backbone.
    """
    return torch.autocast(torch.device(device).type, enabled=False)


def autocast(device: torch.device | str, dtype: torch.dtype):
    """Autocast to `dtype` on `device`'s type, switched off for float32: the one way every pass (detector,
    training, evaluation, feature cache, benchmarks) enters its compute precision."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
