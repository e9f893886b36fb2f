"""Image input: any reasonable picture in, an RGB PIL image or a clear ImageError out; CLIP tensors.

One path shared by inference and training, so the model always sees the same preprocessing:
resize (squash, never crop, so the map aligns with the whole image) and CLIP normalisation.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import WMoEError

MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs, memory)

ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | Image.Image | np.ndarray
"""What every image argument accepts: a file path, the file's bytes, a PIL image, or an (H, W[, C]) array."""


class ImageError(WMoEError, ValueError):
    """An input that is not a usable image; the message says what is wrong."""


def load_image(source: ImageInput) -> Image.Image:
    """A path, bytes, PIL image or numpy array -> RGB PIL image (EXIF orientation applied)."""
    if isinstance(source, Image.Image):
        return _to_rgb(source, "the image")
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray)):
        return _open(io.BytesIO(source), "the uploaded bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        with open(path, "rb") as f:
            return _open(io.BytesIO(f.read()), str(path))
    raise ImageError(
        f"unsupported input type {type(source).__name__}: give a path, bytes, PIL image or numpy array"
    )


def _open(buffer: io.BytesIO, name: str) -> Image.Image:
    if buffer.getbuffer().nbytes == 0:
        raise ImageError(f"{name}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # we refuse oversized images ourselves, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(buffer)
        with im:
            _check_size(im.size, name)
            im.seek(0)  # animated formats: the first frame
            im.load()
            return _to_rgb(im, name)
    except ImageError:  # already says what is wrong (e.g. too many pixels): not "damaged"
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e}); the limit is {MAX_PIXELS:,} pixels") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name}: not an image file that can be read (PNG, JPEG, TIFF, BMP, GIF, WebP...)"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: the image data is damaged or truncated ({e})") from e


def _check_size(size: tuple[int, int], name: str):
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: the image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {MAX_PIXELS:,}; downscale it first"
        )


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Any PIL mode -> RGB: orientation applied, 16-bit and float scaled, alpha composited on white."""
    _check_size(im.size, name)
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(im))
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def _from_array(a: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays; uint8 as is, other integers and floats scaled to 0..255."""
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        pass
    elif a.ndim != 2:
        raise ImageError(f"array of shape {a.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if a.size == 0:
        raise ImageError(f"array of shape {a.shape} has no pixels")
    _check_size((a.shape[1], a.shape[0]), "the array")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("the array contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"float array values span [{lo:g}, {hi:g}]: expected 0..1 (or 0..255)")
        a = np.clip(a * 255.0 if hi <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        hi = float(a.max())
        a = (
            (a.astype(np.float64) * (255.0 / (65535.0 if hi > 255 else 255.0)))
            .clip(0, 255)
            .round()
            .astype(np.uint8)
        )
    elif a.dtype != np.uint8:
        raise ImageError(f"array dtype {a.dtype} is not an image type")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)), "the array")


PREPROCESSING = (
    "rgb-squash-bicubic-1"  # names what to_tensor does: change it whenever to_tensor changes (it keys
)
# cached features: training/feature_cache.py)


def to_tensor(image: Image.Image, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """RGB PIL image -> CLIP-normalised float tensor (3, size, size); bicubic squash resize."""
    resized = image.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def mask_to_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    """Ground-truth mask -> bool tensor (size, size); nearest resize, threshold at 127 (JPEG masks)."""
    resized = mask.convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy(np.asarray(resized) > 127)
