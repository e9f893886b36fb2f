"""App request time: the demo's Analyze request against the bare `Detector.predict`, interleaved.

The models are loaded with `app.load_models` from a checkpoint (random weights written like real
ones, see common.write_checkpoint), and the app is built and served with `app.build_app` and
`app.launch` on a local port, as `python app.py` does. Three sides on the same image file, timed
in turn after one warm-up round:
- predict: `detector.predict(path)`, the model alone (decode, preprocess, forward, maps);
- handler: `demo.analyze.AnalyzeTab.analyze`, the Analyze handler in-process (overlays, routing chart,
  per-layer and expert maps, downloads) without HTTP;
- request: one Analyze request over HTTP with gradio_client (upload, queue, handler, Gradio's
  PNG encoding of every output image, download), what a user waits for.
Target: request time at most 1.2x predict time.

    python -m benchmarks.app_request                     # ViT-L-14-336, 518 px, fp32, 3 reps
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import common

TARGET = 1.2


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=3)
    p.add_argument("--dtype", default="fp32", choices=common.DTYPE_NAMES, help="autocast dtype")
    args = p.parse_args(argv)
    device = common.setup(args)
    if not (common.ROOT / "app.py").is_file():
        p.error("app.py is absent: nothing to measure")
    load_start = os.getloadavg()[0]

    from gradio_client import Client

    import app

    with tempfile.TemporaryDirectory() as tmp:
        weights, checkpoint = common.write_checkpoint(args.backbone, args.image_size, Path(tmp))
        os.environ["WMOE_BACKBONE_WEIGHTS"] = str(weights)
        detectors, baseline, notices = app.load_models(str(checkpoint), str(device), args.dtype)
        if not detectors:
            p.error("app.load_models could not load the benchmark checkpoint: " + " ".join(notices))
        [detector] = detectors.values()
        demo, url = common.serve_app(detector, baseline, notices)
        try:
            path = Path(tmp) / "picture.png"
            common.picture(args.input_px).save(path)
            tab, client = app.build_page(detector, baseline).analyze, Client(url, verbose=False)
            sides = {
                "predict": lambda: detector.predict(path, "object"),
                "handler": lambda: tab.analyze(str(path), "object", 0.5, 0.5, "fixed", False),
                "request": lambda: common.analyze_request(client, path),
            }
            times = common.interleave(sides, args.reps, device)
        finally:
            with contextlib.redirect_stdout(sys.stderr):  # gradio prints "Closing server...": keep JSON only
                demo.close()

    med = {side: common.median(t) for side, t in times.items()}
    base = {
        "bench": "app_request",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "input_px": args.input_px,
        "dtype": args.dtype,
        "reps": args.reps,
        "weights": "random",
        "predict_s": round(med["predict"], 4),
        "predict_runs_s": common.rounded(times["predict"]),
    }
    for side, words in (
        ("handler", "AnalyzeTab.analyze in-process (no HTTP)"),
        ("request", "Analyze over HTTP with gradio_client"),
    ):
        ratio = med[side] / med["predict"]
        target = TARGET if side == "request" else None
        common.emit(
            {
                **base,
                "what": f"{side}_over_predict",
                "side": words,
                "ratio": round(ratio, 4),
                "target_max": target,
                "met": None if target is None else ratio <= target,
                f"{side}_s": round(med[side], 4),
                f"{side}_runs_s": common.rounded(times[side]),
                "extra_s": round(med[side] - med["predict"], 4),
            },
            device,
            args.out,
            load_start,
        )


if __name__ == "__main__":
    main()
