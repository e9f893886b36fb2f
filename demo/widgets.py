"""The inputs several tabs share, each built with its guard (uploads only, value checked), and the examples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr

from demo.guards import SCALE_VALUES, SCALES, checked, readable_upload_errors, uploads_only
from wmoe.config import DEFAULT_CLASS
from wmoe.references import MAX_REFERENCES

CSS = """
#banner {background: #fff4e5; border: 1px solid #e8a33d; border-radius: 8px; padding: 6px 14px;}
#banner p, #banner li {color: #5c3b00; margin: 2px 0;}
"""  # the page's one style rule: the banner

log = logging.getLogger("wmoe.app")
EXAMPLES_JSON = Path(__file__).resolve().parents[1] / "assets" / "examples" / "examples.json"


def image_input(elem_id: str) -> gr.Image:
    """Upload, paste or webcam; handed on as the uploaded file and decoded by `guards.upload_image`."""
    component = gr.Image(
        label="Image",
        type="filepath",
        image_mode=None,
        elem_id=elem_id,
        height=300,
        sources=["upload", "clipboard", "webcam"],
        webcam_options=gr.WebcamOptions(mirror=False),
    )
    component.preprocess = readable_upload_errors(component.preprocess)
    return uploads_only(component)


def reference_input(elem_id: str) -> gr.File:
    return uploads_only(
        gr.File(
            label=f"Reference images (normal), optional, up to {MAX_REFERENCES}",
            file_count="multiple",
            file_types=["image"],
            elem_id=elem_id,
            height=120,
        )
    )


def class_box(elem_id: str) -> gr.Textbox:
    box = gr.Textbox(
        value=DEFAULT_CLASS, label="Class name (what the object is)", max_lines=1, elem_id=elem_id
    )
    return checked(box, "the class name", str)


def threshold_slider() -> gr.Slider:
    slider = gr.Slider(
        0,
        1,
        value=0.5,
        step=0.01,
        label="Threshold",
        info="outlines the region at or above it; decides normal / anomalous",
    )
    return checked(slider, "the threshold")


def opacity_slider() -> gr.Slider:
    return checked(gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity"), "the opacity")


def scale_radio(label: str) -> gr.Radio:
    return checked(gr.Radio(SCALES, value="fixed", label=label), "the colour scale", SCALE_VALUES)


def checkpoint_menu(names: list[str], elem_id: str, label: str = "Checkpoint") -> gr.Dropdown:
    """Which loaded checkpoint runs (shown when there are several; the API takes the name anyway)."""
    choices = names or [""]  # without a checkpoint the baseline runs, whatever is chosen
    # gradio refuses a name not in the menu; None (or nothing) means the first
    return gr.Dropdown(choices, value=choices[0], label=label, visible=len(names) > 1, elem_id=elem_id)


def load_examples() -> list[list[str]]:
    """[[image path, class name], ...] from assets/examples/examples.json; none if it is absent."""
    if not EXAMPLES_JSON.is_file():
        log.warning("%s is absent: the app runs without examples", EXAMPLES_JSON.name)
        return []
    entries = json.loads(EXAMPLES_JSON.read_text())
    return [
        [str(EXAMPLES_JSON.parent / e["image"]), e["class_name"]]
        for e in entries
        if (EXAMPLES_JSON.parent / e["image"]).is_file()
    ]


def examples_for(examples: list[list[str]], inputs: list, elem_id: str) -> gr.Examples | None:
    """Example thumbnails; a click fills the image and its class name."""
    if not examples:
        return None
    return gr.Examples(
        examples,
        inputs=inputs,
        cache_examples=False,
        examples_per_page=8,
        visible_columns=[0],
        elem_id=elem_id,
        label="Examples (synthetic defects on CC0 textures, CC0 retina images)",
    )
