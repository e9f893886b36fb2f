"""Checkpoints: round trip, Hub cache offline, fast clear errors, broken files."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from support.helpers import randomize_heads
from support.hubcache import populate_hub_cache

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
from wmoe.backbone import UnsafeWeightsError, resolve_backbone_weights

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


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that listens but never accepts: connections open, no answer ever comes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


UNREACHABLE = """
import sys, time
from wmoe import Detector, WMoEConfig
from wmoe.backbone import resolve_backbone_weights
for what, load in [("backbone", lambda: resolve_backbone_weights(WMoEConfig())),
                   ("checkpoint", lambda: Detector.from_pretrained("org/name"))]:
    start = time.perf_counter()
    try:
        load()
        print(what, "loaded?!")
    except Exception as e:
        print(what, f"{time.perf_counter() - start:.2f}", type(e).__name__, str(e).replace(chr(10), " "))
"""


@pytest.mark.parametrize("kind", ["refused", "silent", "unroutable"])
def test_an_unreachable_hub_fails_within_5_seconds(tmp_path, silent_server, kind):
    """Not marked offline, nothing cached, and no Hub, for the backbone weights and for a checkpoint repo id:
    a refused connection (the discard port on loopback), a server that accepts and never answers, an
    unroutable address (a connect that never completes): a clear error within 5 s, never a ~45 s hang.
    In a fresh process with HF_ENDPOINT set, so nothing is sent anywhere but that address."""
    endpoint = {"refused": "http://127.0.0.1:9", "silent": silent_server, "unroutable": "http://10.255.255.1"}
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint[kind],
        "HF_HUB_CACHE": str(tmp_path),
        "HF_HOME": str(tmp_path),
    }
    env.pop("HF_HUB_OFFLINE")
    out = subprocess.run(
        [sys.executable, "-c", UNREACHABLE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {"backbone", "checkpoint"}, out.stdout + out.stderr
    for what, line in lines.items():
        seconds, error, message = line.split(" ", 2)
        print(what, kind, seconds, error, message[:160])
        assert float(seconds) < 5 and error == "WeightsNotFoundError", (what, line)
        if kind != "unroutable":  # a network box on the way may answer for any address
            assert "is unreachable from this machine" in message, (what, line)


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


@pytest.mark.parametrize("failing", ["model.safetensors", "config.json", "README.md", "rename"])
def test_a_failed_save_leaves_the_previous_checkpoint_as_it_was(
    tiny_checkpoint, tmp_path, monkeypatch, failing
):
    """Each write of a save failing in turn (disk full), or the first rename: the previous checkpoint's
    three files are byte for byte as they were, nothing half-written is left, and it loads and predicts
    as before (new weights beside the old config would not)."""
    import wmoe.checkpoint as ck

    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    image = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    score = Detector.from_pretrained(folder).predict(image, "x").score
    other = randomize_heads(WMoECLIP(WMoEConfig.tiny(use_ctds=False)), seed=3)  # a different model

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "model.safetensors":
        monkeypatch.setattr(ck, "save_file", disk_full)
    elif failing == "rename":
        monkeypatch.setattr(ck.os, "replace", disk_full)
    else:
        write_text = Path.write_text
        monkeypatch.setattr(
            Path,
            "write_text",
            lambda p, *a, **k: disk_full() if failing in p.name else write_text(p, *a, **k),
        )
    with pytest.raises(OSError, match="No space"):
        save_pretrained(other, folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert Detector.from_pretrained(folder).predict(image, "x").score == pytest.approx(score, abs=1e-7)
    save_pretrained(other, folder)  # and the next save works
    assert not Detector.from_pretrained(folder).config.use_ctds


class RunsCode:
    """Unpickled, this object runs code: it writes the file named in `marker` (how a malicious .bin works)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def test_a_backbone_weights_file_that_runs_code_is_refused(tmp_path):
    """`.bin`/`.pt` backbone files go through `torch.load(weights_only=True)`: a pickle that would run code
    is refused with a clear error, and the code never runs (it really would with weights_only=False)."""
    model = WMoECLIP(WMoEConfig.tiny())
    state = dict(model.backbone.clip.state_dict())
    marker, proof = tmp_path / "ran.txt", tmp_path / "proof.txt"
    evil = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({**state, "payload": RunsCode(marker)}, evil)
    torch.save(RunsCode(proof), tmp_path / "proof.bin")
    torch.load(tmp_path / "proof.bin", weights_only=False)  # the fixture is really malicious
    assert proof.read_text() == "code ran"
    for weights in (evil, tmp_path / "proof.bin"):
        with pytest.raises(UnsafeWeightsError, match="refused, the file holds more than tensors"):
            WMoECLIP(WMoEConfig.tiny(backbone_weights=str(weights)))
        assert not marker.exists()


def test_a_plain_state_dict_bin_loads_tensor_by_tensor(tmp_path, monkeypatch):
    """A `.bin` holding a plain state dict in open_clip's layout loads exactly, without open_clip's loader."""
    import open_clip

    model = WMoECLIP(WMoEConfig.tiny(seed=5))
    weights = tmp_path / "weights.bin"
    torch.save(model.backbone.clip.state_dict(), weights)
    monkeypatch.setattr(open_clip, "load_checkpoint", lambda *a, **k: pytest.fail("open_clip's loader used"))
    loaded = WMoECLIP(WMoEConfig.tiny(backbone_weights=str(weights)))
    for key, value in model.backbone.clip.state_dict().items():
        assert torch.equal(loaded.backbone.clip.state_dict()[key], value), key


def test_every_torch_load_passes_weights_only():
    """The one rule, checked where it can break: each torch.load (and open_clip's loader) in our code passes
    weights_only=True explicitly, and nothing calls pickle's loaders."""
    sources = [p for p in REPO.rglob("*.py") if not any(x.startswith(".") for x in p.relative_to(REPO).parts)]
    calls = 0
    for path in sources:
        if path.parent.name == "tests":
            continue
        text = path.read_text()
        for line in text.splitlines():
            if re.search(r"\b(torch\.load|load_checkpoint)\(", line) and not line.lstrip().startswith(
                ('"', "#")
            ):
                calls += 1
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
        assert "pickle.load" not in text and "pickle.Unpickler" not in text, path
    assert calls >= 2  # wmoe.backbone: load_tensors and the open_clip fallback


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


def test_checkpoints_with_one_folder_name_get_distinct_names_without_a_server_path(tmp_path):
    from wmoe.checkpoint import display_names

    x, y, deep = (
        str(tmp_path / "x" / "ckpt"),
        str(tmp_path / "y" / "ckpt"),
        str(tmp_path / "a" / "x" / "ckpt"),
    )
    assert display_names([x, y]) == ["x/ckpt", "y/ckpt"]
    assert display_names([x, str(tmp_path / "solo")]) == ["ckpt", "solo"]  # no clash: the folder alone
    assert display_names([x, y, deep]) == [f"{tmp_path.name}/x/ckpt", "y/ckpt", "a/x/ckpt"]
    assert display_names([x, x, "org/model"]) == ["ckpt", "ckpt (2)", "org/model"]  # a repo id as is
    hub_and_folders = [
        "org/model",
        str(tmp_path / "p" / "org" / "model"),
        str(tmp_path / "q" / "org" / "model"),
    ]
    assert display_names(hub_and_folders) == ["org/model", "p/org/model", "q/org/model"]
    names = display_names([x, y, deep, x, "org/model", "/"])
    assert len(set(names)) == len(names) and not any(n.startswith("/") or str(tmp_path) in n for n in names)
