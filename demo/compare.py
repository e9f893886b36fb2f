"""The Compare tab, the paper's Figure 2: one image through every loaded checkpoint, the ablations of one,
WinCLIP and the training-free CLIP baseline (with references: WinCLIP+ and the references alone), side by
side on one colour scale, one backbone pass per distinct backbone. A column is a `wmoe.detector.Variant`
(WinCLIP's has the `WinCLIP` model as its detector); adding one is adding it to `CompareTab.variants`."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import gradio as gr
import numpy as np

from demo.analyze import reference_images
from demo.guards import display_settings, md, upload_image, user_errors, valid
from demo.models import BASELINE_NAME, Models, references_alone, run_variants, run_winclip
from demo.results import Scratch, decision, png, shrink, stretch_to, thumbnail
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
from wmoe import Prediction, WinCLIP
from wmoe.detector import Variant
from wmoe.render import overlay


class Ablation(NamedTuple):
    """One ablation of a checkpoint: its name, the modules it skips, and the config switch (and module
    name) it needs, if any."""

    name: str
    skip: frozenset[str]
    switch: str | None
    module: str | None


ABLATIONS = [
    Ablation("full WMoE-CLIP", frozenset(), None, None),
    Ablation("without WCMA", frozenset({"wcma"}), "use_wcma", "WCMA"),
    Ablation("without CTDS", frozenset({"ctds"}), "use_ctds", "CTDS"),
    Ablation("SA-MoE with uniform weights", frozenset({"routing"}), "use_moe", "SA-MoE"),
]


REFERENCES_ALONE = "references alone"


def by_backbone(variants: list[Variant]) -> list[list[Variant]]:
    """Variants grouped by the backbone object their detector (or WinCLIP) runs on, in first-seen order."""
    groups: dict[int, list[Variant]] = {}
    for v in variants:
        model = v.detector
        groups.setdefault(
            id(model.backbone if isinstance(model, WinCLIP) else model.model.backbone), []
        ).append(v)
    return list(groups.values())


def zero_shot_part(pred: Prediction) -> Prediction:
    """WinCLIP from a WinCLIP+ prediction: its zero-shot map and score, computed in the same pass."""
    if not pred.references:
        return pred
    return replace(
        pred,
        anomaly_map=pred.zero_shot_map,
        score=pred.zero_shot_score,
        reference_map=None,
        reference_score=None,
        references=0,
        method="WinCLIP",
    )


def run_group(group: list[Variant], image, class_name: str) -> list[Prediction]:
    """The predictions of variants on one backbone, from one pass of it: the detectors' heads on one
    `Detector.encode`, or one WinCLIP(+) run whose zero-shot part is the WinCLIP column."""
    model = group[0].detector
    if not isinstance(model, WinCLIP):
        return run_variants(model, image, class_name, group)
    references = next((v.references for v in group if v.references), None)
    full = run_winclip(model, image, class_name, references)
    return [full if v.references else zero_shot_part(full) for v in group]


class CompareTab:
    """Its components (made by `layout`, inside the page), its event and its handler."""

    def __init__(self, models: Models, scratch: Scratch):
        self.models, self.scratch = models, scratch

    def layout(self, examples: list, on_model: dict):
        gr.Markdown(
            "One image through every method, side by side on one colour scale (the paper's Figure 2): "
            "each loaded WMoE-CLIP checkpoint and the variants of one (without WCMA; without CTDS; "
            "SA-MoE with uniform expert weights), WinCLIP, and the training-free CLIP baseline with "
            "fixed prompts; with reference images also WinCLIP+ and the references alone. Methods on "
            "one backbone share one backbone pass."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image, class_name = image_input("compare-image"), class_box("compare-class")
                checkpoint = checkpoint_menu(
                    list(self.models.detectors), "compare-checkpoint", "Ablations of checkpoint"
                )
                references = reference_input("compare-references")
                threshold, opacity = threshold_slider(), opacity_slider()
                scale = scale_radio("Colour scale (shared by all variants)")
                run = gr.Button(
                    "Compare", variant="primary", elem_id="compare-run", interactive=self.models.can_run
                )
                examples_for(examples, [image, class_name], "compare-examples")
            with gr.Column(scale=3):
                self.gallery = gr.Gallery(
                    label="Variants",  # each captioned with its image score
                    format="png",
                    columns=3,
                    height=680,
                    elem_id="compare-gallery",
                )
                self.table = gr.Markdown(label="Scores", elem_id="compare-scores")
        run.click(
            self.compare,
            [image, class_name, threshold, opacity, scale, checkpoint, references],
            [self.gallery, self.table],
            api_name="compare",
            **on_model,
        )

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
    ) -> dict:
        """One image through every method side by side on one colour scale: every loaded checkpoint, the
        ablations of one (without WCMA; without CTDS; uniform routing), WinCLIP and the training-free CLIP
        baseline; with reference images, each checkpoint with them, WinCLIP+ and the references alone.

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
            scores: Markdown table of each variant's method, score, decision, CLS and SA-MoE scores
        """
        valid("the class name", class_name, str)
        display_settings(threshold, opacity, scale)
        about = self.models.primary(checkpoint).about
        image = upload_image(image_path)
        variants, missing = self.variants(checkpoint, reference_images(references))
        predictions = {}
        for group in by_backbone(variants):  # one backbone pass per distinct backbone
            preds = run_group(group, image, class_name)
            predictions.update({v.name: p for v, p in zip(group, preds, strict=True)})
        runs = [(v.name, predictions[v.name]) for v in variants]
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
            "| variant | method | image score | decision | CLS score | SA-MoE score |",
            "|---|---|---:|---|---:|---:|",
        ]
        table += [
            f"| {name} | {p.method} | {p.score:.3f} | {decision(p.score, threshold)} | {p.cls_score:.3f} | "
            f"{'-' if p.moe_score is None else f'{p.moe_score:.3f}'} |"
            for name, p in runs
        ]
        scale_note = (
            f"stretched jointly over the {len(runs)} maps: blue = {lo:.3f}, red = {hi:.3f}"
            if scale == "stretch"
            else "fixed: blue = 0, red = 1"
        )
        notes = [f"One colour scale for all ({scale_note}); outline at threshold {threshold:.2f}."]
        if about["warning"]:
            notes.append(f"**{about['warning']}**")
        alone = [v.name for v in variants if v.references and references_alone(v.detector)]
        if alone:  # the never-trained zero-shot part is not averaged in (wmoe.references.combine)
            notes.append(f"{md(', '.join(alone))}: the reference map and score alone (never trained).")
        notes += [f"Not shown: {md(s)}." for s in missing]
        return {self.gallery: gallery, self.table: "\n".join(table) + "\n\n" + "\n\n".join(notes)}

    def variants(self, chosen: str | None, references: list | None = None) -> tuple[list[Variant], list[str]]:
        """Compare's columns: each checkpoint in full, then the chosen one's ablations (those its modules
        allow), WinCLIP, the baseline; then with references each checkpoint with them, WinCLIP+ and the
        references alone (the never-trained baseline with them: their part alone); and what could not be
        shown, in words."""
        detectors, variants, missing = self.models.detectors, [], []
        winclip, baseline = self.models.winclip, self.models.baseline
        if not detectors:
            missing.append("the WMoE-CLIP variants need a checkpoint")
        else:
            chosen, detector = self.models.checkpoint(chosen)
            several = len(detectors) > 1
            if several:
                variants += [Variant(name, d) for name, d in detectors.items()]
            for a in ABLATIONS:
                if several and not a.skip:
                    continue  # already there, under its checkpoint's name
                label = f"{chosen} {a.name}" if several else a.name
                if a.switch and not getattr(detector.config, a.switch):
                    missing.append(f"{label}: this checkpoint has no {a.module} module")
                    continue
                variants.append(Variant(label, detector, a.skip))
        if winclip is not None:
            variants.append(Variant("WinCLIP", winclip))
        else:
            missing.append("WinCLIP, which could not load (see the note at the top)")
        if baseline is not None:
            variants.append(Variant(BASELINE_NAME, baseline))
        if references:
            named = {id(winclip): "WinCLIP+", id(baseline): REFERENCES_ALONE}
            variants += [
                Variant(
                    named.get(id(v.detector), f"{v.name} + references"), v.detector, references=references
                )
                for v in variants
                if not v.skip
            ]
        return variants, missing
