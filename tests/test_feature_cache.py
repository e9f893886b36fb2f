"""training/feature_cache.py: same weights and metrics with and without the cache, warm runs pay no backbone,
damaged entries are recomputed, keys change with everything that changes the features, full disks."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training import feature_cache as fc
from training import train as train_mod
from training.config import load_config
from training.evaluate import main as evaluate_main
from training.feature_cache import FeatureCache
from training.progress import LOG_INTERVAL
from wmoe import WMoECLIP, WMoEConfig


@pytest.fixture(scope="module")
def data(train_heldout_data) -> dict[str, Path]:
    return train_heldout_data


def run(data, folder: Path, cache: Path | None = None, dtype: str = "fp32", progress: bool = False) -> dict:
    body = {
        "seed": 1,
        "device": "cpu",
        "cpu_threads": 1,
        "model": {"tiny": True, "image_size": 48},
        "train": {"root": str(data["train"])},
        "optim": {"batch_size": 4, "epochs": 2},
        "eval": {
            "batch_size": 8,
            "untrained": True,
            "datasets": [{"name": "heldout", "root": str(data["heldout"])}],
        },
    }
    if cache is not None:
        body.update(feature_cache=str(cache), feature_cache_dtype=dtype)
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(body))
    out = folder / "run"
    return train_mod.run(load_config(folder / "recipe.yaml", out), out, progress=progress)


def heads(metrics_dir: Path) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in load_file(str(metrics_dir / "model.safetensors")).items()
        if not k.startswith("backbone.")
    }


@pytest.fixture(scope="module")
def uncached(data, tmp_path_factory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("uncached")
    return run(data, folder / "a"), folder / "a" / "run"


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*/*.safetensors"))


def test_cold_warm_and_damaged_cache_give_the_uncached_weights_and_metrics(
    data, uncached, tmp_path, backbone_images, caplog
):
    plain, plain_dir = uncached
    train, heldout = 16, 8  # images: 2 classes x (3 good + 5 defects); 1 class x (3 good + 5 defects)
    images = train + heldout
    cache = tmp_path / "cache"
    cold = run(data, tmp_path / "cold", cache)
    assert sum(backbone_images) == images  # each image once, over 2 epochs and 2 evaluations
    assert cold["feature_cache"]["computed"] == images and cold["feature_cache"]["written"] == images
    assert len(entries(cache)) == images

    backbone_images.clear()
    warm = run(data, tmp_path / "warm", cache)
    assert backbone_images == []  # the backbone never ran
    assert warm["feature_cache"]["hits"] == 2 * train + 2 * heldout and warm["feature_cache"]["computed"] == 0

    flipped, cut = entries(cache)[:2]
    raw = bytearray(flipped.read_bytes())
    raw[-100] ^= 0xFF  # one byte of tensor data
    flipped.write_bytes(bytes(raw))
    cut.write_bytes(cut.read_bytes()[:-1000])
    with caplog.at_level(logging.WARNING, logger="wmoe.training"):
        damaged = run(data, tmp_path / "damaged", cache)
    assert sum(backbone_images) == 2 and damaged["feature_cache"]["damaged"] == 2
    assert "damaged entry" in caplog.text and "checksum mismatch" in caplog.text
    assert run(data, tmp_path / "again", cache)["feature_cache"]["damaged"] == 0  # rewritten, good again

    for result, folder in ((cold, "cold"), (warm, "warm"), (damaged, "damaged")):
        assert result["mean"] == plain["mean"] and result["untrained"]["mean"] == plain["untrained"]["mean"]
        mine, theirs = heads(tmp_path / folder / "run"), heads(plain_dir)
        # a recomputed entry went through the backbone in a smaller batch than the uncached run's, and the
        # backbone's matmuls round differently per batch size (~2e-7): bit for bit only without recomputation
        same = torch.equal if folder != "damaged" else lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-5)
        assert all(same(mine[k], theirs[k]) for k in theirs), folder


def test_fp16_entries_are_half_the_size_and_close(data, uncached, tmp_path):
    plain, _ = uncached
    run(data, tmp_path / "fill32", tmp_path / "c32")
    result = run(data, tmp_path / "fill16", tmp_path / "c16", dtype="fp16")
    run16 = run(data, tmp_path / "warm16", tmp_path / "c16", dtype="fp16")
    size32 = sum(p.stat().st_size for p in entries(tmp_path / "c32"))
    size16 = sum(p.stat().st_size for p in entries(tmp_path / "c16"))
    assert 0.45 < size16 / size32 < 0.6
    assert run16["mean"] == pytest.approx(result["mean"], abs=0)  # warm fp16 = cold fp16: rounded once
    assert result["mean"]["image_auroc"] == pytest.approx(plain["mean"]["image_auroc"], abs=0.1)


def test_evaluate_cli_with_a_cache_gives_the_same_metrics(data, uncached, tmp_path, backbone_images):
    _, checkpoint = uncached

    def evaluate(out: str, *cache: str) -> dict:
        args = ["--checkpoint", str(checkpoint), "--data", str(data["heldout"]), "--out", str(tmp_path / out)]
        assert evaluate_main([*args, "--no-progress", "--cpu-threads", "1", *cache]) == 0
        return json.loads((tmp_path / out / "metrics.json").read_text())

    plain = evaluate("plain")
    backbone_images.clear()
    cold = evaluate("cold", "--feature-cache", str(tmp_path / "cache"))
    assert sum(backbone_images) == 8
    warm = evaluate("warm", "--feature-cache", str(tmp_path / "cache"))
    assert sum(backbone_images) == 8  # nothing more
    assert plain["per_class"] == cold["per_class"] == warm["per_class"]
    counts = lambda r: {k: r["feature_cache"][k] for k in ("hits", "computed", "damaged", "written")}  # noqa: E731
    assert plain["feature_cache"] is None
    assert counts(cold) == {"hits": 0, "computed": 8, "damaged": 0, "written": 8}
    assert counts(warm) == {"hits": 8, "computed": 0, "damaged": 0, "written": 0}
    for entry in entries(tmp_path / "cache")[:2]:
        entry.write_bytes(entry.read_bytes()[:-1000])
    damaged = evaluate("damaged", "--feature-cache", str(tmp_path / "cache"), "--num-workers", "1")
    # read (and found damaged) in the DataLoader's worker process, counted in the main one
    assert counts(damaged) == {"hits": 6, "computed": 2, "damaged": 2, "written": 2}
    assert damaged["per_class"] == plain["per_class"]
    assert plain["map_size"] == 48  # pixel metrics at the model input size by default
    assert evaluate("small", "--map-size", "16")["map_size"] == 16


def test_recipes_evaluate_at_the_model_input_size_by_default(uncached):
    from training.config import Eval
    from training.evaluate import map_side

    root = Path(__file__).resolve().parents[1] / "training" / "configs"
    real = load_config(root / "mvtec_to_all.yaml", "out")
    assert Eval().map_size == 0 and map_side(real.eval.map_size, real.model.image_size) == 518
    assert uncached[0]["map_size"] == 48


def features_of(model: WMoECLIP, seed: int = 0):
    x = torch.randn(
        1, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model.encode(x)


def test_the_setting_changes_with_everything_that_changes_the_features(tmp_path):
    base = WMoECLIP(WMoEConfig.tiny())

    def setting(model, layers=None, dtype=torch.float32, storage="fp32") -> str:
        return FeatureCache(
            tmp_path, model.backbone, layers or model.config.layers, dtype, storage
        ).setting_id

    ref = setting(base)
    assert setting(WMoECLIP(WMoEConfig.tiny())) == ref  # same weights, another object
    others = [
        setting(WMoECLIP(WMoEConfig.tiny(seed=1))),  # other weights
        setting(WMoECLIP(WMoEConfig.tiny(image_size=56))),
        setting(base, layers=(1, 2)),
        setting(base, dtype=torch.bfloat16),
        setting(base, storage="fp16"),
    ]
    assert len({ref, *others}) == 6
    record = json.loads((tmp_path / ref / "setting.json").read_text())
    assert record["backbone_sha256"] == base.backbone.fingerprint() and record["layers"] == [1, 2, 3, 4]


def test_an_entry_round_trips_exactly_and_another_images_entry_is_refused(tmp_path):
    model = WMoECLIP(WMoEConfig.tiny())
    cache = FeatureCache(tmp_path, model.backbone, model.config.layers, torch.float32)
    feats = features_of(model)
    cache.store("ab" * 32, feats)
    back = cache.load("ab" * 32)
    assert torch.equal(back.embedding, feats.embedding) and back.layers == feats.layers
    assert all(torch.equal(back.patches[k], feats.patches[k]) for k in feats.layers)
    assert back.grid == feats.grid and back.image_size == feats.image_size
    assert cache.load("cd" * 32) is None and cache.stats.damaged == 0
    cache.path("cd" * 32).parent.mkdir()
    cache.path("cd" * 32).write_bytes(cache.path("ab" * 32).read_bytes())  # copied under another image's name
    assert cache.load("cd" * 32) is None and cache.stats.damaged == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_full_disk_is_reported_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    model = WMoECLIP(WMoEConfig.tiny())
    cache = FeatureCache(tmp_path, model.backbone, model.config.layers, torch.float32)

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fc, "save_file", full)
    with caplog.at_level(logging.WARNING, logger="wmoe.training"):
        cache.store("ab" * 32, features_of(model))
        cache.store("cd" * 32, features_of(model, 1))
    assert caplog.text.count("is full") == 1 and "continuing without caching" in caplog.text
    assert not cache.writable and cache.stats.written == 0
    assert not list(tmp_path.rglob("*.tmp")) and cache.load("ab" * 32) is None


def _writer(root: str, rounds: int):
    model = WMoECLIP(WMoEConfig.tiny())
    cache = FeatureCache(root, model.backbone, model.config.layers, torch.float32)
    feats = features_of(model)
    for _ in range(rounds):
        cache.store("ab" * 32, feats)


def test_concurrent_writers_never_expose_a_partial_entry(tmp_path):
    """Two processes rewrite one entry over and over (as torchrun ranks may) while this one reads it."""
    model = WMoECLIP(WMoEConfig.tiny())
    cache = FeatureCache(tmp_path, model.backbone, model.config.layers, torch.float32)
    expected = features_of(model)
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), 150)) for _ in range(2)]
    for w in writers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in writers) or seen == 0:
        got = cache.load("ab" * 32)
        if got is not None:
            seen += 1
            assert torch.equal(got.embedding, expected.embedding)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert seen > 0 and cache.stats.damaged == 0 and not list(tmp_path.rglob("*.tmp"))


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path):
    from training.feature_cache import FeatureCacheError

    model = WMoECLIP(WMoEConfig.tiny())
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(FeatureCacheError, match="feature cache .*file: cannot create"):
        FeatureCache(tmp_path / "file", model.backbone, model.config.layers, torch.float32)


def test_progress_bars_in_a_log_show_the_true_count_at_their_interval(data, tmp_path, capsys):
    """Written to a file or pipe (not a terminal), a bar prints its start and its end (and a line every
    LOG_INTERVAL seconds in between), not a line per batch with a stale count."""
    started = time.monotonic()
    run(data, tmp_path / "logged", tmp_path / "cache", progress=True)
    elapsed = time.monotonic() - started
    segments = [s.strip() for s in re.split(r"[\r\n]", capsys.readouterr().err) if s.strip()]
    bars = {
        "epoch 1/2": 4,
        "epoch 2/2": 4,
        "evaluate untrained on heldout": 8,
        "evaluate trained on heldout": 8,
    }
    for desc, total in bars.items():
        lines = [s for s in segments if s.startswith(desc)]
        assert 1 <= len(lines) <= 2 + elapsed // LOG_INTERVAL, lines
        assert f"{total}/{total}" in lines[-1], lines
    assert "loss=" in [s for s in segments if s.startswith("epoch 1/2")][-1]  # shown at the bar's redraws
