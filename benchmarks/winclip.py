"""WinCLIP seconds per image against one pass of the main backbone, interleaved in one run.

Sides, timed in turn (A, B, A, B...) after one warm-up round (which also embeds the class name's prompt
ensemble, cached afterwards; its time is reported apart):
- winclip: `WinCLIP.predict` on the picture (decode, preprocess, whole-image and window passes, maps at
  the picture's size) on ViT-B-16-plus-240 at 240 px;
- backbone: one pass of the main backbone as the detector runs it (`Backbone.encode_image` with its
  taps) on the preprocessed tensor, ViT-L-14-336 at 518 px.
One JSON line: the ratio of the medians (target <= 1.0) and WinCLIP's median seconds per stage.
Both backbones have random weights (the same cost as real ones); the scores mean nothing.

    python -m benchmarks.winclip                        # ViT-B-16-plus-240/240 against ViT-L-14-336/518
    python -m benchmarks.winclip --threads 2 --reps 5
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks import common
from wmoe.preprocess import to_tensor

TARGET = 1.0


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=3)
    common.winclip_options(p)
    args = p.parse_args(argv)
    device = common.setup(args)
    load_start = os.getloadavg()[0]

    winclip = common.build_winclip(args, device)
    backbone = common.build_model(args.backbone, args.image_size).backbone.to(device)
    picture = common.picture(args.input_px)
    x = to_tensor(picture, args.image_size, backbone.mean, backbone.std)[None].to(device)
    t0 = time.perf_counter()
    winclip.text_embeddings("object")
    text_s = time.perf_counter() - t0
    stages = []

    def winclip_side():
        stages.append(winclip.predict(picture, "object").timings)

    def backbone_side():
        with torch.inference_mode():
            backbone.encode_image(x)

    times = common.interleave({"winclip": winclip_side, "backbone": backbone_side}, args.reps, device)
    runs = stages[1:]  # the first is the warm-up call
    win, bb = common.median(times["winclip"]), common.median(times["backbone"])
    record = {
        "bench": "winclip",
        "what": "winclip_predict_over_one_backbone_pass",
        "winclip_backbone": args.winclip_backbone,
        "winclip_size": args.winclip_size,
        "window_scales": list(winclip.scales),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "reps": args.reps,
        "weights": "random",
        "ratio": round(win / bb, 4),
        "target_max": TARGET,
        "met": win / bb <= TARGET,
        "winclip_s": round(win, 4),
        "backbone_s": round(bb, 4),
        "winclip_runs_s": common.rounded(times["winclip"]),
        "backbone_runs_s": common.rounded(times["backbone"]),
        "winclip_stages_median_s": common.rounded({k: common.median([r[k] for r in runs]) for k in runs[0]}),
        "prompt_ensemble_once_s": round(text_s, 4),
    }
    common.emit(record, device, args.out, load_start)


if __name__ == "__main__":
    main()
