"""Detector: the one way to get predictions. Model built once; images in, `Prediction`s out."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .checkpoint import load_model, push_to_hub, save_pretrained
from .config import DEFAULT_CLASS, WMoEConfig
from .errors import ArgumentError
from .features import BackboneFeatures, FeatureMismatchError
from .model import WMoECLIP
from .precision import autocast, dtype_name, resolve_dtype
from .preprocess import ImageInput, load_image, to_tensor
from .references import CACHE as REFERENCES
from .references import (
    ReferenceFeatures,
    bank,
    combine,
    content_key,
    load_references,
    method_name,
    reference_map,
)

DETAIL_SIDE = 1024  # the layer, expert and uncertainty maps come back at most this size (long side)


@dataclass
class Prediction:
    """What the model says about one image; float32 maps. The anomaly, zero-shot and reference maps are at
    the image's own height x width (H, W); the layer, expert and uncertainty maps, shown as details, at that
    size scaled down to at most `DETAIL_SIDE` pixels on the long side (h, w), which bounds their memory."""

    score: float  # image anomaly score in [0, 1]
    anomaly_map: np.ndarray  # (H, W) abnormal probability in [0, 1]
    layer_maps: np.ndarray  # (L, h, w)
    cls_score: float  # global embedding vs the prompts alone
    class_name: str
    expert_weights: np.ndarray | None = None  # (E,) routing weights, sum to 1
    expert_scores: np.ndarray | None = None  # (E,) in [0, 1]
    expert_maps: np.ndarray | None = None  # (E, h, w) each expert's attention, scaled to max 1
    moe_score: float | None = None
    uncertainty_map: np.ndarray | None = None  # (h, w) when CTDS sampling was asked for
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notes: list[str] = field(default_factory=list)  # what was adjusted in the input, in plain words
    # with reference images: score and anomaly_map combine these two parts (wmoe.references.combine)
    zero_shot_map: np.ndarray | None = None  # (H, W) the map without references (anomaly_map itself without)
    zero_shot_score: float | None = None
    reference_map: np.ndarray | None = None  # (H, W) in [0, 1]: distance to the nearest reference patch
    reference_score: float | None = None  # the largest patch distance (reference map's max on the grid)
    references: int = 0  # how many reference images were used
    method: str = "WMoE-CLIP"  # what produced it: "CLIP" (training-free baseline), "WinCLIP", "MuSc"...

    def to_dict(self) -> dict:
        """A JSON-ready summary (no maps)."""
        arr = lambda a: None if a is None else [round(float(v), 6) for v in a]  # noqa: E731
        return {
            "score": round(self.score, 6),
            "cls_score": round(self.cls_score, 6),
            "moe_score": None if self.moe_score is None else round(self.moe_score, 6),
            "class_name": self.class_name,
            "expert_weights": arr(self.expert_weights),
            "expert_scores": arr(self.expert_scores),
            "image_size": list(self.anomaly_map.shape),
            "references": self.references,
            "method": self.method,
            "zero_shot_score": None if self.zero_shot_score is None else round(self.zero_shot_score, 6),
            "reference_score": None if self.reference_score is None else round(self.reference_score, 6),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "notes": self.notes,
        }


@dataclass(frozen=True)
class EncodedBatch:
    """Loaded images after the backbone: what `Detector.predict_encoded` needs, on one device and precision."""

    features: BackboneFeatures
    sizes: list[tuple[int, int]]  # (H, W) of each loaded image: the maps are resized back to these
    backbone: Backbone  # the backbone that computed the features
    device: torch.device
    dtype: torch.dtype  # autocast precision of the pass (fp32 = none)
    timings: dict[str, float]  # seconds of preprocess and backbone

    def __len__(self) -> int:
        return len(self.sizes)


class Variant(NamedTuple):
    """One column of `Detector.compare`: a name, the detector that runs (on the comparing detector's
    backbone), the modules it skips (`WMoECLIP.heads`) and, optionally, normal reference images."""

    name: str
    detector: Detector
    skip: frozenset[str] = frozenset()
    references: Sequence[ImageInput] | ReferenceFeatures | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Detector:
    """Wraps a WMoECLIP model: preprocessing, autocast, resizing the maps back, numpy results."""

    def __init__(
        self,
        model: WMoECLIP,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        info: dict | None = None,
        ctds_samples: int = 0,
    ):
        self.device = torch.device(device) if device else model.backbone.serving or default_device()
        self.dtype = resolve_dtype(dtype)
        model.backbone.claim(self.device)  # a backbone other detectors use is never moved (no device: theirs)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.info = info or {}
        self.ctds_samples = ctds_samples

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        share: Sequence[Backbone] = (),
        **kwargs,
    ) -> Detector:
        """Load a checkpoint folder or Hub repo id (revision pinnable; honours HF_HUB_OFFLINE, HF_HOME).

        share: backbones already loaded (`detector.model.backbone`); one that is this checkpoint's own is
        used instead of loading a second copy (see `wmoe.checkpoint.load_model`), so detectors on one
        backbone can also share one backbone pass (`predict_encoded`). A shared backbone is never moved: a
        device other than the one it serves is a BackboneInUseError (`Backbone.claim`).
        """
        model, info = load_model(path_or_repo_id, revision=revision, share=share)
        return cls(model, device=device, dtype=dtype, info=info, **kwargs)

    @classmethod
    def training_free(
        cls, like: WMoEConfig | None = None, backbone: Backbone | None = None, **kwargs
    ) -> Detector:
        """Plain CLIP with fixed prompts (no checkpoint): the backbone fields of `like`, or a shared backbone."""
        like = like or WMoEConfig()
        keep = (
            "backbone",
            "pretrained",
            "backbone_weights",
            "image_size",
            "layers",
            "temperature",
            "smoothing_sigma",
        )
        config = WMoEConfig.baseline(**{k: getattr(like, k) for k in keep})
        return cls(
            WMoECLIP(config, backbone=backbone), info={"trained": False, "training_free": True}, **kwargs
        )

    def save_pretrained(self, directory: str | os.PathLike, info: dict | None = None) -> Path:
        """Write the checkpoint folder (config.json, model.safetensors, model card); `info` adds metadata."""
        return save_pretrained(self.model, directory, {**self.info, **(info or {})})

    def push_to_hub(
        self, repo_id: str, info: dict | None = None, *, private: bool = False, token: str | None = None
    ) -> str:
        """Publish the checkpoint as a Hub model repo (same arguments as `wmoe.push_to_hub`, minus the model)."""
        return push_to_hub(self.model, repo_id, {**self.info, **(info or {})}, private=private, token=token)

    @property
    def trained(self) -> bool:
        return bool(self.info.get("trained"))

    def predict(self, image: ImageInput, class_name: str = DEFAULT_CLASS, **kwargs) -> Prediction:
        """One image (path, bytes, PIL image or numpy array) and the name of the object in it; the keywords
        of `predict_batch` (e.g. `references=[...]`, up to `wmoe.references.MAX_REFERENCES` normal images)."""
        return self.predict_batch([image], [class_name], **kwargs)[0]

    @torch.inference_mode()
    def predict_batch(
        self,
        images: Sequence[ImageInput],
        class_names: str | Sequence[str] = DEFAULT_CLASS,
        *,
        skip: frozenset[str] = frozenset(),
        ctds_samples: int | None = None,
        references: Sequence[ImageInput] | ReferenceFeatures | None = None,
        detail_side: int = DETAIL_SIDE,
    ) -> list[Prediction]:
        """Several images through one backbone batch; class_names is one name for all, or one per image.

        references: normal images of the same part (paths, bytes, PIL images, arrays; at most
        `wmoe.references.MAX_REFERENCES`): each prediction then also has a `reference_map`, and its
        `anomaly_map` and `score` combine both parts, or are the reference part alone for an untrained
        detector (`wmoe.references.combine`).
        detail_side: the long side, at most, of the layer, expert and uncertainty maps (`detail_size`;
        at most `DETAIL_SIDE`, which bounds their memory): a viewer asks for the size it shows.
        """
        self._names(class_names, len(images))
        refs = self.reference_features(references)  # a bad reference fails before the images' pass
        encoded = self.encode(images)
        return self.predict_encoded(
            encoded,
            class_names,
            skip=skip,
            ctds_samples=ctds_samples,
            references=refs,
            detail_side=detail_side,
        )

    @torch.inference_mode()
    def reference_features(
        self, references: Sequence[ImageInput] | ReferenceFeatures | None
    ) -> ReferenceFeatures | None:
        """The features of a reference set for this detector's layers: computed once (one backbone pass
        over the references), then taken from `wmoe.references.CACHE` for the same images; None for none."""
        if references is None or isinstance(references, ReferenceFeatures):
            return references
        images = load_references(references)
        if not images:
            return None
        layers = tuple(self.config.layers)
        key = (layers, str(self.device), self.dtype, content_key(images))

        def compute() -> ReferenceFeatures:
            return bank(self.encode(images, layers=layers).features, layers)

        return REFERENCES.get(self.model.backbone, key, compute)

    @torch.inference_mode()
    def encode(
        self, images: Sequence[ImageInput], *, layers: Iterable[int] | None = None, raw: Iterable[int] = ()
    ) -> EncodedBatch:
        """Load and preprocess images, run the frozen backbone once: features any variant can reuse.

        layers: blocks to tap; this model's own by default. Give the union of several detectors' layers
        to serve them all from one pass (see `compare`). raw: blocks whose raw outputs MuSc also needs.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        pils = [load_image(im) for im in images]
        bb = self.model.backbone
        x = torch.stack([to_tensor(im, bb.image_size, bb.mean, bb.std) for im in pils]).to(self.device)
        timings["preprocess"] = time.perf_counter() - start
        with self._autocast():
            features = self.model.encode(x, layers, timings=timings, raw=tuple(raw))
        return EncodedBatch(features, [im.size[::-1] for im in pils], bb, self.device, self.dtype, timings)

    @torch.inference_mode()
    def predict_encoded(
        self,
        encoded: EncodedBatch,
        class_names: str | Sequence[str] = DEFAULT_CLASS,
        *,
        skip: frozenset[str] = frozenset(),
        ctds_samples: int | None = None,
        references: Sequence[ImageInput] | ReferenceFeatures | None = None,
        detail_side: int = DETAIL_SIDE,
    ) -> list[Prediction]:
        """This detector's heads on features from `encode` (its own, or another detector's on the same backbone);
        `references` and `detail_side` as in `predict_batch`.

        Raises FeatureMismatchError when the features come from another backbone (weights, input size or
        normalisation), lack a block this model taps, or were computed on another device or precision.
        """
        names = self._names(class_names, len(encoded.sizes))
        self._check_shared(encoded)
        notes = [[] for _ in names]
        names = [self._clean_name(n, note) for n, note in zip(names, notes, strict=True)]
        timings = dict(encoded.timings)
        samples = self.ctds_samples if ctds_samples is None else ctds_samples
        refs = self.reference_features(references)
        with self._autocast():
            out = self.model.heads(encoded.features, names, skip=skip, ctds_samples=samples, timings=timings)
        rmaps = None
        if refs is not None:
            t0 = time.perf_counter()
            rmaps = reference_map(encoded.features, refs, self.config.layers)
            timings["references"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = [
            self._prediction(
                out,
                i,
                size,
                detail_size(size, detail_side),
                names[i],
                notes[i],
                None if rmaps is None else (rmaps[i], refs.count),
            )
            for i, size in enumerate(encoded.sizes)
        ]
        timings["postprocess"] = time.perf_counter() - t0
        for p in preds:
            p.timings = dict(timings)
        return preds

    def compare(
        self, image: ImageInput, class_name: str, variants: Sequence[Variant | tuple]
    ) -> list[tuple[str, Prediction]]:
        """(name, prediction) for each `Variant` of one image (a plain (name, detector, skip[, references])
        tuple reads as one), from one backbone pass of this detector's; the references' features come
        from the cache after their first use.

        Every variant's detector must share this one's backbone (`Detector.training_free(backbone=...)`).
        """
        variants = [Variant(*v) for v in variants]
        layers = set(self.config.layers).union(*(v.detector.config.layers for v in variants))
        for v in variants:  # before paying the backbone pass
            check_same_backbone(self.model.backbone, v.detector.model.backbone)
        refs = [v.detector.reference_features(v.references) for v in variants]
        encoded = self.encode([image], layers=layers)
        return [
            (v.name, v.detector.predict_encoded(encoded, class_name, skip=v.skip, references=r)[0])
            for v, r in zip(variants, refs, strict=True)
        ]

    def _autocast(self):
        return autocast(self.device, self.dtype)

    @staticmethod
    def _names(class_names: str | Sequence[str], n: int) -> list[str]:
        names = [class_names] * n if isinstance(class_names, str) else list(class_names)
        if len(names) != n:
            raise ArgumentError(f"{n} images but {len(names)} class names")
        return names

    def _check_shared(self, encoded: EncodedBatch):
        """Refuse features that are not exactly what this detector's own `encode` would compute."""
        if (encoded.device, encoded.dtype) != (self.device, self.dtype):
            raise FeatureMismatchError(
                f"features computed on {encoded.device} in {dtype_name(encoded.dtype)} cannot serve a "
                f"detector on {self.device} in {dtype_name(self.dtype)}: load both on one device and precision"
            )
        check_same_backbone(encoded.backbone, self.model.backbone)
        encoded.features.taps(self.config.layers)

    def _clean_name(self, name, notes: list[str]) -> str:
        name = " ".join(str(name if name is not None else "").split())
        if not name:
            notes.append(f"no class name given: used '{DEFAULT_CLASS}'")
            return DEFAULT_CLASS
        if self.model.prompts.truncated(name):
            notes.append("the class name is longer than the text encoder's context: it was cut to fit")
        return name

    def _prediction(
        self,
        out,
        i: int,
        size: tuple[int, int],
        detail: tuple[int, int],
        name: str,
        notes: list[str],
        ref=None,
    ) -> Prediction:
        """Image i's numpy result at its size, the detail maps at `detail` (H, W); ref: (its reference map on
        the patch grid, reference count)."""

        def resize(maps, to=size):  # (C, h, w) -> numpy (C, H, W) float32 at the image size (or `to`)
            return (
                F.interpolate(maps[None].float(), size=to, mode="bilinear", align_corners=False)[0]
                .cpu()
                .numpy()
            )

        def clip01(a):  # in place: at a photo's size each map set is hundreds of MB, copies add up
            return np.clip(a, 0.0, 1.0, out=a)

        pred = Prediction(
            score=float(out.image_score[i]),
            anomaly_map=clip01(resize(out.anomaly_map[i][None])[0]),
            layer_maps=clip01(resize(out.layer_maps[i], detail)),
            cls_score=float(out.cls_score[i]),
            class_name=name,
            notes=notes,
            method="CLIP" if self.info.get("training_free") else "WMoE-CLIP",
        )
        if out.routing_weights is not None:
            pred.expert_weights = out.routing_weights[i].float().cpu().numpy()
            pred.expert_scores = out.expert_scores[i].float().cpu().numpy()
            maps = out.expert_maps[i].float()
            pred.expert_maps = clip01(
                resize(maps / maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None], detail)
            )
            pred.moe_score = float(out.moe_score[i])
        if out.uncertainty_map is not None:
            pred.uncertainty_map = resize(out.uncertainty_map[i][None], detail)[0]
        pred.zero_shot_map, pred.zero_shot_score = pred.anomaly_map, pred.score
        if ref is not None:
            amap, score, rmap, rscore = combine(
                torch.from_numpy(pred.zero_shot_map)[None],
                torch.tensor([pred.score]),
                ref[0][None].cpu(),
                trained=self.trained,
            )
            pred.anomaly_map, pred.score = amap[0].numpy(), float(score[0])
            pred.method = method_name(pred.method, self.trained)
            pred.reference_map, pred.reference_score, pred.references = (
                rmap[0].numpy(),
                float(rscore[0]),
                ref[1],
            )
        return pred


def detail_size(size: tuple[int, int], side: int = DETAIL_SIDE) -> tuple[int, int]:
    """(H, W) scaled down, keeping its shape, to at most `side` (itself at most DETAIL_SIDE) on the long side
    (never up): the size of the detail maps, and of the picture a viewer shows them on."""
    scale = min(1.0, min(side, DETAIL_SIDE) / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def check_same_backbone(mine: Backbone, theirs: Backbone):
    """Raise FeatureMismatchError unless both compute the same image features (same object, or the same
    name, input size, normalisation and `Backbone.fingerprint`: image-tower weights and settings)."""
    if mine is theirs:
        return
    same = (mine.name, mine.image_size, mine.mean, mine.std) == (
        theirs.name,
        theirs.image_size,
        theirs.mean,
        theirs.std,
    )
    if not same or mine.fingerprint() != theirs.fingerprint():
        raise FeatureMismatchError(
            f"features of backbone {mine.name} at {mine.image_size} px cannot serve a model on "
            f"{theirs.name} at {theirs.image_size} px{' with other weights or settings' if same else ''}: "
            "share one backbone (`Detector.training_free(backbone=...)`) or encode with each detector"
        )
