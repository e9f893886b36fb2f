"""What the demo's buttons do (Analyze, redraw, Compare, Batch), on models that app.py loaded once.

Every number comes from `wmoe.Detector`; this module turns `Prediction`s into what the page shows
(with `wmoe.render`) and every failure into a readable `gr.Error`, never a stack trace or a server path.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import functools
import html
import json
import logging
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import gradio as gr
import numpy as np
from PIL import Image

from wmoe import Detector, ImageError, Prediction
from wmoe.checkpoint import includes_backbone
from wmoe.precision import dtype_name
from wmoe.preprocess import load_image
from wmoe.references import load_references
from wmoe.render import class_routing_chart, colorize, map_to_png16, overlay, routing_chart, routing_strip
from wmoe.routing import routing_by_class

try:  # ZeroGPU on Spaces: the model runs inside spaces.GPU; elsewhere this is a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


log = logging.getLogger("wmoe.app")
UNTRAINED = "untrained model: results are meaningless, for testing the plumbing only"
RANDOM_BACKBONE = "random backbone weights (a test configuration): results are meaningless"
CTDS_SAMPLES = 8
# (name, modules skipped, config switch that must be on, module name)
VARIANTS = [
    ("full WMoE-CLIP", frozenset(), None, None),
    ("without WCMA", frozenset({"wcma"}), "use_wcma", "WCMA"),
    ("without CTDS", frozenset({"ctds"}), "use_ctds", "CTDS"),
    ("SA-MoE with uniform weights", frozenset({"routing"}), "use_moe", "SA-MoE"),
]
SCALES = [  # the colour scales offered: (label, value)
    ("fixed 0..1 (probabilities; comparable across images)", "fixed"),
    ("stretched per image (its own min..max; NOT comparable across images)", "stretch"),
]
SCALE_VALUES = tuple(v for _, v in SCALES)
BASELINE_NAME = "training-free CLIP baseline"
BATCH_CHUNK = 8  # images per model call in the Batch view
MAX_BATCH_IMAGES = 100
MAX_ZIP_MEMBER_BYTES = 50 * 2**20  # unpacked, counted while unpacking (headers can lie)
MAX_UNPACKED_BYTES = 500 * 2**20  # unpacked from all the archives of one Batch request
MAX_ZIP_ENTRIES = 2000
ZIP_CHUNK = 2**20
FORMULA_START = set("=+-@\uff1d\uff0b\uff0d\uff20")  # what makes a spreadsheet cell a formula
ARCHIVES = {".zip", ".7z", ".rar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst"}
THUMB_SIDE = 768  # galleries show at most this; the main overlay keeps the image's own size
NAME_SHOWN = 100  # characters of a class name the score panel shows (the result JSON keeps all of it)


LOADED: dict[int, Detector] = {}  # by id(), filled at start: ZeroGPU's forked worker must inherit them all


def run_model(
    detector: Detector,
    images: list,
    class_name: str,
    skip=frozenset(),
    ctds_samples: int = 0,
    variants: list[tuple] = (),
    references: list[Image.Image] | None = None,
) -> list[Prediction]:
    """The only place the model runs: one prediction per image (with `references`, normal images, if
    given) or, given `variants` (Compare), one per (name, detector, skip[, references]) variant of the
    single image, all from one backbone pass of `detector`."""
    keyed = tuple((v[0], id(v[1]), frozenset(v[2]), *v[3:]) for v in variants)
    return _predict(id(detector), images, class_name, skip, ctds_samples, keyed, references)


@gpu
def _predict(
    key: int,
    images: list,
    class_name: str,
    skip: frozenset,
    ctds_samples: int,
    variants: tuple,
    references: list | None = None,
) -> list[Prediction]:
    """A ZeroGPU task on Spaces: its arguments travel pickled to a forked worker, so models go by key."""
    detector = LOADED[key]
    if variants:
        [image] = images
        compared = detector.compare(image, class_name, [(v[0], LOADED[v[1]], *v[2:]) for v in variants])
        return [p for _, p in compared]
    return detector.predict_batch(
        images, class_name, skip=skip, ctds_samples=ctds_samples, references=references
    )


def reference_images(paths) -> list[Image.Image] | None:
    """The uploaded normal reference images, decoded by the library (its limit and its per-reference
    errors; `user_errors` cuts the server folders from the messages)."""
    return load_references([p for p in (paths or []) if p]) or None


# ----------------------------------------------------------------------------- words and errors


def md(text: str) -> str:
    """User or system text made inert inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", html.escape(str(text), quote=False))


def public(message: str) -> str:
    """An error message without server folders: absolute paths are cut to their last part."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/:;,'\"()\[\]]+/)+([^\s/:;,'\"()\[\]]*)", r"\1", message)


def short(text: str, limit: int = NAME_SHOWN) -> str:
    """Long user text cut for display, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters in all)"


def user_error(message: str, title: str = "Cannot use this input") -> gr.Error:
    return gr.Error(message, title=title, print_exception=False)


def user_errors(fn):
    """Every failure of a handler reaches the user as a readable gr.Error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, ValueError) as e:
            raise user_error(html.escape(public(str(e)))) from None
        except Exception as e:
            log.exception("request failed")
            raise user_error(
                f"The model failed on this request ({type(e).__name__}); the server log has the details.",
                title="Internal error",
            ) from None

    return wrapper


def valid(what: str, value, options: tuple | type | None = None):
    """`value` if the page could have sent it, else a clear gr.Error: without `options` a finite number in
    [0, 1] (every slider here), else one of `options` (radios, checkboxes) or an instance of that type."""
    if options is None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        expected = "a number from 0 to 1"
    elif isinstance(options, type):
        ok, expected = isinstance(value, options), f"a {options.__name__}"
    else:
        ok = any(type(value) is type(o) and value == o for o in options)
        expected = "one of " + ", ".join(map(repr, options))
    if not ok:  # NaN fails 0 <= value
        shown = html.escape(short(repr(value), 40))
        raise user_error(f"{what} must be {expected}, not {shown}", title="Invalid value")
    return value


def settings(threshold, opacity, scale):
    """The display settings every view shares, checked."""
    valid("the threshold", threshold)
    valid("the opacity", opacity)
    valid("the colour scale", scale, SCALE_VALUES)


def decision(score: float, threshold: float) -> str:
    return "anomalous" if score >= threshold else "normal"


def scale_words(amap: np.ndarray, scale: str) -> str:
    if scale == "stretch":
        return (
            f"stretched per image: blue = {amap.min():.3f} (this image's minimum), "
            f"red = {amap.max():.3f} (its maximum); not comparable across images"
        )
    return "fixed: blue = 0, red = 1 (probability of 'abnormal')"


# ----------------------------------------------------------------------------- images and files


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    image = image.copy()
    image.thumbnail((side, side))
    return image


def shrink(maps: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """(..., H, W) float maps resized to size = (width, height), e.g. for a thumbnail."""
    if maps is None:
        return None
    flat = maps.reshape(-1, *maps.shape[-2:]).astype(np.float32)
    out = [np.asarray(Image.fromarray(m).resize(size, Image.BILINEAR)) for m in flat]
    return np.stack(out).reshape(*maps.shape[:-2], size[1], size[0])


def stretch_to(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)


def read_upload(path: str) -> Image.Image:
    """An uploaded file through wmoe's own loader; errors name the file, not the server folder."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ImageError(str(e).replace(str(path), Path(path).name)) from None


def unreadable(path: str | None) -> str:
    """Why an upload gradio could not open is no usable image, in wmoe's words (as the API and CLI say it)."""
    if path:
        try:
            read_upload(path)
        except ImageError as e:
            return without_name(str(e), Path(path).name)
    return "not an image that can be read (PNG, JPEG, TIFF, BMP, GIF, WebP...)"


def png(image: Image.Image, path: Path) -> str:
    """A picture for the page, handed to gradio as a PNG file. gradio copies a file into its cache
    atomically, but rewrites the PNG of an in-memory image in place: two users shown the same picture at
    the same moment (the same example, say) could each be sent a half-written file. Fast zlib level 1:
    still lossless, and at level 6 encoding the page's 11 pictures cost more than half a prediction."""
    image.save(path, compress_level=1)
    return str(path)


def safe_stem(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(name).stem)[:60] or "image"


def batch_items(paths: list[str]):
    """(name, loader) for every file uploaded; a .zip contributes each of its files, unpacked as a stream
    against one byte budget for the whole request (`Unpacked`), whatever its headers claim."""
    budget = Unpacked(MAX_UNPACKED_BYTES)
    for path in paths:
        if not zipfile.is_zipfile(path):
            yield Path(path).name, functools.partial(read_upload, path)
            continue
        entries = zip_entries(path)
        if entries > MAX_ZIP_ENTRIES:
            yield (
                Path(path).name,
                functools.partial(
                    refuse,
                    f"{entries:,} entries, over the limit of {MAX_ZIP_ENTRIES:,} per archive: not unpacked",
                ),
            )
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            yield Path(path).name, functools.partial(refuse, f"a damaged .zip ({e})")
            continue
        for m in members:
            hidden = m.filename.startswith("__MACOSX/") or Path(m.filename).name.startswith(".")
            if not m.is_dir() and not hidden:
                yield m.filename, functools.partial(zip_member, path, m, budget)


def refuse(reason: str):
    raise ImageError(reason)


def zip_entries(path: str) -> int:
    """The entry count an archive's end record declares, read before zipfile parses the whole directory
    (a 50 MB upload can declare a million entries); a Zip64 record counts as too many."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 2**16 - 22))
        tail = f.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 12:
        return 0  # no end record: zipfile will say it is damaged
    entries = int.from_bytes(tail[end + 10 : end + 12], "little")
    return MAX_ZIP_ENTRIES + 1 if entries == 0xFFFF else entries


@dataclass
class Unpacked:
    """The bytes one Batch request may still unpack from its archives."""

    left: int


def zip_member(path: str, member: zipfile.ZipInfo, budget: Unpacked) -> Image.Image:
    """One archive member, decompressed chunk by chunk: never more than MAX_ZIP_MEMBER_BYTES of it, nor
    more than the request's budget, are held, whatever sizes its headers declare."""
    name, limit = member.filename, min(MAX_ZIP_MEMBER_BYTES, budget.left)
    over = (
        f"over the limit of {MAX_ZIP_MEMBER_BYTES // 2**20} MB unpacked per image"
        if limit == MAX_ZIP_MEMBER_BYTES
        else f"over the limit of {MAX_UNPACKED_BYTES // 2**20} MB unpacked per request: not unpacked"
    )
    if member.flag_bits & 0x1:
        raise ImageError(f"{name}: encrypted (password-protected): not unpacked")
    if Path(name).suffix.lower() in ARCHIVES:
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    if member.file_size > limit:
        raise ImageError(f"{name}: {member.file_size / 2**20:.0f} MB unpacked, {over}")
    data = bytearray()
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            while chunk := stream.read(ZIP_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise ImageError(f"{name}: more than {limit / 2**20:.0f} MB unpacked, {over}")
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as e:
        raise ImageError(f"{name}: cannot be unpacked ({e})") from None  # damaged, odd method, lying sizes
    finally:
        budget.left -= len(data)
    if data.startswith(b"PK\x03\x04"):
        raise ImageError(f"{name}: an archive inside the archive: not unpacked (put its images in the .zip)")
    try:
        return load_image(data)
    except ImageError as e:
        raise ImageError(str(e).replace("the uploaded bytes", name)) from None


def without_name(message: str, name: str) -> str:
    """An ImageError message minus its leading file name (shown beside it anyway)."""
    message = public(message)
    return message[len(name) + 2 :] if message.startswith(f"{name}: ") else message


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


@dataclass
class Result:
    """One analysed image, kept in the session (gr.State) so display changes never re-run the model.

    The anomaly map stays at the image's own size; the other maps are kept at thumbnail size.
    """

    image: Image.Image
    small: Image.Image
    pred: Prediction
    stem: str
    model: dict
    layers: tuple[int, ...]
    map_files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- the views


class Views:
    """The event handlers on the loaded models: WMoE-CLIP checkpoints by name (`detectors`: one Detector,
    a {name: Detector} mapping, or None) and the training-free CLIP baseline (or None)."""

    def __init__(self, detectors: Detector | Mapping[str, Detector] | None, baseline: Detector | None):
        if isinstance(detectors, Detector):
            detectors = {"WMoE-CLIP": detectors}
        self.detectors, self.baseline = dict(detectors or {}), baseline
        self.scratch = Scratch()
        LOADED.update({id(d): d for d in (*self.detectors.values(), baseline) if d is not None})

    def checkpoint(self, name: str | None) -> tuple[str, Detector]:
        """The loaded checkpoint of that name (the first when none is given); unknown names are refused."""
        if not name:
            return next(iter(self.detectors.items()))
        if name not in self.detectors:
            raise user_error(
                f"No checkpoint named {html.escape(short(str(name), 60))} is loaded; choose one of: "
                + ", ".join(html.escape(n) for n in self.detectors),
                title="Unknown checkpoint",
            )
        return name, self.detectors[name]

    def primary(self, name: str | None = None) -> tuple[Detector, dict]:
        """The model Analyze and Batch use (the checkpoint called `name`, else the first, else the baseline),
        and how results describe it (warning: why not to trust them)."""
        if self.detectors:
            name, d = self.checkpoint(name)
            return d, describe(name, d)
        if self.baseline is not None:
            b = self.baseline
            return b, {
                "name": f"{BASELINE_NAME} (fixed prompts)",
                "training_free": True,
                "backbone": b.config.backbone,
                "warning": RANDOM_BACKBONE if includes_backbone(b.config) else None,
            }
        raise user_error(
            "Nothing can run here: no checkpoint and no CLIP backbone weights (see the note at the top).",
            title="No model",
        )

    @staticmethod
    def image(path) -> Image.Image:
        if not path:
            raise user_error("Upload, paste or capture an image first.", title="No image")
        return read_upload(path)

    # -- Analyze
    @user_errors
    def analyze(
        self,
        image_path: str,
        class_name: str,
        threshold: float,
        opacity: float,
        scale: str,
        sample_ctds: bool,
        checkpoint: str = "",
        references: list[str] | None = None,
    ):
        """Find where an object in a photo is abnormal: heatmap overlay, score, SA-MoE routing, maps.

        Args:
            image_path (str): the image to analyse (PNG, JPEG, TIFF, BMP, GIF, WebP...).
            class_name (str): what the object is, in a few words (e.g. "screw", "brain MRI").
            threshold (float): 0..1; outlines the map's region at or above it; decides normal / anomalous.
            opacity (float): 0..1, how strongly the heatmap covers the image.
            scale (str): "fixed" (0..1, comparable across images) or "stretch" (this image's min..max).
            sample_ctds (bool): also sample 8 CTDS prompts and return the map's standard deviation.
            checkpoint (str): which loaded checkpoint runs, by name (folder name or Hub repo id); "" = the first.
            references (list[str]): optional normal images of the same part (up to 4): adds a reference map.

        Returns:
            overlay: the heatmap over the image, at the image's own size
            score: Markdown with the score, the decision at the threshold and notes
            routing: chart of each expert's routing weight and own score (none without SA-MoE)
            expert maps: where each expert attended, captioned with its weight and score
            layer maps: one map per tapped CLIP layer
            uncertainty: the map's standard deviation over CTDS samples (none unless asked for)
            timings: Markdown, seconds per stage
            downloads: the map as a 16-bit PNG and as .npy, and the result as JSON
            reference parts: with references, the zero-shot map and the reference map apart
        """
        valid("the class name", class_name, str)
        valid("CTDS sampling", sample_ctds, (False, True))
        settings(threshold, opacity, scale)
        detector, model = self.primary(checkpoint)
        image = self.image(image_path)
        refs = reference_images(references)
        samples = CTDS_SAMPLES if sample_ctds else 0
        pred = run_model(detector, [image], class_name, ctds_samples=samples, references=refs)[0]
        if sample_ctds and pred.uncertainty_map is None:
            pred.notes.append("this model has no CTDS module, so there is no uncertainty map")
        small = thumbnail(image)
        pred = dataclasses.replace(
            pred,
            layer_maps=shrink(pred.layer_maps, small.size),
            expert_maps=shrink(pred.expert_maps, small.size),
            uncertainty_map=shrink(pred.uncertainty_map, small.size),
            zero_shot_map=shrink(pred.zero_shot_map, small.size) if pred.references else None,
            reference_map=shrink(pred.reference_map, small.size),
        )
        result = Result(image, small, pred, safe_stem(image_path), model, detector.config.layers)
        chart = None
        if pred.expert_weights is not None:
            chart = routing_chart(
                pred.expert_weights, pred.expert_scores, title="SA-MoE routing (this image)"
            )
            chart = png(chart, self.scratch.new() / "routing.png")
        dtype = dtype_name(detector.dtype)
        timings = (
            f"**Time per stage** on `{detector.device}` ({dtype}): "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in pred.timings.items())
            + f"; **total {sum(pred.timings.values()) * 1000:.1f} ms**"
        )
        shown, score, experts, layers, uncertainty, files, parts = self.render(
            result, threshold, opacity, scale
        )
        return shown, score, chart, experts, layers, uncertainty, timings, files, parts, result

    @user_errors
    def predict_json(
        self, image_path: str, class_name: str, threshold: float, checkpoint: str = ""
    ) -> tuple[dict, str]:
        """Score one image: a compact JSON result, and the anomaly map as an image (for scripts and agents).

        Args:
            image_path (str): the image to analyse (PNG, JPEG, TIFF, BMP, GIF, WebP...): an upload, or a public http(s) image URL.
            class_name (str): what the object is, in a few words (e.g. "screw").
            threshold (float): 0..1; the image is called anomalous when its score is at or above it.
            checkpoint (str): which loaded checkpoint runs, by name (folder name or Hub repo id); "" = the first.

        Returns:
            result: score, decision, threshold, class_name, cls_score, moe_score, expert_weights, expert_scores,
            image_size [height, width], timings, notes and model (no maps)
            anomaly_map: the map at the image's size as a 16-bit grayscale PNG (pixel / 65535 = probability)
        """
        valid("the class name", class_name, str)
        valid("the threshold", threshold)
        detector, model = self.primary(checkpoint)
        pred = run_model(detector, [self.image(image_path)], class_name)[0]
        amap = png(map_to_png16(pred.anomaly_map), self.scratch.new() / "anomaly_map.png")
        return result_json(pred, threshold, model), amap

    @user_errors
    def render(self, result: Result | None, threshold: float, opacity: float, scale: str):
        """Everything that depends on the display settings, drawn from the stored prediction only (an
        internal event of the page, not a public endpoint)."""
        settings(threshold, opacity, scale)
        if result is None:  # settings moved before the first run: nothing to redraw
            return tuple(gr.skip() for _ in range(7))
        p, small, stretch = result.pred, result.small, scale == "stretch"
        folder = self.scratch.new()

        def saved(image: Image.Image, what: str) -> str:
            return png(image, folder / f"{result.stem}_{what}.png")

        shown = overlay(result.image, p.anomaly_map, opacity=opacity, stretch=stretch, threshold=threshold)
        shown = saved(shown, "overlay")
        warning = f" (**{result.model['warning']}**)" if result.model["warning"] else ""
        area = 100 * float((p.anomaly_map >= threshold).mean())
        lines = [
            f"### Score {p.score:.3f}: **{decision(p.score, threshold)}** at threshold {threshold:.2f}",
            f"Model: {result.model['name']}{warning}",
            f"Class: {md(short(p.class_name))} | image {result.image.width}x{result.image.height} px | "
            f"area at or above the threshold: {area:.1f}%",
            f"CLS-vs-text score {p.cls_score:.3f}"
            + ("" if p.moe_score is None else f" | SA-MoE score {p.moe_score:.3f}"),
            f"Colour scale: {scale_words(p.anomaly_map, scale)}",
        ]
        if p.expert_weights is None:
            lines.append("This model has no SA-MoE: no routing chart and no expert maps.")
        if p.uncertainty_map is not None:
            lines.append(
                f"Uncertainty over {CTDS_SAMPLES} CTDS samples: largest std {p.uncertainty_map.max():.4f}"
            )
        parts = []
        if p.references:
            lines.append(
                f"With {p.references} reference image(s): zero-shot score {p.zero_shot_score:.3f}, "
                f"reference score {p.reference_score:.3f} (the largest patch distance); the score and "
                "the map shown are the mean of the two parts"
            )
            parts = [
                (
                    saved(overlay(small, p.zero_shot_map, opacity=opacity, stretch=stretch), "zero_shot"),
                    f"zero-shot map (score {p.zero_shot_score:.3f})",
                ),
                (
                    saved(overlay(small, p.reference_map, opacity=opacity, stretch=stretch), "reference"),
                    f"reference map: distance to the nearest reference patch (max {p.reference_map.max():.3f})",
                ),
            ]
        lines += [f"Note: {md(n)}" for n in p.notes]
        experts = []
        if p.expert_maps is not None:
            experts = [
                (
                    saved(overlay(small, emap, opacity=opacity), f"expert{i + 1}"),
                    f"expert {i + 1}: weight {p.expert_weights[i]:.2f}, score {p.expert_scores[i]:.2f}",
                )
                for i, emap in enumerate(p.expert_maps)
            ]
        layers = [
            (
                saved(overlay(small, lmap, opacity=opacity, stretch=stretch), f"layer{layer}"),
                f"layer {layer}: max {lmap.max():.2f}",
            )
            for layer, lmap in zip(result.layers, p.layer_maps, strict=True)
        ]
        uncertainty = None
        if p.uncertainty_map is not None:  # a std of probabilities is at most 0.5: the fixed scale is 0..0.5
            u = p.uncertainty_map if stretch else np.clip(p.uncertainty_map / 0.5, 0, 1)
            uncertainty = saved(Image.fromarray(colorize(u, stretch=stretch)), "uncertainty")
        files = self.downloads(result, threshold, folder)
        return shown, "\n\n".join(lines), experts, layers, uncertainty, files, parts

    def downloads(self, result: Result, threshold: float, folder: Path) -> list[str]:
        """Raw map (16-bit PNG, .npy; written once) and the result as JSON at this threshold, into folder."""
        if not result.map_files or not all(f.is_file() for f in result.map_files):
            png16, npy = folder / f"{result.stem}_map16.png", folder / f"{result.stem}_map.npy"
            map_to_png16(result.pred.anomaly_map).save(png16)
            np.save(npy, result.pred.anomaly_map)
            result.map_files = [png16, npy]
        path = folder / f"{result.stem}_result.json"
        path.write_text(json.dumps(result_json(result.pred, threshold, result.model), indent=2))
        return [str(f) for f in result.map_files] + [str(path)]

    # -- Compare
    @user_errors
    def compare(
        self,
        image_path: str,
        class_name: str,
        threshold: float,
        opacity: float,
        scale: str,
        checkpoint: str = "",
        references: list[str] | None = None,
    ):
        """One image through every loaded checkpoint, the ablations of one (without WCMA; without CTDS;
        uniform routing) and the training-free CLIP baseline, side by side on one colour scale; with
        reference images, each checkpoint and the baseline also with them.

        Args:
            image_path (str): the image to analyse (PNG, JPEG, TIFF, BMP, GIF, WebP...).
            class_name (str): what the object is, in a few words (e.g. "screw").
            threshold (float): 0..1; outlines each map's region at or above it and decides each variant.
            opacity (float): 0..1, how strongly the heatmaps cover the image.
            scale (str): "fixed" (0..1) or "stretch" (the joint min..max of all the maps shown).
            checkpoint (str): whose ablations are shown, by name (folder name or Hub repo id); "" = the first.
            references (list[str]): optional normal images of the same part (up to 4).

        Returns:
            variants: one overlay per variant, captioned with its image score
            scores: Markdown table of each variant's score, decision, CLS and SA-MoE scores
        """
        valid("the class name", class_name, str)
        settings(threshold, opacity, scale)
        _, model = self.primary(checkpoint)
        image = self.image(image_path)
        variants, missing = self.variants(checkpoint, reference_images(references))
        runs = []
        for group in by_backbone(variants):  # one backbone pass per distinct backbone (usually one)
            preds = run_model(group[0][1], [image], class_name, variants=group)
            runs += [(v[0], p) for v, p in zip(group, preds, strict=True)]
        order = [v[0] for v in variants]
        runs.sort(key=lambda r: order.index(r[0]))
        maps = [p.anomaly_map for _, p in runs]
        lo, hi = (0.0, 1.0)
        if scale == "stretch":  # one scale for all: the joint min..max
            lo, hi = min(m.min() for m in maps), max(m.max() for m in maps)
        small, folder = thumbnail(image), self.scratch.new()
        cut = float(stretch_to(np.float32(threshold), lo, hi))
        gallery = [
            (
                png(
                    overlay(
                        small,
                        shrink(stretch_to(p.anomaly_map, lo, hi), small.size),
                        opacity=opacity,
                        threshold=cut,
                    ),
                    folder / f"variant{i}.png",
                ),
                f"{name}: {p.score:.3f}",
            )
            for i, (name, p) in enumerate(runs)
        ]
        table = [
            "| variant | image score | decision | CLS score | SA-MoE score |",
            "|---|---:|---|---:|---:|",
        ]
        table += [
            f"| {name} | {p.score:.3f} | {decision(p.score, threshold)} | {p.cls_score:.3f} | "
            f"{'-' if p.moe_score is None else f'{p.moe_score:.3f}'} |"
            for name, p in runs
        ]
        scale_note = (
            f"stretched jointly over the {len(runs)} maps: blue = {lo:.3f}, red = {hi:.3f}"
            if scale == "stretch"
            else "fixed: blue = 0, red = 1"
        )
        notes = [f"One colour scale for all ({scale_note}); outline at threshold {threshold:.2f}."]
        if model["warning"]:
            notes.append(f"**{model['warning']}**")
        notes += [f"Not shown: {md(s)}." for s in missing]
        return gallery, "\n".join(table) + "\n\n" + "\n\n".join(notes)

    def variants(self, chosen: str | None, references: list | None = None) -> tuple[list[tuple], list[str]]:
        """Compare's (name, detector, skip[, references]) list: each checkpoint in full, then the chosen
        one's ablations (those its modules allow), then the baseline, then with references each
        checkpoint and the baseline again with them; and what could not be shown, in words."""
        variants, missing = [], []
        if not self.detectors:
            missing.append("the WMoE-CLIP variants need a checkpoint")
        else:
            chosen, detector = self.checkpoint(chosen)
            several = len(self.detectors) > 1
            for name, d in self.detectors.items():
                if several:
                    variants.append((name, d, frozenset()))
            for name, skip, switch, module in VARIANTS:
                if several and not skip:
                    continue  # already there, under its checkpoint's name
                label = f"{chosen} {name}" if several else name
                if switch and not getattr(detector.config, switch):
                    missing.append(f"{label}: this checkpoint has no {module} module")
                    continue
                variants.append((label, detector, skip))
        if self.baseline is not None:
            variants.append((BASELINE_NAME, self.baseline, frozenset()))
        if references:
            full = [(n, d) for n, d, skip in variants if not skip]
            variants += [(f"{n} + references", d, frozenset(), references) for n, d in full]
        return variants, missing

    # -- Batch
    @user_errors
    def batch(
        self,
        paths: list[str],
        class_name: str,
        threshold: float,
        class_from_folder: bool = False,
        checkpoint: str = "",
        progress=gr.Progress(),  # noqa: B008 (gradio's way)
    ):
        """Score several images, or .zip files of images, of one kind of object (at most
        100 per request; the rest are listed as not processed).

        Args:
            paths (list[str]): the images, or .zip files of images.
            class_name (str): what the objects are, in a few words (e.g. "screw").
            threshold (float): 0..1; images scoring at or above it are called anomalous.
            class_from_folder (bool): an image in a folder of a .zip takes the folder's name as its class name.
            checkpoint (str): which loaded checkpoint runs, by name (folder name or Hub repo id); "" = the first.

        Returns:
            gallery: overlays sorted by score, highest first
            summary: Markdown, with the files that could not be read and why
            csv: file, class name, score, decision, CLS and SA-MoE scores, each expert's weight and score
            routing strips: each image's routing weights (one cell per expert, 0..1), in the gallery's order
            routing per class: Markdown table of each class's mean routing weights and routing entropy
            routing chart: the mean routing per class as stacked bars
        """
        valid("the class name", class_name, str)
        valid("the threshold", threshold)
        valid("the class name from the zip folder", class_from_folder, (False, True))
        detector, model = self.primary(checkpoint)
        if not paths:
            raise user_error("Choose some images (or a .zip of images) first.", title="No files")
        items = list(batch_items(paths))
        errors = [
            (name, f"not processed: over the limit of {MAX_BATCH_IMAGES} images")
            for name, _ in items[MAX_BATCH_IMAGES:]
        ]
        items = items[:MAX_BATCH_IMAGES]
        folder, rows = self.scratch.new(), []
        progress((0, len(items)), desc="Scoring", unit="images")
        for start in range(0, len(items), BATCH_CHUNK):
            loaded = []
            for name, loader in items[start : start + BATCH_CHUNK]:
                try:
                    loaded.append((name, loader()))
                except ImageError as e:  # listed with its reason; the others are still scored
                    errors.append((name, without_name(str(e), name)))
            if loaded:
                names = [
                    (folder_class(n) or class_name) if class_from_folder else class_name for n, _ in loaded
                ]
                preds = run_model(detector, [im for _, im in loaded], names)
                for (name, im), p in zip(loaded, preds, strict=True):
                    target = folder / f"{len(rows):03d}_{safe_stem(name)}.png"
                    small = thumbnail(im)
                    overlay(small, shrink(p.anomaly_map, small.size), threshold=threshold).save(target)
                    rows.append((name, p, target))
            progress((min(start + BATCH_CHUNK, len(items)), len(items)), desc="Scoring", unit="images")
        rows.sort(key=lambda r: -r[1].score)
        gallery = [
            (str(target), f"{name}: {p.score:.3f} ({decision(p.score, threshold)})")
            for name, p, target in rows
        ]
        csv_path = folder / "scores.csv"
        write_csv(csv_path, rows, errors, threshold, model)
        warning = f" (**{model['warning']}**)" if model["warning"] else ""
        head = [
            f"{len(rows)} image(s) scored, sorted by score (highest first); threshold {threshold:.2f}; "
            f"colour scale fixed 0..1. Model: {model['name']}{warning}"
        ]
        if errors:
            head.append(
                f"**{len(errors)} file(s) not processed:**\n\n"
                + "\n".join(f"- {md(name)}: {md(err)}" for name, err in errors)
            )
        return gallery, "\n\n".join(head), str(csv_path), *self.batch_routing(rows, folder)

    @staticmethod
    def batch_routing(rows, folder: Path) -> tuple[list, str, str | None]:
        """Routing strips (in the gallery's order), the table of the mean routing per class, its chart."""
        routed = [(name, p) for name, p, _ in rows if p.expert_weights is not None]
        if not routed:
            return [], "This model has no SA-MoE: no routing weights." if rows else "", None
        strips = [
            (
                png(routing_strip(p.expert_weights), folder / f"{i:03d}_routing.png"),
                f"{name}: " + " ".join(f"{w:.2f}" for w in p.expert_weights),
            )
            for i, (name, p) in enumerate(routed)
        ]
        by_class = routing_by_class(
            np.stack([p.expert_weights for _, p in routed]), [p.class_name for _, p in routed]
        )
        E = len(routed[0][1].expert_weights)
        table = [
            "| class | images | " + " | ".join(f"expert {e + 1}" for e in range(E)) + " | entropy (0..1) |",
            "|---|---:|" + "---:|" * (E + 1),
        ]
        table += [
            f"| {md(short(c, 60))} | {r.images} | "
            + " | ".join(f"{w:.3f}" for w in r.mean_weights)
            + f" | {r.normalized_entropy:.3f} |"
            for c, r in by_class.items()
        ]
        note = (
            "Mean routing weight of each expert per class name; entropy: the images' mean routing entropy "
            "over its maximum ln E (1 = uniform routing, 0 = one expert per image)."
        )
        chart = class_routing_chart({c: (r.mean_weights, r.normalized_entropy) for c, r in by_class.items()})
        return strips, note + "\n\n" + "\n".join(table), png(chart, folder / "routing_by_class.png")


def describe(name: str, detector: Detector) -> dict:
    """How results name a checkpoint, and the warning, if any, why not to trust them."""
    d = detector
    warning = UNTRAINED if not d.trained else RANDOM_BACKBONE if includes_backbone(d.config) else None
    return {
        "name": "WMoE-CLIP" if name == "WMoE-CLIP" else f"WMoE-CLIP ({name})",
        "checkpoint": name,
        "trained": d.trained,
        "backbone": d.config.backbone,
        "warning": warning,
    }


def by_backbone(
    variants: list[tuple[str, Detector, frozenset]],
) -> list[list[tuple[str, Detector, frozenset]]]:
    """Variants grouped by the backbone object their detector runs on, in first-seen order."""
    groups: dict[int, list] = {}
    for v in variants:
        groups.setdefault(id(v[1].model.backbone), []).append(v)
    return list(groups.values())


def folder_class(name: str) -> str:
    """The name of the folder a .zip member sits in ("screw/001.png" -> "screw"), or "" at the top."""
    return PurePosixPath(name).parent.name


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


def result_json(pred: Prediction, threshold: float, model: dict) -> dict:
    """The result as the JSON download and the `predict_json` endpoint give it (no maps)."""
    return {
        **pred.to_dict(),
        "threshold": threshold,
        "decision": decision(pred.score, threshold),
        "model": model,
    }


def write_csv(path: Path, rows, errors, threshold: float, model: dict):
    """One row per scored image (score, decision, expert weights and scores), then the files that failed;
    every cell through `csv_cell`."""
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
                model["name"],
                model["warning"],
                "",
            ]
        )
    for name, err in errors:
        lines.append([name, *[None] * (5 + 2 * experts), model["name"], model["warning"], err])
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows([csv_cell(v) for v in line] for line in lines)
