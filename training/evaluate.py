"""Evaluate any WMoE-CLIP checkpoint on any prepared dataset: per-class and mean metrics (zero-shot protocol).

    python -m training.evaluate --checkpoint runs/mvtec --data data/visa --out runs/mvtec/eval/visa

Writes results.md (x100, one decimal), results.csv and metrics.json (fractions in 0..1), and for a model
with SA-MoE each class's mean routing weights and routing entropy (wmoe.routing): a table in results.md,
routing.csv, a `routing` field in metrics.json and the chart routing.png. The model
sees each image through the inference preprocessing (wmoe.preprocess) and gives the same anomaly map
and image score as wmoe.Detector. Memory stays modest: classes are evaluated one at a time, and each
class's maps and masks are kept at the model input size (or min(--map-size, that) pixels a side) (float32 maps, uint8
masks: 5 bytes per pixel, plus about 12 bytes per pixel while its metrics are computed), and only for
images whose masks are known (none for image-label-only classes).
Runs under torchrun too: each process takes a share of every class and the results are gathered.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from training.config import Eval, Optim, TrainConfig, TrainConfigError
from training.data import MetaDataset, MetaError, collate, resolve_meta
from training.distributed import (
    DEVICES,
    PRECISIONS,
    World,
    all_gather_rows,
    autocast_dtype,
    close_world,
    init_world,
    shard,
)
from training.feature_cache import STORAGE, FeatureCache, batch_inputs
from training.progress import progress_bar
from training.report import METRICS, markdown_table, write_results
from wmoe import load_model
from wmoe import metrics as M
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError
from wmoe.features import BackboneFeatures
from wmoe.precision import autocast, dtype_name
from wmoe.preprocess import load_image, to_tensor
from wmoe.references import MAX_REFERENCES, bank, reference_map
from wmoe.references import combine as with_references
from wmoe.routing import summarize_routing

PIXEL = METRICS[3:]


@torch.no_grad()
def evaluate(
    model,
    dataset: MetaDataset,
    world: World | None = None,
    *,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
    progress: bool = True,
    desc: str | None = None,
    references: dict[str, list[Path]] | None = None,
    trained: bool = False,
) -> dict | None:
    """Metrics of `model` on `dataset`, class by class: {"mean", "per_class", "counts", "images", "map_size",
    "routing"}; routing: {class: `RoutingSummary.to_dict()`}, or None for a model without SA-MoE.

    Every process must call it; the result is returned on the main process (None on the others).
    Pixel metrics use only images whose masks are known (see training/data.py); a class with a single
    label gives NaN for that metric, and the mean skips NaN (wmoe.metrics.macro_mean).
    references: {class: normal image files} for the few-shot protocol (`draw_shots`): each image's map and
    score then combine the zero-shot output with its reference map as the Detector does
    (`wmoe.references.combine`; trained: whether the model was trained, else the reference part alone).
    """
    world = world or World(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    size = dataset.mask_size
    total = sum(len(shard(dataset.indices_of(c), world)) for c in dataset.classes)
    bar = progress_bar(
        total=total,
        desc=desc or f"evaluate {dataset.name}",
        unit="img",
        disable=not (progress and world.main),
    )
    per_class, counts, routing = {}, {}, {}
    try:
        for cls in dataset.classes:
            rows = _predict(
                model,
                Subset(dataset, shard(dataset.indices_of(cls), world)),
                world,
                size,
                batch_size,
                dtype,
                num_workers,
                bar,
                class_references(model, (references or {}).get(cls), world.device, dtype),
                trained,
            )
            rows = {k: all_gather_rows(v, world) for k, v in rows.items()}
            if world.main:
                per_class[cls], counts[cls] = _class_metrics(rows)
                if rows["routing"].shape[1]:
                    routing[cls] = summarize_routing(rows["routing"].double().numpy()).to_dict()
    finally:
        bar.close()
        model.train(was_training)
    if not world.main:
        return None
    return {
        "mean": M.macro_mean(per_class),
        "per_class": per_class,
        "counts": counts,
        "images": sum(c["images"] for c in counts.values()),
        "map_size": size,
        "routing": routing or None,
    }


def class_references(model, paths: list[Path] | None, device: torch.device, dtype: torch.dtype):
    """The reference bank of one class's normal images (one backbone pass over them), or None."""
    if not paths:
        return None
    net = getattr(model, "module", model)
    bb = net.backbone
    x = torch.stack([to_tensor(load_image(p), bb.image_size, bb.mean, bb.std) for p in paths]).to(device)
    with autocast(device, dtype):
        return bank(net.encode(x, net.config.layers), net.config.layers)


def draw_shots(
    root: str | Path, meta: str | Path, classes: list[str], k: int, seed: int
) -> dict[str, list[Path]]:
    """K normal training images per class (the few-shot protocol), drawn with a seed per (seed, class) from
    the meta file's "train" pool (`python -m training.prepare_data` lists it). Raises MetaError when a
    class has fewer than K."""
    path = resolve_meta(root, meta)
    pool = json.loads(path.read_text()).get("train") or {}
    shots = {}
    for cls in classes:
        normals = [e["img_path"] for e in pool.get(cls, []) if not e.get("anomaly")]
        if len(normals) < k:
            raise MetaError(
                f'{path}: class {cls!r} has {len(normals)} normal training images listed under "train"; '
                f"--shots {k} needs {k} (MVTec layout: <class>/train/good/; own folder: reference/)"
            )
        shots[cls] = [Path(root) / p for p in random.Random(f"{seed}:{cls}").sample(normals, k)]
    return shots


def _predict(
    model,
    subset: Subset,
    world: World,
    size: int,
    batch_size: int,
    dtype: torch.dtype,
    num_workers: int,
    bar,
    refs=None,
    trained: bool = False,
) -> dict[str, torch.Tensor]:
    """This process's share of one class: index, label, score of every image; map and mask of the images whose
    masks are known (the others need no pixels kept)."""
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )  # never touches the global RNG
    device = world.device
    config = getattr(model, "module", model).config
    experts = config.num_experts if config.use_moe else 0
    out = {
        "index": [torch.zeros(0, dtype=torch.long)],
        "label": [torch.zeros(0, dtype=torch.long)],
        "score": [torch.zeros(0)],
        "pixel_index": [torch.zeros(0, dtype=torch.long)],
        "map": [torch.zeros(0, size, size)],
        "mask": [torch.zeros(0, size, size, dtype=torch.uint8)],
        "routing": [torch.zeros(0, experts)],
    }
    for batch in loader:
        inputs = batch_inputs(
            batch, model, subset.dataset.features, device, dtype
        )  # images, or their features
        with autocast(device, dtype):
            if refs is None:
                pred = model(inputs, list(batch["class_name"]))
            else:  # few-shot: the same features serve the heads and the reference map
                net = getattr(model, "module", model)
                features = inputs if isinstance(inputs, BackboneFeatures) else net.encode(inputs)
                pred = model(features, list(batch["class_name"]))
                grid = reference_map(features, refs, net.config.layers)
                pred.anomaly_map, pred.image_score, _, _ = with_references(
                    pred.anomaly_map, pred.image_score, grid, trained=trained
                )
        known = batch["has_mask"].bool()
        out["index"].append(batch["index"].long())
        out["label"].append(batch["label"].long())
        out["score"].append(pred.image_score.float().cpu())
        if experts:
            out["routing"].append(pred.routing_weights.float().cpu())
        if known.any():
            amap = pred.anomaly_map.float()[known.to(device)][:, None]
            if amap.shape[-1] != size:
                amap = F.interpolate(amap, size=(size, size), mode="bilinear", align_corners=False)
            out["pixel_index"].append(batch["index"][known].long())
            out["map"].append(amap[:, 0].cpu())
            out["mask"].append(batch["mask"][known].to(torch.uint8))  # uint8: every backend can gather it
        bar.update(len(batch["index"]))
    return {k: torch.cat(v) for k, v in out.items()}


def _class_metrics(rows: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, int]]:
    order = torch.argsort(rows["index"])  # dataset order, whatever the number of processes
    labels, scores = rows["label"][order].numpy(), rows["score"][order].numpy()
    result = {k: math.nan for k in METRICS}
    pixel_order = torch.argsort(rows["pixel_index"])
    if len(pixel_order):
        masks = rows["mask"][pixel_order].numpy().astype(bool)
        maps = rows["map"][pixel_order].numpy()
        position = {int(i): k for k, i in enumerate(rows["index"][order])}
        known = [position[int(i)] for i in rows["pixel_index"][pixel_order]]
        pixel = M.compute_all(labels[known], scores[known], masks, maps)
        result.update({k: pixel[k] for k in PIXEL})
    result.update(M.compute_all(labels, scores))
    counts = {
        "images": int(len(labels)),
        "anomalous": int(labels.sum()),
        "pixel_annotated": int(len(pixel_order)),
    }
    return {k: float(result[k]) for k in METRICS}, counts


def map_side(map_size: int, image_size: int) -> int:
    """The side of the maps and masks the pixel metrics use: 0 = the model input size."""
    return image_size if map_size == 0 else min(map_size, image_size)


def combine(results: dict[str, dict]) -> dict:
    """Several datasets into one result: per_class keys "dataset/class", per_dataset means, and the mean
    over datasets (each dataset counts once). A single dataset is returned as is."""
    if len(results) == 1:
        return next(iter(results.values()))
    per_class = {f"{d}/{c}": m for d, r in results.items() for c, m in r["per_class"].items()}
    counts = {f"{d}/{c}": m for d, r in results.items() for c, m in r["counts"].items()}
    per_dataset = {d: r["mean"] for d, r in results.items()}
    routing = {f"{d}/{c}": m for d, r in results.items() for c, m in (r.get("routing") or {}).items()}
    return {
        "mean": M.macro_mean(per_dataset),
        "per_class": per_class,
        "counts": counts,
        "per_dataset": per_dataset,
        "images": sum(r["images"] for r in results.values()),
        "map_size": max(r["map_size"] for r in results.values()),
        "routing": routing or None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked by the rules of the recipe's fields of the same names."""
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors) or Hub id"
    )
    ap.add_argument(
        "--data", required=True, help="dataset root (prepared with python -m training.prepare_data)"
    )
    ap.add_argument("--meta", default="meta.json", help="meta file, relative to --data (default meta.json)")
    ap.add_argument("--classes", nargs="+", default=None, help="evaluate only these classes")
    ap.add_argument("--out", required=True, help="folder for results.md, results.csv and metrics.json")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--map-size",
        type=int,
        default=0,
        help="side of the stored maps and masks (default 0: the model input size, as published numbers)",
    )
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument(
        "--cpu-threads", type=int, default=0, help="torch CPU threads (default: PyTorch's, one per core)"
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--shots",
        type=int,
        default=0,
        help="few-shot protocol: K normal training images per class as references (default 0: zero-shot)",
    )
    ap.add_argument("--shot-seed", type=int, default=0, help="seed of the reference draw (default 0)")
    ap.add_argument("--feature-cache", metavar="DIR", default=None, help="cache the backbone features here")
    ap.add_argument(
        "--feature-cache-dtype",
        choices=sorted(STORAGE),
        default="fp32",
        help="entry precision (default fp32)",
    )
    args = ap.parse_args(argv)
    if not 0 <= args.shots <= MAX_REFERENCES:
        ap.error(f"--shots must be 0..{MAX_REFERENCES}")
    try:
        Eval(batch_size=args.batch_size, map_size=args.map_size)
        Optim(num_workers=args.num_workers)
        TrainConfig.check_cpu_threads(args.cpu_threads)
    except TrainConfigError as e:
        ap.error("--" + str(e).replace("_", "-", 1))
    return args


def run(args: argparse.Namespace) -> dict | None:
    """Evaluate `args.checkpoint` on `args.data` and write the reports in `args.out` (training/report.py);
    the result with the run's record on the main process, None on the others. Raises WMoEError."""
    world, threads = None, torch.get_num_threads()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    try:
        world = init_world(args.device)
        model, info = load_model(args.checkpoint)
        model.to(world.device)
        size = model.config.image_size
        dtype = autocast_dtype(world.device, args.precision)
        cache = None
        if args.feature_cache:
            cache = FeatureCache(
                args.feature_cache, model.backbone, model.config.layers, dtype, args.feature_cache_dtype
            )
        dataset = MetaDataset(
            args.data,
            args.meta,
            args.classes,
            image_size=size,
            mean=model.backbone.mean,
            std=model.backbone.std,
            mask_size=map_side(args.map_size, size),
            features=cache,
        )
        trained = bool(info.get("trained"))
        if world.main and not trained:
            print(f"note: {args.checkpoint} is marked UNTRAINED in its config.json", file=sys.stderr)
        shots = None
        if args.shots:
            shots = draw_shots(args.data, args.meta, dataset.classes, args.shots, args.shot_seed)
        start = time.perf_counter()
        result = evaluate(
            model,
            dataset,
            world,
            batch_size=args.batch_size,
            dtype=dtype,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            references=shots,
            trained=trained,
        )
        feature_cache = cache.report(world) if cache is not None else None  # every process
        if not world.main:
            return None
        result = {
            **result,
            "checkpoint": str(args.checkpoint),
            "trained": trained,
            "data": str(args.data),
            "meta": str(args.meta),
            "classes": args.classes,
            "device": str(world.device),
            "precision": dtype_name(dtype),
            "processes": world.size,
            "seconds": round(time.perf_counter() - start, 2),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "shots": args.shots,
            "shot_seed": args.shot_seed if args.shots else None,
            "references": {
                c: [str(Path(p).relative_to(args.data)) for p in v] for c, v in (shots or {}).items()
            },
            "feature_cache": feature_cache,
        }
        protocol = f", {args.shots}-shot (seed {args.shot_seed})" if args.shots else ", zero-shot"
        write_results(result, args.out, title=f"{args.checkpoint} on {args.data}{protocol}")
        return result
    finally:
        torch.set_num_threads(threads)
        if world is not None:
            close_world(world)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if result is not None:
        print(markdown_table(result), end="")
        print(f"wrote {Path(args.out) / 'results.md'}, results.csv, metrics.json")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
