"""Shared helpers of the benchmarks: arguments, the detector under test, interleaved timing, JSON lines.

Every benchmark prints one JSON line per measurement (and appends it to --out when given), tagged
with the machine, the load average and the date, so a table row can always be traced to its run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]

from wmoe.precision import DTYPES  # noqa: E402

DTYPE_NAMES = tuple(DTYPES)  # autocast dtypes, as Detector and app.py name them
QUICK = os.environ.get("WMOE_BENCH_QUICK") == "1"  # tiny settings: proves a script runs end to end
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False"), ("MPLBACKEND", "Agg")):
    os.environ.setdefault(_key, _value)  # benchmarks never download; no analytics; headless charts


def parser(description: str, reps: int) -> argparse.ArgumentParser:
    """The options every benchmark shares; defaults shrink to the tiny backbone under WMOE_BENCH_QUICK=1."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--backbone",
        default="wmoe-tiny" if QUICK else "ViT-L-14-336",
        help="open_clip model name, random weights (default ViT-L-14-336)",
    )
    p.add_argument("--image-size", type=int, default=104 if QUICK else 518, help="model input side in pixels")
    p.add_argument(
        "--input-px",
        type=int,
        default=128 if QUICK else 1024,
        help="side of the test picture handed to the detector (it is resized to --image-size)",
    )
    p.add_argument("--reps", type=int, default=2 if QUICK else reps, help="timed repetitions after warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    return p


def batch_list(p: argparse.ArgumentParser, text: str) -> list[int]:
    """'8,16,32' -> [8, 16, 32] (sorted, each once; '' -> []), or a clear usage error."""
    try:
        return sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {text!r}")


def dtype_list(p: argparse.ArgumentParser, text: str) -> list[str]:
    """'fp32,bf16' -> ['fp32', 'bf16'], or a clear usage error."""
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names or any(d not in DTYPE_NAMES for d in names) or len(set(names)) != len(names):
        p.error(f"--dtype must be distinct comma-separated names from {list(DTYPE_NAMES)}, got {text!r}")
    return names


def setup(args) -> torch.device:
    """Apply --threads and --device; check the numbers make sense."""
    if args.reps < 1:
        sys.exit("--reps must be at least 1")
    if args.image_size < 16 or args.input_px < 1:
        sys.exit("--image-size must be at least 16 and --input-px at least 1")
    if args.threads is not None:
        if args.threads < 1:
            sys.exit("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    from wmoe.detector import default_device

    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available on this machine")
    return device


def build_config(backbone: str, image_size: int):
    """WMoEConfig with random backbone weights (the same cost as real ones); taps at quarter depths."""
    import open_clip

    from wmoe import WMoEConfig

    if backbone == "wmoe-tiny":
        return WMoEConfig.tiny(image_size=image_size)
    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        sys.exit(f"unknown open_clip backbone {backbone!r}; see open_clip.list_models()")
    depth = cfg["vision_cfg"]["layers"]
    layers = tuple(sorted({max(1, round(depth * k / 4)) for k in range(1, 5)}))  # 24 blocks: (6, 12, 18, 24)
    return WMoEConfig(backbone=backbone, pretrained=None, image_size=image_size, layers=layers)


def build_model(backbone: str, image_size: int):
    """WMoECLIP of build_config: random backbone, heads at their initial values."""
    from wmoe import WMoECLIP

    return WMoECLIP(build_config(backbone, image_size))


def winclip_options(p: argparse.ArgumentParser) -> None:
    """--winclip-backbone and --winclip-size: WinCLIP's own backbone, random weights."""
    from wmoe.winclip import BACKBONE, IMAGE_SIZE

    p.add_argument(
        "--winclip-backbone",
        default="wmoe-tiny" if QUICK else BACKBONE,
        help=f"WinCLIP's open_clip model, random weights (default {BACKBONE})",
    )
    p.add_argument(
        "--winclip-size",
        type=int,
        default=104 if QUICK else IMAGE_SIZE,
        help=f"WinCLIP's input side in pixels (default {IMAGE_SIZE})",
    )


def build_winclip(args, device: torch.device):
    """WinCLIP on the backbone `winclip_options` named, random weights."""
    from wmoe.winclip import WinCLIP

    config = WinCLIP.config_for().replace(
        backbone=args.winclip_backbone, pretrained=None, image_size=args.winclip_size, layers=(1,)
    )
    return WinCLIP(config, device=device)


def write_checkpoint(backbone: str, image_size: int, folder: Path) -> tuple[Path, Path]:
    """Random weights on disk, laid out like real ones: (backbone weights file, checkpoint folder).

    The backbone goes to an open_clip safetensors file (what WMOE_BACKBONE_WEIGHTS names) at the
    backbone's own resolution, and the checkpoint holds the heads and names the backbone by its
    pretrained tag, so loading takes the path, and the transient memory, of a real checkpoint.
    A backbone without a pretrained tag (wmoe-tiny) travels inside the checkpoint, as it would.
    """
    import open_clip

    from wmoe import WMoECLIP, save_pretrained

    tags = [] if backbone == "wmoe-tiny" else open_clip.list_pretrained_tags_by_model(backbone)
    native = open_clip.get_model_config(backbone)["vision_cfg"]["image_size"] if tags else image_size
    model = build_model(backbone, native)
    weights = folder / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.clip.state_dict().items()}, str(weights))
    if tags:  # heads only; the backbone is resolved by name, i.e. from the weights file
        config = build_config(backbone, image_size).replace(pretrained=tags[0])
        model = WMoECLIP(config, backbone=model.backbone)
    save_pretrained(model, folder / "checkpoint", {"trained": False, "note": "random weights (benchmarks)"})
    return weights, folder / "checkpoint"


def serve_app(detector, baseline, notices=()) -> tuple:
    """app.build_app + app.launch as `python app.py` does, on a free local port, not blocking: (demo, url)."""
    import app

    demo = app.build_app(detector, baseline, notices)
    _, url, _ = app.launch(demo, "127.0.0.1", free_port(), block=False, quiet=True)
    return demo, url


def analyze_request(client, path: Path):
    """One Analyze request through the app's HTTP API, as a user's browser or script sends it."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), "object", 0.5, 0.5, "fixed", False, api_name="/analyze")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(px: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture: smooth shapes, mild grain (encodes like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    shapes = Image.fromarray(coarse).resize((px, px), Image.BICUBIC)
    grain = rng.integers(-6, 7, (px, px, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(shapes, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def timed(fn: Callable, device: torch.device) -> float:
    """Seconds of one call; CUDA is synchronised on both sides so the time is real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleave(sides: dict, reps: int, device: torch.device, warmup: int = 1) -> dict[str, list[float]]:
    """Run the sides A, B, A, B...: `warmup` untimed rounds, then `reps` timed rounds; seconds per side."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            times[name].append(timed(fn, device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def machine(device: torch.device) -> dict:
    """Where a number was measured: CPU model and cores (lscpu), accelerator, threads, versions, commit."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _commit(),
    }


def emit(record: dict, device: torch.device, out: Path | None = None, load_start: float | None = None):
    """Print one JSON line (and append it to `out`): the record plus machine, load average and date."""
    now = datetime.datetime.now(datetime.timezone.utc)
    full = {
        **record,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        **machine(device),
    }
    if load_start is not None:
        full["load_avg_1m_start"] = round(load_start, 2)
    line = json.dumps(full)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")
    return full


def rounded(values, digits: int = 4):
    """Round a float or a list/dict of floats for the JSON lines."""
    if isinstance(values, dict):
        return {k: rounded(v, digits) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [rounded(v, digits) for v in values]
    return round(float(values), digits)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )  # "-dirty": tracked files were changed since the commit
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
