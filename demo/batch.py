"""The Batch tab: several images or .zip files of one kind of object scored in chunks, or, ticked, each
class's images scored against each other by MuSc; a gallery sorted by score, a CSV, and the routing per
image and per class. Unreadable files are listed with the reason."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np

from demo.archives import batch_items, folder_class
from demo.guards import (
    checked,
    md,
    safe_stem,
    short,
    uploads_only,
    user_error,
    user_errors,
    valid,
    without_name,
)
from demo.models import RANDOM_BACKBONE, Models, run_model, run_musc, run_one
from demo.results import Scratch, decision, png, shrink, thumbnail, write_csv
from demo.widgets import checkpoint_menu, class_box, threshold_slider
from wmoe import ImageError, WinCLIP
from wmoe.checkpoint import includes_backbone
from wmoe.musc import min_images
from wmoe.render import class_routing_chart, overlay, routing_strip
from wmoe.routing import routing_by_class

BATCH_CHUNK = 8  # images per model call
MAX_BATCH_IMAGES = 100


class BatchTab:
    """Its components (made by `layout`, inside the page), its event and its handler."""

    def __init__(self, models: Models, scratch: Scratch):
        self.models, self.scratch = models, scratch

    def layout(self, on_model: dict):
        has_moe = any(m.config.use_moe for m in self.models.shown)
        gr.Markdown(
            f"Several images, or a .zip of images (up to {MAX_BATCH_IMAGES}), with one class "
            "name (or, ticked, each zip folder's name): a gallery sorted by score, a CSV of the scores "
            "and expert weights, each image's routing and the mean routing per class. Files "
            "that cannot be read are listed with the reason; the rest are still scored."
        )
        with gr.Row():
            with gr.Column(scale=1):
                files = uploads_only(
                    gr.File(
                        label="Images or .zip",
                        file_count="multiple",
                        file_types=["image", ".zip"],
                        elem_id="batch-files",
                    )
                )
                class_name, threshold = class_box("batch-class"), threshold_slider()
                from_folder = gr.Checkbox(
                    label="Class name from the zip folder (an image in a folder of a .zip takes its name)",
                    elem_id="batch-class-from-folder",
                )
                checked(from_folder, "the class name from the zip folder", (False, True))
                checkpoint = checkpoint_menu(list(self.models.detectors), "batch-checkpoint")
                musc = gr.Checkbox(
                    label=f"Score the batch against itself (MuSc): needs at least {min_images()} images of "
                    "a class (of each zip folder when the class comes from the folder)",
                    visible=bool(self.models.shown),
                    elem_id="batch-musc",
                )
                checked(musc, "MuSc", (False, True))
                run = gr.Button(
                    "Score all", variant="primary", elem_id="batch-run", interactive=bool(self.models.shown)
                )
                self.csv = gr.File(label="CSV", interactive=False, elem_id="batch-csv")
            with gr.Column(scale=3):
                self.gallery = gr.Gallery(
                    label="Gallery", format="png", columns=4, height=520, elem_id="batch-gallery"
                )
                self.summary = gr.Markdown(label="Summary", elem_id="batch-summary")
        with gr.Row(visible=has_moe):
            self.strips = gr.Gallery(
                label="Routing strips",
                format="png",
                columns=4,
                height=260,
                object_fit="contain",
                elem_id="batch-routing-strips",
                scale=3,
            )
            with gr.Column(scale=2):
                self.chart = gr.Image(
                    label="Routing chart",
                    type="filepath",
                    format="png",
                    interactive=False,
                    elem_id="batch-routing-chart",
                )
                self.routing = gr.Markdown(label="Routing per class", elem_id="batch-routing")
        gr.Markdown(
            "**Routing strips**: each image's SA-MoE routing weights, one cell per expert from left to "
            "right, on a fixed 0..1 scale (dark = 0, yellow = 1), in the gallery's order.",
            visible=has_moe,
        )
        run.click(
            self.batch,
            [files, class_name, threshold, from_folder, checkpoint, musc],
            [self.gallery, self.summary, self.csv, self.strips, self.routing, self.chart],
            api_name="batch",
            **on_model,
        )

    @user_errors
    def batch(
        self,
        paths: list[str],
        class_name: str,
        threshold: float,
        class_from_folder: bool = False,
        checkpoint: str = "",
        musc: bool = False,
        progress=gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> dict:
        """Score several images, or .zip files of images, of one kind of object (at most
        100 per request; the rest are listed as not processed); or, with `musc`, score each class's
        images against each other (MuSc, no training, no prompts: at least 5 images of a class).

        Args:
            paths (list[str]): the images, or .zip files of images.
            class_name (str): what the objects are, in a few words (e.g. "screw").
            threshold (float): 0..1; images scoring at or above it are called anomalous.
            class_from_folder (bool): an image in a folder of a .zip takes the folder's name as its class name.
            checkpoint (str): which loaded checkpoint runs, by name (folder name or Hub repo id); "" = the first
                (none loaded: WinCLIP, as in Analyze).
            musc (bool): score the batch against itself with MuSc on the main backbone (one pass per
                class; maps normalised over the class's images), instead of the model.

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
        valid("MuSc", musc, (False, True))
        # MuSc runs on the main backbone; otherwise the model Analyze runs (WinCLIP without a checkpoint)
        detector, about = self.models.primary(checkpoint, winclip=not musc)
        if musc:
            about = musc_about(detector)
        if not paths:
            raise user_error("Choose some images (or a .zip of images) first.", title="No files")
        items = list(batch_items(paths))
        errors = [
            (name, f"not processed: over the limit of {MAX_BATCH_IMAGES} images")
            for name, _ in items[MAX_BATCH_IMAGES:]
        ]
        items = items[:MAX_BATCH_IMAGES]
        folder, rows = self.scratch.new(), []

        def add(name: str, image, p):  # one scored image: its overlay for the gallery
            target = folder / f"{len(rows):03d}_{safe_stem(name)}.png"
            small = thumbnail(image)
            overlay(small, shrink(p.anomaly_map, small.size), threshold=threshold).save(target)
            rows.append((name, p, target))

        def class_of(name: str) -> str:
            return (folder_class(name) or class_name) if class_from_folder else class_name

        progress((0, len(items)), desc="Scoring", unit="images")
        if musc:
            score_by_musc(detector, items, class_of, add, errors)
        else:
            for start in range(0, len(items), BATCH_CHUNK):
                loaded = read(items[start : start + BATCH_CHUNK], errors)
                if isinstance(detector, WinCLIP):  # one image at a time, on its own backbone
                    preds = [run_one(detector, im, class_of(n)) for n, im in loaded]
                else:
                    preds = (
                        run_model(detector, [im for _, im in loaded], [class_of(n) for n, _ in loaded])
                        if loaded
                        else []
                    )
                for (name, im), p in zip(loaded, preds, strict=True):
                    add(name, im, p)
                progress((min(start + BATCH_CHUNK, len(items)), len(items)), desc="Scoring", unit="images")
        rows.sort(key=lambda r: -r[1].score)
        gallery = [
            (str(target), f"{name}: {p.score:.3f} ({decision(p.score, threshold)})")
            for name, p, target in rows
        ]
        csv_path = folder / "scores.csv"
        write_csv(csv_path, rows, errors, threshold, about)
        warning = f" (**{about['warning']}**)" if about["warning"] else ""
        scale = "normalised over each class's images (MuSc)" if musc else "fixed 0..1"
        head = [
            f"{len(rows)} image(s) scored, sorted by score (highest first); threshold {threshold:.2f}; "
            f"colour scale {scale}. Method: **{', '.join(sorted({p.method for _, p, _ in rows}))}** | model: {about['name']}{warning}"
        ]
        if errors:
            head.append(
                f"**{len(errors)} file(s) not processed:**\n\n"
                + "\n".join(f"- {md(name)}: {md(err)}" for name, err in errors)
            )
        return {
            self.gallery: gallery,
            self.summary: "\n\n".join(head),
            self.csv: str(csv_path),
            **self.routing_outputs(rows, folder, musc),
        }

    def routing_outputs(self, rows, folder: Path, musc: bool = False) -> dict:
        """Routing strips (in the gallery's order), the table of the mean routing per class, its chart."""
        routed = [(name, p) for name, p, _ in rows if p.expert_weights is not None]
        if musc:
            return {
                self.strips: [],
                self.routing: "MuSc has no experts, so there is no routing.",
                self.chart: None,
            }
        if not routed:
            note = "This model has no SA-MoE: no routing weights." if rows else ""
            return {self.strips: [], self.routing: note, self.chart: None}
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
        return {
            self.strips: strips,
            self.routing: note + "\n\n" + "\n".join(table),
            self.chart: png(chart, folder / "routing_by_class.png"),
        }


def musc_about(detector) -> dict:
    """How Batch's results describe MuSc (the CSV's model column, the summary)."""
    warning = RANDOM_BACKBONE if includes_backbone(detector.config) else None
    name = f"MuSc on {detector.config.backbone} (the batch scored against itself; no training, no prompts)"
    return {
        "name": name,
        "training_free": True,
        "backbone": detector.config.backbone,
        "warning": warning,
    }


def read(items, errors: list) -> list:
    """(name, image) of the items that decode; the others go to `errors` with their reason (the rest are
    still scored)."""
    loaded = []
    for name, loader in items:
        try:
            loaded.append((name, loader()))
        except ImageError as e:
            errors.append((name, without_name(str(e), name)))
    return loaded


def score_by_musc(detector, items, class_of, add, errors: list):
    """MuSc per class: the readable images of each class scored against each other in one pass of the
    main backbone (`run_musc`); a class with fewer than `min_images()` is listed, not scored."""
    by_class: dict[str, list] = {}
    for name, image in read(items, errors):
        by_class.setdefault(class_of(name), []).append((name, image))
    need, scored = min_images(), False
    for cls, loaded in by_class.items():
        if len(loaded) < need:
            why = f"not scored: MuSc needs at least {need} images of a class, '{short(cls, 60)}' has {len(loaded)}"
            errors += [(name, why) for name, _ in loaded]
            continue
        for (name, image), p in zip(loaded, run_musc(detector, [im for _, im in loaded], cls), strict=True):
            add(name, image, p)
        scored = True
    if by_class and not scored:
        raise user_error(
            f"MuSc scores each image against the other images of its class, so it needs at least {need} "
            "readable images of a class; "
            + ", ".join(f"'{md(short(c, 60))}' has {len(v)}" for c, v in by_class.items())
            + ".",
            title="Too few images for MuSc",
        )
