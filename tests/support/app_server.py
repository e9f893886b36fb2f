"""Serving the demo for tests: app.build_app + app.launch on a free 127.0.0.1 port, without blocking."""

import json
import socket
import tempfile
import urllib.request
from pathlib import Path

import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(detector, baseline, notices=(), concurrency: int = 1, winclip=None, **launch_options):
    """(demo, url), launched exactly as `python app.py --concurrency N` launches it (with `winclip`, the
    loaded WinCLIP); call demo.close() when done."""
    demo = app.build_app(detector, baseline, notices, concurrency, winclip)
    _, url, _ = app.launch(
        demo, "127.0.0.1", free_port(), concurrency, block=False, quiet=True, **launch_options
    )
    return demo, url


def page_config(url: str) -> dict:
    """The page description the browser receives (components with their props)."""
    with urllib.request.urlopen(url.rstrip("/") + "/config", timeout=10) as r:
        return json.load(r)


def scratch_folders() -> set[Path]:
    """The demo's temporary folders (demo.results.Scratch): files it writes before gradio copies them."""
    return set(Path(tempfile.gettempdir()).glob("wmoe-app-*"))
