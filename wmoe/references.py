"""Reference images: a few normal images of the same part turn CLIP patch features into a detector.

ours (the few-shot protocol of WinCLIP+, APRIL-GAN and AnomalyCLIP, not a rule of the paper): every
patch token of the image is compared, layer by layer (the detector's tapped layers, raw backbone
tokens in CLIP's joint space), with every patch token of every reference image. Per layer the
distance of a patch is (1 - s) / 2 with s its largest cosine similarity to any reference patch, so
it is 0 where the references hold an identical patch and at most 1; the reference map is the mean
over the layers, on the patch grid, then resized (bilinear) to the image's size.

Combined with the zero-shot output (`combine`, the one place of this rule, used by the Detector and by
`training.evaluate --shots`): for a trained model `anomaly_map = (zero_shot_map + reference_map) / 2` and
`score = (zero_shot_score + reference_score) / 2`, the reference score being the largest patch distance
(the reference map's maximum on the patch grid); for a model never trained (the training-free plain-CLIP
baseline, or a checkpoint marked untrained) the reference map and score alone, since that zero-shot map is
measured below chance (pixel AUROC 38.4 on MVTec AD for plain CLIP, AnomalyCLIP Table 1) and averaging
would dilute the reference map.

The references' features are computed once per reference set (their decoded pixels, the backbone,
layers, device and precision) and kept in a small cache (`ReferenceCache`, `MAX_CACHED_SETS` sets),
so a second request or a redraw with the same references pays no backbone pass for them.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .features import BackboneFeatures
from .preprocess import ImageError, ImageInput, load_image

MAX_REFERENCES = 4  # normal images per request: 4 x 1369 patches x 4 layers at ViT-L/518 is about 67 MB fp32
MAX_CACHED_SETS = 4
SIMILARITY_CHUNK = 1024  # image patches compared at once (bounds the similarity matrix)


class ReferenceImageError(ImageError):
    """References that cannot be used: too many, or one that cannot be read (the message says which)."""


@dataclass(frozen=True)
class ReferenceFeatures:
    """The unit-norm patch tokens of a reference set, per tapped layer: {layer: (K * N, D)}."""

    patches: dict[int, torch.Tensor]
    count: int  # K reference images

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.patches))


def load_references(references: Sequence[ImageInput]) -> list[Image.Image]:
    """Decode the references (paths, bytes, PIL images, arrays), each error naming which reference it is."""
    if isinstance(references, (str, bytes, bytearray, Image.Image, np.ndarray)):
        raise ReferenceImageError("references must be a list of images, not a single image")
    references = list(references)
    if len(references) > MAX_REFERENCES:
        raise ReferenceImageError(
            f"too many reference images ({len(references)}): at most {MAX_REFERENCES} are allowed per request"
        )
    images = []
    for i, ref in enumerate(references, 1):
        try:
            images.append(load_image(ref))
        except ImageError as e:
            raise ReferenceImageError(f"reference {i}: {e}") from None
    return images


def content_key(images: Sequence[Image.Image]) -> str:
    """A hash of the decoded references (size and RGB pixels, in order): equal for equal pixels whatever
    the file they came from."""
    digest = hashlib.sha256()
    for im in images:
        rgb = im.convert("RGB")
        digest.update(f"{rgb.width}x{rgb.height}|".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()


def bank(features: BackboneFeatures, layers: Sequence[int]) -> ReferenceFeatures:
    """The references' backbone features as the bank `reference_map` compares against."""
    patches = {
        k: F.normalize(t.float(), dim=-1).reshape(-1, t.shape[-1])
        for k, t in zip(layers, features.taps(layers), strict=True)
    }
    return ReferenceFeatures(patches, len(features))


def reference_map(features: BackboneFeatures, refs: ReferenceFeatures, layers: Sequence[int]) -> torch.Tensor:
    """(B, h, w) distance of each image patch to its nearest reference patch, mean over `layers`, in [0, 1]."""
    B, (h, w) = len(features), features.grid
    total = torch.zeros(B, h * w, device=features.embedding.device)
    for layer, tokens in zip(layers, features.taps(layers), strict=True):
        bank = refs.patches[layer]
        unit = F.normalize(tokens.float(), dim=-1)
        for start in range(0, unit.shape[1], SIMILARITY_CHUNK):
            part = unit[:, start : start + SIMILARITY_CHUNK]
            best = (part @ bank.float().T).amax(-1)  # (B, chunk) largest cosine similarity
            total[:, start : start + SIMILARITY_CHUNK] += ((1 - best) / 2).clamp(0, 1)
    return (total / len(layers)).unflatten(-1, (h, w))


def combine(
    zero_shot_map: torch.Tensor, zero_shot_score: torch.Tensor, grid: torch.Tensor, *, trained: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The zero-shot part and the reference part of a batch as one result.

    zero_shot_map (B, H, W) and zero_shot_score (B,): the model's output at any size; grid (B, h, w):
    `reference_map`'s output on the patch grid. Returns (anomaly_map (B, H, W), score (B,), reference map
    (B, H, W): the grid resized bilinearly to (H, W) and clipped to [0, 1], reference score (B,): the grid's
    maximum, which no resizing changes). trained: whether the zero-shot part was ever trained. A trained
    one is averaged with the reference part (map and score); an untrained one (the plain-CLIP baseline
    scores below chance) is left out, so the reference map and score are returned alone.
    """
    size = tuple(zero_shot_map.shape[-2:])
    ref = F.interpolate(grid[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    ref, ref_score = ref.clamp(0, 1), grid.float().flatten(1).amax(1)
    if not trained:
        return ref, ref_score, ref, ref_score
    return (zero_shot_map.float() + ref) / 2, (zero_shot_score.float() + ref_score) / 2, ref, ref_score


def method_name(zero_shot: str, trained: bool) -> str:
    """The name of a result made with reference images, after `combine`: the zero-shot method's own when
    the two parts are averaged, "<method> references alone" when the never-trained part is left out."""
    return zero_shot if trained else f"{zero_shot} references alone"


class ReferenceCache:
    """Reference features by (backbone, layers, device, precision, content), least recently used first
    out; `max_sets` sets at most. Thread-safe; the backbone is held weakly (a dropped one is never matched)."""

    def __init__(self, max_sets: int = MAX_CACHED_SETS):
        self.max_sets = max_sets
        self._entries: OrderedDict[tuple, tuple[weakref.ref, ReferenceFeatures]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, backbone, key: tuple, compute: Callable[[], ReferenceFeatures]) -> ReferenceFeatures:
        full = (id(backbone), *key)
        with self._lock:
            hit = self._entries.get(full)
            if hit is not None and hit[0]() is backbone:
                self._entries.move_to_end(full)
                return hit[1]
        value = compute()
        with self._lock:
            self._entries[full] = (weakref.ref(backbone), value)
            self._entries.move_to_end(full)
            while len(self._entries) > self.max_sets:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


CACHE = ReferenceCache()
