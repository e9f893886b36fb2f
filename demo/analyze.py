"""The Analyze tab: one image through one model; overlay, score, routing, detail maps and downloads, redrawn
from the stored prediction when a display setting moves. Also the compact `predict_json` endpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from demo.guards import checked, display_settings, md, safe_stem, short, upload_image, user_errors, valid
from demo.models import Models, map_labels, references_alone, run_one
from demo.results import (
    THUMB_SIDE,
    Scratch,
    decision,
    png,
    result_json,
    shrink,
    thumbnail,
)
from demo.widgets import (
    checkpoint_menu,
    class_box,
    examples_for,
    image_input,
    opacity_slider,
    reference_input,
    scale_radio,
    threshold_slider,
)
from wmoe import Detector, Prediction
from wmoe.precision import dtype_name
from wmoe.references import load_references
from wmoe.render import colorize, map_to_png16, overlay, routing_chart

CTDS_SAMPLES = 8


@dataclass
class Result:
    """One analysed image, kept in the session (gr.State) so display changes never re-run the model.

    The anomaly map stays at the image's own size; the detail maps come at the thumbnail's (`small`) size,
    and the zero-shot and reference maps are shrunk to it here, once.
    """

    image: Image.Image
    small: Image.Image
    pred: Prediction
    stem: str
    about: dict  # how results describe the model (`Models.primary`)
    labels: list[str]  # what each layer map is (`models.map_labels`)
    references_alone: bool  # with references: the map shown is their part alone (`models.references_alone`)
    map_files: list[Path] = field(default_factory=list)


def reference_images(paths) -> list[Image.Image] | None:
    """The uploaded normal reference images, decoded by the library (its limit and its per-reference
    errors; `user_errors` cuts the server folders from the messages)."""
    return load_references([p for p in (paths or []) if p]) or None


def scale_words(amap: np.ndarray, scale: str) -> str:
    if scale == "stretch":
        return (
            f"stretched per image: blue = {amap.min():.3f} (this image's minimum), "
            f"red = {amap.max():.3f} (its maximum); not comparable across images"
        )
    return "fixed: blue = 0, red = 1 (probability of 'abnormal')"


class AnalyzeTab:
    """Its components (made by `layout`, inside the page), its events and its handlers."""

    def __init__(self, models: Models, scratch: Scratch):
        self.models, self.scratch = models, scratch

    def layout(self, examples: list, on_model: dict):
        shown = self.models.shown
        can_run = self.models.can_run
        has_moe = any(m.config.use_moe for m in shown)  # components no model can fill are not shown at all
        has_ctds = any(m.config.use_ctds for m in shown)
        with gr.Row():
            with gr.Column(scale=2):
                self.image = image_input("input-image")
                self.class_name = class_box("class-name")
                self.checkpoint = checkpoint_menu(list(self.models.detectors), "checkpoint")
                self.references = reference_input("references")
                self.ctds = gr.Checkbox(
                    label=f"CTDS sampling ({CTDS_SAMPLES} prompt samples): uncertainty map",
                    visible=has_ctds,
                    elem_id="ctds",
                )
                checked(self.ctds, "CTDS sampling", (False, True))
                run = gr.Button("Run", variant="primary", elem_id="run", interactive=can_run)
                gr.Markdown(
                    "Run is disabled: no model could be loaded (see the note at the top).",
                    visible=not can_run,
                )
                ex = examples_for(examples, [self.image, self.class_name], "examples")
                gr.Markdown(
                    "**Overlay**: at the image's own resolution, white outline at the threshold. "
                    "**Expert maps**: where each expert attended, each scaled to its own maximum. "
                    "**Layer maps**: one per tapped CLIP layer, on the colour scale chosen. "
                    f"**Uncertainty**: standard deviation over {CTDS_SAMPLES} CTDS samples "
                    "(tick CTDS sampling), fixed scale 0..0.5. **Downloads**: the raw map as a "
                    "16-bit PNG and .npy, and the result as JSON.",
                    elem_id="legend",
                )
            with gr.Column(scale=3):
                self.overlay = gr.Image(
                    label="Overlay",
                    type="pil",
                    format="png",
                    elem_id="overlay",
                    interactive=False,
                    height=420,
                )
                self.score = gr.Markdown("Run the model to see the score.", label="Score", elem_id="score")
                with gr.Row():
                    self.threshold, self.opacity = threshold_slider(), opacity_slider()
                self.scale = scale_radio("Colour scale")
        with gr.Row():
            self.routing = gr.Image(
                label="Routing",
                type="pil",
                format="png",
                elem_id="routing",
                interactive=False,
                show_label=False,
                height=340,
                scale=2,
                visible=has_moe,
            )
            with gr.Column(scale=3):
                self.downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )
                self.timings = gr.Markdown(label="Timings", elem_id="timings")
        self.experts = gr.Gallery(
            label="Expert maps", format="png", columns=4, height=360, elem_id="experts", visible=has_moe
        )
        with gr.Row():
            self.layers = gr.Gallery(
                label="Layer maps",
                format="png",
                columns=4,
                height=240,
                elem_id="layers",
                scale=3,
                object_fit="contain",
            )
            self.uncertainty = gr.Image(  # shown once a run has sampled CTDS (`panels`)
                label="Uncertainty",
                type="pil",
                format="png",
                interactive=False,
                elem_id="uncertainty",
                height=240,
                scale=2,
                visible=False,
            )
        self.parts = gr.Gallery(  # shown once a run has used reference images (`panels`)
            label="Reference parts",
            format="png",
            columns=2,
            height=300,
            elem_id="reference-parts",
            object_fit="contain",
            visible=False,
        )
        self.state = gr.State(None, time_to_live=3600)
        inputs = [
            self.image,
            self.class_name,
            self.threshold,
            self.opacity,
            self.scale,
            self.ctds,
            self.checkpoint,
            self.references,
        ]
        outputs = [
            self.overlay,
            self.score,
            self.routing,
            self.experts,
            self.layers,
            self.uncertainty,
            self.timings,
            self.downloads,
            self.parts,
            self.state,
        ]
        panels = dict(
            fn=self.panels,
            inputs=[self.state],
            outputs=[self.uncertainty, self.parts],
            api_visibility="private",
            show_progress="hidden",
        )
        run.click(self.analyze, inputs, outputs, api_name="analyze", **on_model).success(**panels)
        if ex is not None and can_run:  # clicking an example runs it
            ex.load_input_event.then(
                self.analyze, inputs, outputs, api_visibility="private", **on_model
            ).success(**panels)
        self.result_json = gr.JSON(label="result", visible=False)  # the compact endpoint, API only
        self.result_map = gr.Image(label="anomaly map", type="filepath", format="png", visible=False)
        gr.Button(visible=False).click(
            self.predict_json,
            [self.image, self.class_name, self.threshold, self.checkpoint],
            [self.result_json, self.result_map],
            api_name="predict_json",
            **on_model,
        )
        gr.on(
            [self.threshold.change, self.opacity.change, self.scale.change],
            self.render,
            [self.state, self.threshold, self.opacity, self.scale],
            [
                self.overlay,
                self.score,
                self.experts,
                self.layers,
                self.uncertainty,
                self.downloads,
                self.parts,
            ],
            api_visibility="private",  # a page-internal redraw, no tool for scripts or agents
            show_progress="hidden",
            trigger_mode="always_last",
        )

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
        """Find where an object in a photo is abnormal: heatmap overlay, score, SA-MoE routing, maps. Without
        a WMoE-CLIP checkpoint: WinCLIP (WinCLIP+ with references), else the training-free CLIP baseline.

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
        display_settings(threshold, opacity, scale)
        detector, about = self.models.primary(checkpoint)
        image = upload_image(image_path)
        refs = reference_images(references)
        small = thumbnail(image)  # the detail maps' own size (both from wmoe.detector.detail_size)
        samples = CTDS_SAMPLES if sample_ctds else 0
        pred = run_one(detector, image, class_name, samples, refs, detail_side=THUMB_SIDE)
        if pred.layer_maps.shape[1:] != small.size[::-1]:  # WinCLIP's scale maps: shrunk once, here
            pred.layer_maps = np.stack([shrink(m, small.size) for m in pred.layer_maps])
        if sample_ctds and pred.uncertainty_map is None:
            pred.notes.append("this model has no CTDS module, so there is no uncertainty map")
        if pred.references:  # the two parts come at the image's size: shrunk once, here
            pred.zero_shot_map = shrink(pred.zero_shot_map, small.size)
            pred.reference_map = shrink(pred.reference_map, small.size)
        else:
            pred.zero_shot_map = None  # the anomaly map itself, not shown apart
        stem, alone = safe_stem(image_path), references_alone(detector)
        result = Result(image, small, pred, stem, about, map_labels(detector), alone)
        chart = None
        if pred.expert_weights is not None:
            chart = routing_chart(
                pred.expert_weights, pred.expert_scores, title="SA-MoE routing (this image)"
            )
            chart = png(chart, self.scratch.new() / "routing.png")
        precision = dtype_name(detector.dtype) if isinstance(detector, Detector) else "fp32"
        timings = (
            f"**Time per stage** on `{detector.device}` ({precision}): "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in pred.timings.items())
            + f"; **total {sum(pred.timings.values()) * 1000:.1f} ms**"
        )
        return self.render(result, threshold, opacity, scale) | {
            self.routing: chart,
            self.timings: timings,
            self.state: result,
        }

    def panels(self, result: Result | None):
        """The panels a run has something for are shown, the others hidden (never an empty box)."""
        has = result is not None
        return {
            self.uncertainty: gr.update(visible=has and result.pred.uncertainty_map is not None),
            self.parts: gr.update(visible=has and bool(result.pred.references)),
        }

    @user_errors
    def predict_json(self, image_path: str, class_name: str, threshold: float, checkpoint: str = "") -> dict:
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
        detector, about = self.models.primary(checkpoint)
        pred = run_one(detector, upload_image(image_path), class_name)
        return {
            self.result_json: result_json(pred, threshold, about),
            self.result_map: png(map_to_png16(pred.anomaly_map), self.scratch.new() / "anomaly_map.png"),
        }

    @user_errors
    def render(self, result: Result | None, threshold: float, opacity: float, scale: str) -> dict:
        """Everything that depends on the display settings, drawn from the stored prediction only (an
        internal event of the page, not a public endpoint)."""
        display_settings(threshold, opacity, scale)
        if result is None:  # settings moved before the first run: nothing to redraw
            return {}
        p, small, stretch = result.pred, result.small, scale == "stretch"
        folder = self.scratch.new()

        def saved(image: Image.Image, what: str) -> str:
            return png(image, folder / f"{result.stem}_{what}.png")

        shown = overlay(result.image, p.anomaly_map, opacity=opacity, stretch=stretch, threshold=threshold)
        warning = f" (**{result.about['warning']}**)" if result.about["warning"] else ""
        area = 100 * float((p.anomaly_map >= threshold).mean())
        lines = [
            f"### Score {p.score:.3f}: **{decision(p.score, threshold)}** at threshold {threshold:.2f}",
            f"Method: **{p.method}** | model: {result.about['name']}{warning}",
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
            shown_as = (
                "the score and the map shown are the reference part alone (this zero-shot part was never "
                "trained, so it is not averaged in)"
                if result.references_alone
                else "the score and the map shown are the mean of the two parts"
            )
            lines.append(
                f"With {p.references} reference image(s): zero-shot score {p.zero_shot_score:.3f}, "
                f"reference score {p.reference_score:.3f} (the largest patch distance); {shown_as}"
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
                saved(overlay(small, lmap, opacity=opacity, stretch=stretch), f"layer{i}"),
                f"{label}: max {lmap.max():.2f}",
            )
            for i, (label, lmap) in enumerate(zip(result.labels, p.layer_maps, strict=True))
        ]
        uncertainty = None
        if p.uncertainty_map is not None:  # a std of probabilities is at most 0.5: the fixed scale is 0..0.5
            u = p.uncertainty_map if stretch else np.clip(p.uncertainty_map / 0.5, 0, 1)
            uncertainty = saved(Image.fromarray(colorize(u, stretch=stretch)), "uncertainty")
        return {
            self.overlay: saved(shown, "overlay"),
            self.score: "\n\n".join(lines),
            self.experts: experts,
            self.layers: layers,
            self.uncertainty: uncertainty,
            self.downloads: self.downloads_for(result, threshold, folder),
            self.parts: parts,
        }

    @staticmethod
    def downloads_for(result: Result, threshold: float, folder: Path) -> list[str]:
        """Raw map (16-bit PNG, .npy; written once) and the result as JSON at this threshold, into folder."""
        if not result.map_files or not all(f.is_file() for f in result.map_files):
            png16, npy = folder / f"{result.stem}_map16.png", folder / f"{result.stem}_map.npy"
            map_to_png16(result.pred.anomaly_map).save(png16)
            np.save(npy, result.pred.anomaly_map)
            result.map_files = [png16, npy]
        path = folder / f"{result.stem}_result.json"
        path.write_text(json.dumps(result_json(result.pred, threshold, result.about), indent=2))
        return [str(f) for f in result.map_files] + [str(path)]
