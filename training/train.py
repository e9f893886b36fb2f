"""Train WMoE-CLIP from a YAML recipe into a checkpoint folder that wmoe.Detector.from_pretrained loads.

    python -m training.train --config training/configs/smoke.yaml --output runs/smoke
    python -m training.train --config training/configs/smoke.yaml --output runs/smoke --resume
    torchrun --nproc_per_node=8 -m training.train --config RECIPE.yaml --output runs/mvtec_to_all

Only the heads learn (wmoe.WMoECLIP.head_parameters); the backbone is frozen. The training state is
saved atomically at the end of every epoch (training/state.py) and --resume continues a killed run to
the same weights as an uninterrupted one. At the end the output folder holds config.json,
model.safetensors, README.md (model card), train_config.yaml, metrics.json, results.csv/.md,
environment.json and train_log.jsonl (one line per step); --push-to-hub ORG/NAME publishes them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.config import TrainConfig, load_config
from training.data import MetaDataset, collate
from training.distributed import (
    EpochSampler,
    World,
    all_gather_rows,
    all_reduce,
    autocast_dtype,
    barrier,
    close_world,
    init_world,
)
from training.evaluate import combine, map_side
from training.evaluate import evaluate as evaluate_dataset
from training.feature_cache import STORAGE, FeatureCache, batch_inputs
from training.prepare_data import prepare
from training.progress import progress_bar, show
from training.report import markdown_table, to_json, write_results
from training.state import (
    StateSaveError,
    capture_rng,
    list_states,
    load_latest,
    load_optimizer_state,
    optimizer_state,
    restore_rng,
    save_state,
)
from training.synthetic import generate
from wmoe import WMoECLIP, save_pretrained
from wmoe.checkpoint import upload_checkpoint
from wmoe.errors import EXIT_ERROR, EXIT_OK, EXIT_PUBLISH_FAILED, WMoEError
from wmoe.loss import wmoe_loss
from wmoe.precision import autocast, dtype_name

STATE_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"
UNTRAINED_NAME = "metrics_untrained.json"
PUBLISHED = (
    "config.json",
    "model.safetensors",
    "README.md",
    "train_config.yaml",
    "metrics.json",
    "results.csv",
    "results.md",
    "environment.json",
    LOG_NAME,
)  # what --push-to-hub uploads


class TrainingError(WMoEError, RuntimeError):
    """The run cannot go on (non-finite loss, a state from another recipe, an output folder in use)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="training YAML (see training/configs/)")
    ap.add_argument(
        "--output", required=True, help="run folder: the checkpoint, its metrics, logs and states"
    )
    ap.add_argument(
        "--resume", action="store_true", help="continue from the newest training state in --output"
    )
    ap.add_argument(
        "--push-to-hub", metavar="REPO", default=None, help="publish the finished folder as ORG/NAME"
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="no progress bars (the logs are still written)"
    )
    ap.add_argument(
        "--feature-cache",
        metavar="DIR",
        default=None,
        help="cache the backbone features here (overrides the recipe)",
    )
    ap.add_argument(
        "--feature-cache-dtype", choices=sorted(STORAGE), default=None, help="entry precision (default fp32)"
    )
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.output)
        cfg.feature_cache = args.feature_cache or cfg.feature_cache
        cfg.feature_cache_dtype = args.feature_cache_dtype or cfg.feature_cache_dtype
        result = run(cfg, Path(args.output), resume=args.resume, progress=not args.no_progress)
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.push_to_hub and result is not None:
        return publish(Path(args.output), args.push_to_hub)
    return EXIT_OK


def run(cfg: TrainConfig, output: Path, resume: bool = False, progress: bool = True) -> dict | None:
    """Train, evaluate and write the checkpoint folder; returns metrics.json's content on the main process."""
    world = init_world(cfg.device)
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        started = time.perf_counter()
        if not resume and (list_states(output / STATE_DIR) or (output / "model.safetensors").exists()):
            raise TrainingError(
                f"{output} already holds a run; pass --resume to continue it, or choose another --output"
            )
        barrier(world)  # every process has looked before anything is written
        if world.main:
            output.mkdir(parents=True, exist_ok=True)
            make_synthetic(cfg, world)
        barrier(world)
        trainer = Trainer(cfg, output, world, progress)
        untrained = trainer.evaluate_untrained() if cfg.eval.untrained else None
        trainer.start(resume)
        trainer.fit()
        result = trainer.evaluate("trained")
        trainer.cache_totals = trainer.cache_report() if trainer.cache is not None else None  # every process
        if not world.main:
            return None
        return write_outputs(trainer, result, untrained, time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
        close_world(world)


class Trainer:
    """One run's model, data, optimiser and position (epoch, batch in the epoch, step)."""

    def __init__(self, cfg: TrainConfig, output: Path, world: World, progress: bool):
        self.cfg, self.output, self.world, self.progress = cfg, output, world, progress
        self.states = output / STATE_DIR
        # seeded by the model seed: the same on every process
        self.model = WMoECLIP(cfg.model).to(world.device)
        heads = self.model.head_parameters()
        self.names, self.params = list(heads), list(heads.values())
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.optim.lr, betas=cfg.optim.betas)
        bb, size, t = self.model.backbone, cfg.model.image_size, cfg.train
        self.dtype = autocast_dtype(world.device, cfg.precision)
        self.cache = (
            FeatureCache(cfg.feature_cache, bb, cfg.model.layers, self.dtype, cfg.feature_cache_dtype)
            if cfg.feature_cache
            else None
        )
        self.train_set = MetaDataset(
            t.root,
            t.meta,
            t.classes,
            image_size=size,
            mean=bb.mean,
            std=bb.std,
            name=t.name,
            features=self.cache,
        )
        self.eval_sets = {
            s.name: MetaDataset(
                s.root,
                s.meta,
                s.classes,
                image_size=size,
                mean=bb.mean,
                std=bb.std,
                mask_size=map_side(cfg.eval.map_size, size),
                name=s.name,
                features=self.cache,
            )
            for s in cfg.eval.datasets
        }
        self.sampler = EpochSampler(len(self.train_set), cfg.optim.batch_size, world, cfg.seed)
        self.total_steps = cfg.optim.epochs * self.sampler.batches_per_epoch
        self.epoch = self.batch_in_epoch = self.step = 0
        self.resumed_from: int | None = None  # the step of the state --resume started from
        self.net = self.model  # the DDP wrapper under torchrun
        self.log = StepLog(output / LOG_NAME, active=False)
        self.cache_totals: dict | None = None  # the feature cache's counts at the end, for metrics.json
        say(
            world,
            f"training on {len(self.train_set)} images ({len(self.train_set.classes)} classes) of "
            f"{t.root}; {world.size} process(es) on {world.device}, {dtype_name(self.dtype)}",
        )

    def cache_report(self) -> dict:
        """The feature cache's folder and this run's counts, summed over processes."""
        return self.cache.report(self.world)

    def evaluate(self, label: str) -> dict | None:
        """Every evaluation dataset, combined on the main process (None elsewhere, or without datasets)."""
        if not self.eval_sets:
            return None
        results = {}
        for name, ds in self.eval_sets.items():
            results[name] = evaluate_dataset(
                self.model,
                ds,
                self.world,
                batch_size=self.cfg.eval.batch_size,
                dtype=self.dtype,
                num_workers=self.cfg.optim.num_workers,
                progress=self.progress,
                desc=f"evaluate {label} on {name}",
            )
        return combine(results) if self.world.main else None

    def evaluate_untrained(self) -> dict | None:
        """The initial heads' metrics, computed once per run folder; evaluation draws no random numbers."""
        cache = self.output / UNTRAINED_NAME
        if cache.is_file():
            return json.loads(cache.read_text())
        result = self.evaluate("untrained")
        if self.world.main and result is not None:
            cache.write_text(to_json(result))
        return result

    def start(self, resume: bool):
        """Load the newest training state (with --resume) or seed; wrap for DDP; open the step log."""
        loaded = load_latest(self.states) if resume else None
        if resume and loaded is None:
            say(self.world, f"no training state in {self.states}: starting from the beginning")
        if loaded is not None:
            tensors, meta, path = loaded
            self.check_state(meta, path)
            with torch.no_grad():
                for n, p in zip(self.names, self.params, strict=True):
                    p.copy_(tensors[f"model.{n}"])
            load_optimizer_state(self.optimizer, tensors, meta["optimizer"])
            rng = {k: v[self.world.rank] for k, v in tensors.items() if k.startswith("rng.")}
            restore_rng(rng, self.world.device)
            self.epoch, self.batch_in_epoch, self.step = meta["epoch"], meta["batch_in_epoch"], meta["step"]
            self.resumed_from = self.step
            done = f"{self.epoch} epoch(s) and {self.batch_in_epoch} batch(es) done"
            say(self.world, f"resumed from {path}: step {self.step}, {done}")
        else:
            seed_everything(self.cfg.seed + self.world.rank)  # each process draws its own CTDS noise
        if self.world.distributed:  # gradients of the heads only: the frozen backbone is left out of DDP
            frozen = [n for n in self.model.state_dict() if n.startswith("backbone.")]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, frozen)
            ids = [self.world.device.index] if self.world.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        self.log = StepLog(self.output / LOG_NAME, self.world.main, keep_until=self.step if loaded else 0)

    def check_state(self, meta: dict, path: Path):
        if meta.get("config_sha256") != self.cfg.sha256:
            raise TrainingError(
                f"{path} was written by another training config; resume with the same YAML, "
                "or start a new --output"
            )
        if meta.get("world_size") != self.world.size:
            raise TrainingError(
                f"{path} was written by {meta.get('world_size')} process(es); resume with the "
                f"same number (this run has {self.world.size}) so data order and RNG streams match"
            )
        if meta.get("head_names") != self.names:
            raise TrainingError(f"{path}: its parameters do not match the model of this config")

    def fit(self):
        """Train from the current position to the last epoch, saving the state as the recipe says."""
        cfg, per_epoch = self.cfg, self.sampler.batches_per_epoch
        self.model.train()
        while self.epoch < cfg.optim.epochs:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            loader = DataLoader(
                self.train_set,
                batch_size=cfg.optim.batch_size,
                sampler=self.sampler,
                collate_fn=collate,
                num_workers=cfg.optim.num_workers,
                pin_memory=self.world.device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch),
            )
            bar = progress_bar(
                loader,
                desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}",
                unit="batch",
                initial=self.batch_in_epoch,
                total=per_epoch,
                disable=not (self.progress and self.world.main),
            )
            for batch in bar:
                tick = time.perf_counter()
                lr = cfg.optim.lr * lr_factor(cfg.optim.schedule, self.step, self.total_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                parts, grad_norm = self.train_step(batch)
                self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
                images_per_s = self.world.size * len(batch["index"]) / max(time.perf_counter() - tick, 1e-9)
                losses = {("loss" if k == "total" else f"loss_{k}"): v for k, v in parts.items()}
                self.log.write(
                    {
                        "step": self.step,
                        "epoch": self.epoch + 1,
                        "batch": self.batch_in_epoch,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        **losses,
                        "images_per_s": round(images_per_s, 2),
                        "time": round(time.time(), 3),
                    }
                )
                show(bar, loss=f"{parts['total']:.4f}", img_s=f"{images_per_s:.0f}")
                every = cfg.checkpoint.every_steps
                if every and self.step % every == 0 and self.batch_in_epoch < per_epoch:
                    self.save_state()
            bar.close()
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.save_state()
        self.model.eval()

    def train_step(self, batch) -> tuple[dict[str, float], float]:
        """One optimiser step; stops the run (every process) on a non-finite loss or gradient norm."""
        device = self.world.device
        inputs = batch_inputs(batch, self.model, self.cache, device, self.dtype)  # images, or their features
        with autocast(device, self.dtype):
            out = self.net(inputs, list(batch["class_name"]))
        loss, parts = wmoe_loss(
            out,
            batch["label"].to(device),
            batch["mask"].to(device),
            batch["has_mask"].to(device),
            self.cfg.loss,
        )
        self.check_finite(loss, "loss", batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.check_finite(grad_norm, "gradient norm", batch)
        self.optimizer.step()
        keys = list(parts)
        mean = all_reduce(torch.stack([parts[k].float() for k in keys]), self.world) / self.world.size
        return dict(zip(keys, mean.tolist(), strict=True)), float(grad_norm)

    def check_finite(self, value: torch.Tensor, what: str, batch):
        """Every process stops when any of them sees NaN/inf; the message names the step and the images."""
        ok = torch.isfinite(value.detach()).all().to(torch.int32)
        if int(all_reduce(ok, self.world, "min")) == 1:
            return
        last = list_states(self.states)
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1})"
        if bool(ok):
            message = f"another process saw a non-finite {what} at {where}; see its message"
        else:
            on = f" on process {self.world.rank}" if self.world.distributed else ""
            message = (
                f"non-finite {what} ({float(value.detach().float().flatten()[0])}) at {where}{on}; "
                f"images of this batch: {', '.join(batch['path'])}. Last good training state: "
                f"{last[-1] if last else 'none yet'}. Lower optim.lr or check these images, then "
                "restart (--resume continues from that state)."
            )
        self.log.write({"event": "stopped", "step": self.step + 1, "reason": message})
        raise TrainingError(message)

    def save_state(self):
        """Every process hands its RNG states to the main one, which writes the state; a failed write is
        reported and training goes on (the previous state stays the one --resume uses)."""
        rng = {k: all_gather_rows(v[None], self.world) for k, v in capture_rng(self.world.device).items()}
        if self.world.main:
            tensors = {f"model.{n}": p for n, p in zip(self.names, self.params, strict=True)}
            opt_tensors, opt_meta = optimizer_state(self.optimizer)
            meta = {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.world.size,
                "config_sha256": self.cfg.sha256,
                "head_names": self.names,
                "optimizer": opt_meta,
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            try:
                path = save_state(
                    self.states, self.step, {**tensors, **opt_tensors, **rng}, meta, self.cfg.checkpoint.keep
                )
                self.log.write({"event": "saved", "step": self.step, "path": str(path)})
            except StateSaveError as e:
                say(self.world, f"warning: {e}")
                self.log.write({"event": "save_failed", "step": self.step, "reason": str(e)})
        barrier(self.world)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """constant: 1; cosine: from 1 down to 0 over the run (half a cosine)."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    return 1.0


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_synthetic(cfg: TrainConfig, world: World):
    """Generate each synthetic dataset of the recipe (MVTec AD layout) and write its meta.json, once."""
    for spec in cfg.synthetic:
        root = Path(spec["root"])
        if (root / "meta.json").is_file():  # generation is deterministic: an existing one is the same data
            continue
        names = generate(root, **{k: v for k, v in spec.items() if k != "root"})
        prepare("mvtec", root)
        say(world, f"generated {len(names)} synthetic categories in {root}")


class StepLog:
    """train_log.jsonl: one JSON object per step (and event). On resume, lines after the resumed step go."""

    def __init__(self, path: Path, active: bool, keep_until: int = 0):
        self.path, self.active = path, active
        if active and path.is_file():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            kept = (
                [line for line in lines if json.loads(line).get("step", 0) <= keep_until]
                if keep_until
                else []
            )
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict):
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def say(world: World, message: str):
    if world.main:
        tqdm.write(message, file=sys.stderr)


def environment(world: World, dtype: torch.dtype) -> dict:
    """What a reader needs to reproduce the numbers: versions, device, processes, commit."""
    versions = {}
    for pkg in (
        "torch",
        "open_clip_torch",
        "pytorch_wavelets",
        "numpy",
        "safetensors",
        "huggingface_hub",
        "pillow",
        "scipy",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    device = world.device
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine())
    )
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        commit = git.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": str(device),
        "device_name": name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processes": world.size,
        "precision": dtype_name(dtype),
        "git_commit": commit,
    }


def write_outputs(trainer: Trainer, result: dict | None, untrained: dict | None, seconds: float) -> dict:
    """The checkpoint and its model card, the recipe, the environment, the results; returns metrics.json."""
    cfg, output, world = trainer.cfg, trainer.output, trainer.world
    means = {k: round(v, 4) for k, v in (result or {}).get("mean", {}).items() if v == v}
    info = {
        "trained": True,
        "train_data": cfg.train.root,
        "train_classes": cfg.train.classes or "all",
        "train_images": len(trainer.train_set),
        "epochs": cfg.optim.epochs,
        "steps": trainer.step,
        "seed": cfg.seed,
        "processes": world.size,
        "eval_mean": means,
    }
    save_pretrained(trainer.model, output, info)
    (output / "train_config.yaml").write_text(cfg.text)
    (output / "environment.json").write_text(json.dumps(environment(world, trainer.dtype), indent=2) + "\n")
    extra = {
        "untrained": untrained,
        "steps": trainer.step,
        "epochs": cfg.optim.epochs,
        "seconds": round(seconds, 1),  # wall time of this invocation (from the resumed state if resumed)
        "resumed_from_step": trainer.resumed_from,
        "feature_cache": trainer.cache_totals,
    }
    metrics = {**(result or {"mean": {}, "per_class": {}}), **extra}
    if result is None:
        (output / "metrics.json").write_text(to_json(metrics))
    else:
        write_results(result, output, extra, title="Zero-shot results")
        with open(output / "README.md", "a") as card:
            card.write(
                "\n## Evaluation\n\nMeasured by `training.evaluate` at the end of training (zero-shot: "
                "classes never seen in training); recipe in `train_config.yaml`, environment in "
                "`environment.json`. Metrics x100.\n\n" + markdown_table(result)
            )
    say(world, f"done in {seconds:.0f} s: {output}")
    return metrics


def publish(output: Path, repo_id: str) -> int:
    """Upload the finished folder's files (not the training states or generated data) as a Hub model repo."""
    with tempfile.TemporaryDirectory() as stage:
        for name in PUBLISHED:
            if (output / name).is_file():
                shutil.copy2(output / name, Path(stage) / name)
        try:
            url = upload_checkpoint(stage, repo_id)
        except Exception as e:  # network, authentication, offline: the folder is complete anyway
            print(
                f"error: could not push {output} to the Hub as {repo_id} ({type(e).__name__}: {e}); the "
                "checkpoint folder is complete, push it later with --resume --push-to-hub",
                file=sys.stderr,
            )
            return EXIT_PUBLISH_FAILED
    print(f"pushed to {url}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
