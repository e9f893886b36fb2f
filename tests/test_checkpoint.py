"""Checkpoints: round trip, Hub cache offline, fast clear errors, broken files."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from hubcache import populate_hub_cache
from safetensors.torch import load_file, save_file

from wmoe import (
    CheckpointError,
    ConfigError,
    Detector,
    WeightsNotFoundError,
    WMoECLIP,
    WMoEConfig,
    load_model,
    save_pretrained,
)
from wmoe.backbone import resolve_backbone_weights

REPO = Path(__file__).resolve().parents[1]


def test_save_load_gives_identical_predictions(tiny_checkpoint, tmp_path):
    first = Detector.from_pretrained(tiny_checkpoint)
    image = np.random.default_rng(0).random((40, 70, 3))
    a = first.predict(image, "bottle")
    first.save_pretrained(tmp_path / "again")
    b = Detector.from_pretrained(tmp_path / "again").predict(image, "bottle")
    assert a.score == b.score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    np.testing.assert_array_equal(a.expert_weights, b.expert_weights)


def test_checkpoint_files(tiny_checkpoint):
    names = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    payload = json.loads((tiny_checkpoint / "config.json").read_text())
    assert payload["wmoe_format"] == 1 and payload["config"]["backbone"] == "wmoe-tiny"
    assert payload["info"]["trained"] is False
    assert "UNTRAINED" in (tiny_checkpoint / "README.md").read_text()
    state = load_file(tiny_checkpoint / "model.safetensors")
    assert any(k.startswith("backbone.") for k in state)  # a random backbone travels with the heads


def test_named_backbone_is_not_saved(tmp_path, monkeypatch):
    """With a backbone loadable by name (here a local weights file), only the heads are written."""
    model = WMoECLIP(WMoEConfig.tiny())
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.clip.state_dict().items()}, weights)
    named = WMoECLIP(WMoEConfig.tiny(backbone_weights=str(weights), seed=5))
    for k, v in model.backbone.clip.state_dict().items():  # loaded from the file, not the seed-5 random init
        assert torch.equal(v, named.backbone.clip.state_dict()[k]), k
    save_pretrained(named, tmp_path / "ckpt")
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert state and not any(k.startswith("backbone.") for k in state)
    assert set(state) == set(named.head_parameters())
    loaded, _ = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded.backbone.clip.visual.proj, model.backbone.clip.visual.proj)


def test_backbone_weights_env_and_resized_positions(tmp_path, monkeypatch):
    """WMOE_BACKBONE_WEIGHTS names a file; a different image size resizes the position embedding."""
    model = WMoECLIP(WMoEConfig.tiny())
    weights = tmp_path / "bb.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.clip.state_dict().items()}, weights)
    monkeypatch.setenv("WMOE_BACKBONE_WEIGHTS", str(weights))
    bigger = WMoECLIP(WMoEConfig.tiny(pretrained="openai", image_size=120))
    assert bigger.backbone.grid == (15, 15)
    assert torch.equal(bigger.backbone.clip.visual.proj, model.backbone.clip.visual.proj)


def test_hub_repo_id_from_cache_offline(tiny_checkpoint, tmp_path):
    """A Hub repo id resolves from a populated HF_HOME cache with HF_HUB_OFFLINE=1 (fresh process)."""
    files = {p.name: p for p in tiny_checkpoint.iterdir()}
    populate_hub_cache(tmp_path / "hf" / "hub", "someone/wmoe-tiny", files)
    code = (
        "from wmoe import Detector; import numpy as np; d = Detector.from_pretrained('someone/wmoe-tiny');"
        "print(round(d.predict(np.zeros((8, 8, 3)), 'x').score, 6))"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    expected = Detector.from_pretrained(tiny_checkpoint).predict(np.zeros((8, 8, 3)), "x").score
    assert float(out.stdout.strip()) == pytest.approx(expected, abs=1e-6)


def test_missing_repo_offline_is_fast_and_clear():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="not in the local Hub cache and HF_HUB_OFFLINE"):
        Detector.from_pretrained("nobody/not-cached")
    assert time.perf_counter() - start < 5


def test_missing_backbone_weights_offline_is_fast_and_clear():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_backbone_weights(WMoEConfig())
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert (
        "timm/vit_large_patch14_clip_336.openai" in msg
        and "WMOE_BACKBONE_WEIGHTS" in msg
        and "HF_HUB_OFFLINE" in msg
    )


def test_unreachable_hub_fails_within_5_seconds(monkeypatch):
    """Not marked offline but no Hub: the probe answers fast instead of a ~45 s hang."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="unreachable"):
        resolve_backbone_weights(WMoEConfig())
    assert time.perf_counter() - start < 5


def test_backbone_from_hub_cache(tmp_path, monkeypatch):
    """A pretrained tag resolves through the Hub cache to a file open_clip loads."""
    import open_clip

    model = WMoECLIP(WMoEConfig.tiny())
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.clip.state_dict().items()}, weights)
    populate_hub_cache(tmp_path / "hub", "org/tiny-clip", {"open_clip_model.safetensors": weights})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"hf_hub": "org/tiny-clip/"})
    path, _ = resolve_backbone_weights(WMoEConfig.tiny(pretrained="sometag"))
    assert Path(path).read_bytes() == weights.read_bytes()
    loaded = WMoECLIP(WMoEConfig.tiny(pretrained="sometag", seed=3))
    assert torch.equal(loaded.backbone.clip.visual.proj, model.backbone.clip.visual.proj)


def test_unknown_pretrained_tag():
    with pytest.raises(ConfigError, match="no pretrained tag"):
        resolve_backbone_weights(WMoEConfig(pretrained="no-such-tag"))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_truncated_weights_name_the_file(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors"):
        load_model(bad)


def test_config_with_unknown_and_missing_fields(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    payload = json.loads((bad / "config.json").read_text())
    del payload["config"]["num_experts"]
    payload["config"]["wavelet_levels"] = 3
    (bad / "config.json").write_text(json.dumps(payload))
    with pytest.raises(
        ConfigError,
        match=r"config.json: unknown fields \['wavelet_levels'\] and missing fields \['num_experts'\]",
    ):
        load_model(bad)


def test_shapes_that_do_not_match_the_config(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    payload = json.loads((bad / "config.json").read_text())
    payload["config"]["num_experts"] = 6
    (bad / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"does not match .*config.json.*moe\.\S+ has shape"):
        load_model(bad)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        load_model(tmp_path / "nope" / "deeper")


def test_checkpoint_for_another_backbone(tiny_checkpoint, tmp_path):
    """Weights made for one backbone, a config naming another: the message names both sides."""
    import open_clip

    cfg = json.loads((Path(__file__).resolve().parents[1] / "wmoe/model_configs/wmoe-tiny.json").read_text())
    cfg["embed_dim"] = 32
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "wmoe-tiny-narrow.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "configs")
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    payload = json.loads((bad / "config.json").read_text())
    payload["config"]["backbone"] = "wmoe-tiny-narrow"
    (bad / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"backbone wmoe-tiny-narrow.*has shape"):
        load_model(bad)


def test_save_is_atomic(tiny_checkpoint, tmp_path, monkeypatch):
    """A failure while writing (disk full) leaves the previous checkpoint files intact and loadable."""
    import wmoe.checkpoint as ck

    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    before = (folder / "model.safetensors").read_bytes()
    model, _ = load_model(folder)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(model, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    load_model(folder)


def test_no_code_path_unpickles():
    """Every torch.load passes weights_only=True; no pickle module anywhere in our code."""
    root = Path(__file__).resolve().parents[1]
    sources = [
        p for p in root.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    for path in sources:
        if path.name == "test_checkpoint.py":
            continue
        text = path.read_text()
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
        assert "import pickle" not in text and "pickle.load" not in text, path


def test_push_to_hub_function_and_method_upload_one_saved_folder(tiny_checkpoint, monkeypatch):
    """One spelling: `wmoe.push_to_hub(model, repo_id, ...)` and `Detector.push_to_hub(repo_id, ...)`."""
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            uploads.append({"repo": repo_id, "private": private, "token": self.token})

        def upload_folder(self, folder_path, repo_id, commit_message):
            uploads[-1]["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploads[-1]["info"] = json.loads((Path(folder_path) / "config.json").read_text())["info"]
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    from wmoe import push_to_hub

    detector = Detector.from_pretrained(tiny_checkpoint)
    assert push_to_hub(detector.model, "org/a", {"note": "x"}, private=True, token="t").endswith(
        "org/a/commit/1"
    )
    assert detector.push_to_hub("org/b", {"note": "y"}).endswith("org/b/commit/1")
    assert [u["repo"] for u in uploads] == ["org/a", "org/b"]
    assert uploads[0]["private"] and uploads[0]["token"] == "t" and not uploads[1]["private"]
    for u, note in zip(uploads, "xy", strict=True):
        assert u["files"] == ["README.md", "config.json", "model.safetensors"] and u["info"]["note"] == note
