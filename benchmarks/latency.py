"""Latency: `Detector.predict` against the bare open_clip image tower, interleaved in one run.

Sides, timed in turn (A, B, C, A, B, C...) after one warm-up round, per dtype (default fp32, bf16):
- bare: `model.backbone.clip.encode_image` on the already preprocessed tensor, same autocast,
  open_clip as shipped;
- bare_fused (fp32 only): the same with `wmoe.backbone.no_mha_fastpath`, the attention kernel our
  Backbone uses (under autocast PyTorch takes that kernel anyway), so that ratio isolates what
  WMoE-CLIP adds on top of the image tower;
- predict: `Detector.predict_batch` on the picture (decode, preprocess, model, maps at its size).
One JSON line per dtype: overhead ratios of the medians (target <= 1.10) and the median seconds per
stage from `Prediction.timings`; then one line per low-precision dtype against fp32: speed-up
(target >= 1.3 on CPU) and the largest absolute anomaly-map difference (target <= 0.02).
Random backbone weights cost the same as real ones; the heads keep their initial values.

    python -m benchmarks.latency                           # ViT-L-14-336, 518 px, fp32 and bf16, 3 reps
    python -m benchmarks.latency --dtype fp32 --threads 2 --reps 5
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from benchmarks import common
from wmoe.backbone import no_mha_fastpath
from wmoe.detector import Detector
from wmoe.precision import DTYPES, autocast
from wmoe.preprocess import to_tensor

OVERHEAD_TARGET = 1.10
SPEEDUP_TARGET_CPU = 1.3
MAP_DIFF_TARGET = 0.02


def bare_side(model, x: torch.Tensor, dtype: torch.dtype, device: torch.device, fused: bool = False):
    """The image tower's own forward, the physical floor of our inference."""

    def run():
        with torch.inference_mode(), autocast(device, dtype):
            with no_mha_fastpath() if fused else contextlib.nullcontext():
                model.backbone.clip.encode_image(x)

    return run


def predict_side(detector, pictures: list, last: dict, stages: list):
    """Detector.predict_batch; keeps the predictions of the last call and every call's stage timings."""

    def run():
        preds = detector.predict_batch(pictures, "object")
        last["preds"] = preds
        stages.append(preds[0].timings)

    return run


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=3)
    p.add_argument("--dtype", default="fp32,bf16", help="comma-separated autocast dtypes: fp32, bf16, fp16")
    p.add_argument("--batch", type=int, default=1, help="images per call (the same picture repeated)")
    args = p.parse_args(argv)
    device = common.setup(args)
    names = common.dtype_list(p, args.dtype)
    if args.batch < 1:
        p.error("--batch must be at least 1")
    load_start = os.getloadavg()[0]

    model = common.build_model(args.backbone, args.image_size)
    picture = common.picture(args.input_px)
    bb = model.backbone
    x = to_tensor(picture, args.image_size, bb.mean, bb.std)[None].repeat(args.batch, 1, 1, 1).to(device)
    sides, last, stages = {}, {}, {}
    for name in names:
        det = Detector(model, device=device, dtype=name)  # one model shared by every dtype
        last[name], stages[name] = {}, []
        sides[f"bare_{name}"] = bare_side(model, x, det.dtype, device)
        if det.dtype == torch.float32:
            sides[f"bare_fused_{name}"] = bare_side(model, x, det.dtype, device, fused=True)
        sides[f"predict_{name}"] = predict_side(det, [picture] * args.batch, last[name], stages[name])
    times = common.interleave(sides, args.reps, device)

    base = {
        "bench": "latency",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "batch": args.batch,
        "reps": args.reps,
        "weights": "random",
    }
    med = {side: common.median(t) for side, t in times.items()}
    for name in names:
        runs = stages[name][1:]  # the first entry is the warm-up call
        stage_med = {k: common.median([r[k] for r in runs]) for k in runs[0]}
        unstaged = [total - sum(r.values()) for total, r in zip(times[f"predict_{name}"], runs, strict=True)]
        fused_side = f"bare_fused_{name}" if f"bare_fused_{name}" in times else f"bare_{name}"
        predict, bare, fused = med[f"predict_{name}"], med[f"bare_{name}"], med[fused_side]
        record = {
            **base,
            "what": "predict_over_bare",
            "dtype": name,
            "ratio": round(predict / bare, 4),
            "target_max": OVERHEAD_TARGET,
            "met": predict / bare <= OVERHEAD_TARGET,
            "ratio_vs_bare_fused": round(predict / fused, 4),
            "met_vs_bare_fused": predict / fused <= OVERHEAD_TARGET,
            "predict_s": round(predict, 4),
            "bare_s": round(bare, 4),
            "bare_fused_s": round(fused, 4),
            "predict_runs_s": common.rounded(times[f"predict_{name}"]),
            "bare_runs_s": common.rounded(times[f"bare_{name}"]),
            "bare_fused_runs_s": common.rounded(times[fused_side]),
            "stages_median_s": common.rounded(stage_med),
            "unstaged_median_s": round(common.median(unstaged), 4),
        }
        common.emit(record, device, args.out, load_start)
    if "fp32" in names:
        ref = last["fp32"]["preds"]
        for name in (n for n in names if DTYPES[n] != torch.float32):
            low = last[name]["preds"]
            maps = [np.stack([pred.anomaly_map for pred in preds]) for preds in (ref, low)]
            diff = float(np.abs(maps[0] - maps[1]).max())
            score_diff = max(abs(a.score - b.score) for a, b in zip(ref, low, strict=True))
            speedup = med["predict_fp32"] / med[f"predict_{name}"]
            target = SPEEDUP_TARGET_CPU if device.type == "cpu" and name == "bf16" else None
            common.emit(
                {
                    **base,
                    "what": f"{name}_vs_fp32",
                    "dtype": name,
                    "speedup_predict": round(speedup, 4),
                    "speedup_bare": round(med["bare_fp32"] / med[f"bare_{name}"], 4),
                    "speedup_bare_fused": round(med["bare_fused_fp32"] / med[f"bare_{name}"], 4),
                    "target_min_speedup": target,
                    "met_speed": None if target is None else speedup >= target,
                    "max_abs_map_diff": round(diff, 6),
                    "max_abs_score_diff": round(score_diff, 6),
                    "target_max_map_diff": MAP_DIFF_TARGET,
                    "met_maps": diff <= MAP_DIFF_TARGET,
                },
                device,
                args.out,
                load_start,
            )


if __name__ == "__main__":
    main()
