"""MuSc: seconds and peak memory per image at batches of 8, 16 and 32 against one backbone pass per image.

Random weights (ViT-L-14-336 at 518 px by default): the time and memory of a pass and of MuSc's
scoring do not depend on the weights, so the numbers carry over to real ones; the scores do not.
Lines, each the median of --reps runs (default 1: the runs take minutes on a CPU) after one untimed
batch-1 pass:
- backbone_pass: one pass over one image (the pass MuSc shares: projected taps and raw outputs), seconds
  and peak memory above the loaded model;
- musc_per_image, per batch size B: the batch's pass as MuSc runs it alone (`wmoe.musc.encode`: 8 images per
  call, raw outputs only), then MuSc's scoring (`wmoe.musc.predictions`), seconds per image of the
  scoring and of both, each over one pass per image (target on a CPU: scoring at most 1.2x at 16
  images), and the scoring's peak memory above what was held before it, per image;
- msm_one_call: one `mutual_scores` call on random unit tokens of --msm-images images (37 x 37 patches, 1024
  channels: ViT-L-14 at 518 px), in a fresh process (memory freed earlier would hide its peak), its
  seconds and peak memory above its input (the chunked distances keep it bounded; 0 skips it).
Peak memory: VmHWM after resetting it (/proc/self/clear_refs) on CPU, the allocator's peak on CUDA.

    python -m benchmarks.musc                               # ViT-L-14-336, 518 px, batches 8, 16, 32
    python -m benchmarks.musc --batches 8,16 --msm-images 0
    python -m benchmarks.musc --batches '' --msm-images 100   # the MSM line alone
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import torch

from benchmarks import common
from wmoe import musc
from wmoe.detector import Detector

TARGET_CPU = 1.2  # MuSc scoring per image over one backbone pass per image, at 16 images
GB = 1e9


class Peak:
    """Peak memory of a block of code above the memory held when it starts, in GB."""

    def __init__(self, device: torch.device):
        self.device, self.gb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.start = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _status("VmHWM")
        self.gb = (peak - self.start) / GB


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}: peak memory needs Linux")


def measure_batch(det: Detector, pictures: list, device: torch.device):
    """(seconds of the batch's backbone pass, seconds of MuSc's scoring, the scoring's Peak)."""
    held = {}
    pass_s = common.timed(lambda: held.update(encoded=musc.encode(det, pictures)), device)
    with Peak(device) as peak:
        score_s = common.timed(lambda: musc.predictions(held["encoded"]), device)
    return pass_s, score_s, peak


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=1)
    p.add_argument(
        "--batches", default="8,16,32", help="comma-separated batch sizes (each at least 5); '' none"
    )
    p.add_argument("--msm-images", type=int, default=6 if common.QUICK else 100, help="0 skips the msm line")
    args = p.parse_args(argv)
    device = common.setup(args)
    batches = common.batch_list(p, args.batches)
    if batches and batches[0] < musc.min_images():
        p.error(f"--batches needs sizes of at least {musc.min_images()} (MuSc's minimum)")
    load_start = os.getloadavg()[0]

    det = Detector(common.build_model(args.backbone, args.image_size), device=device)
    raw = musc.musc_layers(det.model.backbone.depth)
    pictures = [common.picture(args.input_px, seed) for seed in range(max(batches, default=1))]
    base = {
        "bench": "musc",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "dtype": "fp32",
        "weights": "random",
        "musc_layers": list(raw),
    }
    if batches:
        det.encode(pictures[:1], raw=raw)  # first call: allocator, kernels
        with Peak(device) as peak:
            one_pass = common.median(
                [common.timed(lambda: det.encode(pictures[:1], raw=raw), device) for _ in range(args.reps)]
            )
        common.emit(
            {
                **base,
                "what": "backbone_pass",
                "batch": 1,
                "s_per_image": round(one_pass, 4),
                "peak_gb": round(peak.gb, 4),
            },
            device,
            args.out,
            load_start,
        )
    for b in batches:
        runs = [measure_batch(det, pictures[:b], device) for _ in range(args.reps)]
        pass_s, score_s = (common.median([r[i] for r in runs]) for i in (0, 1))
        peak = max((r[2] for r in runs), key=lambda pk: pk.gb)
        ratio = score_s / b / one_pass
        target = TARGET_CPU if device.type == "cpu" and b == 16 else None
        common.emit(
            {
                **base,
                "what": "musc_per_image",
                "batch": b,
                "pass_s_per_image": round(pass_s / b, 4),
                "score_s_per_image": round(score_s / b, 4),
                "score_over_one_pass": round(ratio, 4),
                "pass_and_score_over_one_pass": round((pass_s + score_s) / b / one_pass, 4),
                "score_peak_gb": round(peak.gb, 4),
                "score_peak_gb_per_image": round(peak.gb / b, 4),
                "target_max": target,
                "met": None if target is None else ratio <= target,
            },
            device,
            args.out,
            load_start,
        )
    if args.msm_images:
        (h, w), width = det.model.backbone.grid, det.model.backbone.clip.visual.transformer.width
        spec = (args.msm_images, h * w, width, str(device))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            input_gb, msm_s, peak_gb = pool.apply(measure_msm, spec)
        common.emit(
            {
                **base,
                "what": "msm_one_call",
                "images": args.msm_images,
                "tokens": [h * w, width],
                "input_gb": round(input_gb, 4),
                "s": round(msm_s, 4),
                "peak_gb_above_input": round(peak_gb, 4),
            },
            device,
            args.out,
            load_start,
        )


def measure_msm(images: int, patches: int, width: int, device_name: str) -> tuple[float, float, float]:
    """In a fresh process: one `mutual_scores` call on random unit tokens; (input GB, seconds, peak GB)."""
    device = torch.device(device_name)
    Z = torch.randn(images, patches, width, generator=torch.Generator().manual_seed(0))
    Z = torch.nn.functional.normalize(Z, dim=-1).to(device)
    with Peak(device) as peak:
        seconds = common.timed(lambda: musc.mutual_scores(Z), device)
    return Z.numel() * Z.element_size() / GB, seconds, peak.gb


if __name__ == "__main__":
    main()
