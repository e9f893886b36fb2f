"""Rendering: heatmap overlays on the user's image at its own resolution, with the region outlined;
the SA-MoE routing chart, routing strips (one image) and the mean routing per class.

Maps are probabilities: by default the colour scale is fixed to 0..1 (a normal image stays cool);
`stretch=True` maps each image's own min..max instead, and callers must label it as such.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from .errors import ArgumentError

OUTLINE_RGB = (255, 255, 255)


def colorize(values: np.ndarray, cmap: str = "jet", stretch: bool = False) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours, on the fixed 0..1 scale unless stretch."""
    v = values.astype(np.float32)
    if stretch:
        lo, hi = float(v.min()), float(v.max())
        v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut[np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8)]


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Boundary pixels of a boolean mask, `width` pixels thick."""
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def overlay(
    image: Image.Image,
    amap: np.ndarray,
    opacity: float = 0.5,
    cmap: str = "jet",
    stretch: bool = False,
    threshold: float | None = None,
) -> Image.Image:
    """Blend the coloured map over the image (same size) and outline where amap >= threshold."""
    if amap.shape != (image.height, image.width):
        raise ArgumentError(f"map {amap.shape} and image {image.height}x{image.width} differ in size")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = (1 - opacity) * base + opacity * colorize(amap, cmap, stretch).astype(np.float32)
    out = out.round().astype(np.uint8)
    if threshold is not None:
        width = max(1, round(max(image.size) / 256))
        out[outline(amap >= threshold, width)] = OUTLINE_RGB
    return Image.fromarray(out)


def map_to_png16(amap: np.ndarray) -> Image.Image:
    """A [0, 1] map as a 16-bit grayscale PNG image (0..65535), lossless enough for analysis."""
    return Image.fromarray((np.clip(amap, 0, 1) * 65535 + 0.5).astype(np.uint16))


def routing_chart(
    weights: np.ndarray, scores: np.ndarray, title: str = "SA-MoE routing", width: int = 520
) -> Image.Image:
    """Bar chart of the per-expert routing weights on a fixed 0..1 axis, each expert's own score marked
    and written beside its name; the dashed line is uniform routing (1 / number of experts)."""
    weights, scores = np.asarray(weights, dtype=float), np.asarray(scores, dtype=float)
    if weights.ndim != 1 or weights.shape != scores.shape or weights.size == 0:
        raise ArgumentError(
            f"need one weight and one score per expert, got shapes {weights.shape} and {scores.shape}"
        )
    fig = Figure(figsize=(width / 100, 1.0 + 0.5 * weights.size), dpi=100)
    canvas = FigureCanvasAgg(fig)  # no pyplot: safe in server threads
    ax = fig.add_subplot()
    y = np.arange(weights.size)
    ax.barh(y, weights, color="#4c78a8", label="routing weight")
    ax.scatter(scores, y, marker="D", color="#e45756", zorder=3, label="expert's own score", clip_on=False)
    ax.axvline(1 / weights.size, color="0.4", linestyle="--", linewidth=1, label="uniform routing")
    ax.set_yticks(
        y,
        [
            f"expert {i + 1}\nweight {w:.2f} | score {s:.2f}"
            for i, (w, s) in enumerate(zip(weights, scores, strict=True))
        ],
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.12), ncols=3, fontsize=7, frameon=False)
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def routing_strip(weights: np.ndarray, cell: int = 32, height: int = 20) -> Image.Image:
    """One image's routing as a heat strip: one cell per expert, left to right, coloured by its weight on
    a fixed 0..1 scale (viridis: dark = 0, yellow = 1), so strips of different images compare directly."""
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 1 or weights.size == 0:
        raise ArgumentError(f"need one routing weight per expert, got shape {weights.shape}")
    colours = colorize(weights[None], cmap="viridis")[0]  # (E, 3)
    strip = np.repeat(np.repeat(colours[None], height, axis=0), cell, axis=1)
    strip[:, cell - 1 :: cell] = 255  # a thin white line between experts
    return Image.fromarray(strip[:, :-1] if strip.shape[1] > 1 else strip)


def class_routing_chart(
    summaries: dict[str, tuple[np.ndarray, float]],
    title: str = "Mean SA-MoE routing per class",
    width: int = 640,
) -> Image.Image:
    """Stacked bars, one per class: its mean routing weight of each expert (sums to 1), and beside its
    name the mean routing entropy normalised to 0..1 (1 = uniform). summaries: {class: (weights, entropy)}."""
    if not summaries:
        raise ArgumentError("no classes to chart")
    names = list(summaries)
    weights = np.stack([np.asarray(summaries[n][0], dtype=float) for n in names])
    if weights.ndim != 2 or weights.shape[1] == 0:
        raise ArgumentError(f"need one weight per expert for every class, got shape {weights.shape}")
    fig = Figure(figsize=(width / 100, 1.2 + 0.35 * len(names)), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y, left = np.arange(len(names)), np.zeros(len(names))
    cmap = colormaps["tab10"]
    for e in range(weights.shape[1]):
        ax.barh(y, weights[:, e], left=left, color=cmap(e % 10), label=f"expert {e + 1}")
        left += weights[:, e]
    ax.set_yticks(y, [f"{n[:40]}  (entropy {summaries[n][1]:.2f})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=8, fontsize=7, frameon=False)
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
