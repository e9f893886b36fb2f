"""training/: config, resume bit for bit, failed saves, NaN stop, outputs, evaluate.py, 2-process DDP (gloo),
and a trained tiny model scoring above chance on someone else's data in the own-folder layout.

Runs tiny settings (48 px, 24 training images, 2 epochs); the full smoke reproduction is the `slow` test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from training import state as state_mod
from training import train as train_mod
from training.config import DataSource, Eval, Optim, TrainConfigError, load_config
from training.data import MetaDataset, MetaError, load_entries
from training.distributed import EpochSampler, World
from training.evaluate import METRICS
from training.evaluate import main as evaluate_main
from training.prepare_data import prepare
from training.synthetic import KINDS, generate, make_category
from wmoe import Detector, WMoECLIP, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
DDP_RANKS = ROOT / "tests" / "support" / "ddp_ranks.py"  # train.py plus a dump of each rank's heads
TRAIN_CATS = ["felt", "nut", "mesh"]
HELDOUT_CATS = ["tile:dots", "washer:disc"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("data")
    roots = {"train": base / "train", "heldout": base / "heldout"}
    generate(
        roots["train"], TRAIN_CATS, n_train_good=0, n_test_good=3, n_test_defect_per_type=1, size=48, seed=0
    )
    generate(
        roots["heldout"],
        HELDOUT_CATS,
        n_train_good=0,
        n_test_good=3,
        n_test_defect_per_type=1,
        size=48,
        seed=0,
    )
    for root in roots.values():
        prepare("mvtec", root)
    return roots


def recipe(data: dict[str, Path], epochs: int = 2, every_steps: int = 4, **optim) -> dict:
    return {
        "seed": 3,
        "device": "cpu",
        "cpu_threads": 1,
        "model": {"tiny": True, "image_size": 48},
        "train": {"root": str(data["train"])},
        "optim": {"batch_size": 4, "epochs": epochs, **optim},
        "eval": {
            "batch_size": 8,
            "untrained": True,
            "datasets": [{"name": "heldout", "root": str(data["heldout"])}],
        },
        "checkpoint": {"every_steps": every_steps, "keep": 10},
    }


def write_recipe(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def train(config: Path, output: Path, resume: bool = False):
    return train_mod.run(load_config(config, output), output, resume=resume, progress=False)


def heads(output: Path) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in load_file(str(output / "model.safetensors")).items() if not k.startswith("backbone.")
    }


def losses(output: Path) -> list[float]:
    lines = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, output) of an uninterrupted 2-epoch run."""
    base = tmp_path_factory.mktemp("straight")
    config = write_recipe(base / "recipe.yaml", recipe(data))
    train(config, base / "run")
    return config, base / "run"


class Killed(Exception):
    pass


REAL_TRAIN_STEP = train_mod.Trainer.train_step


def kill_at(monkeypatch, step: int):
    """Make the run die before optimiser step `step + 1`, as a kill -9 would (no clean-up code runs)."""

    def dying(trainer, batch):
        if trainer.step == step:  # steps done so far
            raise Killed
        return REAL_TRAIN_STEP(trainer, batch)

    monkeypatch.setattr(train_mod.Trainer, "train_step", dying)


# ---------------------------------------------------------------------------------------------- resume
def test_resume_mid_epoch_and_at_epoch_end_gives_the_same_weights_bit_for_bit(
    straight, tmp_path, monkeypatch
):
    config, reference = straight
    out = tmp_path / "run"
    kill_at(monkeypatch, 5)  # states at steps 4 (mid epoch 1): resume there
    with pytest.raises(Killed):
        train(config, out)
    assert [p.name for p in state_mod.list_states(out / "checkpoints")] == ["step-00000004"]
    kill_at(monkeypatch, 10)  # then states at 6 (end of epoch 1) and 8 (mid epoch 2): resume from 8
    with pytest.raises(Killed):
        train(config, out, resume=True)
    assert state_mod.list_states(out / "checkpoints")[-1].name == "step-00000008"
    monkeypatch.undo()
    metrics = train(config, out, resume=True)
    a, b = heads(reference), heads(out)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert losses(out) == losses(reference)  # the log holds each step once, with the same values
    assert len(losses(out)) == 12
    assert metrics["mean"] == json.loads((reference / "metrics.json").read_text())["mean"]


def test_failed_save_keeps_the_previous_state_and_resume_uses_it(straight, data, tmp_path, monkeypatch):
    _, reference = straight
    config = write_recipe(tmp_path / "recipe.yaml", recipe(data, every_steps=0))
    out = tmp_path / "run"
    calls = []
    real_save = state_mod.save_file

    def disk_full(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the end of epoch 2
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(state_mod, "save_file", disk_full)
    train(config, out)  # the run goes on and finishes; the failure is reported
    monkeypatch.undo()
    states = out / "checkpoints"
    assert [p.name for p in states.iterdir()] == ["step-00000006"]  # no half-written or temporary folder
    events = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    failed = [e for e in events if e.get("event") == "save_failed"]
    assert (
        len(failed) == 1
        and "No space left" in failed[0]["reason"]
        and "step-00000006 is kept" in failed[0]["reason"]
    )
    _, meta, path = state_mod.load_latest(states)
    assert path.name == "step-00000006" and meta["epoch"] == 1
    train(config, out, resume=True)  # redoes epoch 2 from the good state
    a, b = heads(reference), heads(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_falls_back_when_the_newest_state_is_damaged(straight, tmp_path):
    config, _ = straight
    out = tmp_path / "run"
    train(config, out)
    newest = state_mod.list_states(out / "checkpoints")[-1]
    (newest / "state.safetensors").write_bytes(b"garbage")
    _, meta, path = state_mod.load_latest(out / "checkpoints")
    assert path != newest and meta["step"] == 8


def test_resume_refuses_another_recipe_or_a_used_folder(straight, data, tmp_path, monkeypatch):
    config, reference = straight
    other = write_recipe(tmp_path / "other.yaml", recipe(data, lr=5e-4))
    out = tmp_path / "run"
    kill_at(monkeypatch, 7)
    with pytest.raises(Killed):
        train(config, out)
    monkeypatch.undo()
    with pytest.raises(train_mod.TrainingError, match="another training config"):
        train(other, out, resume=True)
    with pytest.raises(train_mod.TrainingError, match="--resume"):
        train(config, reference)  # a finished run is not overwritten


# ---------------------------------------------------------------------------------------------- NaN
def test_non_finite_loss_stops_naming_the_step_and_the_images(data, tmp_path, monkeypatch, capsys):
    config = write_recipe(tmp_path / "recipe.yaml", recipe(data))
    out = tmp_path / "run"
    real_loss, calls = train_mod.wmoe_loss, []

    def poisoned(*args, **kwargs):
        total, parts = real_loss(*args, **kwargs)
        calls.append(1)
        return (total * float("nan") if len(calls) == 3 else total), parts

    monkeypatch.setattr(train_mod, "wmoe_loss", poisoned)
    rc = train_mod.main(["--config", str(config), "--output", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "non-finite loss (nan) at step 3 (epoch 1, batch 3)" in err
    entries = load_entries(data["train"])
    sampler = EpochSampler(len(entries), 4, World(), seed=3)
    batch = list(sampler)[8:12]  # the third batch of epoch 1
    for i in batch:
        assert str(data["train"] / entries[i]["img_path"]) in err
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["event"] == "stopped"


# ---------------------------------------------------------------------------------------------- outputs
def test_the_finished_folder_is_complete_and_loadable(straight, data):
    config, out = straight
    for name in (
        "config.json",
        "model.safetensors",
        "README.md",
        "train_config.yaml",
        "metrics.json",
        "results.csv",
        "results.md",
        "environment.json",
        "train_log.jsonl",
    ):
        assert (out / name).is_file(), name
    assert (out / "train_config.yaml").read_text() == config.read_text()
    detector = Detector.from_pretrained(out)
    assert detector.trained and detector.info["steps"] == 12 and detector.config.image_size == 48
    image = data["heldout"] / "tile" / "test" / "good" / "000.png"
    pred = detector.predict(image, "tile")
    assert pred.anomaly_map.shape == (48, 48) and 0 <= pred.score <= 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["mean"]) == set(METRICS) and set(metrics["per_class"]) == {"tile", "washer"}
    assert set(metrics["untrained"]["mean"]) == set(METRICS)
    assert metrics["images"] == 16 and metrics["untrained"]["images"] == 16
    assert all(0 <= v <= 1 for v in metrics["mean"].values())
    assert metrics["mean"] != metrics["untrained"]["mean"]
    rows = (out / "results.csv").read_text().splitlines()
    assert (
        rows[0].split(",")[:3] == ["class", "images", "anomalous"]
        and len(rows) == 4
        and rows[-1].startswith("mean")
    )
    env = json.loads((out / "environment.json").read_text())
    assert (
        env["device"] == "cpu"
        and env["processes"] == 1
        and env["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"loss_image", "loss_focal", "loss_dice", "loss_kl", "loss_balance", "images_per_s", "lr"} <= set(
        steps[0]
    )
    assert "## Evaluation" in (out / "README.md").read_text()


def test_push_to_hub_publishes_the_checkpoint_files_only(straight, monkeypatch, capsys):
    _, out = straight
    staged = {}

    def fake_push(directory, repo_id):
        staged["files"] = sorted(p.name for p in Path(directory).iterdir())
        staged["repo"] = repo_id
        return "https://huggingface.co/org/name/commit/1"

    monkeypatch.setattr(train_mod, "upload_checkpoint", fake_push)
    assert train_mod.publish(out, "org/name") == 0
    assert staged["repo"] == "org/name" and staged["files"] == sorted(train_mod.PUBLISHED)

    def offline(directory, repo_id):
        raise ConnectionError("the Hub is unreachable")

    monkeypatch.setattr(train_mod, "upload_checkpoint", offline)
    assert train_mod.publish(out, "org/name") == 3
    assert "the checkpoint folder is complete" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- config, data
def test_config_errors_name_the_file_and_key(data, tmp_path):
    bad = recipe(data)
    bad["optim"]["learning_rate"] = 0.1
    path = write_recipe(tmp_path / "bad.yaml", bad)
    with pytest.raises(TrainConfigError, match=r"bad.yaml: optim: unknown key\(s\) \['learning_rate'\]"):
        load_config(path, tmp_path)
    bad = recipe(data)
    bad["model"]["layerz"] = [1]
    with pytest.raises(TrainConfigError, match="model: unknown key"):
        load_config(write_recipe(tmp_path / "b2.yaml", bad), tmp_path)
    bad = recipe(data)
    bad["optim"]["epochs"] = "ten"
    with pytest.raises(TrainConfigError, match="optim.epochs: expected int"):
        load_config(write_recipe(tmp_path / "b3.yaml", bad), tmp_path)
    bad = recipe(data)
    del bad["train"]
    with pytest.raises(TrainConfigError, match=r"missing key\(s\) \['train'\]"):
        load_config(write_recipe(tmp_path / "b4.yaml", bad), tmp_path)
    good = recipe(data)
    good["train"]["root"] = "{output}/data"
    cfg = load_config(write_recipe(tmp_path / "ok.yaml", good), tmp_path / "out")
    assert (
        cfg.train.root == str(tmp_path / "out" / "data")
        and cfg.model.seed == 3
        and cfg.optim.betas == (0.5, 0.999)
    )


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("optim", "lr", 0, r"optim.lr: expected > 0, got 0.0"),
        ("optim", "batch_size", 0, r"optim.batch_size: expected >= 1, got 0"),
        ("optim", "epochs", 0, r"optim.epochs: expected >= 1, got 0"),
        ("optim", "grad_clip", -1.0, r"optim.grad_clip: expected >= 0, got -1.0"),
        ("optim", "num_workers", -1, r"optim.num_workers: expected >= 0, got -1"),
        ("optim", "betas", [0.5, 1.0], r"optim.betas: expected two numbers in \[0, 1\), got \[0.5, 1.0\]"),
        (
            "optim",
            "schedule",
            "linear",
            r"optim.schedule: expected one of \['constant', 'cosine'\], got 'linear'",
        ),
        ("eval", "batch_size", 0, r"eval.batch_size: expected >= 1, got 0"),
        ("eval", "map_size", 4, r"eval.map_size: expected 0 \(model input size\) or >= 8, got 4"),
        ("checkpoint", "keep", 0, r"checkpoint.keep: expected >= 1, got 0"),
        ("checkpoint", "every_steps", -1, r"checkpoint.every_steps: expected >= 0, got -1"),
        ("train", "classes", "a", r"train.classes: expected a list of class names, got 'a'"),
        (None, "device", "tpu", r"device: expected one of \['auto', 'cpu', 'cuda'\], got 'tpu'"),
        (None, "precision", "fp16", r"precision: expected one of \['auto', 'fp32', 'bf16'\], got 'fp16'"),
        (None, "cpu_threads", -1, r"cpu_threads: expected >= 0, got -1"),
    ],
)
def test_recipe_range_checks_name_the_file_and_the_key(data, tmp_path, section, key, value, message):
    bad = recipe(data)
    (bad[section] if section else bad)[key] = value
    with pytest.raises(TrainConfigError, match=f"^{re.escape(str(tmp_path / 'r.yaml'))}: {message}$"):
        load_config(write_recipe(tmp_path / "r.yaml", bad), tmp_path)


def test_recipe_rules_live_in_their_dataclasses():
    """The same rules hold for a recipe built in Python, without a file (the loader only adds the file name)."""
    with pytest.raises(TrainConfigError, match=r"^lr: expected > 0"):
        Optim(lr=-1.0)
    with pytest.raises(TrainConfigError, match=r"^map_size: expected 0 \(model input size\) or >= 8"):
        Eval(map_size=2)
    with pytest.raises(TrainConfigError, match=r"^datasets: expected unique names"):
        Eval(datasets=[DataSource("data/a"), DataSource("other/a")])
    assert Optim(betas=[0.9, 0.99]).betas == (0.9, 0.99)
    assert DataSource("data/mvtec").name == "mvtec"


def test_every_training_error_is_a_wmoe_error():
    import importlib
    import inspect
    import pkgutil

    import training
    from training.distributed import DeviceError
    from training.prepare_data import DatasetLayoutError
    from training.state import StateSaveError
    from training.synthetic import SyntheticError
    from wmoe.errors import WMoEError

    found = set()
    for info in pkgutil.iter_modules(training.__path__):
        module = importlib.import_module(f"training.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == module.__name__:
                assert issubclass(cls, WMoEError), cls
                found.add(cls)
    errors = (TrainConfigError, MetaError, DatasetLayoutError, train_mod.TrainingError, DeviceError)
    assert {*errors, StateSaveError, SyntheticError} <= found
    for cls in (TrainConfigError, MetaError, DatasetLayoutError, SyntheticError):  # as before, ValueErrors
        assert issubclass(cls, ValueError), cls
    assert issubclass(StateSaveError, OSError) and issubclass(DeviceError, RuntimeError)


def test_training_precisions_are_wmoe_dtype_names_plus_auto():
    from training.distributed import PRECISIONS, DeviceError, autocast_dtype
    from wmoe.precision import DTYPES

    assert PRECISIONS[0] == "auto" and set(PRECISIONS[1:]) <= set(DTYPES)
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is autocast_dtype(cpu, "fp32") is DTYPES["fp32"]
    with pytest.raises(DeviceError, match="bf16 needs a CUDA GPU"):
        autocast_dtype(cpu, "bf16")
    with pytest.raises(DeviceError, match="unknown precision 'fp16'"):
        autocast_dtype(cpu, "fp16")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--batch-size", "0", "--batch-size: expected >= 1, got 0"),
        ("--map-size", "4", "--map-size: expected 0 (model input size) or >= 8, got 4"),
        ("--num-workers", "-1", "--num-workers: expected >= 0, got -1"),
        ("--cpu-threads", "-2", "--cpu-threads: expected >= 0, got -2"),
    ],
)
def test_evaluate_flags_obey_the_recipe_rules(tmp_path, capsys, flag, value, message):
    args = ["--checkpoint", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o"), flag, value]
    with pytest.raises(SystemExit) as e:
        evaluate_main(args)
    assert e.value.code == 2 and capsys.readouterr().err.endswith(f"error: {message}\n")


def test_train_cli_reports_a_bad_recipe_with_exit_2_and_no_traceback(data, tmp_path):
    bad = recipe(data)
    bad["optim"]["lr"] = -1
    config = write_recipe(tmp_path / "bad.yaml", bad)
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "--config", str(config), "--output", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: {config}: optim.lr: expected > 0, got -1.0\n"


def test_dataset_uses_the_inference_preprocessing_and_known_masks(data, tmp_path):
    from wmoe.preprocess import load_image, to_tensor

    ds = MetaDataset(
        data["heldout"], image_size=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), mask_size=24
    )
    item = ds[0]
    expected = to_tensor(load_image(item["path"]), 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.equal(item["image"], expected) and item["mask"].shape == (24, 24)
    assert all(ds.has_mask)  # normal images of annotated classes have a known, empty mask
    items = [ds[i] for i in range(len(ds))]
    assert all(
        it["mask"].any() == bool(it["label"]) for it in items
    )  # anomalous: the mask file; normal: empty
    with pytest.raises(MetaError, match="no class"):
        MetaDataset(data["heldout"], classes=["bottle"], image_size=48, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(MetaError, match="python -m training.prepare_data"):
        MetaDataset(tmp_path, image_size=48, mean=(0, 0, 0), std=(1, 1, 1))


def test_epoch_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    ranks = [list(EpochSampler(10, 2, World(rank=r, size=2), seed=1)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5 and sorted(ranks[0] + ranks[1]) == list(range(10))
    s = EpochSampler(10, 2, World(), seed=1)
    s.set_epoch(1)
    full = list(s)
    s.set_epoch(1, start_batch=2)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(2)
    assert list(s) != full  # a new order each epoch, drawn from (seed, epoch) alone


# ---------------------------------------------------------------------------------------------- evaluate.py
def test_evaluate_cli_matches_the_training_evaluation(straight, data, tmp_path, capsys):
    _, out = straight
    rc = evaluate_main(
        [
            "--checkpoint",
            str(out),
            "--data",
            str(data["heldout"]),
            "--out",
            str(tmp_path / "e"),
            "--batch-size",
            "5",
            "--no-progress",
            "--cpu-threads",
            "1",
        ]
    )
    assert rc == 0
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    trained = json.loads((out / "metrics.json").read_text())
    for cls in ("tile", "washer"):
        for k in METRICS:
            assert got["per_class"][cls][k] == pytest.approx(trained["per_class"][cls][k], abs=1e-6)
    table = (tmp_path / "e" / "results.md").read_text()
    assert "| tile | 8 | 5 |" in table and "| **mean** | 16 |" in table
    assert "pixel_aupro" in capsys.readouterr().out
    rc = evaluate_main(
        [
            "--checkpoint",
            str(out),
            "--data",
            str(data["heldout"]),
            "--classes",
            "washer",
            "--out",
            str(tmp_path / "w"),
            "--no-progress",
            "--cpu-threads",
            "1",
        ]
    )
    assert rc == 0 and list(json.loads((tmp_path / "w" / "metrics.json").read_text())["per_class"]) == [
        "washer"
    ]
    rc = evaluate_main(["--checkpoint", str(out), "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    assert rc == 2 and "no meta file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- DDP
def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_ddp_training_and_gathered_evaluation(straight, data, tmp_path):
    config = write_recipe(tmp_path / "recipe.yaml", recipe(data, epochs=1, every_steps=0))
    out = tmp_path / "ddp"
    done = torchrun(str(DDP_RANKS), "--config", str(config), "--output", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 16 and metrics["steps"] == 3  # 24 images / 2 processes / batch 4
    ranks_end_equal(out)
    assert json.loads((out / "environment.json").read_text())["processes"] == 2
    _, meta, _ = state_mod.load_latest(out / "checkpoints")
    assert meta["world_size"] == 2
    rng = load_file(str(state_mod.list_states(out / "checkpoints")[-1] / "state.safetensors"))["rng.torch"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])  # each process's RNG is saved
    assert Detector.from_pretrained(out).trained
    with pytest.raises(train_mod.TrainingError, match="2 process"):
        train(config, out, resume=True)  # a 1-process resume of a 2-process state is refused
    # evaluation sharded over 2 processes and gathered gives exactly the 1-process numbers
    _, reference = straight
    done = torchrun(
        "-m",
        "training.evaluate",
        "--checkpoint",
        str(reference),
        "--data",
        str(data["heldout"]),
        "--out",
        str(tmp_path / "e2"),
        "--batch-size",
        "3",
        "--no-progress",
        "--cpu-threads",
        "1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    one = json.loads((reference / "metrics.json").read_text())
    assert two["processes"] == 2 and two["images"] == 16
    for cls in one["per_class"]:
        for k in METRICS:
            assert two["per_class"][cls][k] == pytest.approx(one["per_class"][cls][k], abs=1e-6)


def ranks_end_equal(out: Path):
    """Both processes end with exactly the heads of the saved checkpoint, and training moved them."""
    first, second = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    saved, initial = heads(out), WMoECLIP(load_config_model(out)).head_parameters()
    assert set(first) == set(second) == set(saved)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], saved[name]), name
    assert any(not torch.equal(first[n], initial[n].detach()) for n in first)


def load_config_model(out: Path):
    return Detector.from_pretrained(out).config


def test_ddp_without_sa_moe_and_batches_without_masks_trains(tmp_path):
    """`use_moe: false` and only good images (no pixel masks): the image score then comes from the CLS
    branch alone, and the patch-side heads (WCMA, projection) would get no gradient, which DDP refuses; the
    loss keeps the maps in every step at zero weight. Two processes train to the end and agree on every
    weight."""
    good = tmp_path / "good"
    generate(good, TRAIN_CATS, n_train_good=0, n_test_good=8, n_test_defect_per_type=0, size=48, seed=1)
    prepare("mvtec", good)
    body = recipe({"train": good, "heldout": good}, epochs=1, every_steps=0)
    body["model"]["use_moe"] = False
    body["eval"] = {"datasets": []}  # good images only: nothing to evaluate
    config = write_recipe(tmp_path / "recipe.yaml", body)
    out = tmp_path / "ddp"
    done = torchrun(str(DDP_RANKS), "--config", str(config), "--output", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not Detector.from_pretrained(out).config.use_moe
    ranks_end_equal(out)


# ---------------------------------------------------------------------------------------------- own folders
def write_own_folder(
    root: Path, name: str, kind: str, seed: int, n_good: int = 8, n_bad: int = 4, size: int = 96
):
    """Someone else's data in the own-folder layout: good/, one folder per defect, ground_truth/<defect>/."""
    cat = make_category(name, kind, seed=seed)
    (root / "good").mkdir(parents=True)
    for i in range(n_good):
        img, _ = cat.render(np.random.default_rng([seed, 0, i]), size)
        Image.fromarray(img).save(root / "good" / f"g{i}.png")
    for defect in ("scratch", "hole", "stain"):
        (root / defect).mkdir()
        (root / "ground_truth" / defect).mkdir(parents=True)
        for i in range(n_bad):
            img, mask = cat.render_defect(np.random.default_rng([seed, 1, i, len(defect)]), size, defect)
            Image.fromarray(img).save(root / defect / f"d{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / "ground_truth" / defect / f"d{i}_mask.png"
            )


def test_trained_folder_beats_chance_on_own_folder_data(tmp_path):
    """A short real training run, then evaluate.py on unseen categories written in the own-folder layout."""
    body = yaml.safe_load((ROOT / "training" / "configs" / "smoke.yaml").read_text())
    body["model"]["image_size"] = 64
    body["synthetic"][0].update(categories=16, n_test_good=6, n_test_defect_per_type=2, size=64)
    body["synthetic"][1].update(categories=["grille:grid"], n_test_good=4, n_test_defect_per_type=1, size=64)
    body["optim"]["epochs"] = 3
    body["eval"] = {"datasets": []}  # good images only: nothing to evaluate
    config = write_recipe(tmp_path / "recipe.yaml", body)
    out = tmp_path / "run"
    train(config, out)
    own = tmp_path / "own"
    write_own_folder(own / "carpet", "carpet", "noise", seed=11)
    write_own_folder(own / "lattice", "lattice", "grid", seed=12)
    untrained = tmp_path / "untrained"  # the same model before training, for comparison
    save_pretrained(WMoECLIP(load_config(config, out).model), untrained)
    scores = {}
    for name in ("carpet", "lattice"):
        prepare("folder", own / name)
        for model in (out, untrained):
            assert (
                evaluate_main(
                    [
                        "--checkpoint",
                        str(model),
                        "--data",
                        str(own / name),
                        "--out",
                        str(tmp_path / "eval" / model.name / name),
                        "--no-progress",
                        "--cpu-threads",
                        "1",
                    ]
                )
                == 0
            )
            m = json.loads((tmp_path / "eval" / model.name / name / "metrics.json").read_text())
            scores[model.name, name] = m["mean"]["pixel_auroc"]
    trained = np.mean([scores["run", n] for n in ("carpet", "lattice")])
    before = np.mean([scores["untrained", n] for n in ("carpet", "lattice")])
    assert trained > 0.6 and trained > before + 0.05, scores


# ---------------------------------------------------------------------------------------------- the smoke bar
@pytest.mark.slow
def test_smoke_reproduction_meets_the_bar(tmp_path):
    """The full smoke command on this machine: < 10 min, held-out pixel AUROC >= 0.65 and >= 0.10 above the
    untrained model, image AUROC >= 0.60, >= 300 evaluation images; then the folder on own-folder data."""
    out = tmp_path / "smoke"
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--config",
            "training/configs/smoke.yaml",
            "--output",
            str(out),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert seconds < 600, seconds
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] >= 300
    assert m["mean"]["pixel_auroc"] >= 0.65, m["mean"]
    assert m["mean"]["pixel_auroc"] >= m["untrained"]["mean"]["pixel_auroc"] + 0.10, (
        m["mean"],
        m["untrained"]["mean"],
    )
    assert m["mean"]["image_auroc"] >= 0.60, m["mean"]
    # someone else's categories, one per kind of the generator, in the own-folder layout at another size
    pixel = {}
    for i, kind in enumerate(KINDS):
        root = tmp_path / "own" / f"own_{kind}"
        write_own_folder(root, f"own {kind}", kind, seed=20 + i, n_good=10, n_bad=6, size=128)
        prepare("folder", root)
        args = [
            "--checkpoint",
            str(out),
            "--data",
            str(root),
            "--out",
            str(root / "eval"),
            "--cpu-threads",
            "1",
        ]
        assert evaluate_main([*args, "--no-progress"]) == 0
        pixel[kind] = json.loads((root / "eval" / "metrics.json").read_text())["mean"]["pixel_auroc"]
    assert np.mean(list(pixel.values())) > 0.65, pixel


def test_shipped_recipes_parse(tmp_path):
    real = load_config(ROOT / "training" / "configs" / "mvtec_to_all.yaml", tmp_path)
    assert real.model.backbone == "ViT-L-14-336" and real.model.image_size == 518
    assert (real.optim.lr, real.optim.betas, real.optim.batch_size, real.optim.epochs) == (
        1e-3,
        (0.5, 0.999),
        8,
        15,
    )
    assert real.train.root == "data/mvtec" and len(real.eval.datasets) == 13
    assert "mvtec" not in {d.name for d in real.eval.datasets}  # never evaluated on its training data
    visa = load_config(ROOT / "training" / "configs" / "visa_to_mvtec.yaml", tmp_path)
    assert visa.train.root == "data/visa" and [d.name for d in visa.eval.datasets] == ["mvtec"]
    smoke = load_config(ROOT / "training" / "configs" / "smoke.yaml", tmp_path)
    assert smoke.model.backbone == "wmoe-tiny" and smoke.eval.untrained
    assert smoke.train.root == str(tmp_path / "data" / "train")
