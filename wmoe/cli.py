"""Command line: `python -m wmoe make-tiny DIR` and `python -m wmoe predict IMAGE... --checkpoint DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import CheckpointError, save_pretrained
from .config import ConfigError, WMoEConfig
from .hub import WeightsNotFoundError
from .preprocess import ImageError, load_image
from .render import overlay


def make_tiny(args) -> int:
    from .model import WMoECLIP

    model = WMoECLIP(WMoEConfig.tiny(seed=args.seed))
    save_pretrained(
        model, args.directory, {"trained": False, "note": "tiny random model from `wmoe make-tiny`"}
    )
    print(f"wrote an untrained tiny checkpoint to {args.directory}")
    return 0


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
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wmoe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("make-tiny", help="write a tiny random (untrained) checkpoint for smoke tests")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=make_tiny)
    pred = sub.add_parser("predict", help="write a heatmap overlay PNG and a JSON line per image")
    pred.add_argument("images", nargs="+")
    pred.add_argument(
        "--class", dest="class_name", default="object", help="what the object is (default: object)"
    )
    pred.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub repo id")
    pred.add_argument("--revision", default=None)
    pred.add_argument("--out", default="out")
    pred.add_argument("--threshold", type=float, default=0.5, help="outline the region with map >= threshold")
    pred.add_argument("--device", default=None)
    pred.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"])
    pred.set_defaults(run=predict)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, ConfigError, WeightsNotFoundError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
