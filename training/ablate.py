"""Train an ablation set over one feature cache and write one table (variant x dataset, seven metrics).

    python -m training.ablate --config training/configs/ablations_smoke.yaml --output runs/ablations_smoke
    torchrun --nproc_per_node=8 -m training.ablate --config training/configs/ablations_mvtec.yaml --output runs/abl

An ablation file names a training recipe (`recipe:`, a path relative to the ablation file, or the recipe
itself as a mapping) and its `variants:`, each a `name` and the `model:` fields it changes. Every variant
trains with `training.train` into OUTPUT/<variant>/ (its own recipe beside it in OUTPUT/recipes/), and all
share OUTPUT/data (generated data, "{output}" in the recipe) and one feature cache (`feature_cache:`,
default OUTPUT/feature_cache): the first variant pays the backbone once per image, the others read its
entries. A variant already finished in OUTPUT is not trained again (rerun the command after a crash),
unless its recipe changed: OUTPUT/<variant>/recipe.sha256 records the recipe its results and training
states belong to, and a variant whose recipe differs (or is not recorded) is trained again from scratch,
its folder replaced.
Writes OUTPUT/ablations.md (x100) and OUTPUT/ablations.csv (fractions).
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from training import train as train_mod
from training.config import TrainConfigError, load_config
from training.distributed import World, barrier, close_world, init_world
from training.evaluate import METRICS
from training.state import list_states
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError

DEFAULT_CACHE = "{output}/feature_cache"
RECIPE_HASH = "recipe.sha256"  # in a variant's folder: the sha256 of the recipe its contents came from


@dataclass
class Variant:
    name: str
    model: dict  # WMoEConfig fields replacing the recipe's

    @property
    def folder(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "variant"


@dataclass
class Ablation:
    recipe: dict  # the training recipe, "{output}" not yet substituted
    variants: list[Variant]
    feature_cache: str


def load_ablation(path: str | Path) -> Ablation:
    """Read and check an ablation file; errors name the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TrainConfigError(f"{path}: cannot read the ablation file ({e})") from e
    if not isinstance(raw, dict) or set(raw) - {"recipe", "variants", "feature_cache"} or "recipe" not in raw:
        raise TrainConfigError(f"{path}: expected the keys recipe, variants and optionally feature_cache")
    recipe = raw["recipe"]
    if isinstance(recipe, str):
        source = path.parent / recipe
        try:
            recipe = yaml.safe_load(source.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise TrainConfigError(f"{path}: recipe {source}: cannot read it ({e})") from e
    if not isinstance(recipe, dict):
        raise TrainConfigError(f"{path}: recipe must be a training recipe file or mapping")
    variants = []
    for i, v in enumerate(raw.get("variants") or []):
        if not isinstance(v, dict) or set(v) - {"name", "model"} or not isinstance(v.get("name"), str):
            raise TrainConfigError(
                f"{path}: variants[{i}] must be {{name: text, model: {{fields}}}}, got {v!r}"
            )
        if not isinstance(v.get("model") or {}, dict):
            raise TrainConfigError(f"{path}: variants[{i}].model must be a mapping of WMoEConfig fields")
        variants.append(Variant(v["name"], dict(v.get("model") or {})))
    folders = [v.folder for v in variants]
    if not variants or len(set(folders)) != len(folders):
        raise TrainConfigError(f"{path}: variants need distinct names (folders {folders})")
    cache = raw.get("feature_cache", DEFAULT_CACHE)
    if not isinstance(cache, str) or not cache:
        raise TrainConfigError(f"{path}: feature_cache must be a folder path")
    return Ablation(recipe, variants, cache)


def variant_recipe(ablation: Ablation, variant: Variant, output: Path) -> str:
    """The training recipe of one variant, as YAML text: the shared recipe, its model fields replaced, the
    shared cache and "{output}" made the ablation's folder (so generated data is shared too)."""
    raw = copy.deepcopy(ablation.recipe)
    raw["model"] = {**(raw.get("model") or {}), **variant.model}
    raw["feature_cache"] = ablation.feature_cache
    text = yaml.safe_dump(raw, sort_keys=False)
    return f"# ablation variant {variant.name!r}, written by training.ablate\n" + text.replace(
        "{output}", str(output)
    )


def run(ablation: Ablation, output: Path, world: World, progress: bool = True) -> list[dict]:
    """Train every variant not finished yet; returns each variant's metrics.json (complete on the main
    process). Under torchrun every process runs this, in one process group for all the variants."""
    recipes = output / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in ablation.variants:
        folder = output / variant.folder
        recipe = recipes / f"{variant.folder}.yaml"
        text = variant_recipe(ablation, variant, output)
        tmp = recipe.with_name(f".{recipe.name}.{os.getpid()}.tmp")  # torchrun: every process writes it
        tmp.write_text(text)
        os.replace(tmp, recipe)
        cfg = load_config(recipe, folder)
        record = folder / RECIPE_HASH
        stale = folder.exists() and (record.read_text().strip() if record.is_file() else None) != cfg.sha256
        barrier(world)  # every process has looked before the main one replaces a stale folder
        if world.main and (stale or not record.is_file()):
            shutil.rmtree(folder, ignore_errors=True)  # results and states of another recipe
            folder.mkdir(parents=True)
            record.write_text(cfg.sha256 + "\n")
        barrier(world)
        done = (folder / "metrics.json").is_file() and (folder / "model.safetensors").is_file()
        if not done:
            train_mod.run(
                cfg, folder, resume=bool(list_states(folder / train_mod.STATE_DIR)), progress=progress
            )
        barrier(world)  # the main process has written the variant's folder
        if (folder / "metrics.json").is_file():
            names = [d.name for d in cfg.eval.datasets]
            results.append(
                {
                    "variant": variant.name,
                    "datasets": names,
                    **json.loads((folder / "metrics.json").read_text()),
                }
            )
    return results


def rows(results: list[dict]) -> list[dict]:
    """One row per variant and dataset (and a mean row per variant over several datasets)."""
    out = []
    for r in results:
        per_dataset = r.get("per_dataset") or {r["datasets"][0] if r["datasets"] else "-": r["mean"]}
        if len(per_dataset) > 1:
            per_dataset = {**per_dataset, "mean": r["mean"]}
        computed = (r.get("feature_cache") or {}).get("computed")
        for name, m in per_dataset.items():
            out.append({"variant": r["variant"], "dataset": name, "backbone_images": computed, **m})
    return out


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def write_table(results: list[dict], output: Path, title: str) -> None:
    table = rows(results)
    lines = [
        f"# {title}",
        "",
        "Metrics x100 (held-out datasets, zero-shot); `backbone images`: images this variant's run sent "
        "through the backbone (the others came from the shared feature cache).",
        "",
        "| variant | dataset | backbone images | " + " | ".join(METRICS) + " |",
        "|" + "---|" * (3 + len(METRICS)),
    ]
    for row in table:
        cells = [
            row["variant"],
            row["dataset"],
            "" if row["backbone_images"] is None else str(row["backbone_images"]),
        ]
        lines.append("| " + " | ".join(cells + [_pct(row.get(k)) for k in METRICS]) + " |")
    (output / "ablations.md").write_text("\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "dataset", "backbone_images", *METRICS])
    for row in table:
        values = ["nan" if row.get(k) is None else f"{row[k]:.6f}" for k in METRICS]
        w.writerow([row["variant"], row["dataset"], row["backbone_images"], *values])
    (output / "ablations.csv").write_text(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.ablate", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="ablation file (see training/configs/ablations_*.yaml)")
    ap.add_argument("--output", required=True, help="folder for the variants' runs, the cache and the table")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    output = Path(args.output)
    world = None
    try:
        ablation = load_ablation(args.config)
        world = init_world(ablation.recipe.get("device", "auto"))
        results = run(ablation, output, world, progress=not args.no_progress)
        if world.main:
            write_table(results, output, f"Ablations: {Path(args.config).name}")
            print((output / "ablations.md").read_text(), end="")
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if world is not None:
            close_world(world)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
