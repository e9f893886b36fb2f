"""Throughput: images per second through `Detector.predict_batch` at batch 1, 4 and 8, interleaved.

The batch sizes are timed in turn (1, 4, 8, 1, 4, 8...) after warm-up (one call of the smallest
batch; on CUDA also one round of every size). One JSON line per batch size (images/s, seconds per
image), then one per larger batch: its time per image over the smallest batch's (target for
batch 8: at most 0.9 on a GPU; on a CPU the cores are already busy at batch 1, so no target).
ViT-L-14-336 at 518 px on a 2-core CPU costs about a minute per batch of 8: shrink with
--image-size / --backbone for a quick run; every line says what was run.

    python -m benchmarks.throughput                                 # ViT-L-14-336, 518 px, fp32
    python -m benchmarks.throughput --backbone ViT-B-16 --image-size 224 --reps 5
"""

from __future__ import annotations

import os

from benchmarks import common
from wmoe.detector import Detector

GPU_TARGET = 0.9  # time per image at batch 8 over batch 1


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=2)
    p.add_argument("--dtype", default="fp32", choices=common.DTYPE_NAMES, help="autocast dtype")
    p.add_argument("--batches", default="1,4,8", help="comma-separated batch sizes")
    args = p.parse_args(argv)
    device = common.setup(args)
    batches = common.batch_list(p, args.batches)
    if not batches or batches[0] < 1:
        p.error("--batches needs at least one size, each at least 1")
    load_start = os.getloadavg()[0]

    det = Detector(common.build_model(args.backbone, args.image_size), device=device, dtype=args.dtype)
    picture = common.picture(args.input_px)
    sides = {b: (lambda b=b: det.predict_batch([picture] * b, "object")) for b in batches}
    sides[batches[0]]()  # first call: tokeniser cache, allocator, kernels
    times = common.interleave(sides, args.reps, device, warmup=1 if device.type == "cuda" else 0)

    base = {
        "bench": "throughput",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "dtype": args.dtype,
        "reps": args.reps,
        "weights": "random",
        "order": "interleaved " + ", ".join(map(str, batches)),
    }
    per_image = {b: common.median(t) / b for b, t in times.items()}
    for b in batches:
        common.emit(
            {
                **base,
                "what": "images_per_s",
                "batch": b,
                "images_per_s": round(1 / per_image[b], 4),
                "s_per_image": round(per_image[b], 4),
                "call_s": round(common.median(times[b]), 4),
                "runs_s": common.rounded(times[b]),
            },
            device,
            args.out,
            load_start,
        )
    for b in batches[1:]:
        ratio = per_image[b] / per_image[batches[0]]
        target = GPU_TARGET if device.type == "cuda" and b == 8 and batches[0] == 1 else None
        common.emit(
            {
                **base,
                "what": "per_image_time_ratio",
                "batch": b,
                "vs_batch": batches[0],
                "ratio": round(ratio, 4),
                "target_max": target,
                "met": None if target is None else ratio <= target,
            },
            device,
            args.out,
            load_start,
        )


if __name__ == "__main__":
    main()
