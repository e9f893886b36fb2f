"""WMoE-CLIP web demo (Gradio): Analyze, Compare and Batch views over models loaded once at start.
The Space entry only: arguments, models loaded once (`demo.models`), one module per tab (`demo/`), launch."""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import gradio as gr

from demo.analyze import AnalyzeTab
from demo.batch import BatchTab
from demo.compare import CompareTab
from demo.guards import DEFAULT_MAX_FILE_SIZE
from demo.mcp_server import launch_repaired
from demo.models import Models, checkpoint_list, load_models, load_winclip, status_lines
from demo.results import Scratch
from demo.widgets import CSS, load_examples
from wmoe import Detector
from wmoe.precision import DTYPES

log = logging.getLogger("wmoe.app")


class Page(NamedTuple):
    """The composed page and its tabs (each tab's handlers can be called in-process)."""

    blocks: gr.Blocks
    analyze: AnalyzeTab
    compare: CompareTab
    batch: BatchTab


def build_page(
    detectors: Detector | Mapping[str, Detector] | None,
    baseline: Detector | None = None,
    notices=(),
    concurrency: int = 1,
    winclip=None,
) -> Page:
    """The whole page, around models that are already loaded (never loaded per request): one WMoE-CLIP
    detector or several by name (see `demo.models.load_models`), the baseline and WinCLIP."""
    models, scratch = Models(detectors, baseline, winclip), Scratch()
    tabs = AnalyzeTab(models, scratch), CompareTab(models, scratch), BatchTab(models, scratch)
    banner = status_lines(detectors, baseline, notices, winclip)
    examples = load_examples()
    on_model = dict(concurrency_id="model", concurrency_limit=concurrency)  # all model events share the limit
    page = gr.Blocks(title="WMoE-CLIP anomaly detection", delete_cache=(3600, 3600), analytics_enabled=False)
    with page:
        gr.Markdown("\n".join(f"- {line}" for line in banner), elem_id="banner", visible=bool(banner))
        gr.Markdown(
            "# WMoE-CLIP: zero-shot anomaly detection\nUpload an image, name the object in it, and "
            "see where the model finds it abnormal, how its experts were routed, and what each part "
            "added."
        )
        with gr.Tab("Analyze"):
            tabs[0].layout(examples, on_model)
        with gr.Tab("Compare"):
            tabs[1].layout(examples, on_model)
        with gr.Tab("Batch"):
            tabs[2].layout(on_model)
    return Page(page, *tabs)


def build_app(detectors, baseline=None, notices=(), concurrency: int = 1, winclip=None) -> gr.Blocks:
    """The page as gradio Blocks, ready for `launch` (see `build_page`)."""
    return build_page(detectors, baseline, notices, concurrency, winclip).blocks


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
    "queue is full"), an upload and image URL size limit, no share link, and with `mcp` the MCP server (each
    public endpoint a tool, at /gradio_api/mcp/; `demo.mcp_server`); gradio's (app, url, share)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return launch_repaired(
        demo,
        block,
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=max_file_size,
        show_error=False,
        run_history=False,
        css=CSS,
        quiet=quiet,
        mcp_server=mcp,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ.get
    # fmt: off
    p.add_argument("--checkpoint", action="append", help="checkpoint folder or Hub repo id; repeat it for "
                   "several (default: $WMOE_CHECKPOINT, comma- or newline-separated; none: baseline only)")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")),
                   help="port (default: $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--baseline", default="clip", choices=["clip", "tiny"],
                   help="the training-free methods' backbones: clip = the real weights (ViT-L-14-336 OpenAI "
                   "for the baseline and MuSc, ViT-B-16-plus-240 LAION-400M for WinCLIP; on disk or "
                   "reachable); tiny = tiny random test backbones (meaningless)")
    p.add_argument("--concurrency", type=int, default=1, help="model runs at the same time (default 1)")
    p.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="max upload/URL size (%(default)s)")
    p.add_argument("--mcp", action="store_true", default=env("WMOE_MCP", "").lower() in ("1", "true", "yes"),
                   help="also serve the public endpoints as MCP tools at /gradio_api/mcp/ (default: $WMOE_MCP=1)")
    # fmt: on
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or checkpoint_list(os.environ.get("WMOE_CHECKPOINT"))
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    return args


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    detectors, baseline, notices = load_models(args.checkpoint, args.device, args.dtype, args.baseline)
    winclip, missing = load_winclip(args.baseline, args.device)
    for line in status_lines(detectors, baseline, notices + missing, winclip):
        log.warning("%s", re.sub(r"[*`\\]", "", line))
    launch(
        build_app(detectors, baseline, notices + missing, args.concurrency, winclip),
        args.host,
        args.port,
        args.concurrency,
        args.max_file_size,
        mcp=args.mcp,
    )


if __name__ == "__main__":
    main()
