"""bf16/fp16 autocast vs fp32: how far the anomaly maps and scores move, with non-trivial heads.

At their initial values several heads are identities (the WCMA gate and the patch projection start at
zero), so their low-precision error would go unmeasured: every head parameter is perturbed first (normal
noise, std 0.05, seed 0). One model, one picture, each dtype in turn; prints max abs differences to fp32.

    python -m benchmarks.precision                 # ViT-L-14-336, 518 px, bf16 vs fp32
"""

from __future__ import annotations

import os

import numpy as np
import torch

from benchmarks import common
from wmoe import Detector


def perturb_heads(model, seed: int = 0, std: float = 0.05):
    """Every learned (non-backbone) parameter plus normal noise: no head stays an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=1)
    p.add_argument(
        "--dtype", default="bf16", help="comma-separated low-precision dtypes to compare: bf16, fp16"
    )
    args = p.parse_args(argv)
    device = common.setup(args)
    load_start = os.getloadavg()[0]
    model = perturb_heads(common.build_model(args.backbone, args.image_size))
    picture = common.picture(args.input_px)
    ref = Detector(model, device=device, dtype="fp32").predict(picture, "object")
    for name in common.dtype_list(p, args.dtype):
        low = Detector(model, device=device, dtype=name).predict(picture, "object")
        record = {
            "bench": "precision",
            "what": f"{name}_vs_fp32_perturbed_heads",
            "backbone": args.backbone,
            "image_size": args.image_size,
            "input_px": args.input_px,
            "weights": "random backbone, heads perturbed (std 0.05)",
            "dtype": name,
            "max_abs_map_diff": round(float(np.abs(ref.anomaly_map - low.anomaly_map).max()), 6),
            "max_abs_score_diff": round(abs(ref.score - low.score), 6),
            "max_abs_expert_weight_diff": round(
                float(np.abs(ref.expert_weights - low.expert_weights).max()), 6
            ),
        }
        common.emit(record, device, args.out, load_start)


if __name__ == "__main__":
    main()
