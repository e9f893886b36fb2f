"""Evaluate any WMoE-CLIP checkpoint, or a training-free method, on any prepared dataset: per-class and mean metrics.

    python -m training.evaluate --checkpoint runs/mvtec --data data/visa --out runs/mvtec/eval/visa
    python -m training.evaluate --method musc --data data/visa --out runs/musc/visa   # no checkpoint

Methods (`--method`): `wmoe` (default; needs --checkpoint), and the training-free `musc` (wmoe.musc: each
class's test images scored as one batch, as the paper does), `winclip` (wmoe.winclip; WinCLIP+ with
--shots) and `clip` (plain CLIP with fixed prompts, `Detector.training_free`; with --shots the reference
map alone, the library's rule for an untrained model). `--backbone NAME` replaces a training-free method's
default backbone (ViT-L-14-336 at 518 px for musc and clip, ViT-B-16-plus-240 at 240 px for winclip;
`wmoe-tiny` is the tiny random one of the tests; another open_clip name gets random weights).

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

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from training.config import Eval, Optim, TrainConfig, TrainConfigError
from training.data import MetaDataset, MetaError, collate, prompt_name, resolve_meta
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
from wmoe import Detector, WinCLIP, WMoEConfig, load_model, musc
from wmoe import metrics as M
from wmoe.detector import EncodedBatch
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError
from wmoe.features import BackboneFeatures
from wmoe.precision import autocast, dtype_name
from wmoe.preprocess import load_image, to_tensor
from wmoe.references import MAX_REFERENCES, bank, reference_map
from wmoe.references import combine as with_references
from wmoe.references import method_name as with_references_name
from wmoe.routing import summarize_routing

PIXEL = METRICS[3:]
METHODS = {"wmoe": "WMoE-CLIP", "musc": musc.METHOD, "winclip": "WinCLIP", "clip": "CLIP"}  # --method: name
TINY = "wmoe-tiny"  # --backbone: the tiny random backbone of the tests (WMoEConfig.tiny())


class MethodError(WMoEError, ValueError):
    """A method and options that do not go together (e.g. MuSc with --shots), or an unknown backbone."""


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
    method: str = "wmoe",
    ks: tuple[int, ...] = musc.KS,
) -> dict | None:
    """Metrics of `model` on `dataset`, class by class: {"mean", "per_class", "counts", "images", "map_size",
    "routing"}; routing: {class: `RoutingSummary.to_dict()`}, or None for a model without SA-MoE.

    Every process must call it; the result is returned on the main process (None on the others).
    Pixel metrics use only images whose masks are known (see training/data.py); a class with a single
    label gives NaN for that metric, and the mean skips NaN (wmoe.metrics.macro_mean).
    references: {class: normal image files} for the few-shot protocol (`draw_shots`): each image's map and
    score then combine the zero-shot output with its reference map as the Detector does
    (`wmoe.references.combine`; trained: whether the model was trained, else the reference part alone).
    method: "wmoe" and "clip" run `model` (a WMoECLIP) batch by batch; "musc" scores each class as one
    batch on `model`'s backbone (one process; ks: RsCIN's k list); "winclip" runs `model` (a WinCLIP)
    image by image, WinCLIP+ with references.
    """
    world = world or World(
        device=model.device if isinstance(model, WinCLIP) else next(model.parameters()).device
    )
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
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
            subset = Subset(dataset, shard(dataset.indices_of(cls), world))
            refs = (references or {}).get(cls)
            if method == "winclip":
                rows = _predict_winclip(model, subset, size, bar, refs)
            elif method == "musc":
                rows = _predict_musc(model, subset, world, size, batch_size, dtype, num_workers, bar, ks)
            else:
                ref_bank = class_references(model, refs, world.device, dtype, dataset.features)
                rows = _predict(
                    model, subset, world, size, batch_size, dtype, num_workers, bar, ref_bank, trained
                )
            rows = {k: all_gather_rows(v, world) for k, v in rows.items()}
            if world.main:
                per_class[cls], counts[cls] = _class_metrics(rows)
                if rows["routing"].shape[1]:
                    routing[cls] = summarize_routing(rows["routing"].double().numpy()).to_dict()
    finally:
        bar.close()
        if module is not None:
            module.train(was_training)
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


def class_references(
    model,
    paths: list[Path] | None,
    device: torch.device,
    dtype: torch.dtype,
    cache: FeatureCache | None = None,
):
    """The reference bank of one class's normal images, or None. With a feature cache the references are
    read from it like any image (each pays the backbone once over every evaluation sharing the cache)."""
    if not paths:
        return None
    net = getattr(model, "module", model)
    bb = net.backbone
    decode = lambda p: to_tensor(load_image(p), bb.image_size, bb.mean, bb.std)  # noqa: E731
    if cache is None:
        with autocast(device, dtype):
            features = net.encode(torch.stack([decode(p) for p in paths]).to(device), net.config.layers)
    else:
        items = [cache.lookup(p) for p in paths]
        batch = {k: [it[k] for it in items] for k in ("features", "feature_key", "feature_damaged")}
        batch["image"] = [
            decode(p) if it["features"] is None else None for p, it in zip(paths, items, strict=True)
        ]
        features = batch_inputs(batch, net, cache, device, dtype)
    return bank(features, net.config.layers)


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
                f"--shots {k} needs {k} (prepare_data lists MVTec-like <class>/train/good/, BTAD's "
                "train/ok/, VisA's csv train rows and an own folder's reference/)"
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
    device = world.device
    config = getattr(model, "module", model).config
    experts = config.num_experts if config.use_moe else 0
    out = _empty_rows(size, experts)
    for batch in _loader(subset, batch_size, num_workers):
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
        if experts:
            out["routing"].append(pred.routing_weights.float().cpu())
        _add_rows(out, batch, pred.image_score, pred.anomaly_map, size)
        bar.update(len(batch["index"]))
    return {k: torch.cat(v) for k, v in out.items()}


def _empty_rows(size: int, experts: int = 0) -> dict[str, list[torch.Tensor]]:
    return {
        "index": [torch.zeros(0, dtype=torch.long)],
        "label": [torch.zeros(0, dtype=torch.long)],
        "score": [torch.zeros(0)],
        "pixel_index": [torch.zeros(0, dtype=torch.long)],
        "map": [torch.zeros(0, size, size)],
        "mask": [torch.zeros(0, size, size, dtype=torch.uint8)],
        "routing": [torch.zeros(0, experts)],
    }


def _add_rows(out: dict, batch: dict, scores: torch.Tensor, maps: torch.Tensor, size: int) -> None:
    """One batch's labels and scores, and the maps (B, h, w) and masks of its images whose masks are known
    (maps resized bilinearly to size x size, as the masks are)."""
    known = batch["has_mask"].bool()
    out["index"].append(batch["index"].long())
    out["label"].append(batch["label"].long())
    out["score"].append(scores.float().cpu())
    if known.any():
        amap = maps.float()[known.to(maps.device)][:, None]
        if amap.shape[-2:] != (size, size):
            amap = F.interpolate(amap, size=(size, size), mode="bilinear", align_corners=False)
        out["pixel_index"].append(batch["index"][known].long())
        out["map"].append(amap[:, 0].cpu())
        out["mask"].append(batch["mask"][known].to(torch.uint8))  # uint8: every backend can gather it


def _loader(subset: Subset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )  # never touches the global RNG


def _predict_musc(
    model, subset: Subset, world: World, size: int, batch_size: int, dtype, num_workers: int, bar, ks
) -> dict[str, torch.Tensor]:
    """MuSc on one class's images as one batch (the paper scores each class's test set together): the
    backbone runs in chunks of `batch_size` (through the feature cache if any), the class's features are
    stacked (one class's features in memory at a time), then `wmoe.musc.predictions` scores them all, its
    maps made at size x size directly (the masks' size)."""
    raw = musc.musc_layers(model.backbone.depth)
    parts, batches = [], []
    cache = subset.dataset.features
    for batch in _loader(subset, batch_size, num_workers):
        inputs = batch_inputs(batch, model, cache, world.device, dtype)
        if not isinstance(inputs, BackboneFeatures):
            with autocast(world.device, dtype):
                inputs = model.encode(inputs, model.config.layers, raw=raw)
        parts.append(inputs)
        batches.append({k: batch[k] for k in ("index", "label", "has_mask", "mask")})
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    features = BackboneFeatures.cat(parts)
    n = len(features)
    encoded = EncodedBatch(features, [(size, size)] * n, model.backbone, world.device, dtype, {})
    name = prompt_name(subset.dataset.entries[subset.indices[0]]["cls_name"])
    preds = musc.predictions(encoded, name, ks=ks)
    out = _empty_rows(size)
    maps = torch.stack([torch.from_numpy(p.anomaly_map) for p in preds])
    _add_rows(out, batch, torch.tensor([p.score for p in preds]), maps, size)
    bar.update(n)
    return {k: torch.cat(v) for k, v in out.items()}


def _predict_winclip(
    winclip: WinCLIP, subset: Subset, size: int, bar, references: list[Path] | None
) -> dict[str, torch.Tensor]:
    """WinCLIP (WinCLIP+ with references) image by image through `WinCLIP.predict`, its map (at the
    image's size) resized to size x size as the masks are."""
    out = _empty_rows(size)
    for batch in _loader(subset, 1, 0):
        pred = winclip.predict(batch["path"][0], batch["class_name"][0], references=references)
        amap = torch.from_numpy(pred.anomaly_map)[None]
        _add_rows(out, batch, torch.tensor([pred.score]), amap, size)
        bar.update(1)
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
        "--method",
        choices=list(METHODS),
        default="wmoe",
        help="wmoe (a checkpoint, the default), or the training-free musc, winclip or clip",
    )
    ap.add_argument(
        "--checkpoint", default=None, help="checkpoint folder (config.json + model.safetensors) or Hub id"
    )
    ap.add_argument(
        "--backbone",
        default=None,
        metavar="NAME",
        help=f"a training-free method's backbone (default: its own; {TINY}: the tiny random one of the tests)",
    )
    ap.add_argument(
        "--musc-ks",
        type=int,
        nargs="+",
        default=list(musc.KS),
        metavar="K",
        help="MuSc's RsCIN k list (default 1 2 3, the authors' for MVTec AD; theirs for VisA: 1 8 9)",
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


def check_method(args: argparse.Namespace) -> None:
    """Raise MethodError for options the method cannot honour (before anything is loaded)."""
    name = METHODS[args.method]
    if args.method == "wmoe":
        if not args.checkpoint:
            raise MethodError("--method wmoe evaluates a checkpoint: give --checkpoint FOLDER_OR_HUB_ID")
        if args.backbone:
            raise MethodError("--backbone is for the training-free methods; a checkpoint names its own")
        return
    if args.checkpoint:
        raise MethodError(f"{name} needs no checkpoint; drop --checkpoint (or use --method wmoe)")
    if args.method == "musc" and args.shots:
        raise MethodError("MuSc scores each class's test images against each other: it takes no --shots")
    if args.method == "winclip" and args.feature_cache:
        raise MethodError("WinCLIP runs its windows through its own backbone: --feature-cache does not apply")
    if args.method != "musc" and list(args.musc_ks) != list(musc.KS):
        raise MethodError("--musc-ks is for --method musc")


def method_config(method: str, backbone: str | None) -> WMoEConfig:
    """The backbone fields of a training-free method: its default, the tiny random one (`TINY`), or another
    open_clip model (random weights, its own input size, MuSc's quarter-depth blocks as its layers)."""
    if method == "winclip" and backbone in (None, TINY):
        return WinCLIP.config_for(tiny=backbone == TINY)
    if backbone is None:
        return WMoEConfig()  # ViT-L-14-336, OpenAI weights, 518 px: MuSc's and the WMoE-CLIP recipes' setting
    if backbone == TINY:
        return WMoEConfig.tiny()
    vision = (open_clip.get_model_config(backbone) or {}).get("vision_cfg")
    if not vision or not isinstance(vision.get("layers"), int):
        raise MethodError(
            f"unknown backbone {backbone!r}: give an open_clip vision transformer name or {TINY}"
        )
    return WMoEConfig(
        backbone=backbone,
        pretrained=None,
        image_size=int(vision["image_size"]),
        layers=musc.musc_layers(vision["layers"]),
    )


def load_method(args: argparse.Namespace, device: torch.device) -> tuple[object, dict]:
    """The model `evaluate` runs for `args.method` and its record: a WMoECLIP (wmoe: the checkpoint; clip
    and musc: plain CLIP, `Detector.training_free`) or a WinCLIP."""
    if args.method == "wmoe":
        model, info = load_model(args.checkpoint)
        return model.to(device), {"trained": bool(info.get("trained")), "checkpoint": str(args.checkpoint)}
    config = method_config(args.method, args.backbone)
    if config.pretrained is None and config.backbone != TINY:
        print(f"note: {config.backbone} has random weights here: its numbers say nothing", file=sys.stderr)
    if args.method == "winclip":
        model = WinCLIP(config, device=device)
    else:
        model = Detector.training_free(like=config, device=device).model
    record = {"trained": False, "checkpoint": None, "backbone": config.backbone}
    return model, {**record, "pretrained": config.pretrained, "image_size": config.image_size}


def run(args: argparse.Namespace) -> dict | None:
    """Evaluate `args.method` (a checkpoint, or a training-free method) on `args.data` and write the reports
    in `args.out` (training/report.py); the result with the run's record on the main process, None on the
    others. Raises WMoEError (MethodError for options the method cannot honour)."""
    check_method(args)
    world, threads = None, torch.get_num_threads()
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    try:
        world = init_world(args.device)
        if args.method == "musc" and world.size > 1:
            raise MethodError("MuSc scores each class as one batch on one process: run it without torchrun")
        model, record = load_method(args, world.device)
        backbone = model.backbone
        size = model.config.image_size
        dtype = autocast_dtype(world.device, args.precision)
        if args.method == "winclip":
            dtype = torch.float32  # WinCLIP.predict runs without autocast
        cache = None
        if args.feature_cache:
            raw = musc.musc_layers(backbone.depth) if args.method == "musc" else ()
            cache = FeatureCache(
                args.feature_cache, backbone, model.config.layers, dtype, args.feature_cache_dtype, raw
            )
        dataset = MetaDataset(
            args.data,
            args.meta,
            args.classes,
            image_size=size,
            mean=backbone.mean,
            std=backbone.std,
            mask_size=map_side(args.map_size, size),
            features=cache,
        )
        if args.method == "musc":
            for cls in dataset.classes:
                try:
                    musc.require_images(len(dataset.indices_of(cls)))
                except musc.MuScError as e:
                    raise musc.MuScError(f"class {cls!r}: {e}") from None
        trained = record["trained"]
        if world.main and args.method == "wmoe" and not trained:
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
            method=args.method,
            ks=tuple(args.musc_ks),
        )
        feature_cache = cache.report(world) if cache is not None else None  # every process
        if not world.main:
            return None
        name = method_name(args.method, args.shots, record["trained"])
        result = {
            **result,
            "method": name,
            **record,
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
            "musc_ks": list(args.musc_ks) if args.method == "musc" else None,
            "feature_cache": feature_cache,
        }
        protocol = f", {args.shots}-shot (seed {args.shot_seed})" if args.shots else ", zero-shot"
        label = args.checkpoint if args.method == "wmoe" else f"{name} ({record['backbone']})"
        write_results(result, args.out, title=f"{label} on {args.data}{protocol}")
        return result
    finally:
        torch.set_num_threads(threads)
        if world is not None:
            close_world(world)


def method_name(method: str, shots: int, trained: bool) -> str:
    """The name a result carries: WinCLIP with references is WinCLIP+; a never-trained model with
    references is its reference map alone (`wmoe.references.method_name`)."""
    if shots and method == "winclip":
        return "WinCLIP+"
    return with_references_name(METHODS[method], trained) if shots else METHODS[method]


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
