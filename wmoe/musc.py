"""MuSc: zero-shot anomaly maps from scoring each image's patches against the other images of its batch.

Li et al., ICLR 2024, "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual
Scoring of the Unlabeled Images" (Sec. 3). No training and no prompts: a normal patch finds close
patches in the other, mostly normal, images of the batch; a defect does not. Three steps, each public so
that it can be checked against the authors' implementation (github.com/xrli-U/MuSc) on the same tensors:

- `neighbour_aggregate` (LNAMD, "Local Neighborhood Aggregation with Multiple Degrees"),
- `mutual_scores` (MSM, "Mutual Scoring Mechanism"),
- `rescore` (RsCIN, "Re-scoring with Constrained Image-level Neighborhood").

`score` runs them on the raw block outputs that the shared backbone pass keeps (`BackboneFeatures.raw`),
`encode` gets them from a detector's backbone (each image once), `predictions` turns the scores into
one `Prediction` per image, and `predict_batch` does all three. Where the authors' code does something
the paper does not say, we follow the code (so that published numbers carry over) and say so where it
happens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_CLASS
from .detector import Detector, EncodedBatch, Prediction, detail_size
from .errors import WMoEError
from .features import BackboneFeatures
from .preprocess import ImageInput

METHOD = "MuSc"
RADII = (1, 3, 5)  # aggregation degrees r of LNAMD (the paper's and the code's default)
KS = (1, 2, 3)  # RsCIN neighbourhood sizes: the code's list for MVTec AD (VisA: 1, 8, 9)
INTERVAL = (0.0, 0.3)  # MSM: the fraction [lo, hi) of the sorted per-image distances that is averaged
DISTANCE_BLOCK = 2**24  # patch distances computed at once (64 MB in fp32): bounds MSM's memory
ENCODE_CHUNK = 8  # images per backbone call in `encode`
MIN_RANGE = 1e-2  # smallest batch score range that is stretched to 0..1 (see `normalise`)


class MuScError(WMoEError, ValueError):
    """A batch MuSc cannot score: too few images, tokens not on a square grid, bad parameters."""


def musc_layers(depth: int) -> tuple[int, ...]:
    """The 1-based blocks MuSc scores: the four quarter depths, (6, 12, 18, 24) for ViT-L-14.

    The code's configuration for ViT-L-14 taps blocks 6, 12, 18 and 24 (0-based 5, 11, 17, 23); the paper
    speaks of "several stages" of the ViT. Other depths get the same quarter points.
    """
    return tuple(sorted({max(1, round(depth * q / 4)) for q in range(1, 5)}))


def min_images(lo: float = INTERVAL[0], hi: float = INTERVAL[1]) -> int:
    """The smallest batch for which MSM's interval [int(n lo), int(n hi)) of the n = images - 1 sorted
    distances holds a value (5 for the default [0, 0.3): int(4 * 0.3) = 1)."""
    _check_interval(lo, hi)
    n = 1
    while int(n * hi) - int(n * lo) < 1:
        n += 1
    return n + 1


def require_images(count: int, lo: float = INTERVAL[0], hi: float = INTERVAL[1]):
    """Raise MuScError, naming the minimum, when a batch of `count` images is too small for MSM."""
    need = min_images(lo, hi)
    if count < need:
        raise MuScError(
            f"MuSc scores each image against the other images of its batch: with the interval "
            f"[{lo}, {hi}) it needs at least {need} images of one kind of object, got {count}"
        )


def neighbour_aggregate(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD on one layer (Sec. 3, "Local Neighborhood Aggregation with Multiple Degrees"): patch tokens
    (images, patches, channels) on a square grid, no class token -> the same shape, in float32.

    Each image's token map is layer-normalised over its whole (channels, height, width) extent with
    identity affine and eps 1e-5 (the code builds a fresh `torch.nn.LayerNorm` over the map; the paper
    does not say which normalisation), then every patch becomes the per-channel mean of its r x r
    neighbourhood, stride 1. At the borders the code unfolds with zero padding and averages all r * r
    values, padding included, so a corner patch with r = 3 is divided by 9, not 4; we do the same.
    r = 1 is the layer normalisation alone. The L2 normalisation that follows is the caller's
    (`score`), as in the code.
    """
    images, patches, channels = tokens.shape
    side = math.isqrt(patches)
    if side * side != patches:
        raise MuScError(f"MuSc needs patch tokens on a square grid; got {patches} patches per image")
    if r < 1 or r % 2 == 0:
        raise MuScError(f"the aggregation degree r must be a positive odd number, got {r}")
    x = tokens.float().transpose(1, 2).reshape(images, channels, side, side)
    x = F.layer_norm(x, (channels, side, side))
    if r > 1:
        x = F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=True)
    return x.flatten(2).transpose(1, 2).contiguous()  # MSM reads each image's tokens as rows


def mutual_scores(Z: torch.Tensor, lo: float = INTERVAL[0], hi: float = INTERVAL[1]) -> torch.Tensor:
    """MSM on one layer (Sec. 3, "Mutual Scoring Mechanism"): (images, patches, channels) -> (images,
    patches) anomaly scores.

    For each patch of image i and each other image j, the Euclidean distance to j's nearest patch; those
    images - 1 distances sorted ascending, and the mean of positions [int(n lo), int(n hi)), n = images - 1
    (the code's interval average: its two `topk` calls keep exactly these positions; lo and hi are
    fractions here, the code also reads values >= 1 as counts). Distances are computed block by block,
    at most `DISTANCE_BLOCK` at once, and each pair of images once: the nearest-patch distances of i to j
    and of j to i are the row and column minima of the same block. So memory is the input, the
    (images, patches, images) table of minima and one block, whatever the batch size.
    """
    images, patches, channels = Z.shape
    require_images(images, lo, hi)
    Z = Z.float()
    norms = torch.linalg.vector_norm(Z, dim=-1).square_()  # (images, patches), no copy of Z
    nearest = Z.new_full((images, patches, images), math.inf)  # squared, i's patches to image j
    per_block = max(1, DISTANCE_BLOCK // (patches * patches))
    for i in range(images - 1):
        for j0 in range(i + 1, images, per_block):
            j1 = min(images, j0 + per_block)
            d2 = Z[i] @ Z[j0:j1].reshape(-1, channels).T  # (patches, (j1 - j0) * patches)
            d2.mul_(-2).add_(norms[i][:, None]).add_(norms[j0:j1].reshape(1, -1))
            d2 = d2.view(patches, j1 - j0, patches)
            nearest[i, :, j0:j1] = d2.amin(2)
            nearest[j0:j1, :, i] = d2.amin(0)
            del d2  # one block alive at a time
    n = images - 1  # the inf of image i itself is never among the n * hi smallest
    smallest = nearest.clamp_min_(0).sqrt_().topk(int(n * hi), dim=-1, largest=False, sorted=True).values
    return smallest[..., int(n * lo) :].mean(-1)


def rescore(scores: torch.Tensor, embeddings: torch.Tensor, ks: Sequence[int] = KS) -> torch.Tensor:
    """RsCIN (Sec. 3, "Re-scoring with Constrained Image-level Neighborhood"): image scores (images,) and
    global image embeddings (images, dim) -> re-scored (images,).

    As the code does: scores min-max normalised over the batch (a batch of equal scores gives zeros, where
    the code divides 0 by 0); similarities are the dot products of the L2-normalised embeddings (the code
    normalises them before the call); for each k, every image's new score is the mean of the scores of its
    k most similar images (itself included) weighted by similarity; the results averaged over `ks`.
    """
    images = scores.shape[0]
    if embeddings.shape[0] != images:
        raise MuScError(f"{images} scores but {embeddings.shape[0]} image embeddings")
    if not ks or min(ks) < 1 or max(ks) > images:
        raise MuScError(f"RsCIN's k values must lie in 1..{images} (the batch), got {list(ks)}")
    s = scores.double()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    e = F.normalize(embeddings.double(), dim=-1)
    similarity = e @ e.T
    out = []
    for k in ks:
        weights, neighbours = similarity.topk(k, dim=1)
        out.append((weights * s[neighbours]).sum(1) / weights.sum(1))
    return torch.stack(out).mean(0)


@dataclass(frozen=True)
class MuScScores:
    """MuSc's raw scores of a batch (distances between L2-normalised tokens, in [0, 2])."""

    maps: torch.Tensor  # (B, h, w) the mean over layers and radii
    layer_maps: torch.Tensor  # (B, L, h, w) each layer's mean over radii
    scores: torch.Tensor  # (B,) each map's maximum at the model input size, then re-scored (RsCIN)
    max_scores: torch.Tensor  # (B,) the maxima before re-scoring
    layers: tuple[int, ...]


def score(
    features: BackboneFeatures,
    layers: Sequence[int],
    *,
    radii: Sequence[int] = RADII,
    lo: float = INTERVAL[0],
    hi: float = INTERVAL[1],
    ks: Sequence[int] = KS,
) -> MuScScores:
    """MuSc on the raw block outputs of a batch (Sec. 3): LNAMD, L2 normalisation and MSM per layer and r;
    the map is the mean over layers and radii; image score = the map's maximum after bilinear upsampling
    to the model input with `align_corners=True` (as the code does before taking the maximum), re-scored
    by RsCIN with the global image embeddings of the same pass.

    RsCIN's min-max normalisation is undone afterwards (its weights sum to 1, so this gives the weighted
    mean of the raw maxima, with the same ranking): scores stay on the maps' scale.
    """
    images = len(features)
    require_images(images, lo, hi)
    h, w = features.grid
    per_layer = []
    for tokens in features.raw_taps(layers):
        total = 0
        for r in radii:
            Z = F.normalize(neighbour_aggregate(tokens, r), dim=-1)
            total = total + mutual_scores(Z, lo, hi)
            del Z
        per_layer.append(total / len(radii))
    layer_maps = torch.stack(per_layer, 1).view(images, len(per_layer), h, w)
    maps = layer_maps.mean(1)
    max_scores = torch.stack(
        [
            F.interpolate(m[None, None], size=features.image_size, mode="bilinear", align_corners=True).max()
            for m in maps
        ]
    )
    low, high = max_scores.min(), max_scores.max()
    scores = low + rescore(max_scores, features.embedding, ks).to(max_scores) * (high - low)
    return MuScScores(maps, layer_maps, scores, max_scores, tuple(layers))


def normalise(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Raw scores onto the fixed 0..1 colour scale of the whole batch: (values - low) / (high - low), with
    low and high the smallest and largest value of all the batch's maps.

    One scale for the batch (not per image, which would make every image's worst patch red) is what the
    scores mean: how much a patch differs from the other images. A range below `MIN_RANGE` (distances of
    unit vectors lie in [0, 2]) is not stretched: a batch of near-copies stays near 0 instead of
    amplifying rounding noise (the code's per-batch min-max divides by zero there).
    """
    return ((values - low) / (high - low).clamp_min(MIN_RANGE)).clamp_(0.0, 1.0)


@torch.inference_mode()
def predictions(
    encoded: EncodedBatch,
    class_name: str = DEFAULT_CLASS,
    *,
    radii: Sequence[int] = RADII,
    lo: float = INTERVAL[0],
    hi: float = INTERVAL[1],
    ks: Sequence[int] = KS,
) -> list[Prediction]:
    """One `Prediction` per image of a batch from `encode` (or any pass with `raw=musc_layers(...)`).

    anomaly_map: the batch-normalised map (`normalise`), upsampled to the image's size with
    `align_corners=True` as the code does; score: the re-scored maximum on the same scale; layer_maps:
    each layer's map on the same scale; cls_score: the maximum before re-scoring. MuSc uses no class
    name; `class_name` is only recorded.
    """
    t0 = time.perf_counter()
    layers = musc_layers(encoded.backbone.depth)
    raw = score(encoded.features, layers, radii=radii, lo=lo, hi=hi, ks=ks)
    low, high = raw.maps.min(), raw.maps.max()
    maps, layer_maps = normalise(raw.maps, low, high), normalise(raw.layer_maps, low, high)
    scores, max_scores = normalise(raw.scores, low, high), normalise(raw.max_scores, low, high)
    timings = {**encoded.timings, "musc": time.perf_counter() - t0}

    def resize(m: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        up = F.interpolate(m[None].float(), size=size, mode="bilinear", align_corners=True)[0]
        return np.clip(up.cpu().numpy(), 0.0, 1.0)

    return [
        Prediction(
            score=float(scores[i]),
            anomaly_map=resize(maps[i][None], size)[0],
            layer_maps=resize(layer_maps[i], detail_size(size)),
            cls_score=float(max_scores[i]),
            class_name=class_name,
            timings=dict(timings),
            method=METHOD,
        )
        for i, size in enumerate(encoded.sizes)
    ]


def encode(detector: Detector, images: Sequence[ImageInput], chunk: int = ENCODE_CHUNK) -> EncodedBatch:
    """What MuSc scores, from one pass of the detector's backbone per image, `chunk` images per call (the
    pass's activations stay those of `chunk` images however large the batch): the raw block outputs of
    `musc_layers` and the global embeddings, nothing else (no tapped layers)."""
    if chunk < 1:
        raise MuScError(f"chunk must be at least 1 image, got {chunk}")
    raw = musc_layers(detector.model.backbone.depth)
    parts = [detector.encode(images[i : i + chunk], layers=(), raw=raw) for i in range(0, len(images), chunk)]
    timings: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    first = parts[0]
    features = BackboneFeatures.cat([part.features for part in parts])
    sizes = [size for part in parts for size in part.sizes]
    return EncodedBatch(features, sizes, first.backbone, first.device, first.dtype, timings)


def predict_batch(
    detector: Detector,
    images: Sequence[ImageInput],
    class_name: str = DEFAULT_CLASS,
    *,
    chunk: int = ENCODE_CHUNK,
    **options,
) -> list[Prediction]:
    """MuSc on images of one kind of object: `encode` (each image through the backbone once, `chunk` at a
    time), then `predictions`; `options` as in `predictions`. Too few images fail before the backbone."""
    require_images(len(images), options.get("lo", INTERVAL[0]), options.get("hi", INTERVAL[1]))
    return predictions(encode(detector, images, chunk), class_name, **options)


def _check_interval(lo: float, hi: float):
    if not 0.0 <= lo < hi <= 1.0:
        raise MuScError(
            f"MSM's interval needs 0 <= lo < hi <= 1 (fractions of the other images), got [{lo}, {hi})"
        )
