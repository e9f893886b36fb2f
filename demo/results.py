"""What the demo hands back as files and pictures: PNGs for the page, the result JSON, the Batch CSV (every
cell safe for spreadsheets), in per-request scratch folders."""

from __future__ import annotations

import atexit
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wmoe import Prediction
from wmoe.detector import detail_size

THUMB_SIDE = 768  # pictures other than the main overlay show at most this (long side)
FORMULA_START = set("=+-@\uff1d\uff0b\uff0d\uff20")  # what makes a spreadsheet cell a formula


def decision(score: float, threshold: float) -> str:
    return "anomalous" if score >= threshold else "normal"


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """The image at the size the library gives detail maps for `side` (`wmoe.detector.detail_size`)."""
    h, w = detail_size(image.size[::-1], side)
    return image if (w, h) == image.size else image.resize((w, h), Image.BICUBIC)


def shrink(amap: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """An (H, W) float map resized to size = (width, height), e.g. a full-size map for a thumbnail."""
    if amap is None:
        return None
    return np.asarray(Image.fromarray(amap.astype(np.float32)).resize(size, Image.BILINEAR))


def stretch_to(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)


def png(image: Image.Image, path: Path) -> str:
    """A picture for the page, handed to gradio as a PNG file. gradio copies a file into its cache
    atomically, but rewrites the PNG of an in-memory image in place: two users shown the same picture at
    the same moment (the same example, say) could each be sent a half-written file. Fast zlib level 1:
    still lossless, and at level 6 encoding the page's 11 pictures cost more than half a prediction."""
    image.save(path, compress_level=1)
    return str(path)


class Scratch:
    """Download files, in per-request folders inside one temporary folder of this app; old ones pruned."""

    def __init__(self, max_age_s: float = 3600):
        self.root, self.max_age_s = Path(tempfile.mkdtemp(prefix="wmoe-app-")), max_age_s
        atexit.register(shutil.rmtree, self.root, True)

    def new(self) -> Path:
        now = time.time()
        for old in self.root.iterdir():
            if now - old.stat().st_mtime > self.max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root))


def csv_cell(value) -> str:
    """A cell a spreadsheet shows as written: numbers as decimals; text starting (after any blanks) with a
    formula character (=, +, -, @, full-width forms too) or with a tab or carriage return gets a leading
    single quote, as OWASP recommends against CSV injection, so it is never evaluated."""
    if value is None:
        return ""
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return f"{float(value):.6f}"
    text = str(value)
    if text[:1] in ("\t", "\r", "\n") or text.lstrip()[:1] in FORMULA_START:
        return "'" + text
    return text


def result_json(pred: Prediction, threshold: float, about: dict) -> dict:
    """The result as the JSON download and the `predict_json` endpoint give it (no maps)."""
    return {
        **pred.to_dict(),
        "threshold": threshold,
        "decision": decision(pred.score, threshold),
        "model": about,
    }


def write_csv(path: Path, rows, errors, threshold: float, about: dict):
    """One row per scored (name, prediction, picture) (score, decision, expert weights and scores), then
    the (name, error) of the files that failed; every cell through `csv_cell`."""
    experts = max((len(p.expert_weights) for _, p, _ in rows if p.expert_weights is not None), default=0)
    header = ["file", "class_name", "score", "decision", "cls_score", "moe_score"]
    header += [f"weight_expert{i + 1}" for i in range(experts)]
    header += [f"score_expert{i + 1}" for i in range(experts)]
    header += ["model", "warning", "error"]
    lines = []
    for name, p, _ in rows:
        w = list(p.expert_weights) if p.expert_weights is not None else [None] * experts
        s = list(p.expert_scores) if p.expert_scores is not None else [None] * experts
        lines.append(
            [
                name,
                p.class_name,
                p.score,
                decision(p.score, threshold),
                p.cls_score,
                p.moe_score,
                *w,
                *s,
                about["name"],
                about["warning"],
                "",
            ]
        )
    for name, err in errors:
        lines.append([name, *[None] * (5 + 2 * experts), about["name"], about["warning"], err])
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows([csv_cell(v) for v in line] for line in lines)
