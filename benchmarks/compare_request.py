"""Compare with every method against the Analyze request, over HTTP, interleaved in one run.

Compare is the paper's Figure 2: with one reference image, nine columns of one image: four WMoE-CLIP
ablations through `skip=`, the checkpoint with the reference, the training-free CLIP baseline and the
reference alone (all from one pass of the WMoE-CLIP backbone, `Detector.compare`), and WinCLIP and
WinCLIP+ (one pass of WinCLIP's own backbone). Sides, timed in turn after one warm-up round (which also
caches the reference's features and WinCLIP's prompt embeddings, as a second request finds them):
- analyze: an Analyze request (the checkpoint, no references);
- compare: a Compare request with the reference (every method);
- winclip: `WinCLIP.predict` with the reference, in-process: WinCLIP's own pass, which Compare adds.
Target: compare at most 1.5 x analyze + winclip (the medians). The models have random weights written
like real ones (common.write_checkpoint; WinCLIP random at load), loaded with `app.load_models`; the app
is served as `python app.py` does. The scores mean nothing.

    python -m benchmarks.compare_request                 # ViT-L-14-336/518 and ViT-B-16-plus-240/240
    python -m benchmarks.compare_request --backbone ViT-B-16 --image-size 224 --reps 1
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import common

TARGET = 1.5  # compare <= TARGET x analyze + WinCLIP's own pass


def compare_request(client, path: Path, reference: Path):
    from gradio_client import handle_file

    refs = [handle_file(str(reference))]
    return client.predict(
        handle_file(str(path)), "object", 0.5, 0.5, "fixed", None, refs, api_name="/compare"
    )


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=2)
    p.add_argument("--dtype", default="fp32", choices=common.DTYPE_NAMES, help="autocast dtype")
    common.winclip_options(p)
    args = p.parse_args(argv)
    device = common.setup(args)
    load_start = os.getloadavg()[0]

    from gradio_client import Client

    import app

    winclip = common.build_winclip(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        weights, checkpoint = common.write_checkpoint(args.backbone, args.image_size, Path(tmp))
        os.environ["WMOE_BACKBONE_WEIGHTS"] = str(weights)
        detectors, baseline, notices = app.load_models(str(checkpoint), str(device), args.dtype)
        if not detectors or baseline is None:
            p.error("app.load_models could not load the benchmark checkpoint: " + " ".join(notices))
        demo = app.build_app(detectors, baseline, notices, winclip=winclip)
        _, url, _ = app.launch(demo, "127.0.0.1", common.free_port(), block=False, quiet=True)
        try:
            path, reference = Path(tmp) / "picture.png", Path(tmp) / "reference.png"
            picture = common.picture(args.input_px)
            picture.save(path)
            common.picture(args.input_px, seed=1).save(reference)
            client = Client(url, verbose=False)
            columns = []
            sides = {
                "analyze": lambda: common.analyze_request(client, path),
                "compare": lambda: columns.append(len(compare_request(client, path, reference)[0])),
                "winclip": lambda: winclip.predict(picture, "object", references=[reference]),
            }
            times = common.interleave(sides, args.reps, device)
        finally:
            with contextlib.redirect_stdout(sys.stderr):
                demo.close()

    med = {side: common.median(t) for side, t in times.items()}
    ratio = med["compare"] / (med["analyze"] * TARGET + med["winclip"])
    common.emit(
        {
            "bench": "compare_request",
            "what": "compare_every_method_over_1.5x_analyze_plus_winclip",
            "backbone": args.backbone,
            "image_size": args.image_size,
            "winclip_backbone": args.winclip_backbone,
            "winclip_size": args.winclip_size,
            "input_px": args.input_px,
            "dtype": args.dtype,
            "reps": args.reps,
            "weights": "random",
            "columns": columns[-1],
            "ratio": round(ratio, 4),
            "target_max": 1.0,
            "met": ratio <= 1.0,
            "compare_over_analyze": round(med["compare"] / med["analyze"], 4),
            "analyze_s": round(med["analyze"], 4),
            "compare_s": round(med["compare"], 4),
            "winclip_s": round(med["winclip"], 4),
            "runs_s": common.rounded(times),
        },
        device,
        args.out,
        load_start,
    )


if __name__ == "__main__":
    main()
