"""WMoE-CLIP web demo (Gradio): Analyze, Compare and Batch views over models loaded once at start.

Thin by design: every number comes from `wmoe.Detector` (through app_views.py, the handlers); this
file loads the models, says plainly at the top what state they are in (no checkpoint, untrained
heads, missing backbone weights), lays out the page and serves it. `python app.py --help`.
The repository deploys as a Hugging Face Space unchanged (README front matter: app_file app.py).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import logging
import mimetypes
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import gradio as gr
import gradio.context
import gradio.route_utils
import gradio.utils
import gradio_client.utils

from app_views import (
    CTDS_SAMPLES,
    MAX_BATCH_IMAGES,
    SCALE_VALUES,
    SCALES,
    UNTRAINED,
    Views,
    md,
    public,
    unreadable,
    user_error,
    valid,
)
from demo import mcp_server
from demo.fetch import FetchError, fetch
from wmoe import CheckpointError, ConfigError, Detector, WeightsNotFoundError, WMoEConfig
from wmoe.checkpoint import includes_backbone
from wmoe.config import DEFAULT_CLASS
from wmoe.precision import DTYPES
from wmoe.references import MAX_REFERENCES

log = logging.getLogger("wmoe.app")
DEFAULT_MAX_FILE_SIZE = "50mb"  # uploads and fetched image URLs
EXAMPLES_JSON = Path(__file__).resolve().parent / "assets" / "examples" / "examples.json"
CSS = """
#banner {background: #fff4e5; border: 1px solid #e8a33d; border-radius: 8px; padding: 6px 14px;}
#banner p, #banner li {color: #5c3b00; margin: 2px 0;}
"""


# ----------------------------------------------------------------------------- loading, once at start


def load_models(
    checkpoints: str | Sequence[str] | None,
    device: str | None = None,
    dtype: str | None = None,
    baseline: str = "clip",
) -> tuple[dict[str, Detector], Detector | None, list[str]]:
    """({name: WMoE-CLIP detector} for the checkpoints that loaded, the training-free baseline or None,
    plain-words notices for the banner). Each checkpoint loads once; those on one backbone share it
    (one copy in memory, one pass per image); the baseline shares the first one's."""
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints or [])
    detectors: dict[str, Detector] = {}
    failed = []
    for checkpoint in checkpoints:
        try:
            shared = [d.model.backbone for d in detectors.values()]
            detector = Detector.from_pretrained(checkpoint, device=device, dtype=dtype, share=shared)
        except Exception as e:  # whatever went wrong, the app still starts and says why
            failed.append(
                f"The WMoE-CLIP checkpoint **{md(checkpoint_name(checkpoint))}** could not be loaded: {why(e)}."
            )
            continue
        name = checkpoint_name(checkpoint)
        detectors[name if name not in detectors else str(checkpoint)] = detector
    if detectors:  # the normal path: the baseline shares the first loaded backbone
        first = next(iter(detectors.values()))
        return (
            detectors,
            Detector.training_free(
                first.config, backbone=first.model.backbone, device=first.device, dtype=first.dtype
            ),
            failed,
        )
    why_not = " ".join(failed) or "No WMoE-CLIP checkpoint was given (`--checkpoint` or `WMOE_CHECKPOINT`)."
    like = WMoEConfig.tiny() if baseline == "tiny" else WMoEConfig()
    try:
        fallback = Detector.training_free(like, device=device, dtype=dtype)
    except Exception as e:
        return (
            {},
            None,
            [
                why_not,
                f"The training-free CLIP baseline cannot run either: {why(e)}. Nothing "
                "can run here, so Run is disabled; supply the weights (see README) and "
                "restart.",
            ],
        )
    return (
        {},
        fallback,
        [f"{why_not} This is the **training-free CLIP baseline** (fixed prompts), not WMoE-CLIP."],
    )


def checkpoint_name(checkpoint: str | os.PathLike) -> str:
    """How the page names a checkpoint: a folder by its own name, a Hub repo by its id."""
    path = Path(str(checkpoint))
    return path.name if path.exists() else str(checkpoint)


def checkpoint_list(value: str | None) -> list[str]:
    """WMOE_CHECKPOINT as a list: checkpoints separated by commas or newlines."""
    return [c.strip() for c in re.split(r"[,\n]", value or "") if c.strip()]


def why(error: Exception) -> str:
    """A loading failure in plain words for the banner; an unexpected kind also logs its traceback."""
    if not isinstance(error, (CheckpointError, ConfigError, WeightsNotFoundError)):
        log.error("unexpected failure while loading a model", exc_info=error)
    return md(public(str(error)).rstrip("."))


def status_lines(
    detectors: Detector | Mapping[str, Detector] | None, baseline: Detector | None, notices=()
) -> list[str]:
    """What the banner at the top says; empty only for trained checkpoints on real CLIP weights."""
    detectors = {"WMoE-CLIP": detectors} if isinstance(detectors, Detector) else dict(detectors or {})
    lines = list(notices)
    untrained = [name for name, d in detectors.items() if not d.trained]
    if untrained:
        which = "" if len(detectors) == 1 else f" ({', '.join(md(n) for n in untrained)})"
        lines.insert(0, f"**{UNTRAINED}**{which} (its checkpoint records `trained: false`).")
    shown = next(iter(detectors.values()), None) or baseline
    if shown is not None and includes_backbone(shown.config):
        lines.append(
            "The CLIP backbone has random weights (a tiny test configuration), so the training-free "
            "baseline is meaningless too."
        )
    return lines


# ----------------------------------------------------------------------------- the page


def image_input(elem_id: str) -> gr.Image:
    """Upload, paste or webcam; handed on as the uploaded file and decoded by wmoe.preprocess.load_image."""
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


def uploads_only(component):
    """A file input that takes only files uploaded to this server (`uploaded_path`) and public image URLs
    (`fetched`). gradio checks a file value against its upload folder only when the value is marked as a
    file (`meta`): an unmarked `{"path": ...}` reaches the component as is, and PIL would open any image on
    the server. gradio's own download of a URL has no size limit, so it is never used."""
    preprocess, fetch = component.preprocess, component.async_move_resource_to_block_cache

    def only_uploads(payload):
        files = getattr(payload, "root", payload)
        for f in files if isinstance(files, list) else [files]:
            if f is not None:
                f.path = uploaded_path(f.path)
        return preprocess(payload)

    async def fetch_safely(path):
        if path is not None and gradio_client.utils.is_http_url_like(str(path)):
            path = (
                uploaded_path(path) if own_upload(str(path)) else await asyncio.to_thread(fetched, str(path))
            )
        return await fetch(path)

    component.preprocess, component.async_move_resource_to_block_cache = only_uploads, fetch_safely
    return component


def checked(component, what: str, options: tuple | type | None = None):
    """An input whose value is checked (`app_views.valid`) before gradio's own preprocess, which lets NaN
    through and answers a string for a number with an error that has no message."""
    preprocess = component.preprocess
    component.preprocess = lambda payload: preprocess(valid(what, payload, options))
    return component


def uploaded_path(value) -> str:
    """The local path of a file uploaded to this server, given as its path or as its own `/gradio_api/file=`
    URL (what an MCP client gets back from uploading); anything else is refused, never read."""
    path = str(value)
    if gradio_client.utils.is_http_url_like(path):
        path = own_upload(path)
        if not path:
            raise user_error(
                "An image URL is fetched only when it is sent as a file (gradio_client: handle_file)."
            )
    if not gradio.utils.is_in_or_equal(gradio.utils.abspath(path), gradio.utils.get_upload_folder()):
        raise user_error("Only uploaded files are accepted, not a path on the server: upload the file.")
    return path


def own_upload(url: str) -> str | None:
    """The path named by a `/gradio_api/file=` URL (read locally, never fetched, whatever its host), or
    None for any other URL."""
    _, _, path = unquote(urlsplit(url).path).partition(f"{gradio.route_utils.API_PREFIX}/file=")
    return path or None


def fetched(url: str) -> str:
    """A public image URL downloaded into the upload folder (`demo.fetch`: no private address, at most the
    upload size limit), named after the URL with the extension of its declared type (file inputs check
    it); a refusal is the caller's error, with its reason."""
    blocks = gradio.context.LocalContext.blocks.get(None)
    limit = getattr(blocks, "max_file_size", None) or gradio.utils._parse_file_size(DEFAULT_MAX_FILE_SIZE)
    try:
        image = fetch(url, limit)
    except FetchError as e:
        raise user_error(html.escape(f"The image URL was not fetched: {e}.")) from None
    stem = re.sub(r"[^\w-]+", "_", Path(unquote(urlsplit(url).path)).stem)[-60:] or "image"
    suffix = mimetypes.guess_extension(image.content_type) or ""
    path = Path(tempfile.mkdtemp(prefix="url-", dir=gradio.utils.get_upload_folder())) / (stem + suffix)
    path.write_bytes(image.body)
    return str(path)


def readable_upload_errors(preprocess):
    """gradio opens the upload (PIL) before any handler runs; a file it cannot open would reach the user
    as a bare "Error", so it becomes a gr.Error that names the file and gives wmoe's own reason (empty,
    not an image, too many pixels...), as the Python API and the CLI do. (Wrapped per instance: a gr.Image
    subclass would make gradio write a .pyi stub beside this file.)"""

    def wrapper(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "the upload"
            raise user_error(html.escape(f"{name}: {unreadable(getattr(payload, 'path', None))}")) from e

    return wrapper


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


def build_app(
    detectors: Detector | Mapping[str, Detector] | None,
    baseline: Detector | None = None,
    notices=(),
    concurrency: int = 1,
) -> gr.Blocks:
    """The whole page, around models that are already loaded (never loaded per request): one WMoE-CLIP
    detector or several by name (see `load_models`), and the baseline."""
    views = Views(detectors, baseline)
    banner = status_lines(detectors, baseline, notices)
    names = list(views.detectors)
    shown = list(views.detectors.values()) or [m for m in [baseline] if m is not None]
    can_run = bool(shown)
    has_moe = any(m.config.use_moe for m in shown)  # components no model can fill are not shown at all
    has_ctds = any(m.config.use_ctds for m in shown)
    examples = load_examples()
    on_model = dict(concurrency_id="model", concurrency_limit=concurrency)  # all model events share the limit

    def threshold_slider():
        slider = gr.Slider(
            0,
            1,
            value=0.5,
            step=0.01,
            label="Threshold",
            info="outlines the region at or above it; decides normal / anomalous",
        )
        return checked(slider, "the threshold")

    def opacity_slider():
        return checked(gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity"), "the opacity")

    def checkpoint_menu(elem_id: str, label: str = "Checkpoint"):
        """Which loaded checkpoint runs (shown when there are several; the API takes the name anyway)."""
        choices = names or [""]  # without a checkpoint the baseline runs, whatever is chosen
        # gradio refuses a name not in the menu; None (or nothing) means the first
        return gr.Dropdown(choices, value=choices[0], label=label, visible=len(names) > 1, elem_id=elem_id)

    def reference_input(elem_id: str):
        return uploads_only(
            gr.File(
                label=f"Reference images (normal), optional, up to {MAX_REFERENCES}",
                file_count="multiple",
                file_types=["image"],
                elem_id=elem_id,
                height=120,
            )
        )

    def class_box(elem_id: str):
        box = gr.Textbox(
            value=DEFAULT_CLASS, label="Class name (what the object is)", max_lines=1, elem_id=elem_id
        )
        return checked(box, "the class name", str)

    def scale_radio(label: str):
        return checked(gr.Radio(SCALES, value="fixed", label=label), "the colour scale", SCALE_VALUES)

    page = gr.Blocks(title="WMoE-CLIP anomaly detection", delete_cache=(3600, 3600), analytics_enabled=False)
    with page as demo:
        gr.Markdown("\n".join(f"- {line}" for line in banner), elem_id="banner", visible=bool(banner))
        gr.Markdown(
            "# WMoE-CLIP: zero-shot anomaly detection\nUpload an image, name the object in it, and "
            "see where the model finds it abnormal, how its experts were routed, and what each part "
            "added."
        )
        with gr.Tab("Analyze"):
            with gr.Row():
                with gr.Column(scale=2):
                    image = image_input("input-image")
                    class_name = class_box("class-name")
                    a_checkpoint = checkpoint_menu("checkpoint")
                    a_references = reference_input("references")
                    ctds = gr.Checkbox(
                        label=f"CTDS sampling ({CTDS_SAMPLES} prompt samples): uncertainty map",
                        visible=has_ctds,
                    )
                    checked(ctds, "CTDS sampling", (False, True))
                    run = gr.Button("Run", variant="primary", elem_id="run", interactive=can_run)
                    gr.Markdown(
                        "Run is disabled: no model could be loaded (see the note at the top).",
                        visible=not can_run,
                    )
                    ex = examples_for(examples, [image, class_name], "examples")
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
                    overlay = gr.Image(
                        label="Overlay",
                        type="pil",
                        format="png",
                        elem_id="overlay",
                        interactive=False,
                        height=420,
                    )
                    score = gr.Markdown("Run the model to see the score.", label="Score", elem_id="score")
                    with gr.Row():
                        threshold, opacity = threshold_slider(), opacity_slider()
                    scale = scale_radio("Colour scale")
            with gr.Row():
                routing = gr.Image(
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
                    downloads = gr.File(
                        label="Downloads",
                        file_count="multiple",
                        interactive=False,
                        elem_id="downloads",
                    )
                    timings = gr.Markdown(label="Timings", elem_id="timings")
            experts = gr.Gallery(
                label="Expert maps",
                format="png",
                columns=4,
                height=360,
                elem_id="experts",
                visible=has_moe,
            )
            with gr.Row():
                layers = gr.Gallery(
                    label="Layer maps",
                    format="png",
                    columns=4,
                    height=240,
                    elem_id="layers",
                    scale=3,
                    object_fit="contain",
                )
                uncertainty = gr.Image(
                    label="Uncertainty",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="uncertainty",
                    height=240,
                    scale=2,
                    visible=has_ctds,
                )
            parts = gr.Gallery(
                label="Reference parts",
                format="png",
                columns=2,
                height=300,
                elem_id="reference-parts",
                object_fit="contain",
            )
            state = gr.State(None, time_to_live=3600)
            inputs = [image, class_name, threshold, opacity, scale, ctds, a_checkpoint, a_references]
            outputs = [
                overlay,
                score,
                routing,
                experts,
                layers,
                uncertainty,
                timings,
                downloads,
                parts,
                state,
            ]
            run.click(views.analyze, inputs, outputs, api_name="analyze", **on_model)
            if ex is not None and can_run:  # clicking an example runs it
                ex.load_input_event.then(views.analyze, inputs, outputs, api_visibility="private", **on_model)
            result_json = gr.JSON(label="result", visible=False)  # the compact endpoint, API only
            result_map = gr.Image(label="anomaly map", type="filepath", format="png", visible=False)
            gr.Button(visible=False).click(
                views.predict_json,
                [image, class_name, threshold, a_checkpoint],
                [result_json, result_map],
                api_name="predict_json",
                **on_model,
            )
            redrawn = [overlay, score, experts, layers, uncertainty, downloads, parts]
            gr.on(
                [threshold.change, opacity.change, scale.change],
                views.render,
                [state, threshold, opacity, scale],
                redrawn,
                api_visibility="private",  # a page-internal redraw, no tool for scripts or agents
                show_progress="hidden",
                trigger_mode="always_last",
            )

        with gr.Tab("Compare"):
            gr.Markdown(
                "One image through every loaded checkpoint and the variants of one, side by side on "
                "one colour scale: full WMoE-CLIP; without WCMA; without CTDS; SA-MoE with uniform "
                "expert weights; and the training-free CLIP baseline with fixed prompts. Models on one "
                "backbone share one backbone pass."
            )
            with gr.Row():
                with gr.Column(scale=1):
                    c_image, c_class = image_input("compare-image"), class_box("compare-class")
                    c_checkpoint = checkpoint_menu("compare-checkpoint", "Ablations of checkpoint")
                    c_references = reference_input("compare-references")
                    c_threshold, c_opacity = threshold_slider(), opacity_slider()
                    c_scale = scale_radio("Colour scale (shared by all variants)")
                    c_run = gr.Button(
                        "Compare", variant="primary", elem_id="compare-run", interactive=can_run
                    )
                    examples_for(examples, [c_image, c_class], "compare-examples")
                with gr.Column(scale=3):
                    c_gallery = gr.Gallery(
                        label="Variants",  # each captioned with its image score
                        format="png",
                        columns=3,
                        height=680,
                        elem_id="compare-gallery",
                    )
                    c_table = gr.Markdown(label="Scores", elem_id="compare-scores")
            c_run.click(
                views.compare,
                [c_image, c_class, c_threshold, c_opacity, c_scale, c_checkpoint, c_references],
                [c_gallery, c_table],
                api_name="compare",
                **on_model,
            )

        with gr.Tab("Batch"):
            gr.Markdown(
                f"Several images, or a .zip of images (up to {MAX_BATCH_IMAGES}), with one class "
                "name (or, ticked, each zip folder's name): a gallery sorted by score, a CSV of the scores "
                "and expert weights, each image's routing and the mean routing per class. Files "
                "that cannot be read are listed with the reason; the rest are still scored."
            )
            with gr.Row():
                with gr.Column(scale=1):
                    b_files = uploads_only(
                        gr.File(
                            label="Images or .zip",
                            file_count="multiple",
                            file_types=["image", ".zip"],
                            elem_id="batch-files",
                        )
                    )
                    b_class, b_threshold = class_box("batch-class"), threshold_slider()
                    b_from_folder = gr.Checkbox(
                        label="Class name from the zip folder (an image in a folder of a .zip takes its name)",
                        elem_id="batch-class-from-folder",
                    )
                    checked(b_from_folder, "the class name from the zip folder", (False, True))
                    b_checkpoint = checkpoint_menu("batch-checkpoint")
                    b_run = gr.Button(
                        "Score all", variant="primary", elem_id="batch-run", interactive=can_run
                    )
                    b_csv = gr.File(label="CSV", interactive=False, elem_id="batch-csv")
                with gr.Column(scale=3):
                    b_gallery = gr.Gallery(
                        label="Gallery",
                        format="png",
                        columns=4,
                        height=520,
                        elem_id="batch-gallery",
                    )
                    b_summary = gr.Markdown(label="Summary", elem_id="batch-summary")
            with gr.Row(visible=has_moe):
                b_strips = gr.Gallery(
                    label="Routing strips",
                    format="png",
                    columns=4,
                    height=260,
                    object_fit="contain",
                    elem_id="batch-routing-strips",
                    scale=3,
                )
                with gr.Column(scale=2):
                    b_chart = gr.Image(
                        label="Routing chart",
                        type="filepath",
                        format="png",
                        interactive=False,
                        elem_id="batch-routing-chart",
                    )
                    b_routing = gr.Markdown(label="Routing per class", elem_id="batch-routing")
            gr.Markdown(
                "**Routing strips**: each image's SA-MoE routing weights, one cell per expert from left to "
                "right, on a fixed 0..1 scale (dark = 0, yellow = 1), in the gallery's order.",
                visible=has_moe,
            )
            b_run.click(
                views.batch,
                [b_files, b_class, b_threshold, b_from_folder, b_checkpoint],
                [b_gallery, b_summary, b_csv, b_strips, b_routing, b_chart],
                api_name="batch",
                **on_model,
            )
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    concurrency: int = 1,
    max_file_size: str = DEFAULT_MAX_FILE_SIZE,
    block: bool = True,
    quiet: bool = False,
    max_queue: int = 32,
    mcp: bool = False,
):
    """A queue with a concurrency limit and at most `max_queue` waiting requests (more are refused with
    "queue is full"), an upload size limit (image URLs too), no share link, and with `mcp` gradio's MCP
    server (each public endpoint a tool, at /gradio_api/mcp/, repaired by `demo.mcp_server`);
    gradio's (app, url, share)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    launched = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=max_file_size,
        show_error=False,
        run_history=False,
        css=CSS,
        prevent_thread_lock=True,
        quiet=quiet,
        mcp_server=mcp,
    )
    mcp_server.repair(demo)
    if block:
        demo.block_thread()
    return launched


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint",
        action="append",
        help="checkpoint folder or Hub repo id; repeat it for several (default: $WMOE_CHECKPOINT, "
        "comma- or newline-separated; none: baseline only)",
    )
    p.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (default: $GRADIO_SERVER_PORT or 7860)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument(
        "--baseline",
        default="clip",
        choices=["clip", "tiny"],
        help="the baseline's backbone when no checkpoint loads: clip = ViT-L-14-336 OpenAI "
        "weights (on disk or reachable); tiny = a tiny random test backbone (meaningless)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="model runs at the same time (default 1)")
    p.add_argument(
        "--max-file-size",
        default=DEFAULT_MAX_FILE_SIZE,
        help=f"upload and image URL size limit (default {DEFAULT_MAX_FILE_SIZE})",
    )
    p.add_argument(
        "--mcp",
        action="store_true",
        default=os.environ.get("WMOE_MCP", "").lower() in ("1", "true", "yes"),
        help="also serve the public endpoints as MCP tools at /gradio_api/mcp/ (default: $WMOE_MCP=1)",
    )
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or checkpoint_list(os.environ.get("WMOE_CHECKPOINT"))
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    return args


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    detectors, baseline, notices = load_models(args.checkpoint, args.device, args.dtype, args.baseline)
    for line in status_lines(detectors, baseline, notices):
        log.warning("%s", re.sub(r"[*`\\]", "", line))
    launch(
        build_app(detectors, baseline, notices, args.concurrency),
        args.host,
        args.port,
        args.concurrency,
        args.max_file_size,
        mcp=args.mcp,
    )


if __name__ == "__main__":
    main()
