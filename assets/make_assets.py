"""Regenerate the demo examples in assets/examples/ (deterministic; run from the repository root).

    python -m assets.make_assets

Every picture comes from scikit-image's bundled CC0 data (`skimage.data`): real textures (brick,
grass, gravel) and a fundus photograph (retina) with a synthetic defect drawn by
`training.synthetic.draw_defect` and its exact mask; plus untouched good images and, when scikit-image
ships it, the CC0 `microaneurysms` crop (real lesions, no mask). Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from training.synthetic import draw_defect

HERE = Path(__file__).resolve().parent
OUT = HERE / "examples"
MAX_SIDE = 512


# (file stem, skimage.data name, class name, defect kind or None, seed, defect scale in [0, 1],
#  fixed defect colour or None for a drawn contrasting one)
EXAMPLES: list[tuple[str, str, str, str | None, int, float, tuple[int, int, int] | None]] = [
    ("brick_crack", "brick", "brick wall", "crack", 11, 0.75, (28, 26, 24)),
    ("brick_good", "brick", "brick wall", None, 0, 0.0, None),
    ("grass_stain", "grass", "grass", "stain", 7, 0.8, None),
    ("gravel_hole", "gravel", "gravel", "hole", 3, 0.85, None),
    ("gravel_scratch", "gravel", "gravel", "scratch", 5, 0.7, None),
    ("retina_stain", "retina", "retina", "stain", 2, 0.35, (95, 12, 8)),  # haemorrhage-like dark red
    ("retina_good", "retina", "retina", None, 0, 0.0, None),
]


def _load(name: str) -> np.ndarray | None:
    """A scikit-image data image as (H, W, 3) uint8 at most MAX_SIDE px, or None if not shipped."""
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if fn is None:
        return None
    try:
        arr = np.asarray(fn())
    except Exception as e:  # e.g. an image that would need a download (pooch) on this install
        print(f"skipping {name}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3].astype(np.uint8)
    h, w = arr.shape[:2]
    if max(h, w) > MAX_SIDE:
        k = MAX_SIDE / max(h, w)
        arr = np.asarray(Image.fromarray(arr).resize((round(w * k), round(h * k)), Image.LANCZOS))
    return arr


def _region(name: str, img: np.ndarray) -> np.ndarray | None:
    """Where a defect may go: the lit disc of a fundus photograph, anywhere on a texture."""
    if name != "retina":
        return None
    lit = img.astype(np.float64).mean(-1) > 40
    return ndimage.binary_erosion(lit, iterations=40)


def _save_png(arr: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(arr, mode=mode).save(path, format="PNG", optimize=True)


def main() -> list[dict]:
    OUT.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    for stem, data_name, cls, defect, seed, scale, colour in EXAMPLES:
        img = _load(data_name)
        if img is None:
            continue
        mask_name = None
        if defect is None:
            source = f"scikit-image {data_name} (CC0), unmodified (resized to at most {MAX_SIDE} px)"
        else:
            img, mask = draw_defect(
                img,
                defect,
                np.random.default_rng(seed),
                region=_region(data_name, img),
                scale=scale,
                colour=colour,
            )
            mask_name = f"{stem}_mask.png"
            _save_png(mask.astype(np.uint8) * 255, OUT / mask_name, "L")
            source = (
                f"scikit-image {data_name} (CC0) with a synthetic {defect} drawn by assets/make_assets.py"
            )
        grey = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
        _save_png(img[..., 0] if grey else img, OUT / f"{stem}.png", "L" if grey else "RGB")
        entries.append({"image": f"{stem}.png", "mask": mask_name, "class_name": cls, "source": source})

    micro = _load("microaneurysms")
    if micro is not None:  # a real lesion crop (green channel of a fundus image): upscale x3 for display
        h, w = micro.shape[:2]
        micro = np.asarray(Image.fromarray(micro[..., 0]).resize((w * 3, h * 3), Image.BICUBIC))
        _save_png(micro, OUT / "retina_microaneurysms.png", "L")
        entries.append(
            {
                "image": "retina_microaneurysms.png",
                "mask": None,
                "class_name": "retina",
                "source": "scikit-image microaneurysms (CC0), real lesions, no mask (upscaled x3)",
            }
        )

    (OUT / "examples.json").write_text(json.dumps(entries, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(entries)} examples to {OUT} ({total / 1e6:.2f} MB)")
    return entries


if __name__ == "__main__":
    main()
