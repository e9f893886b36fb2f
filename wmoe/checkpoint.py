"""Checkpoints: config.json + model.safetensors (+ a model card), from a folder or the Hub.

Only the learned heads are saved; the backbone is resolved by name through open_clip, except a
random backbone (tiny test configs), whose weights are saved too. Never pickle.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePath

import huggingface_hub
import torch
from huggingface_hub import snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import Backbone, backbone_source
from .config import CONFIG_NAME, ConfigError, WMoEConfig
from .errors import WMoEError
from .hub import WeightsNotFoundError, unavailable_reason
from .model import WMoECLIP

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class CheckpointError(WMoEError, ValueError):
    """A checkpoint folder or file that cannot be loaded; the message names the file and the problem."""


def includes_backbone(config: WMoEConfig) -> bool:
    """A backbone that cannot be loaded by name (random weights) travels inside the checkpoint."""
    return config.pretrained is None and config.backbone_weights is None


def save_pretrained(model: WMoECLIP, directory: str | Path, info: dict | None = None) -> Path:
    """Write config.json, model.safetensors and README.md into `directory` (created if needed).

    All three are written to temporary files first and renamed into place only once every write has
    succeeded: a save that fails (a full disk) leaves the previous checkpoint's files as they were.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {n: p.detach() for n, p in model.head_parameters().items()}
    if includes_backbone(config):
        state.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    state = {k: v.to("cpu", torch.float32).contiguous() for k, v in state.items()}
    info = {
        "trained": False,
        **(info or {}),
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    writes = [
        (WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt", "wmoe_format": "1"})),
        (CONFIG_NAME, lambda tmp: tmp.write_text(config.to_json(info))),
        (CARD_NAME, lambda tmp: tmp.write_text(model_card(config, info))),
    ]
    staged = []
    try:
        for name, write in writes:
            staged.append((directory / f".{name}.{os.getpid()}.tmp", directory / name))
            write(staged[-1][0])
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return directory


def model_card(config: WMoEConfig, info: dict) -> str:
    trained = (
        "trained"
        if info.get("trained")
        else "UNTRAINED (random heads: for tests and demos of the plumbing only)"
    )
    modules = (
        ", ".join(
            m
            for m, on in [
                ("CTDS", config.use_ctds),
                ("WCMA", config.use_wcma),
                ("SA-MoE", config.use_moe),
                ("patch projection", config.use_projection),
            ]
            if on
        )
        or "none"
    )
    return f"""---
library_name: wmoe
tags: [anomaly-detection, zero-shot, clip, mixture-of-experts]
---
# WMoE-CLIP checkpoint

Zero-shot anomaly detection (WMoE-CLIP: wavelet-enhanced mixture-of-experts prompt learning).
Status: {trained}.

- Backbone: open_clip `{config.backbone}` ({config.pretrained or "random weights, stored here"}), {config.image_size} px, layers {list(config.layers)}
- Modules: {modules}; {config.num_experts} experts
- Training: {json.dumps({k: v for k, v in info.items() if k != "saved"})}

```python
from wmoe import Detector
detector = Detector.from_pretrained("path/or/repo-id")
prediction = detector.predict("image.png", class_name="bottle")
```
"""


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; an `org/name` repo id through the Hub cache (offline-aware, never hangs)."""
    path = Path(path_or_repo_id)
    if path.exists():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: no {CONFIG_NAME} there; is it a WMoE-CLIP checkpoint folder?")
        return path
    repo_id = str(path_or_repo_id)
    if not REPO_ID.match(repo_id):
        raise CheckpointError(f"{repo_id}: no such folder, and not a Hub repo id of the form 'org/name'")
    patterns = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
        )
    except Exception:  # not cached (or not this revision): go online if we can
        pass
    name = f"checkpoint {repo_id}{'@' + revision if revision else ''}"
    reason = unavailable_reason()
    if reason:
        raise WeightsNotFoundError(
            f"{name} is not in the local Hub cache and {reason}; download it once with network access "
            "or pass a local folder"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (
        huggingface_hub.errors.HfHubHTTPError,
        huggingface_hub.errors.LocalEntryNotFoundError,
        OSError,
    ) as e:
        why = str(e).strip().splitlines()[0][:200]
        raise WeightsNotFoundError(
            f"{name} is not in the local Hub cache and could not be downloaded ({why})"
        ) from e


def load_model(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    backbone: Backbone | None = None,
    *,
    share: Sequence[Backbone] = (),
) -> tuple[WMoECLIP, dict]:
    """Build the model described by a checkpoint and load its weights; returns (model, info).

    Args:
        path_or_repo_id: a checkpoint folder or a Hub repo id.
        revision: a Hub revision (branch, tag or commit).
        backbone: use this backbone; CheckpointError unless it is the checkpoint's own (`serves`).
        share: backbones already loaded: the first that is the checkpoint's own is used (no second copy
            in memory), and only when none is, the checkpoint's backbone is loaded.
    """
    directory = resolve_checkpoint(path_or_repo_id, revision)
    config, info = WMoEConfig.load(directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    candidates = [backbone] if backbone is not None else list(share)
    chosen = next((b for b in candidates if serves(b, config, state)), None)
    if backbone is not None and chosen is None:
        raise CheckpointError(
            f"{directory / CONFIG_NAME}: its backbone ({config.backbone} at {config.image_size} px, "
            f"weights {config.pretrained or config.backbone_weights or 'stored in the checkpoint'}) is not "
            "the one given"
        )
    backbone = chosen
    if backbone is not None:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    model = WMoECLIP(config, backbone=backbone, load_backbone_weights=not includes_backbone(config))
    expected = {n: p.shape for n, p in model.head_parameters().items()}
    if includes_backbone(config) and backbone is None:
        expected.update({f"backbone.{k}": v.shape for k, v in model.backbone.state_dict().items()})
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_few(unexpected)}")
    for name in sorted(set(expected) & set(state)):
        if tuple(state[name].shape) != tuple(expected[name]):
            problems.append(
                f"{name} has shape {tuple(state[name].shape)}, the config needs {tuple(expected[name])}"
            )
    if problems:
        raise CheckpointError(
            f"{weights} does not match {directory / CONFIG_NAME} "
            f"(backbone {config.backbone}): " + "; ".join(problems[:5])
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model, info


def serves(backbone: Backbone, config: WMoEConfig, state: dict[str, torch.Tensor]) -> bool:
    """Whether `backbone` is the one a checkpoint (its config and saved tensors) describes: the same
    source (`backbone_source`), and for random weights saved in the checkpoint, the same tensors."""
    if backbone.source != backbone_source(config):
        return False
    if not includes_backbone(config):
        return True
    own = backbone.state_dict()
    stored = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return set(stored) == set(own) and all(
        stored[k].shape == v.shape and torch.equal(stored[k], v.detach().to("cpu", torch.float32))
        for k, v in own.items()
    )


def push_to_hub(
    model: WMoECLIP,
    repo_id: str,
    info: dict | None = None,
    *,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Save `model` as `save_pretrained` does and publish it as a Hub model repo; returns the commit URL."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, info)
        return upload_checkpoint(tmp, repo_id, private=private, token=token)


def upload_checkpoint(
    directory: str | Path, repo_id: str, *, private: bool = False, token: str | None = None
) -> str:
    """Publish a checkpoint folder already saved by `save_pretrained`; returns the commit URL."""
    from huggingface_hub import HfApi

    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; save the model with save_pretrained first")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(
        api.upload_folder(
            folder_path=str(directory), repo_id=repo_id, commit_message="Upload WMoE-CLIP checkpoint"
        )
    )


def display_names(checkpoints: Sequence[str]) -> list[str]:
    """Distinct names for checkpoints shown side by side (a menu, JSON, CSV), never an absolute path.

    An absolute path (a local folder) is named by its folder, or, where two names clash, by the shortest
    run of parent folders that tells them apart (`x/ckpt`, `y/ckpt`); anything else (a Hub repo id) by
    itself. A checkpoint listed twice gets ` (2)`, ` (3)`... in order.
    """
    unique = list(dict.fromkeys(str(c) for c in checkpoints))
    parts = [PurePath(c).parts[1:] if PurePath(c).is_absolute() else None for c in unique]
    depth = [1] * len(unique)

    def name(i: int) -> str:
        return unique[i] if parts[i] is None else "/".join(parts[i][-depth[i] :]) or "checkpoint"

    while True:
        names = [name(i) for i in range(len(unique))]
        deeper = [
            i
            for i, n in enumerate(names)
            if names.count(n) > 1 and parts[i] is not None and depth[i] < len(parts[i])
        ]
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    named = dict(zip(unique, names, strict=True))
    seen: dict[str, int] = {}
    out = []
    for c in checkpoints:
        n = named[str(c)]
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _few(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "display_names",
    "load_model",
    "push_to_hub",
    "resolve_checkpoint",
    "save_pretrained",
    "serves",
    "upload_checkpoint",
]
