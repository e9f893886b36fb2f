"""Compare request time against the Analyze request, over HTTP, interleaved.

Compare shows five variants of one image (four WMoE-CLIP ablations through `skip=` and the training-free
baseline sharing the backbone); it pays one backbone pass and five sets of heads (`Detector.compare`),
where it used to run the whole model five times (4.2x an Analyze request, measured before the split).
The models are loaded with `app.load_models` from a checkpoint with random weights written like real
ones (common.write_checkpoint) and the app is served as `python app.py` does.
Target: Compare request time at most 1.3x the Analyze request time.

    python -m benchmarks.compare_request                 # ViT-L-14-336, 518 px, fp32, 2 reps
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import common

TARGET = 1.3


def compare_request(client, path: Path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), "object", 0.5, 0.5, "fixed", api_name="/compare")


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=2)
    p.add_argument("--dtype", default="fp32", choices=common.DTYPE_NAMES, help="autocast dtype")
    args = p.parse_args(argv)
    device = common.setup(args)
    load_start = os.getloadavg()[0]

    from gradio_client import Client

    import app

    with tempfile.TemporaryDirectory() as tmp:
        weights, checkpoint = common.write_checkpoint(args.backbone, args.image_size, Path(tmp))
        os.environ["WMOE_BACKBONE_WEIGHTS"] = str(weights)
        detector, baseline, notices = app.load_models(str(checkpoint), str(device), args.dtype)
        if detector is None or baseline is None:
            p.error("app.load_models could not load the benchmark checkpoint: " + " ".join(notices))
        demo, url = common.serve_app(detector, baseline, notices)
        try:
            path = Path(tmp) / "picture.png"
            common.picture(args.input_px).save(path)
            client = Client(url, verbose=False)
            sides = {
                "analyze": lambda: common.analyze_request(client, path),
                "compare": lambda: compare_request(client, path),
            }
            times = common.interleave(sides, args.reps, device)
        finally:
            with contextlib.redirect_stdout(sys.stderr):
                demo.close()

    med = {side: common.median(t) for side, t in times.items()}
    ratio = med["compare"] / med["analyze"]
    common.emit(
        {
            "bench": "compare_request",
            "what": "compare_over_analyze",
            "backbone": args.backbone,
            "image_size": args.image_size,
            "input_px": args.input_px,
            "dtype": args.dtype,
            "reps": args.reps,
            "weights": "random",
            "variants": 5,
            "ratio": round(ratio, 4),
            "target_max": TARGET,
            "met": ratio <= TARGET,
            "analyze_s": round(med["analyze"], 4),
            "compare_s": round(med["compare"], 4),
            "runs_s": common.rounded(times),
        },
        device,
        args.out,
        load_start,
    )


if __name__ == "__main__":
    main()
