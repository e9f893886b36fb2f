"""Seeded synthetic anomaly data: procedural textures and objects with drawn defects (all ours).

Nothing here is from the paper: it is the project's own offline stand-in for MVTec-style data, used by the
tests, the tiny training runs and the demo assets. numpy + PIL + scipy.ndimage only (no torch).

* `make_category(name, kind, seed)` builds a `Category`: a family (`kind`) of procedural images
  (textures: noise, stripes, grid, weave, rings, dots; objects: disc, part) whose look (palette,
  frequencies, orientation, shape) is drawn once from `seed`. `Category.render` draws one normal image.
* `draw_defect(image, kind, rng)` draws a scratch, crack, hole, stain or cut-paste patch on any RGB
  image and returns `(image, mask)` where `mask` is exactly the set of pixels that changed (changes
  smaller than `min_delta` grey levels in every channel are reverted, so every masked pixel is visible).
* `generate(root, ...)` writes an MVTec AD folder tree (`train/good`, `test/good`,
  `test/<defect>`, `ground_truth/<defect>/*_mask.png`). Same arguments -> byte-identical files.

CLI: `python -m training.synthetic ROOT --categories 6 --size 128 --seed 0`.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from training.registry import Registry
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError


class SyntheticError(WMoEError, ValueError):
    """Arguments the generator cannot use (an unknown kind, defect or category, an image that is not RGB)."""


# Built-in catalogue (name, kind), in the order `generate(categories=N)` takes them: textures and
# objects interleaved so that any N >= 3 mixes both.
DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("felt", "noise"),
    ("fabric", "stripes"),
    ("nut", "disc"),
    ("mesh", "grid"),
    ("timber", "rings"),
    ("plate", "part"),
    ("wicker", "weave"),
    ("polka", "dots"),
)

# A pixel counts as changed by a defect only if some channel moved by at least this many grey levels.
MIN_DELTA = 8

# Size ranges of each defect, as fractions of min(H, W): (smallest, largest). Drawn log-uniformly, so
# small defects are as common as large ones.
_SIZE_RANGE: dict[str, tuple[float, float]] = {
    "scratch": (0.12, 0.6),  # length
    "crack": (0.1, 0.45),  # extent of the random walk
    "hole": (0.025, 0.11),  # radius
    "stain": (0.04, 0.16),  # radius
    "cut_paste": (0.06, 0.24),  # patch side
}


# ----------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------
def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _name_key(name: str) -> int:
    """A stable (process-independent, unlike `hash`) integer for a string."""
    return zlib.crc32(name.encode("utf-8"))


def _child_rng(*keys: int | str) -> np.random.Generator:
    ints = [k if isinstance(k, int) else _name_key(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64) * 255.0


def _luma(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64)
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]
) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit std (wraps at the borders)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    n -= n.mean()
    std = n.std()
    return n / std if std > 0 else n


def _grid(
    size: int, rng: np.random.Generator | None = None, jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if rng is not None and jitter > 0:
        yy += rng.uniform(-jitter, jitter)
        xx += rng.uniform(-jitter, jitter)
    return yy, xx


def _rotate(yy: np.ndarray, xx: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c  # (u along the direction, v across)


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)[..., None]
    return c0[None, None, :] * (1.0 - t) + c1[None, None, :] * t


def _finish(img: np.ndarray, rng: np.random.Generator, grain: float) -> np.ndarray:
    """Add per-pixel sensor grain and quantise to uint8."""
    if grain > 0:
        img = img + rng.standard_normal(img.shape[:2])[..., None] * grain
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two colours with a clear luminance gap and a category-specific hue."""
    h = rng.uniform(0.0, 1.0)
    s0 = rng.uniform(0.15, 0.75)
    v0 = rng.uniform(0.3, 0.85)
    dv = rng.uniform(0.22, 0.4) * (1 if v0 < 0.55 else -1)
    c0 = _hsv(h, s0, v0)
    c1 = _hsv(h + rng.uniform(-0.15, 0.15), float(np.clip(s0 + rng.uniform(-0.2, 0.2), 0.05, 0.9)), v0 + dv)
    return c0, c1


# ----------------------------------------------------------------------------------------------------
# image kinds: a look sampler and a renderer each
# ----------------------------------------------------------------------------------------------------
class Kind(ABC):
    """A family of procedural images; `is_object` kinds draw an object on a background."""

    is_object: bool = False

    @staticmethod
    @abstractmethod
    def params(rng: np.random.Generator) -> dict[str, Any]:
        """The look of one category (palette, frequencies, orientation, shape), drawn once."""

    @staticmethod
    @abstractmethod
    def render(
        p: dict[str, Any], rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One `(size, size, 3)` uint8 image of look `p` and, for objects, the region defects stay in."""


KIND_REGISTRY: Registry[type[Kind]] = Registry("kind")


@KIND_REGISTRY.register("noise")
class _Noise(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        return {
            "c0": c0,
            "c1": c1,
            "sigma": rng.uniform(1.2, 4.0),
            "contrast": rng.uniform(1.2, 3.0),
            "fine": rng.uniform(0.1, 0.35),
            "grain": rng.uniform(2.0, 6.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        n = _smooth_noise(rng, (size, size), p["sigma"] * s)
        f = _smooth_noise(rng, (size, size), 0.6 * s)
        t = 1.0 / (1.0 + np.exp(-p["contrast"] * n)) + p["fine"] * 0.3 * f
        return _finish(_mix(p["c0"], p["c1"], t), rng, p["grain"]), None


@KIND_REGISTRY.register("stripes")
class _Stripes(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        return {
            "c0": c0,
            "c1": c1,
            "theta": rng.uniform(0, math.pi),
            "period": rng.uniform(6.0, 16.0),
            "sharp": rng.uniform(1.0, 6.0),
            "grain": rng.uniform(2.0, 5.0),
            "warp": rng.uniform(0.0, 1.5),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        yy, xx = _grid(size)
        u, _ = _rotate(yy, xx, p["theta"] + rng.normal(0, 0.02))
        u = u + p["warp"] * s * _smooth_noise(rng, (size, size), 6 * s)
        t = 0.5 + 0.5 * np.tanh(
            p["sharp"] * np.sin(2 * math.pi * u / (p["period"] * s) + rng.uniform(0, 2 * math.pi))
        )
        t = t + 0.08 * _smooth_noise(rng, (size, size), 1.0 * s)
        return _finish(_mix(p["c0"], p["c1"], t), rng, p["grain"]), None


@KIND_REGISTRY.register("grid")
class _Grid(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        return {
            "c0": c0,
            "c1": c1,
            "theta": float(rng.choice([0.0, math.pi / 4, rng.uniform(0, math.pi / 2)])),
            "period": rng.uniform(10.0, 20.0),
            "width": rng.uniform(1.5, 3.5),
            "grain": rng.uniform(2.0, 5.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        period, width = p["period"] * s, p["width"] * s
        yy, xx = _grid(size)
        u, v = _rotate(yy, xx, p["theta"])
        u = u + rng.uniform(0, period)
        v = v + rng.uniform(0, period)

        def line(a):
            # distance to the line centre, line at the middle of the cell
            d = np.abs((a % period) - period / 2)
            return np.clip(width / 2 - d + 0.5, 0.0, 1.0)

        t = np.maximum(line(u), line(v))
        base = _mix(p["c0"], p["c1"], t)
        shade = 6.0 * _smooth_noise(rng, (size, size), 10 * s)
        return _finish(base + shade[..., None], rng, p["grain"]), None


@KIND_REGISTRY.register("weave")
class _Weave(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        return {
            "c0": c0,
            "c1": c1,
            "theta": rng.uniform(0, math.pi / 2),
            "period": rng.uniform(8.0, 16.0),
            "gap": rng.uniform(0.05, 0.2),
            "grain": rng.uniform(2.0, 5.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        period = p["period"] * s
        yy, xx = _grid(size)
        u, v = _rotate(yy, xx, p["theta"])
        u = u + rng.uniform(0, 2 * period)
        v = v + rng.uniform(0, 2 * period)
        i, j = np.floor(u / period), np.floor(v / period)
        fu, fv = u / period - i, v / period - j
        horizontal = ((i + j) % 2) == 0
        across = np.where(horizontal, fv, fu)  # position across the thread in the cell
        along = np.where(horizontal, fu, fv)
        thread = np.sin(math.pi * across) ** 0.7  # rounded thread profile
        fibres = 0.15 * np.sin(2 * math.pi * 3 * along + 1.7 * np.where(horizontal, j, i))
        gap = np.clip((np.minimum(across, 1 - across) - p["gap"] / 2) * 8, 0.0, 1.0)
        t = (thread * 0.8 + fibres) * gap
        return _finish(_mix(p["c1"], p["c0"], t), rng, p["grain"]), None


@KIND_REGISTRY.register("rings")
class _Rings(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        ang = rng.uniform(0, 2 * math.pi)
        return {
            "c0": c0,
            "c1": c1,
            "ang": ang,
            "dist": rng.uniform(0.7, 2.5),
            "period": rng.uniform(5.0, 12.0),
            "warp": rng.uniform(0.6, 2.0),
            "gamma": rng.uniform(0.5, 2.5),
            "grain": rng.uniform(2.0, 4.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        yy, xx = _grid(size)
        ang = p["ang"] + rng.normal(0, 0.1)
        dist = p["dist"] * size * rng.uniform(0.9, 1.1)
        cy, cx = size / 2 + dist * math.sin(ang), size / 2 + dist * math.cos(ang)
        r = np.hypot(yy - cy, xx - cx) + p["warp"] * s * _smooth_noise(rng, (size, size), 14 * s)
        t = ((r / (p["period"] * s)) % 1.0) ** p["gamma"]
        # fine fibre streaks along the rings' tangent, roughly: anisotropic noise
        streak = _smooth_noise(
            rng, (size, size), (0.6 * s, 5 * s) if abs(math.cos(ang)) > 0.7 else (5 * s, 0.6 * s)
        )
        t = 0.8 * t + 0.1 * streak
        return _finish(_mix(p["c0"], p["c1"], t), rng, p["grain"]), None


@KIND_REGISTRY.register("dots")
class _Dots(Kind):
    @staticmethod
    def params(rng):
        c0, c1 = _palette(rng)
        return {
            "c0": c0,
            "c1": c1,
            "period": rng.uniform(11.0, 22.0),
            "radius": rng.uniform(0.18, 0.38),
            "hex": bool(rng.uniform() < 0.5),
            "theta": rng.uniform(0, math.pi / 3),
            "grain": rng.uniform(2.0, 5.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        period = p["period"] * s
        yy, xx = _grid(size)
        u, v = _rotate(yy, xx, p["theta"])
        u = u + rng.uniform(0, period)
        v = v + rng.uniform(0, period)
        row = np.floor(v / period)
        if p["hex"]:
            u = u + 0.5 * period * (row % 2)
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        d = np.hypot(du, dv)
        t = np.clip(p["radius"] * period - d + 0.5, 0.0, 1.0)
        shade = 5.0 * _smooth_noise(rng, (size, size), 12 * s)
        return _finish(_mix(p["c0"], p["c1"], t) + shade[..., None], rng, p["grain"]), None


def _object_palette(rng):
    body, accent = _palette(rng)
    bg_v = rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.75, 0.92)])
    bg = _hsv(rng.uniform(), rng.uniform(0.0, 0.25), bg_v)
    return body, accent, bg


def _polygon_radius(theta: np.ndarray, sides: int, rot: float) -> np.ndarray:
    """Radius (relative to the circumradius) of a regular polygon in direction theta; 1 for a circle."""
    if sides == 0:
        return np.ones_like(theta)
    seg = 2 * math.pi / sides
    a = (theta - rot) % seg - seg / 2
    return math.cos(seg / 2) / np.cos(a)


@KIND_REGISTRY.register("disc")
class _Disc(Kind):
    is_object = True

    @staticmethod
    def params(rng):
        body, accent, bg = _object_palette(rng)
        return {
            "body": body,
            "accent": accent,
            "bg": bg,
            "radius": rng.uniform(0.26, 0.38),
            "sides": int(rng.choice([0, 6, 8])),
            "hole": float(rng.choice([0.0, rng.uniform(0.3, 0.5)])),
            "rings": rng.uniform(0.0, 1.0),
            "grain": rng.uniform(2.0, 4.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        yy, xx = _grid(size)
        cy = size / 2 + rng.normal(0, 0.02 * size)
        cx = size / 2 + rng.normal(0, 0.02 * size)
        rot = rng.uniform(0, 2 * math.pi)
        dy, dx = yy - cy, xx - cx
        r = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx)
        R = p["radius"] * size * rng.uniform(0.97, 1.03)
        edge = R * _polygon_radius(theta, p["sides"], rot)
        alpha = np.clip(edge - r + 0.5, 0.0, 1.0)
        inner = p["hole"] * R
        if inner > 0:
            alpha = alpha * np.clip(r - inner + 0.5, 0.0, 1.0)
        light = rng.uniform(0, 2 * math.pi)
        shading = 0.25 * (np.cos(theta - light) * (r / R)) + 0.1 * (1 - (r / R) ** 2)
        ring_t = p["rings"] * 0.5 * (1 + np.sin(2 * math.pi * r / (6 * s)))
        body = _mix(p["body"], p["accent"], ring_t * (r > inner + 0.25 * (R - inner)))
        body = body * (1 + shading[..., None]) + 4.0 * _smooth_noise(rng, (size, size), 2 * s)[..., None]
        bg = p["bg"][None, None, :] + 5.0 * _smooth_noise(rng, (size, size), 15 * s)[..., None]
        # soft drop shadow on the background
        shadow = ndimage.gaussian_filter((r < edge).astype(np.float64), 3 * s)
        bg = bg * (1 - 0.25 * np.roll(shadow, (int(2 * s), int(2 * s)), axis=(0, 1)))[..., None]
        img = bg * (1 - alpha[..., None]) + body * alpha[..., None]
        region = ndimage.binary_erosion(alpha > 0.99, iterations=max(1, int(2 * s)))
        return _finish(img, rng, p["grain"]), region


@KIND_REGISTRY.register("part")
class _Part(Kind):
    is_object = True

    @staticmethod
    def params(rng):
        body, accent, bg = _object_palette(rng)
        return {
            "body": body,
            "accent": accent,
            "bg": bg,
            "half_w": rng.uniform(0.25, 0.4),
            "aspect": rng.uniform(0.45, 1.0),
            "corner": rng.uniform(0.05, 0.5),
            "holes": int(rng.choice([0, 2, 4])),
            "hole_r": rng.uniform(0.03, 0.06),
            "brushed": rng.uniform(0.0, 1.0),
            "grain": rng.uniform(2.0, 4.0),
        }

    @staticmethod
    def render(p, rng, size):
        s = size / 128.0
        yy, xx = _grid(size)
        cy = size / 2 + rng.normal(0, 0.02 * size)
        cx = size / 2 + rng.normal(0, 0.02 * size)
        rot = rng.normal(0, 0.08)
        u, v = _rotate(yy - cy, xx - cx, rot)
        a = p["half_w"] * size
        b = a * p["aspect"]
        rc = p["corner"] * min(a, b)
        qx, qy = np.abs(u) - (a - rc), np.abs(v) - (b - rc)
        sdf = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - rc
        alpha = np.clip(0.5 - sdf, 0.0, 1.0)
        holes = np.zeros_like(alpha)
        hr = p["hole_r"] * size
        spots = [(-1, -1), (1, 1), (1, -1), (-1, 1)][: p["holes"]]
        for sx, sy in spots:
            d = np.hypot(u - sx * (a - 2.2 * hr), v - sy * (b - 2.2 * hr))
            holes = np.maximum(holes, np.clip(hr - d + 0.5, 0.0, 1.0))
        alpha = alpha * (1 - holes)
        brushed = _smooth_noise(rng, (size, size), (0.5 * s, 8 * s) if rot >= 0 else (8 * s, 0.5 * s))
        t = 0.5 * p["brushed"] * (0.5 + 0.25 * brushed) + 0.25 * (v / b + 1) * (1 - p["brushed"])
        body = _mix(p["body"], p["accent"], t)
        bevel = np.clip(-sdf / (3 * s), 0.0, 1.0)
        body = body * (0.8 + 0.2 * bevel)[..., None]
        bg = p["bg"][None, None, :] + 5.0 * _smooth_noise(rng, (size, size), 15 * s)[..., None]
        img = bg * (1 - alpha[..., None]) + body * alpha[..., None]
        region = (alpha > 0.99) & (sdf < -2 * s)
        region = ndimage.binary_erosion(region, iterations=max(1, int(1.5 * s))) if region.any() else region
        return _finish(img, rng, p["grain"]), region


KINDS: tuple[str, ...] = tuple(KIND_REGISTRY)
TEXTURE_KINDS: tuple[str, ...] = tuple(n for n, k in KIND_REGISTRY.items() if not k.is_object)
OBJECT_KINDS: tuple[str, ...] = tuple(n for n, k in KIND_REGISTRY.items() if k.is_object)


# ----------------------------------------------------------------------------------------------------
# defects
# ----------------------------------------------------------------------------------------------------
Defect = Callable[..., tuple[np.ndarray, np.ndarray]]  # (img, rng, region, source, scale) -> (alpha, paint)
DEFECT_REGISTRY: Registry[Defect] = Registry("defect kind")


def _size_of(kind: str, rng: np.random.Generator, scale: float | None, extent: int) -> float:
    lo, hi = _SIZE_RANGE[kind]
    x = rng.uniform() if scale is None else float(np.clip(scale, 0.0, 1.0))
    return extent * math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))


def _pick_point(
    rng: np.random.Generator, shape: tuple[int, int], region: np.ndarray | None, margin: float
) -> tuple[float, float]:
    H, W = shape
    if region is not None and region.any():
        idx = rng.choice(np.flatnonzero(region))
        return float(idx // W) + rng.uniform(-0.5, 0.5), float(idx % W) + rng.uniform(-0.5, 0.5)
    m = min(margin, 0.45 * min(H, W))
    return rng.uniform(m, H - m), rng.uniform(m, W - m)


def _polyline_alpha(shape: tuple[int, int], points: np.ndarray, width: float, ss: int = 3) -> np.ndarray:
    """Antialiased coverage (0..1) of a polyline of `points` ((N, 2) as (y, x)) with the given width."""
    H, W = shape
    canvas = Image.new("L", (W * ss, H * ss), 0)
    draw = ImageDraw.Draw(canvas)
    pts = [(float(x) * ss + ss / 2, float(y) * ss + ss / 2) for y, x in points]
    w = max(1, int(round(width * ss)))
    draw.line(pts, fill=255, width=w, joint="curve")
    for x, y in (pts[0], pts[-1]):  # round caps
        draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    return np.asarray(canvas.resize((W, H), Image.BOX), dtype=np.float64) / 255.0


def _local_luma(img: np.ndarray, alpha: np.ndarray) -> float:
    wsum = alpha.sum()
    if wsum <= 0:
        return float(_luma(img).mean())
    return float((_luma(img) * alpha).sum() / wsum)


def _line_colour(
    img: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, dark_bias: float
) -> np.ndarray:
    """Per-pixel colour of a thin defect that contrasts with what lies under it."""
    luma = _local_luma(img, alpha)
    if luma > 110 and rng.uniform() < dark_bias or luma > 190:
        return img * rng.uniform(0.1, 0.35)  # darker than the surface
    tint = _hsv(rng.uniform(), rng.uniform(0.0, 0.2), 1.0) / 255.0
    return np.broadcast_to(tint * rng.uniform(215, 255), img.shape).astype(np.float64)


@DEFECT_REGISTRY.register("scratch")
def _scratch(img, rng, region, source, scale):
    H, W = img.shape[:2]
    s = min(H, W) / 128.0
    length = _size_of("scratch", rng, scale, min(H, W))
    cy, cx = _pick_point(rng, (H, W), region, 0.1 * min(H, W))
    ang = rng.uniform(0, math.pi)
    d = np.array([math.sin(ang), math.cos(ang)]) * length / 2
    p0, p2 = np.array([cy, cx]) - d, np.array([cy, cx]) + d
    bend = np.array([-d[1], d[0]]) * rng.uniform(-0.4, 0.4)
    p1 = (p0 + p2) / 2 + bend
    t = np.linspace(0, 1, 24)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    alpha = _polyline_alpha((H, W), pts, rng.uniform(0.8, 2.6) * max(s, 0.75)) * rng.uniform(0.75, 1.0)
    return alpha, _line_colour(img, alpha, rng, dark_bias=0.3)


@DEFECT_REGISTRY.register("crack")
def _crack(img, rng, region, source, scale):
    H, W = img.shape[:2]
    s = min(H, W) / 128.0
    extent = _size_of("crack", rng, scale, min(H, W))
    step = max(1.5, 2.5 * s)
    n = max(4, int(extent / step))
    cy, cx = _pick_point(rng, (H, W), region, 0.1 * min(H, W))
    heading = rng.uniform(0, 2 * math.pi)
    walks = []
    for direction in (0.0, math.pi):  # grow both ways from the seed point
        y, x, h = cy, cx, heading + direction
        pts = [(y, x)]
        for _ in range(n // 2):
            h += rng.normal(0, 0.45)
            y, x = y + step * math.sin(h), x + step * math.cos(h)
            pts.append((y, x))
        walks.append(np.array(pts))
    main = np.concatenate([walks[0][::-1], walks[1][1:]])
    width = rng.uniform(0.8, 2.2) * max(s, 0.75)
    alpha = _polyline_alpha((H, W), main, width)
    for _ in range(int(rng.integers(0, 3))):  # thinner branches
        y, x = main[int(rng.integers(0, len(main)))]
        h = rng.uniform(0, 2 * math.pi)
        pts = [(y, x)]
        for _ in range(max(2, n // 4)):
            h += rng.normal(0, 0.5)
            y, x = y + step * math.sin(h), x + step * math.cos(h)
            pts.append((y, x))
        alpha = np.maximum(alpha, _polyline_alpha((H, W), np.array(pts), max(0.7, width * 0.6)))
    return alpha * rng.uniform(0.85, 1.0), _line_colour(img, alpha, rng, dark_bias=0.9)


def _blob_polar(shape, centre, radius, rng, wobble):
    """Distance field d (1 on the boundary) of an irregular ellipse-like blob."""
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    ang = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.55, 1.0)
    u, v = _rotate(yy - centre[0], xx - centre[1], ang)
    theta = np.arctan2(v, u)
    rad = np.ones_like(theta)
    for k in range(2, 6):
        rad += wobble * rng.uniform(0, 1) / k * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
    return np.hypot(u, v / aspect) / (radius * rad)


@DEFECT_REGISTRY.register("hole")
def _hole(img, rng, region, source, scale):
    H, W = img.shape[:2]
    radius = max(1.5, _size_of("hole", rng, scale, min(H, W)))
    cy, cx = _pick_point(rng, (H, W), region, radius + 2)
    d = _blob_polar((H, W), (cy, cx), radius, rng, wobble=0.25)
    alpha = np.clip((1 - d) * radius + 0.5, 0.0, 1.0)  # ~1 px antialiased edge
    luma = _local_luma(img, alpha)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    grad = ((yy - cy) * rng.uniform(-1, 1) + (xx - cx) * rng.uniform(-1, 1)) / max(radius, 1.0)
    if luma > 70:  # a dark pit with a slightly lit far wall
        base = rng.uniform(8, 35)
        colour = base + 14.0 * np.clip(grad, -1, 1)
        rim = np.clip(1 - np.abs(d - 0.9) * 8, 0, 1) * rng.uniform(0, 40)
        colour = colour + rim
    else:  # a dark surface: the hole shows a light background through it
        colour = rng.uniform(190, 240) + 10.0 * np.clip(grad, -1, 1)
    tint = _hsv(rng.uniform(), rng.uniform(0, 0.3), 1.0) / 255.0
    return alpha, colour[..., None] * tint[None, None, :]


@DEFECT_REGISTRY.register("stain")
def _stain(img, rng, region, source, scale):
    H, W = img.shape[:2]
    radius = _size_of("stain", rng, scale, min(H, W))
    cy, cx = _pick_point(rng, (H, W), region, radius)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    blob = np.zeros((H, W))
    for _ in range(int(rng.integers(2, 6))):
        oy, ox = rng.normal(0, 0.45 * radius, size=2)
        sig = radius * rng.uniform(0.3, 0.6)
        blob = np.maximum(blob, np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * sig**2)))
    edge = rng.uniform(0.15, 0.45)  # how blurry the border is
    alpha = np.clip((blob - 0.25) / edge, 0.0, 1.0) ** 1.5 * rng.uniform(0.55, 0.9)
    luma = _local_luma(img, alpha)
    v = rng.uniform(0.15, 0.45) if luma > 120 else rng.uniform(0.7, 0.95)
    colour = _hsv(rng.uniform(), rng.uniform(0.3, 0.9), v)
    return alpha, np.broadcast_to(colour, img.shape).astype(np.float64)


@DEFECT_REGISTRY.register("cut_paste")
def _cut_paste(img, rng, region, source, scale):
    H, W = img.shape[:2]
    side = max(3.0, _size_of("cut_paste", rng, scale, min(H, W)))
    aspect = math.exp(rng.uniform(-0.6, 0.6))
    ph = int(np.clip(round(side * math.sqrt(aspect)), 3, H - 1))
    pw = int(np.clip(round(side / math.sqrt(aspect)), 3, W - 1))
    src = img if source is None else _as_rgb(source, (H, W))
    ty, tx = _pick_point(rng, (H, W), region, max(ph, pw) / 2)
    ty = int(np.clip(round(ty - ph / 2), 0, H - ph))
    tx = int(np.clip(round(tx - pw / 2), 0, W - pw))
    for _ in range(10):  # a source spot away from the target when cutting from the same image
        sy, sx = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
        if source is not None or abs(sy - ty) >= ph or abs(sx - tx) >= pw:
            break
    patch = src[sy : sy + ph, sx : sx + pw].astype(np.float64)
    if rng.uniform() < 0.5:
        patch = patch[:, ::-1]
    if ph == pw:
        patch = np.rot90(patch, int(rng.integers(0, 4)))
    # colour jitter (CutPaste-style) so the pasted patch never blends in exactly
    gain = rng.uniform(0.75, 1.25)
    offset = rng.uniform(18, 45, size=3) * rng.choice([-1, 1], size=3)
    patch = patch * gain + offset
    mean_luma = float(_luma(np.clip(patch, 0, 255)).mean())
    if mean_luma > 235 or mean_luma < 20:
        patch = patch * 0.6 + 50
    shape = np.zeros((ph, pw))
    if rng.uniform() < 0.5:
        shape[:] = 1.0
    else:  # an irregular piece
        cyy, cxx = (ph - 1) / 2, (pw - 1) / 2
        d = _blob_polar((ph, pw), (cyy, cxx), min(ph, pw) / 2, rng, wobble=0.3)
        shape = np.clip((1 - d) * min(ph, pw) / 2 + 0.5, 0.0, 1.0)
    alpha = np.zeros((H, W))
    alpha[ty : ty + ph, tx : tx + pw] = shape
    colour = img.astype(np.float64).copy()
    colour[ty : ty + ph, tx : tx + pw] = patch
    return alpha, colour


DEFECT_KINDS: tuple[str, ...] = tuple(DEFECT_REGISTRY)


def _as_rgb(image: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise SyntheticError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise SyntheticError(f"expected a uint8 image, got {arr.dtype}")
    if shape is not None and arr.shape[:2] != tuple(shape):
        arr = np.asarray(Image.fromarray(arr).resize((shape[1], shape[0]), Image.BILINEAR))
    return arr


def draw_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator | int | None = None,
    *,
    region: np.ndarray | None = None,
    source: np.ndarray | None = None,
    scale: float | None = None,
    colour: Sequence[float] | None = None,
    min_delta: int = MIN_DELTA,
    min_pixels: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of `kind` (see `DEFECT_KINDS`) on an RGB image.

    Args:
        image: `(H, W, 3)` uint8 (a `(H, W)` grey image is accepted and returned as RGB).
        kind: `scratch` | `crack` | `hole` | `stain` | `cut_paste`.
        rng: a numpy Generator or an int seed.
        region: optional boolean `(H, W)` area the defect must stay in (e.g. the object).
        source: optional image to cut the `cut_paste` patch from (default: `image` itself).
        scale: defect size in [0, 1] within the kind's size range; None draws it (log-uniform).
        colour: optional fixed RGB colour of the defect (all kinds but `cut_paste`); by default a
            colour that contrasts with the surface is drawn.
        min_delta: pixels whose largest channel change is below this are left untouched.
        min_pixels: redraw (up to 20 times) until the defect covers at least this many pixels.

    Returns:
        `(out, mask)`: the new `(H, W, 3)` uint8 image (the input is not modified) and the boolean
        mask, which equals `(out != image).any(-1)` exactly.
    """
    if kind not in DEFECT_REGISTRY:
        raise SyntheticError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECT_KINDS)}")
    img = _as_rgb(image)
    rng = _as_rng(rng)
    H, W = img.shape[:2]
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != (H, W):
            raise SyntheticError(f"region shape {region.shape} != image shape {(H, W)}")
        if not region.any():
            region = None
    base = img.astype(np.float64)
    out, mask = img, np.zeros((H, W), dtype=bool)
    for _ in range(20):
        alpha, paint = DEFECT_REGISTRY[kind](img, rng, region, source, scale)
        if colour is not None and kind != "cut_paste":
            paint = np.broadcast_to(np.asarray(colour, dtype=np.float64)[:3], img.shape)
        if region is not None:
            alpha = alpha * region
        new = base * (1 - alpha[..., None]) + paint * alpha[..., None]
        new = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        changed = np.abs(new.astype(np.int16) - img.astype(np.int16)).max(axis=-1) >= min_delta
        if changed.sum() >= min_pixels:
            out = np.where(changed[..., None], new, img)
            mask = changed
            break
    else:
        raise SyntheticError(f"could not draw a visible {kind!r} defect on this image (after 20 tries)")
    return out, mask


# ----------------------------------------------------------------------------------------------------
# categories
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Category:
    """One synthetic category: a kind of procedural image with a look fixed by `seed`."""

    name: str
    kind: str
    seed: int
    params: dict[str, Any] = field(repr=False, compare=False)
    defects: tuple[str, ...] = DEFECT_KINDS

    @property
    def is_object(self) -> bool:
        return KIND_REGISTRY[self.kind].is_object

    def render(
        self, rng: np.random.Generator | int | None, size: int = 128
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One normal image `(H, W, 3) uint8` and, for objects, the boolean object region (else None)."""
        return KIND_REGISTRY[self.kind].render(self.params, _as_rng(rng), int(size))

    def render_defect(
        self, rng: np.random.Generator | int | None, size: int = 128, defect: str = "scratch"
    ) -> tuple[np.ndarray, np.ndarray]:
        """One anomalous image and its exact boolean defect mask (defects land on the object for objects)."""
        rng = _as_rng(rng)
        img, region = self.render(rng, size)
        source = None
        if defect == "cut_paste" and rng.uniform() < 0.5:
            source, _ = self.render(rng, size)  # a patch from another image of the same category
        return draw_defect(img, defect, rng, region=region, source=source)


def make_category(name: str, kind: str, seed: int = 0, defects: Sequence[str] = DEFECT_KINDS) -> Category:
    """Build a category of `kind` (one of `KINDS`) whose look is drawn from `seed`."""
    if kind not in KIND_REGISTRY:
        raise SyntheticError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    bad = [d for d in defects if d not in DEFECT_KINDS]
    if bad:
        raise SyntheticError(f"unknown defect kind(s) {bad}; expected a subset of {', '.join(DEFECT_KINDS)}")
    params = KIND_REGISTRY[kind].params(_child_rng(int(seed), "look", kind))
    return Category(name=name, kind=kind, seed=int(seed), params=params, defects=tuple(defects))


def default_categories(n: int, seed: int = 0) -> list[Category]:
    """The first `n` catalogue categories; beyond the catalogue, more of each kind with fresh looks."""
    out = []
    for i in range(n):
        base, kind = DEFAULT_CATEGORIES[i % len(DEFAULT_CATEGORIES)]
        rnd = i // len(DEFAULT_CATEGORIES)
        name = base if rnd == 0 else f"{base}{rnd + 1}"
        out.append(make_category(name, kind, _category_seed(seed, name)))
    return out


def _category_seed(seed: int, name: str) -> int:
    return int(_child_rng(int(seed), "category", name).integers(0, 2**31 - 1))


def _resolve_categories(categories: int | Sequence[str | Category], seed: int) -> list[Category]:
    if isinstance(categories, int | np.integer):
        if categories < 1:
            raise SyntheticError("categories must be >= 1")
        return default_categories(int(categories), seed)
    known = dict(DEFAULT_CATEGORIES)
    out = []
    for c in categories:
        if isinstance(c, Category):
            out.append(c)
            continue
        name, _, kind = str(c).partition(":")  # "name" from the catalogue, a bare kind, or "name:kind"
        kind = kind or known.get(name) or (name if name in KINDS else "")
        if not kind:
            raise SyntheticError(
                f"unknown category {name!r}: use a catalogue name "
                f"({', '.join(known)}), a kind ({', '.join(KINDS)}) or 'name:kind'"
            )
        out.append(make_category(name, kind, _category_seed(seed, name)))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise SyntheticError(f"duplicate category names in {names}")
    return out


# ----------------------------------------------------------------------------------------------------
# dataset writer
# ----------------------------------------------------------------------------------------------------
def _save_rgb(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr, mode="RGB").save(path, format="PNG", compress_level=1)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format="PNG", compress_level=1)


def generate(
    root: str | Path,
    categories: int | Sequence[str | Category] = 6,
    n_train_good: int = 20,
    n_test_good: int = 10,
    n_test_defect_per_type: int = 6,
    size: int = 128,
    seed: int = 0,
    defects: Sequence[str] | None = None,
) -> list[str]:
    """Write a synthetic dataset in the MVTec AD layout under `root` and return the category names.

    `root/<cls>/train/good/000.png`, `root/<cls>/test/good/000.png`, `root/<cls>/test/<defect>/000.png`
    and `root/<cls>/ground_truth/<defect>/000_mask.png` (L mode, 0/255). `categories` is a count
    (taken from `DEFAULT_CATEGORIES`) or a list of catalogue names, kinds, `"name:kind"` strings
    or `Category` objects. `defects` defaults to each category's own list (all kinds).
    Every image has its own random stream derived from (seed, category, split, index), so the files
    are byte-identical for the same arguments whatever else is generated.
    """
    root = Path(root)
    cats = _resolve_categories(categories, seed)
    for cat in cats:
        kinds = tuple(defects) if defects is not None else cat.defects
        bad = [d for d in kinds if d not in DEFECT_KINDS]
        if bad:
            raise SyntheticError(
                f"unknown defect kind(s) {bad}; expected a subset of {', '.join(DEFECT_KINDS)}"
            )
        base = root / cat.name
        for split, n in (("train", n_train_good), ("test", n_test_good)):
            folder = base / split / "good"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, _ = cat.render(_child_rng(seed, cat.name, split, "good", i), size)
                _save_rgb(img, folder / f"{i:03d}.png")
        for kind in kinds:
            img_dir, gt_dir = base / "test" / kind, base / "ground_truth" / kind
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n_test_defect_per_type):
                img, mask = cat.render_defect(_child_rng(seed, cat.name, "test", kind, i), size, kind)
                _save_rgb(img, img_dir / f"{i:03d}.png")
                _save_mask(mask, gt_dir / f"{i:03d}_mask.png")
    return [c.name for c in cats]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("root", help="output folder (MVTec AD layout)")
    ap.add_argument(
        "--categories", default="6", help="a count, or comma-separated names / kinds / name:kind (default 6)"
    )
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train-good", type=int, default=20)
    ap.add_argument("--n-test-good", type=int, default=10)
    ap.add_argument("--n-test-defect", type=int, default=6, help="test images per defect type")
    ap.add_argument("--defects", default=None, help=f"comma-separated subset of {','.join(DEFECT_KINDS)}")
    args = ap.parse_args(argv)
    cats: int | list[str] = int(args.categories) if args.categories.isdigit() else args.categories.split(",")
    defects = args.defects.split(",") if args.defects else None
    try:
        names = generate(
            args.root,
            cats,
            args.n_train_good,
            args.n_test_good,
            args.n_test_defect,
            args.size,
            args.seed,
            defects,
        )
    except WMoEError as e:
        ap.exit(EXIT_ERROR, f"error: {e}\n")
    print(f"wrote {len(names)} categories to {args.root}: {', '.join(names)}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
