"""The frozen open_clip backbone: weights resolved by name, patch tokens tapped at several layers.

paper: a frozen CLIP. ours: taps at the configured blocks, each passed through ln_post and the
visual projection into the joint space (the AnomalyCLIP convention); text tower run on embeddings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from safetensors import safe_open
from torch import nn

from .config import ConfigError, WMoEConfig
from .errors import WMoEError
from .hub import WeightsNotFoundError, cached_or_download

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers wmoe-tiny with open_clip's factory
HUB_WEIGHT_FILES = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
WEIGHTS_ENV = "WMOE_BACKBONE_WEIGHTS"  # a local weights file for the main backbone


def resolve_backbone_weights(config: WMoEConfig, env: str = WEIGHTS_ENV) -> tuple[str | None, bool]:
    """(weights file or None for random weights, whether the tag needs QuickGELU); `env` names the variable
    that can point at a local weights file (another backbone, such as WinCLIP's, has its own)."""
    local = config.backbone_weights or os.environ.get(env)
    if local:
        if not Path(local).is_file():
            raise WeightsNotFoundError(
                f"backbone weights file {local} (from the config's backbone_weights or {env}) does not exist"
            )
        pcfg = open_clip.get_pretrained_cfg(config.backbone, config.pretrained or "") or {}
        return local, bool(pcfg.get("quick_gelu", False))
    if config.pretrained is None:
        return None, False
    pcfg = open_clip.get_pretrained_cfg(config.backbone, config.pretrained)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(config.backbone)
        raise ConfigError(
            f"open_clip has no pretrained tag {config.pretrained!r} for {config.backbone}; known: {tags}"
        )
    quick_gelu = bool(pcfg.get("quick_gelu", False))
    if "hf_hub" not in pcfg:
        raise ConfigError(
            f"{config.backbone}/{config.pretrained} has no Hugging Face Hub entry in open_clip; "
            f"download its weights and name the file in {env}"
        )
    repo_id, filename = os.path.split(pcfg["hf_hub"])  # "org/name/" means open_clip's default file names
    files = [filename] if filename else HUB_WEIGHT_FILES
    fix = (
        f"Supply the {config.backbone} '{config.pretrained}' weights: run once with network access "
        f"(`hf download {repo_id} {files[0]}`), or set {env} to a local open_clip weights file."
    )
    return cached_or_download(repo_id, files, how_to_fix=fix), quick_gelu


def backbone_source(config: WMoEConfig, env: str = WEIGHTS_ENV) -> tuple:
    """What a config's backbone is made of: (open_clip name, input size, pretrained tag, weights file,
    the weights variable `env`). Two configs with the same source and named weights (a tag or a file) get the
    same backbone; random weights (pretrained and weights file both None) travel in the checkpoint and
    are compared tensor by tensor (`wmoe.checkpoint.load_model`)."""
    return (
        config.backbone,
        config.image_size,
        config.pretrained,
        config.backbone_weights,
        os.environ.get(env),
    )


@contextmanager
def seeded(seed: int):
    """Random initialisation from `seed`, leaving the caller's global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def no_mha_fastpath():
    """Attention through scaled_dot_product_attention instead of nn.MultiheadAttention's fast path.

    In fp32 inference the fast path materialises every attention matrix (16 x 1370^2 floats per
    ViT-L-14 layer at 518 px): twice the transient memory of the fused kernel, and slower on CPU.
    Results agree to ~1e-6. (Under autocast PyTorch already takes this path.)
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def read_weights(clip: nn.Module, path: str, name: str):
    """Fill a built open_clip model from a weights file, one tensor at a time where the file allows.

    open_clip's loader reads the whole file beside the built model, so the weights sit in memory
    twice while loading (ViT-L-14-336: 4.2 GB peak RSS instead of 2.6 GB). Files in torch's own format
    are read by `load_tensors` (never unpickling anything but tensors); files in another key layout,
    which open_clip converts, still go through open_clip's loader, with `weights_only=True`.
    """
    own = clip.state_dict()
    if str(path).endswith(".safetensors"):
        with safe_open(path, framework="pt", backend="pread") as f:  # pread: no file pages kept mapped
            if set(f.keys()) == set(own):
                for key in f.keys():
                    copy_weight(clip, own, key, f.get_tensor(key), path, name)
                return
    else:
        state = load_tensors(path)
        if set(state) == set(own):
            for key in list(state):
                copy_weight(clip, own, key, state.pop(key), path, name)
            return
        del state
    open_clip.load_checkpoint(clip, path, weights_only=True)


def copy_weight(clip: nn.Module, own: dict, key: str, tensor: torch.Tensor, path: str, name: str):
    entry = {key: tensor}
    resize_pos_embed(entry, clip)  # weights made at another resolution (336 -> 518 px)
    resize_text_pos_embed(entry, clip)
    tensor, target = entry[key], own[key]
    if tensor.numel() != target.numel():
        raise ConfigError(
            f"backbone weights {path}: {key} has shape {tuple(tensor.shape)}, "
            f"{name} needs {tuple(target.shape)}; are they weights of {name}?"
        )
    target.copy_(tensor.reshape(target.shape))


def load_tensors(path: str) -> dict:
    """A weights file in torch's format (`.bin`, `.pt`), through `torch.load(weights_only=True)`: tensors and
    plain containers only. A pickle that would build any other object (how a pickle runs code) is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1][:200]
        raise UnsafeWeightsError(
            f"backbone weights {path}: refused, the file holds more than tensors ({reason}); "
            "use a safetensors file or a plain state dict"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ConfigError(f"backbone weights {path}: not a readable weights file ({e})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"backbone weights {path}: holds a {type(state).__name__}, not a state dict")
    return state


def settings(module: nn.Module) -> str:
    """Each submodule's name, class and plain attributes (numbers, text, tuples; not the weights): what
    changes a module's output besides its weights. The module repr alone misses some (attention heads).
    Train mode and gradient checkpointing are left out: they do not change a frozen backbone's features."""
    plain = (bool, int, float, str, tuple, list, dict, type(None))
    ignored = {"training", "grad_checkpointing"}
    lines = []
    for name, m in module.named_modules():
        fields = {
            k: v
            for k, v in sorted(vars(m).items())
            if k[0] != "_" and k not in ignored and isinstance(v, plain)
        }
        lines.append(f"{name}: {type(m).__module__}.{type(m).__qualname__} {fields!r}")
    return "\n".join(lines)


class UnsafeWeightsError(WMoEError, ValueError):
    """A weights file whose unpickling would run code or build arbitrary objects."""


class BackboneInUseError(WMoEError, ValueError):
    """A backbone already serving detectors on one device, asked for by a detector on another."""


class Backbone(nn.Module):
    """Frozen open_clip CLIP; `encode_image` gives the global embedding and per-layer patch tokens."""

    def __init__(self, config: WMoEConfig, load_weights: bool = True, weights_env: str = WEIGHTS_ENV):
        super().__init__()
        weights, quick_gelu = resolve_backbone_weights(config, weights_env) if load_weights else (None, False)
        if config.backbone not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip backbone {config.backbone!r}; see open_clip.list_models()")
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights" for random backbones
        try:  # random weights first (from config.seed); the file (if any) is read into them by read_weights
            with seeded(config.seed):
                self.clip = open_clip.create_model(
                    config.backbone,
                    pretrained=None,
                    force_image_size=config.image_size,
                    force_quick_gelu=quick_gelu,
                )
        finally:
            quiet.setLevel(level)
        if weights:
            read_weights(self.clip, weights, config.backbone)
        self.tokenizer = open_clip.get_tokenizer(config.backbone)
        self.clip.requires_grad_(False)
        self.clip.eval()
        visual = self.clip.visual
        depth = len(visual.transformer.resblocks)
        if max(config.layers) > depth:
            raise ConfigError(f"layers {config.layers} exceed the {depth} blocks of {config.backbone}")
        self.name, self.image_size, self.depth = config.backbone, config.image_size, depth
        self.layers = config.layers
        self.grid = tuple(visual.grid_size)
        self.embed_dim = self.clip.text_projection.shape[-1]
        self.text_width = self.clip.token_embedding.weight.shape[-1]
        self.context_length = self.clip.context_length
        self.mean = tuple(visual.preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(visual.preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self._fingerprint: str | None = None
        self.source = backbone_source(config, weights_env)
        self.serving: torch.device | None = None  # the device a Detector runs this backbone on (`claim`)

    def train(self, mode: bool = True):
        """The backbone is frozen: it stays in eval mode whatever the parent does."""
        return super().train(False)

    def claim(self, device: str | torch.device) -> None:
        """Reserve this backbone for detectors on `device` (called by `Detector` before placing its model).

        A backbone shared by detectors (`share=`, `backbone=`) is one object: moving it for a detector on
        another device would break the detectors already using it. So the first detector fixes the device,
        and a detector on another device gets BackboneInUseError (load it without `share=` for its own copy).
        """
        device = torch.empty(0, device=device).device  # "cuda" and "cuda:0" name one device
        if self.serving is not None and self.serving != device:
            raise BackboneInUseError(
                f"this {self.name} backbone serves detectors on {self.serving}; a detector on {device} "
                "cannot share it (moving it would break them): load that detector without share= or "
                "backbone= to give it its own copy, or put both on one device"
            )
        self.serving = device

    def encode_image(
        self, images: torch.Tensor, layers: Sequence[int] | None = None, raw: Sequence[int] = ()
    ) -> tuple:
        """(global embedding (B, D), [patch tokens (B, N, D) per tapped layer]) in the joint space.

        layers: 1-based blocks to tap, in this order; the configured ones by default (none: with `raw` only).
        raw: 1-based blocks whose raw outputs are also wanted, from the same pass: then a third item,
        [(B, N, W) per block in this order], the block outputs before `ln_post` and the projection, class
        token dropped (what MuSc scores, `wmoe.musc`). Only these are kept, so the default costs nothing.
        """
        layers = self.layers if layers is None else tuple(int(k) for k in layers)
        raw = tuple(int(k) for k in raw)
        wanted = sorted(set(layers) | set(raw))
        if not wanted or min(wanted) < 1 or max(wanted) > self.depth:  # no taps is fine when raw is given
            raise ConfigError(f"layers {list(wanted)} are not blocks 1..{self.depth} of {self.name}")
        visual = self.clip.visual
        with no_mha_fastpath():
            out = visual.forward_intermediates(images, indices=[k - 1 for k in wanted], output_fmt="NLC")
        blocks = dict(zip(wanted, out["image_intermediates"], strict=True))
        taps = [visual.ln_post(blocks[k]) @ visual.proj for k in layers]
        if not raw:
            return out["image_features"], taps
        return out["image_features"], taps, [blocks[k] for k in raw]

    def fingerprint(self) -> str:
        """A hash of everything in the image tower that shapes its features; computed once, then kept.

        The weights (names, shapes, dtypes, bytes), each module's class and plain settings (`settings`:
        activation, e.g. QuickGELU from the pretrained tag, heads, norm eps, dropout, pooling, input and
        patch size) and the normalisation. Two backbones with the same fingerprint compute the same image
        features, whatever object or file they came from (a random backbone is identified by its weights).
        The tapped layers are not in it: they are chosen per request, and checked beside the features.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(f"{settings(self.clip.visual)}\nmean={self.mean} std={self.std}\n".encode())
            for key, tensor in self.clip.visual.state_dict().items():
                digest.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
                digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings for token ids (S, T)."""
        return self.clip.token_embedding(ids) + self.clip.positional_embedding[: ids.shape[1]]

    def encode_text_embeddings(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Text tower on embeddings (S, T, W); features at the end-of-text positions eot (S,) -> (S, D).

        T may be shorter than the context length: the causal mask means tokens after the
        end-of-text token never change its output, so we run only up to the longest prompt.
        Autocast is off here: on a few dozen tokens the tower is bound by reading its weights, and
        autocast would re-cast every weight on every call (6x slower in bf16 on CPU than fp32).
        """
        T, dtype = x.shape[1], self.clip.text_projection.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = self.clip.transformer(x.to(dtype), attn_mask=self.clip.attn_mask[:T, :T])
            x = self.clip.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), eot]
            return x @ self.clip.text_projection

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Plain CLIP text features for a list of strings (tests, WinCLIP's prompt ensemble); the tower runs
        only up to the longest string's end-of-text token (see `encode_text_embeddings`)."""
        ids = self.tokenizer(texts).to(self.clip.token_embedding.weight.device)
        eot = ids.argmax(dim=-1)
        return self.encode_text_embeddings(self.embed_tokens(ids[:, : int(eot.max()) + 1]), eot)
