"""Command line: `wmoe make-tiny DIR` and `wmoe predict IMAGE... --checkpoint DIR` (also `python -m wmoe`).

Exit codes follow `wmoe.errors`: 0 done, 1 some images skipped, 2 a clear error (or wrong usage).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEFAULT_CLASS
from .errors import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, WMoEError
from .precision import DTYPES
from .preprocess import ImageError, load_image
from .render import overlay


def make_tiny(args) -> int:
    from .checkpoint import save_pretrained
    from .config import WMoEConfig
    from .model import WMoECLIP

    model = WMoECLIP(WMoEConfig.tiny(seed=args.seed))
    save_pretrained(
        model, args.directory, {"trained": False, "note": "tiny random model from `wmoe make-tiny`"}
    )
    print(f"wrote an untrained tiny checkpoint to {args.directory}")
    return EXIT_OK


def predict(args) -> int:
    from .detector import Detector

    detector = Detector.from_pretrained(
        args.checkpoint, revision=args.revision, device=args.device, dtype=args.dtype
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with open(out / "predictions.jsonl", "a") as log:
        for path in args.images:
            try:
                image = load_image(path)
                pred = detector.predict(image, args.class_name)
            except ImageError as e:
                print(f"skipped: {e}", file=sys.stderr)
                failed += 1
                continue
            target = out / f"{Path(path).stem}_overlay.png"
            overlay(image, pred.anomaly_map, threshold=args.threshold).save(target)
            line = json.dumps({"path": str(path), "overlay": str(target), **pred.to_dict()})
            print(line)
            log.write(line + "\n")
    return EXIT_SKIPPED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wmoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny", help="write a tiny random (untrained) checkpoint for smoke tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=make_tiny)
    pred = sub.add_parser("predict", help="write a heatmap overlay PNG and a JSON line per image")
    pred.add_argument("images", nargs="+")
    pred.add_argument(
        "--class",
        dest="class_name",
        default=DEFAULT_CLASS,
        help=f"what the object is (default: {DEFAULT_CLASS})",
    )
    pred.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub repo id")
    pred.add_argument("--revision", default=None)
    pred.add_argument("--out", default="out")
    pred.add_argument("--threshold", type=float, default=0.5, help="outline the region with map >= threshold")
    pred.add_argument("--device", default=None)
    pred.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    pred.set_defaults(run=predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
