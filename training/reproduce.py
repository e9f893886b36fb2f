"""Reproduce the published checkpoint in one command: download, prepare, train, evaluate, card, publish.

    python -m training.reproduce --output runs/repro [--push-to-hub ORG/NAME] [--datasets mvtec visa ...]
                                 [--data data] [--mirror URL] [--checksums FILE] [--recipes A.yaml B.yaml]

1. Downloads and prepares every dataset the recipes name that `--data` lacks (`training.download`); a
   dataset behind a login is skipped for evaluation with the message saying where to get it (a training
   dataset cannot be skipped).
2. Evaluates the training-free methods (`TRAINING_FREE_METHODS`: MuSc, WinCLIP, plain CLIP;
   `training.evaluate --method`) on every evaluation dataset, into
   `OUTPUT/training-free/<method>/eval/<dataset>/<k>-shot/`; MuSc first, so the one feature cache
   (`OUTPUT/features/`) holds each image's features with the raw block outputs MuSc needs.
3. Trains each recipe (default: the field's two, MVTec AD -> the others and VisA -> MVTec AD) into
   `OUTPUT/<recipe>/`, from the same feature cache, shared by every stage, so the frozen backbone sees
   each image once.
4. Evaluates each checkpoint on its recipe's datasets zero-shot and with 1, 2 and 4 reference shots
   (`training.evaluate --shots`), into `OUTPUT/<recipe>/eval/<dataset>/<k>-shot/`.
5. Writes each checkpoint's model card (`training.model_card`) and `OUTPUT/results.md` (+ `results.json`):
   the measured means beside the published numbers of `training/published.json`, each with its source.
6. With `--push-to-hub`, publishes the first recipe's checkpoint (MVTec AD-trained by default).

Resumable: `OUTPUT/stages.json` records each finished stage with the hash of what it depends on (the
effective recipe, the dataset's meta.json, the shots; for a training-free method, its backbone). A killed run continues where it stopped (training
with `--resume` from its last state); a changed recipe is trained and evaluated again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from training import evaluate, train
from training.download import ManualDownloadError, download, read_checksums
from training.evaluate import METRICS
from training.model_card import LABELS, load_evaluation, protocol, write_card
from training.report import to_json
from wmoe import musc
from wmoe.checkpoint import CONFIG_NAME, includes_backbone
from wmoe.config import WMoEConfig
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError

RECIPES = ("training/configs/mvtec_to_all.yaml", "training/configs/visa_to_mvtec.yaml")
SHOTS = (0, 1, 2, 4)
SHOT_SEED = 0
PUBLISHED = Path(__file__).with_name("published.json")
STAGES = "stages.json"
FEATURES = "features"
TRAINING_FREE = "training-free"  # OUTPUT/training-free/<method>/eval/<dataset>/<k>-shot/
# Training-free methods (`training.evaluate --method NAME`) and their protocols: MuSc takes no references
# (zero-shot only); WinCLIP's shots are WinCLIP+, plain CLIP's are its reference map alone.
TRAINING_FREE_METHODS = {"musc": (0,), "winclip": SHOTS, "clip": SHOTS}
# MuSc's RsCIN k list per dataset where the authors' code sets one (wmoe.musc.KS is its MVTec AD list)
MUSC_KS = {"visa": (1, 8, 9)}


class ReproduceError(WMoEError, RuntimeError):
    """A stage that cannot be done (a training dataset missing, a training or evaluation that failed)."""


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Stages:
    """OUTPUT/stages.json: {stage: {"hash", "state": "started" | "done"}}, rewritten atomically."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.records = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise ReproduceError(
                f"{path.name}: unreadable stage record; delete it to redo every stage"
            ) from None

    def done(self, key: str, h: str) -> bool:
        return self.records.get(key) == {"hash": h, "state": "done"}

    def started(self, key: str, h: str) -> bool:
        return self.records.get(key, {}).get("hash") == h

    def mark(self, key: str, h: str, state: str) -> None:
        self.records[key] = {"hash": h, "state": state}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.records, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def read_recipe(path: str | Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReproduceError(f"{Path(path).name}: cannot read the recipe ({type(e).__name__})") from None
    if not isinstance(raw, dict) or "train" not in raw:
        raise ReproduceError(f"{Path(path).name}: expected a training recipe (see training/configs/)")
    return raw


def train_dataset(raw: dict) -> str:
    return Path(raw["train"]["root"]).name


def eval_datasets(raw: dict) -> list[str]:
    return [d["name"] for d in (raw.get("eval") or {}).get("datasets") or []]


def effective_recipe(raw: dict, data: Path, available: set[str]) -> dict:
    """The recipe with its data roots under `data` and only the available evaluation datasets."""
    out = json.loads(json.dumps(raw))  # a deep copy of plain YAML data
    out["train"]["root"] = (data / train_dataset(raw)).as_posix()
    ev = out.setdefault("eval", {})
    ev["datasets"] = [
        {**d, "root": (data / d["name"]).as_posix()}
        for d in ev.get("datasets") or []
        if d["name"] in available
    ]
    return out


def shot_pool_ok(meta_path: Path, k: int) -> bool:
    """True when every tested class lists at least k normal training images (the few-shot pool)."""
    meta = json.loads(meta_path.read_text())
    pool = meta.get("train") or {}
    return all(len([e for e in pool.get(c, []) if not e.get("anomaly")]) >= k for c in meta["test"])


def ensure_data(
    recipes: dict[str, dict], data: Path, wanted: set[str] | None, mirror, checksums, progress
) -> set[str]:
    """Download/prepare what the recipes need; returns the datasets that are ready."""
    needed = {train_dataset(r) for r in recipes.values()}
    needed |= {d for r in recipes.values() for d in eval_datasets(r) if wanted is None or d in wanted}
    training = {train_dataset(r) for r in recipes.values()}
    ready = set()
    for name in sorted(needed):
        try:
            download(name, data, mirror, checksums, progress)
            ready.add(name)
        except ManualDownloadError as e:
            if name in training:
                raise
            print(f"note: {name} is not evaluated: {e}", file=sys.stderr)
    return ready


def train_stage(name: str, recipe: dict, out: Path, stages: Stages, progress: bool) -> str:
    """Train one recipe (skipped when done with the same recipe and training data); returns their hash."""
    recipes_dir = out / "recipes"
    recipes_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(recipe, sort_keys=False)
    meta = Path(recipe["train"]["root"]) / recipe["train"].get("meta", "meta.json")
    h = digest(text, meta.read_bytes())
    run, key = out / name, f"train:{name}"
    if stages.done(key, h) and (run / "model.safetensors").is_file():
        print(f"{name}: trained already (recipe {h}), skipped")
        return h
    if not stages.started(key, h):
        shutil.rmtree(run, ignore_errors=True)  # another recipe's run: start over
    path = recipes_dir / f"{name}.yaml"
    path.write_text(text)
    stages.mark(key, h, "started")
    argv = ["--config", str(path), "--output", str(run), "--resume", "--feature-cache", str(out / FEATURES)]
    if train.main(argv + ([] if progress else ["--no-progress"])) != EXIT_OK:
        raise ReproduceError(f"training {name} failed (see above); run again to resume it")
    stages.mark(key, h, "done")
    return h


def evaluate_stage(
    name: str, recipe: dict, h: str, out: Path, data: Path, stages: Stages, progress: bool
) -> list[Path]:
    """Evaluate one checkpoint on its datasets with each number of shots; returns the metrics.json files."""
    run, written, settings = out / name, [], eval_settings(recipe)
    for d in (recipe.get("eval") or {})["datasets"]:
        meta_name = d.get("meta", "meta.json")
        meta = data / d["name"] / meta_name
        for k in shot_counts(name, d["name"], meta, SHOTS):
            argv = ["--checkpoint", str(run), "--data", str(data / d["name"]), "--meta", meta_name]
            argv += ["--feature-cache", str(out / FEATURES), *settings_args(settings, k)]
            key, hk = f"eval:{name}/{d['name']}/{k}", digest(h, meta.read_bytes(), str(k), str(SHOT_SEED))
            dest, what = run / "eval" / d["name"] / f"{k}-shot", f"{name} on {d['name']} ({protocol(k)})"
            written.append(evaluation(argv, dest, key, hk, stages, progress, what))
    return written


def training_free_stage(
    method: str,
    backbone: str | None,
    datasets: list[str],
    settings: dict,
    out: Path,
    data: Path,
    stages: Stages,
    progress: bool,
) -> list[Path]:
    """Evaluate one training-free method on the evaluation datasets with each of its protocols (the same
    resume rules as a checkpoint's evaluations); returns the metrics.json files. `settings`: the first
    recipe's device, precision and eval options. MuSc and CLIP share the run's feature cache."""
    run, written = out / TRAINING_FREE / method, []
    for name in datasets:
        meta = data / name / "meta.json"
        for k in shot_counts(method, name, meta, TRAINING_FREE_METHODS[method]):
            ks = MUSC_KS.get(name, musc.KS) if method == "musc" else ()
            argv = ["--method", method, "--data", str(data / name), *settings_args(settings, k)]
            argv += ["--backbone", backbone] if backbone else []
            argv += ["--musc-ks", *map(str, ks)] if ks else []
            argv += [] if method == "winclip" else ["--feature-cache", str(out / FEATURES)]
            key, dest = f"free:{method}/{name}/{k}", run / "eval" / name / f"{k}-shot"
            h = digest(
                method, str(backbone), meta.read_bytes(), str(k), str(SHOT_SEED), str(ks), str(settings)
            )
            what = f"{method} on {name} ({protocol(k)})"
            written.append(evaluation(argv, dest, key, h, stages, progress, what))
    return written


def shot_counts(who: str, dataset: str, meta: Path, counts) -> list[int]:
    """The numbers of shots that dataset's training images allow (each skipped one is said)."""
    allowed = []
    for k in counts:
        if k and not shot_pool_ok(meta, k):
            print(f"{who}: {dataset} lists fewer than {k} normal training images per class: no {k}-shot run")
        else:
            allowed.append(k)
    return allowed


def settings_args(settings: dict, shots: int) -> list[str]:
    """`training.evaluate`'s options for `eval_settings` and a number of shots (with the fixed shot seed)."""
    return [
        "--shots", str(shots), "--shot-seed", str(SHOT_SEED),
        "--device", str(settings["device"]), "--precision", str(settings["precision"]),
        "--batch-size", str(settings["batch_size"]), "--map-size", str(settings["map_size"]),
    ]  # fmt: skip


def evaluation(
    argv: list[str], dest: Path, key: str, h: str, stages: Stages, progress: bool, what: str
) -> Path:
    """One `training.evaluate` run into `dest`, skipped when its stage is done with this hash and its
    metrics.json is there; returns that metrics.json."""
    if not (stages.done(key, h) and (dest / "metrics.json").is_file()):
        if evaluate.main([*argv, "--out", str(dest)] + ([] if progress else ["--no-progress"])) != EXIT_OK:
            raise ReproduceError(f"evaluating {what} failed (see above); run again to resume")
        stages.mark(key, h, "done")
    return dest / "metrics.json"


def eval_settings(recipe: dict) -> dict:
    """The device, precision and evaluation options of a recipe (what the training-free methods run with)."""
    ev = recipe.get("eval") or {}
    return {
        "device": recipe.get("device", "auto"),
        "precision": recipe.get("precision", "auto"),
        "batch_size": ev.get("batch_size", 32),
        "map_size": ev.get("map_size", 0),
    }


def _cell(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) and math.isfinite(v) else ""


def results_table(
    measured: dict[str, list[Path]],
    recipes: dict[str, dict],
    output: Path,
    free: dict[str, list[Path]] | None = None,
) -> tuple[str, dict]:
    """Markdown: this run's means per (recipe or training-free method, dataset, protocol) and, below each
    dataset, the published numbers of training/published.json with their sources. Also the same as a dict
    for results.json."""
    published = json.loads(PUBLISHED.read_text())["methods"]
    head = "| method | trained on | dataset | protocol | " + " | ".join(LABELS[k] for k in METRICS) + " |"
    lines = [head, "|---|---|---|---|" + "---|" * len(METRICS)]
    rows, sources = [], []
    for name, files in measured.items():
        config, _ = WMoEConfig.load(output / name / CONFIG_NAME)
        label = f"WMoE-CLIP (this run, {name}" + (
            "; random-weight backbone)" if includes_backbone(config) else ")"
        )
        for e in map(load_evaluation, files):
            values = {k: 100 * e["mean"][k] if e["mean"].get(k) is not None else None for k in METRICS}
            rows.append({"method": label, "train": train_dataset(recipes[name]),
                         "dataset": e["dataset"], "protocol": protocol(e["shots"]), **values})  # fmt: skip
    for files in (free or {}).values():
        for path in files:
            e, record = load_evaluation(path), json.loads(path.read_text())
            random_weights = "; random-weight backbone" if record.get("pretrained") is None else ""
            label = f"{record['method']} (this run, {record['backbone']}{random_weights})"
            values = {k: 100 * e["mean"][k] if e["mean"].get(k) is not None else None for k in METRICS}
            rows.append({"method": label, "train": "(training-free)", "dataset": e["dataset"],
                         "protocol": protocol(e["shots"]), **values})  # fmt: skip
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for i, m in enumerate(published, start=1):
        sources.append(f"[{i}] {m['method']}: {m['source']}")
        rows += [
            {"method": f"{m['method']} [{i}]", "train": "", **r}
            for r in m["rows"]
            if r["dataset"] in datasets
        ]
    for d in datasets:
        for r in (r for r in rows if r["dataset"] == d):
            cells = " | ".join(_cell(r.get(k)) for k in METRICS)
            lines.append(f"| {r['method']} | {r['train']} | {d} | {r['protocol']} | {cells} |")
    text = (
        "# Reproduction results\n\nMeans over each dataset's classes, x100. This run's rows are measured by "
        "`training.evaluate`; the others are published numbers, each with its source below.\n\n"
        + "\n".join(lines)
        + "\n\nSources:\n\n"
        + "\n".join(f"- {s}" for s in sources)
        + "\n"
    )
    return text, {"rows": rows, "sources": sources}


def reproduce(
    output: Path,
    recipes: Sequence[str] = RECIPES,
    data: Path = Path("data"),
    datasets: Sequence[str] | None = None,
    mirror: str | None = None,
    checksums: dict[str, str] | None = None,
    push_to_hub: str | None = None,
    progress: bool = True,
    methods: Sequence[str] = tuple(TRAINING_FREE_METHODS),
    backbone: str | None = None,
) -> int:
    """Every stage in order (see the module docstring); returns the exit status. methods: the training-free
    methods to evaluate; backbone: theirs (`training.evaluate --backbone`; default each method's own)."""
    output.mkdir(parents=True, exist_ok=True)
    raws = {Path(r).stem: read_recipe(r) for r in recipes}
    wanted = set(datasets) if datasets else None
    ready = ensure_data(raws, data, wanted, mirror, checksums, progress)
    stages = Stages(output / STAGES)
    available = ready if wanted is None else ready & wanted
    recipes_in = {name: effective_recipe(raw, data, available) for name, raw in raws.items()}
    evaluated = dict.fromkeys(d["name"] for r in recipes_in.values() for d in r["eval"]["datasets"])
    settings = eval_settings(next(iter(recipes_in.values())))
    # the training-free methods first: MuSc's cache entries (with the raw block outputs) then serve the
    # checkpoints' training and evaluation, so the backbone sees each image once
    free = {
        m: training_free_stage(m, backbone, list(evaluated), settings, output, data, stages, progress)
        for m in sorted(methods, key=lambda m: m != "musc")
    }
    measured = {}
    for name, recipe in recipes_in.items():
        h = train_stage(name, recipe, output, stages, progress)
        measured[name] = evaluate_stage(name, recipe, h, output, data, stages, progress)
        write_card(output / name, measured[name], push_to_hub if name == next(iter(raws)) else None)
    text, table = results_table(measured, raws, output, free)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(to_json(table))
    print(f"wrote {output / 'results.md'}")
    if push_to_hub:
        return train.publish(output / next(iter(raws)), push_to_hub)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True, help="run folder: checkpoints, evaluations, results.md")
    ap.add_argument(
        "--push-to-hub", metavar="ORG/NAME", default=None, help="publish the first recipe's checkpoint"
    )
    ap.add_argument(
        "--datasets", nargs="+", default=None, metavar="NAME", help="evaluate only on these (default all)"
    )
    ap.add_argument("--data", default="data", help="data root: each dataset in DATA/NAME (default data)")
    ap.add_argument(
        "--mirror", metavar="URL", default=None, help="fetch dataset files from here (official names)"
    )
    ap.add_argument(
        "--checksums", metavar="FILE", default=None, help="SHA-256 per file name (sha256sum format)"
    )
    ap.add_argument(
        "--recipes", nargs="+", default=list(RECIPES), metavar="YAML", help="default: the field's two"
    )
    ap.add_argument(
        "--training-free",
        nargs="*",
        choices=list(TRAINING_FREE_METHODS),
        default=list(TRAINING_FREE_METHODS),
        metavar="METHOD",
        help="training-free methods evaluated on the same data (default: musc winclip clip; none: no methods)",
    )
    ap.add_argument(
        "--backbone",
        default=None,
        metavar="NAME",
        help="the training-free methods' backbone (default: each method's own; wmoe-tiny: the tests' tiny one)",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        checksums = read_checksums(args.checksums) if args.checksums else {}
        return reproduce(
            Path(args.output), args.recipes, Path(args.data), args.datasets, args.mirror, checksums,
            args.push_to_hub, not args.no_progress, args.training_free, args.backbone,
        )  # fmt: skip
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
