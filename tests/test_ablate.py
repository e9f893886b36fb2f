"""training/ablate.py: the shipped ablation set trains over one cache (the backbone once per image), writes
one table, skips finished variants (unless their recipe changed), and trains under torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training import ablate as ablate_mod
from training.ablate import load_ablation, variant_recipe
from training.ablate import main as ablate_main
from training.config import TrainConfigError, load_config
from training.evaluate import METRICS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "training" / "configs" / "ablations_smoke.yaml"


@pytest.fixture(scope="module")
def ablation_file(tmp_path_factory, train_heldout_data) -> Path:
    """The shipped smoke ablation's variants on a smaller recipe (48 px, 16 + 8 images, 1 epoch)."""
    base = tmp_path_factory.mktemp("ablation")
    body = yaml.safe_load(SHIPPED.read_text())
    body["recipe"] = {
        "seed": 0,
        "device": "cpu",
        "cpu_threads": 1,
        "model": {"tiny": True, "image_size": 48},
        "train": {"root": str(train_heldout_data["train"])},
        "optim": {"batch_size": 4, "epochs": 1},
        "eval": {
            "batch_size": 8,
            "datasets": [{"name": "heldout", "root": str(train_heldout_data["heldout"])}],
        },
    }
    path = base / "ablation.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def table(output: Path) -> list[dict]:
    return list(csv.DictReader((output / "ablations.csv").open()))


def test_the_ablation_set_pays_the_backbone_once_per_image_and_writes_one_table(
    ablation_file, tmp_path, backbone_images, capsys
):
    out = tmp_path / "out"
    assert ablate_main(["--config", str(ablation_file), "--output", str(out), "--no-progress"]) == 0
    assert sum(backbone_images) == 16 + 8  # every image of both datasets once, for 7 trainings
    rows = table(out)
    names = [v.name for v in load_ablation(SHIPPED).variants]
    assert names == [
        "full (4 experts)",
        "without CTDS",
        "without WCMA",
        "without SA-MoE",
        "without projection",
        "2 experts",
        "8 experts",
    ]
    assert [r["variant"] for r in rows] == names and {r["dataset"] for r in rows} == {"heldout"}
    assert [int(r["backbone_images"]) for r in rows] == [24] + [0] * 6
    for r in rows:
        assert all(0 <= float(r[k]) <= 1 for k in METRICS if r[k] != "nan")
    assert len({tuple(r[k] for k in METRICS) for r in rows}) > 1  # the variants really differ
    md = (out / "ablations.md").read_text()
    assert "| without SA-MoE | heldout | 0 |" in md and "pixel_aupro" in capsys.readouterr().out
    configs = {
        v: json.loads((out / v / "config.json").read_text())["config"] for v in ("without-ctds", "8-experts")
    }
    assert configs["without-ctds"]["use_ctds"] is False and configs["8-experts"]["num_experts"] == 8
    assert "use_ctds: false" in (out / "without-ctds" / "train_config.yaml").read_text()

    backbone_images.clear()
    before = (out / "ablations.csv").read_text()
    assert ablate_main(["--config", str(ablation_file), "--output", str(out), "--no-progress"]) == 0
    assert backbone_images == [] and (out / "ablations.csv").read_text() == before  # nothing retrained


def test_a_bad_ablation_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"recipe": "nowhere.yaml", "variants": [{"name": "a"}]}))
    assert ablate_main(["--config", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "nowhere.yaml: cannot read it" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({"recipe": {}, "variants": [{"name": "a b"}, {"name": "a-b"}]}))
    with pytest.raises(TrainConfigError, match="distinct names"):
        load_ablation(bad)


@pytest.mark.slow
def test_every_variant_trains_under_torchrun(ablation_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "training.ablate", "--config", str(ablation_file), "--output", str(out), "--no-progress"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table(out)
    assert len(rows) == 7 and [int(r["backbone_images"]) for r in rows] == [24] + [0] * 6
    for folder in ("full-4-experts", "without-ctds", "without-wcma", "without-sa-moe", "without-projection"):
        assert json.loads((out / folder / "environment.json").read_text())["processes"] == 2


@pytest.mark.parametrize("name", ["ablations_smoke.yaml", "ablations_mvtec.yaml"])
def test_shipped_ablation_files_give_valid_recipes(name, tmp_path):
    ablation = load_ablation(ROOT / "training" / "configs" / name)
    for variant in ablation.variants:
        path = tmp_path / f"{variant.folder}.yaml"
        path.write_text(variant_recipe(ablation, variant, tmp_path))
        cfg = load_config(path, tmp_path / variant.folder)
        assert cfg.feature_cache == str(tmp_path / "feature_cache")
        for key, value in variant.model.items():
            assert getattr(cfg.model, key) == value


def test_a_variant_whose_recipe_changed_is_trained_again(ablation_file, tmp_path, monkeypatch):
    body = yaml.safe_load(ablation_file.read_text())
    body["variants"] = [{"name": "small", "model": {"num_experts": 2}}]
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(body))
    trained, real = [], ablate_mod.train_mod.run
    monkeypatch.setattr(
        ablate_mod.train_mod,
        "run",
        lambda cfg, folder, **kw: trained.append(folder) or real(cfg, folder, **kw),
    )
    out, args = tmp_path / "out", ["--config", str(path), "--output", str(tmp_path / "out"), "--no-progress"]
    config = lambda: json.loads((out / "small" / "config.json").read_text())["config"]  # noqa: E731
    assert ablate_main(args) == 0 and len(trained) == 1 and config()["num_experts"] == 2
    recorded = (out / "small" / "recipe.sha256").read_text().strip()
    assert recorded == load_config(out / "recipes" / "small.yaml", out / "small").sha256
    assert ablate_main(args) == 0 and len(trained) == 1  # unchanged: reused
    body["variants"][0]["model"]["num_experts"] = 3
    path.write_text(yaml.safe_dump(body))
    assert (
        ablate_main(args) == 0 and len(trained) == 2 and config()["num_experts"] == 3
    )  # changed: trained again
    assert (out / "small" / "recipe.sha256").read_text().strip() != recorded
    assert "| small | heldout |" in (out / "ablations.md").read_text()
    assert ablate_main(args) == 0 and len(trained) == 2
