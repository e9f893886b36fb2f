"""The models, loaded once at start: WMoE-CLIP checkpoints by name, the training-free CLIP baseline and
WinCLIP (MuSc needs no model of its own: it runs on the main backbone), what the page's banner says about
them, which method a request runs, and the one place a model runs (inside ZeroGPU's `spaces.GPU` on
Spaces)."""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from demo.guards import md, public, short, user_error
from wmoe import (
    CheckpointError,
    ConfigError,
    Detector,
    Prediction,
    WeightsNotFoundError,
    WinCLIP,
    WMoEConfig,
    musc,
)
from wmoe.checkpoint import display_names, includes_backbone
from wmoe.detector import DETAIL_SIDE, Variant

try:  # ZeroGPU on Spaces: the model runs inside spaces.GPU; elsewhere this is a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


log = logging.getLogger("wmoe.app")
UNTRAINED = "untrained model: results are meaningless, for testing the plumbing only"
RANDOM_BACKBONE = "random backbone weights (a test configuration): results are meaningless"
BASELINE_NAME = "training-free CLIP baseline"
WINCLIP_NAME = "WinCLIP (ViT-B-16-plus-240, LAION-400M; zero-shot, no training)"
LOADED: dict[
    int, Detector | WinCLIP
] = {}  # by id(), filled at start: ZeroGPU's forked worker must inherit them all


# ----------------------------------------------------------------------------- loading, once at start


def load_models(
    checkpoints: str | Sequence[str] | None,
    device: str | None = None,
    dtype: str | None = None,
    baseline: str = "clip",
) -> tuple[dict[str, Detector], Detector | None, list[str]]:
    """({name: WMoE-CLIP detector} for the checkpoints that loaded, the training-free baseline or None,
    plain-words notices for the banner). Each checkpoint loads once; those on one backbone share it
    (one copy in memory, one pass per image); the baseline shares the first one's."""
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints or [])
    detectors: dict[str, Detector] = {}
    failed = []
    for checkpoint, name in zip(checkpoints, checkpoint_names(checkpoints), strict=True):
        try:
            shared = [d.model.backbone for d in detectors.values()]
            detector = Detector.from_pretrained(checkpoint, device=device, dtype=dtype, share=shared)
        except Exception as e:  # whatever went wrong, the app still starts and says why
            failed.append(f"The WMoE-CLIP checkpoint **{md(name)}** could not be loaded: {why(e)}.")
            continue
        detectors[name] = detector
    if detectors:  # the normal path: the baseline shares the first loaded backbone
        first = next(iter(detectors.values()))
        return (
            detectors,
            Detector.training_free(
                first.config, backbone=first.model.backbone, device=first.device, dtype=first.dtype
            ),
            failed,
        )
    why_not = " ".join(failed) or "No WMoE-CLIP checkpoint was given (`--checkpoint` or `WMOE_CHECKPOINT`)."
    like = WMoEConfig.tiny() if baseline == "tiny" else WMoEConfig()
    try:
        fallback = Detector.training_free(like, device=device, dtype=dtype)
    except Exception as e:
        return {}, None, [why_not, f"The training-free CLIP baseline cannot run either: {why(e)}."]
    return {}, fallback, [why_not]


def load_winclip(baseline: str = "clip", device: str | None = None) -> tuple[WinCLIP | None, list[str]]:
    """WinCLIP on its own backbone, once (`tiny`: the tiny random test backbone, like `--baseline tiny`),
    or None and the banner line that says why (missing weights never stop the app)."""
    try:
        return (WinCLIP.tiny if baseline == "tiny" else WinCLIP.from_pretrained)(device=device), []
    except Exception as e:
        return None, [f"WinCLIP is not available: {why(e)}."]


def checkpoint_names(checkpoints: Sequence[str | os.PathLike]) -> list[str]:
    """How the page names checkpoints: distinct, a folder by its name (parent folders where names clash),
    a Hub repo by its id; never a server path (`wmoe.checkpoint.display_names`)."""
    return display_names([str(Path(c).resolve()) if Path(c).exists() else str(c) for c in checkpoints])


def checkpoint_list(value: str | None) -> list[str]:
    """WMOE_CHECKPOINT as a list: checkpoints separated by commas or newlines."""
    return [c.strip() for c in re.split(r"[,\n]", value or "") if c.strip()]


def why(error: Exception) -> str:
    """A loading failure in plain words for the banner; an unexpected kind also logs its traceback."""
    if not isinstance(error, (CheckpointError, ConfigError, WeightsNotFoundError)):
        log.error("unexpected failure while loading a model", exc_info=error)
    return md(public(str(error)).rstrip("."))


def status_lines(
    detectors: Detector | Mapping[str, Detector] | None,
    baseline: Detector | None,
    notices=(),
    winclip: WinCLIP | None = None,
) -> list[str]:
    """What the banner at the top says (which method Analyze runs when no checkpoint loaded); empty only
    for trained checkpoints on real CLIP weights."""
    detectors = {"WMoE-CLIP": detectors} if isinstance(detectors, Detector) else dict(detectors or {})
    lines = list(notices)
    if not detectors and (winclip or baseline):
        lines.append(f"Analyze runs {training_free_method(winclip, baseline)}.")
        if baseline is None:
            lines.append("MuSc (Batch) and the plain-CLIP baseline need the CLIP backbone's weights.")
    elif not detectors:
        lines.append("Nothing can run here, so Run is disabled; supply the weights (see README) and restart.")
    untrained = [name for name, d in detectors.items() if not d.trained]
    if untrained:
        which = "" if len(detectors) == 1 else f" ({', '.join(md(n) for n in untrained)})"
        lines.insert(0, f"**{UNTRAINED}**{which} (its checkpoint records `trained: false`).")
    shown = next(iter(detectors.values()), None) or baseline
    if shown is not None and includes_backbone(shown.config):
        lines.append(
            "The CLIP backbone has random weights (a tiny test configuration), so the training-free "
            "baseline is meaningless too."
        )
    if winclip is not None and includes_backbone(winclip.config):
        lines.append(
            f"WinCLIP's backbone has random weights too (a tiny test configuration): {RANDOM_BACKBONE}."
        )
    return lines


def training_free_method(winclip: WinCLIP | None, baseline: Detector | None) -> str:
    """Which method Analyze runs without a checkpoint, in words (the banner; `Models.primary` decides)."""
    if winclip is not None:
        return "**WinCLIP** (with reference images: **WinCLIP+**)"
    return (
        f"the **{BASELINE_NAME}** (fixed prompts; WinCLIP could not load); with reference images, "
        "their **reference map alone** (the baseline is not trained, so its map is not averaged in)"
    )


# ----------------------------------------------------------------------------- the loaded models


class Chosen(NamedTuple):
    """The detector a request runs, and how its results describe it (`about`: name, and a warning, if
    any, why not to trust them; the result JSON's "model" field)."""

    detector: Detector
    about: dict


class Models:
    """The loaded models every tab uses: WMoE-CLIP checkpoints by name (`detectors`: one Detector, a
    {name: Detector} mapping, or None), the training-free CLIP baseline and WinCLIP (each or None)."""

    def __init__(
        self,
        detectors: Detector | Mapping[str, Detector] | None,
        baseline: Detector | None,
        winclip: WinCLIP | None = None,
    ):
        if isinstance(detectors, Detector):
            detectors = {"WMoE-CLIP": detectors}
        self.detectors, self.baseline, self.winclip = dict(detectors or {}), baseline, winclip
        LOADED.update({id(d): d for d in (*self.detectors.values(), baseline, winclip) if d is not None})

    @property
    def can_run(self) -> bool:
        return bool(self.shown) or self.winclip is not None

    @property
    def shown(self) -> list[Detector]:
        """The models the page can run (checkpoints, else the baseline): what decides which panels exist."""
        return list(self.detectors.values()) or [m for m in [self.baseline] if m is not None]

    def checkpoint(self, name: str | None) -> tuple[str, Detector]:
        """The loaded checkpoint of that name (the first when none is given); unknown names are refused."""
        if not name:
            return next(iter(self.detectors.items()))
        if name not in self.detectors:
            raise user_error(
                f"No checkpoint named {html.escape(short(str(name), 60))} is loaded; choose one of: "
                + ", ".join(html.escape(n) for n in self.detectors),
                title="Unknown checkpoint",
            )
        return name, self.detectors[name]

    def primary(self, name: str | None = None, *, winclip: bool = True) -> Chosen:
        """The model Analyze (and, with `winclip=False`, Batch) uses: the checkpoint called `name`, else the
        first, else WinCLIP, else the baseline."""
        if self.detectors:
            name, d = self.checkpoint(name)
            return Chosen(d, describe(name, d))
        if winclip and self.winclip is not None:
            return Chosen(self.winclip, training_free(WINCLIP_NAME, self.winclip.config))
        if self.baseline is not None:
            return Chosen(
                self.baseline, training_free(f"{BASELINE_NAME} (fixed prompts)", self.baseline.config)
            )
        raise user_error(
            "Nothing can run here: no checkpoint and no CLIP backbone weights (see the note at the top).",
            title="No model",
        )


def training_free(name: str, config: WMoEConfig) -> dict:
    """How results name a training-free method (`describe` for checkpoints)."""
    warning = RANDOM_BACKBONE if includes_backbone(config) else None
    return {"name": name, "training_free": True, "backbone": config.backbone, "warning": warning}


def references_alone(model: Detector | WinCLIP) -> bool:
    """Whether this model's result with reference images is their reference part alone: a never-trained
    zero-shot part is not averaged in (the rule is `wmoe.references.combine(..., trained=)`)."""
    return isinstance(model, Detector) and not model.trained


def map_labels(model: Detector | WinCLIP) -> list[str]:
    """What each of a prediction's `layer_maps` is: a tapped CLIP layer, or WinCLIP's scale."""
    if isinstance(model, WinCLIP):
        return ["whole image"] + [f"{k} x {k} windows" for k in model.scales]
    return [f"layer {layer}" for layer in model.config.layers]


def describe(name: str, detector: Detector) -> dict:
    """How results name a checkpoint, and the warning, if any, why not to trust them."""
    d = detector
    warning = UNTRAINED if not d.trained else RANDOM_BACKBONE if includes_backbone(d.config) else None
    return {
        "name": "WMoE-CLIP" if name == "WMoE-CLIP" else f"WMoE-CLIP ({name})",
        "checkpoint": name,
        "trained": d.trained,
        "backbone": d.config.backbone,
        "warning": warning,
    }


# ----------------------------------------------------------------------------- running a model


def run_model(
    detector: Detector,
    images: list[Image.Image],
    class_name: str | list[str],
    ctds_samples: int = 0,
    references: list[Image.Image] | None = None,
    detail_side: int = DETAIL_SIDE,
) -> list[Prediction]:
    """The model on decoded images (with `references`, normal images, if given): one prediction each, its
    detail maps at most `detail_side` on the long side (`Detector.predict_batch`)."""
    return _predict(id(detector), images, class_name, ctds_samples, (), references, detail_side)


def run_one(
    model: Detector | WinCLIP,
    image: Image.Image,
    class_name: str,
    ctds_samples: int = 0,
    references: list[Image.Image] | None = None,
    detail_side: int = DETAIL_SIDE,
) -> Prediction:
    """One image through the model `Models.primary` chose: a detector (`run_model`) or WinCLIP
    (`run_winclip`, which has no CTDS; its scale maps come at `DETAIL_SIDE`)."""
    if isinstance(model, WinCLIP):
        return run_winclip(model, image, class_name, references)
    return run_model(model, [image], class_name, ctds_samples, references, detail_side)[0]


def run_winclip(
    winclip: WinCLIP, image: Image.Image, class_name: str, references: list[Image.Image] | None = None
) -> Prediction:
    """WinCLIP on one image, WinCLIP+ with `references`: one pass of WinCLIP's own backbone."""
    return _winclip(id(winclip), image, class_name, references)


def run_musc(detector: Detector, images: list[Image.Image], class_name: str) -> list[Prediction]:
    """MuSc on images of one class, scored against each other: one pass of `detector`'s backbone, maps
    normalised over these images (`wmoe.musc.predict_batch`)."""
    return _musc(id(detector), images, class_name)


def run_variants(
    detector: Detector, image: Image.Image, class_name: str, variants: list[Variant]
) -> list[Prediction]:
    """Compare: one prediction per variant of one image, all from one backbone pass of `detector`."""
    keyed = tuple(v._replace(detector=id(v.detector)) for v in variants)
    return _predict(id(detector), [image], class_name, 0, keyed)


@gpu
def _predict(
    key: int,
    images: list,
    class_name: str | list[str],
    ctds_samples: int,
    variants: tuple,
    references: list | None = None,
    detail_side: int = DETAIL_SIDE,
) -> list[Prediction]:
    """A ZeroGPU task on Spaces: its arguments travel pickled to a forked worker, so models go by key."""
    detector = LOADED[key]
    if variants:
        [image] = images
        compared = detector.compare(
            image, class_name, [v._replace(detector=LOADED[v.detector]) for v in variants]
        )
        return [p for _, p in compared]
    return detector.predict_batch(
        images, class_name, ctds_samples=ctds_samples, references=references, detail_side=detail_side
    )


@gpu
def _winclip(key: int, image, class_name: str, references: list | None) -> Prediction:
    return LOADED[key].predict(image, class_name, references=references)


@gpu
def _musc(key: int, images: list, class_name: str) -> list[Prediction]:
    return musc.predict_batch(LOADED[key], images, class_name)
