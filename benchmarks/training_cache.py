"""Training over the feature cache: N epochs, and the ablation set, against one backbone pass, in one run.

On the same synthetic images (random backbone weights, which cost what real ones do), measured in turn:
- pass: one backbone pass over every training image (`WMoECLIP.encode`, batches of the recipe's size);
- fill: a one-epoch training run that fills an empty feature cache (one backbone pass per image);
- warm: a training run of N epochs over the filled cache (no backbone pass at all);
- ablations: `training.ablate` with the 7 trainings of `training/configs/ablations_smoke.yaml`'s variants
  over a fresh cache (the first fills it).
Every run is a full `training.train` run (model built, training, states saved; no evaluation sets).
Each ratio is printed as soon as it is measured.
Targets: warm / pass <= 1.5 at N = 15; ablations / pass <= 3.

    python -m benchmarks.training_cache                   # ViT-B-16, 224 px, 15 epochs, fp32
    python -m benchmarks.training_cache --backbone ViT-L-14-336 --image-size 518 --dtype bf16   # on a GPU
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks import common
from wmoe.precision import DTYPES, autocast

TARGET_WARM, TARGET_ABLATIONS = 1.5, 3.0


def backbone_pass(model, data: Path, batch_size: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds of one backbone pass over the dataset's images, as training preprocesses and runs them."""
    from training.data import MetaDataset

    bb = model.backbone
    images = MetaDataset(data, image_size=bb.image_size, mean=bb.mean, std=bb.std)
    batches = torch.stack([images[i]["image"] for i in range(len(images))]).split(batch_size)
    with torch.no_grad(), autocast(device, dtype):
        model.encode(batches[0].to(device))  # warm-up
        return common.timed(lambda: [model.encode(b.to(device)) for b in batches], device)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0], reps=1)
    p.set_defaults(
        backbone="wmoe-tiny" if common.QUICK else "ViT-B-16", image_size=104 if common.QUICK else 224
    )
    p.add_argument("--epochs", type=int, default=2 if common.QUICK else 15)
    p.add_argument("--categories", type=int, default=2, help="synthetic categories (9 images each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16"), help="training precision (bf16: CUDA)"
    )
    args = p.parse_args(argv)
    device = common.setup(args)
    load_start = os.getloadavg()[0]

    from training import ablate, train
    from training.config import load_config
    from training.data import load_entries
    from training.distributed import init_world
    from training.prepare_data import prepare
    from training.synthetic import generate
    from wmoe import WMoECLIP

    config = common.build_config(args.backbone, args.image_size)
    model_fields = {
        k: v for k, v in config.to_dict().items() if k in ("backbone", "pretrained", "image_size", "layers")
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        generate(
            data,
            args.categories,
            n_train_good=0,
            n_test_good=4,
            n_test_defect_per_type=1,
            size=args.image_size,
        )
        prepare("mvtec", data)
        recipe = {
            "seed": 0,
            "device": device.type,
            "precision": args.dtype,
            "model": model_fields,
            "train": {"root": str(data)},
            "optim": {"batch_size": args.batch_size, "epochs": args.epochs},
        }

        def training_run(name: str, cache: Path, epochs: int) -> float:
            path = tmp / f"{name}.yaml"
            body = {**recipe, "optim": {**recipe["optim"], "epochs": epochs}, "feature_cache": str(cache)}
            path.write_text(yaml.safe_dump(body))
            start = time.perf_counter()
            result = train.run(load_config(path, tmp / name), tmp / name, progress=False)
            seconds = time.perf_counter() - start
            print(f"{name}: {seconds:.1f} s, cache {result['feature_cache']}", file=sys.stderr)
            return seconds

        n_images = len(load_entries(data))
        base = {
            "bench": "training_cache",
            "backbone": args.backbone,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "weights": "random",
            "images": n_images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
        }

        def emit(what: str, seconds: float, target: float, **extra):
            ratio = seconds / pass_s
            common.emit(
                {
                    **base,
                    **extra,
                    "what": what,
                    "seconds": round(seconds, 3),
                    "ratio": round(ratio, 4),
                    "target_max": target,
                    "met": ratio <= target,
                },
                device,
                args.out,
                load_start,
            )

        dtype = DTYPES[args.dtype]
        base["pass_s"] = pass_s = backbone_pass(
            WMoECLIP(config).to(device).eval(), data, args.batch_size, device, dtype
        )
        base["pass_s"] = round(pass_s, 3)
        print(f"one backbone pass over {n_images} images: {pass_s:.1f} s", file=sys.stderr)
        base["fill_s"] = round(training_run("fill", tmp / "cache", 1), 3)  # fills the cache: one epoch
        emit("warm_over_pass", training_run("warm", tmp / "cache", args.epochs), TARGET_WARM)
        variants = yaml.safe_load((common.ROOT / "training" / "configs" / "ablations_smoke.yaml").read_text())
        (tmp / "ablation.yaml").write_text(
            yaml.safe_dump(
                {"variants": variants["variants"], "recipe": recipe, "feature_cache": "{output}/cache"}
            )
        )
        start = time.perf_counter()
        ablation = ablate.load_ablation(tmp / "ablation.yaml")
        ablate.run(ablation, tmp / "ablations", init_world(device.type), progress=False)
        emit(
            "ablations_over_pass",
            time.perf_counter() - start,
            TARGET_ABLATIONS,
            trainings=len(ablation.variants),
        )


if __name__ == "__main__":
    main()
