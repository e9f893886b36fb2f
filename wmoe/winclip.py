"""WinCLIP and WinCLIP+: training-free anomaly maps from CLIP window embeddings and a prompt ensemble.

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023. One image at
a time, on its own backbone (the paper's ViT-B-16-plus-240, open_clip tag `laion400m_e31`, at 240 px),
resolved like the main backbone (`wmoe.backbone.resolve_backbone_weights`): a local file named by
WMOE_WINCLIP_WEIGHTS, else the Hugging Face cache by the open_clip tag, else a fast clear error.

What runs, per image (sections of the paper):
1. Sec. 4.1, compositional prompt ensemble: every normal / anomalous state word with every template is
   one prompt; the prompts' embeddings are averaged per state (as the text tower gives them: the paper
   does not say, the reference implementation does not normalise them first), giving one normal and one
   anomalous text embedding per class name (cached per name).
2. Sec. 4.1, the zero-shot anomaly score: the anomalous class's softmax probability of a visual
   embedding's cosine similarities to the two text embeddings divided by the temperature 0.07.
3. Sec. 4.2, window embeddings: for each window of k x k patches (k = 2 and 3 on ViT-B-16-plus-240's
   15 x 15 grid; scaled with the grid otherwise, `window_scales`), stride 1, the class token and the
   window's tokens (position embeddings included) go through the transformer on their own; the pooled,
   projected class token is the window's embedding. The whole image's embedding is the third scale.
4. Sec. 4.2, harmonic aggregation: each patch's score at a window scale is the harmonic mean of the
   scores of the windows covering it; the scales (both window scales and the whole image) are combined
   by a harmonic mean too, as the reference implementation (anomalib) does.
5. Sec. 4.3, WinCLIP+ (with normal reference images): per scale, each window's (and each patch token's)
   visual association score is its smallest cosine distance (1 - cos) / 2 to the references'
   windows (patch tokens) of that scale; window scores are aggregated to patches harmonically, the
   three maps averaged; the final map is the mean of this map and the zero-shot map, the image score the
   mean of the zero-shot score and this map's maximum on the patch grid (as the reference implementation).

Normalisation: every score is a probability or a cosine distance in [0, 1], and harmonic means and
averages keep them there, so the map goes unchanged onto the fixed 0..1 colour scale (no per-image
stretching); it is upsampled bilinearly from the patch grid to the image's size. The prediction's
`layer_maps` hold the zero-shot map of each scale (the whole image, then the windows, small to large);
with references, `zero_shot_map` and `reference_map` are the two halves of the map.

Where we differ from the reference implementation: its window pass permutes tokens to sequence-first
for an older open_clip; with the pinned (batch-first) open_clip that permute mixes windows, so we pass
batch-first tensors (`test_windows_get_different_embeddings` guards this). Its template list repeats
"a jpeg corrupted photo of the {}."; we use the "a" and "the" forms once each.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import Backbone
from .config import DEFAULT_CLASS, WMoEConfig
from .detector import Prediction, default_device, detail_size
from .errors import ArgumentError
from .preprocess import ImageInput, load_image, to_tensor
from .references import content_key, load_references

WEIGHTS_ENV = "WMOE_WINCLIP_WEIGHTS"  # a local open_clip weights file for WinCLIP's backbone
BACKBONE = "ViT-B-16-plus-240"
PRETRAINED = "laion400m_e31"
IMAGE_SIZE = 240
PAPER_GRID = 15  # patches per side of the paper's backbone at 240 px; its window scales are (2, 3)
PAPER_SCALES = (2, 3)
TEMPERATURE = 0.07  # Sec. 4.1: CLIP's temperature, as the paper and the reference implementation use
WINDOW_CHUNK = 256  # windows through the transformer at once (bounds memory)
MAX_CACHED_REFERENCE_SETS = 4

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """Sec. 4.1, compositional prompt ensemble: (normal prompts, anomalous prompts), every state x template."""
    normal = [t.format(s.format(class_name)) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(s.format(class_name)) for s in ANOMALOUS_STATES for t in TEMPLATES]
    return normal, anomalous


def window_scales(grid: tuple[int, int]) -> tuple[int, ...]:
    """The window sides in patches: the paper's (2, 3) on its 15 x 15 grid, scaled with a smaller or
    larger grid (at least 1, at most the grid, distinct)."""
    side = min(grid)
    return tuple(sorted({max(1, min(side, round(k * side / PAPER_GRID))) for k in PAPER_SCALES}))


def window_masks(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Sec. 4.2: (windows, size * size) row-major patch indices of every size x size window sliding by
    `stride` over a (rows, cols) grid, windows in row-major order of their top-left patch."""
    rows, cols = grid
    if size > min(rows, cols) or size < 1:
        raise ArgumentError(f"window of {size} patches does not fit the {rows} x {cols} grid")
    index = torch.arange(rows * cols).reshape(rows, cols)
    windows = index.unfold(0, size, stride).unfold(1, size, stride)  # (wr, wc, size, size)
    return windows.reshape(-1, size * size)


def harmonic_aggregation(
    window_scores: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Sec. 4.2: (B, windows) scores -> (B, rows, cols), each patch the harmonic mean of the scores of the
    windows covering it. A zero score gives the patches it covers a zero (the limit of the harmonic mean)."""
    B, n = window_scores.shape[0], grid[0] * grid[1]
    cover = torch.zeros(n, masks.shape[0], dtype=window_scores.dtype, device=window_scores.device)
    cover[masks.to(cover.device), torch.arange(masks.shape[0], device=cover.device)[:, None]] = 1.0
    inverse = 1.0 / window_scores  # inf for a zero score
    total = torch.where(cover.bool()[None], inverse[:, None, :], 0.0).sum(-1)  # (B, patches)
    agg = cover.sum(-1)[None] / total
    return agg.nan_to_num(nan=0.0, posinf=0.0).reshape(B, *grid)


def harmonic_mean(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sec. 4.2: the scales' maps combined by their harmonic mean (as the reference implementation)."""
    stacked = torch.stack(list(maps))
    return (len(maps) / (1.0 / stacked).sum(0)).nan_to_num(nan=0.0)


def anomaly_probability(embeddings: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE):
    """Sec. 4.1, the zero-shot anomaly score: (..., D) visual embeddings, (2, D) text [normal, anomalous]
    -> (...) the anomalous class's probability of the softmax over cosine similarity / temperature."""
    cos = F.normalize(embeddings.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    return (cos / temperature).softmax(-1)[..., 1]


def association_score(embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Sec. 4.3, the visual association score: (B, M, D) embeddings, (R, D) reference memory -> (B, M)
    smallest cosine distance (1 - cos) / 2 to any reference embedding, in [0, 1]."""
    unit = F.normalize(embeddings.float(), dim=-1)
    bank = F.normalize(memory.float(), dim=-1)
    best = torch.cat([(part @ bank.T).amax(-1) for part in unit.split(WINDOW_CHUNK, dim=1)], 1)
    return ((1 - best) / 2).clamp(0, 1)


class WinCLIP:
    """WinCLIP (zero-shot) and WinCLIP+ (with normal references) on their own frozen backbone, loaded once."""

    def __init__(self, config: WMoEConfig, device: str | torch.device | None = None):
        self.config = config
        self.device = torch.device(device) if device else default_device()
        self.backbone = Backbone(config, weights_env=WEIGHTS_ENV).to(self.device)
        self.grid = self.backbone.grid
        self.scales = window_scales(self.grid)
        self.masks = [window_masks(self.grid, k).to(self.device) for k in self.scales]
        self._text: dict[str, torch.Tensor] = {}
        self._memory: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def config_for(tiny: bool = False) -> WMoEConfig:
        """The paper's backbone (ViT-B-16-plus-240, `laion400m_e31`, 240 px), or the tiny random one (tests)."""
        if tiny:
            keep = ("backbone", "pretrained", "image_size", "layers")
            return WMoEConfig.baseline(**{k: getattr(WMoEConfig.tiny(), k) for k in keep})
        return WMoEConfig.baseline(
            backbone=BACKBONE, pretrained=PRETRAINED, image_size=IMAGE_SIZE, layers=(12,)
        )

    @classmethod
    def from_pretrained(cls, device: str | torch.device | None = None, **overrides) -> WinCLIP:
        """The paper's model; raises `wmoe.WeightsNotFoundError` (naming WMOE_WINCLIP_WEIGHTS) when its
        weights are neither a local file, nor cached, nor reachable."""
        return cls(cls.config_for().replace(**overrides), device=device)

    @classmethod
    def tiny(cls, device: str | torch.device | None = None, **overrides) -> WinCLIP:
        """The tiny random backbone of the tests (`WMoEConfig.tiny()`), same code path; random results."""
        return cls(cls.config_for(tiny=True).replace(**overrides), device=device)

    @torch.inference_mode()
    def text_embeddings(self, class_name: str) -> torch.Tensor:
        """(2, D) unit [normal, anomalous] embeddings of the prompt ensemble (Sec. 4.1): the prompts'
        embeddings averaged per state as the text tower gives them, as the reference implementation does
        (not normalised one by one first, as CLIP's own ensembles are), then normalised. Cached per name."""
        with self._lock:
            hit = self._text.get(class_name)
        if hit is not None:
            return hit
        states = []
        for prompts in prompt_ensemble(class_name):
            states.append(F.normalize(self.backbone.encode_text(prompts).float().mean(0), dim=-1))
        text = torch.stack(states)
        with self._lock:
            self._text[class_name] = text
        return text

    def truncated(self, class_name: str) -> bool:
        """True when some prompt of the ensemble fills the whole text context (so it was cut to fit)."""
        ids = self.backbone.tokenizer([p for ps in prompt_ensemble(class_name) for p in ps])
        return bool((ids[:, -1] != 0).any())

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(B, 3, S, S) -> (image embeddings (B, D), patch tokens after ln_post (B, N, W), [window
        embeddings (B, windows, D) per scale]). One pass over the whole image; then each window's tokens
        with the class token, batch-first, through the transformer (Sec. 4.2)."""
        visual = self.backbone.clip.visual  # open_clip's own steps of visual.forward (pinned open_clip;
        # tests/test_winclip.py checks the image embedding against encode_image)
        tokens = visual._embeds(images)  # class token first, position embeddings added, ln_pre applied
        pooled, patches = visual._pool(visual.transformer(tokens))
        image = pooled @ visual.proj
        windows = [self._windows(tokens, masks) for masks in self.masks]
        return image, patches, windows

    def _windows(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, W) embedded tokens, (windows, k * k) patch indices -> (B, windows, D)."""
        visual = self.backbone.clip.visual
        B = tokens.shape[0]
        index = torch.cat([torch.zeros_like(masks[:, :1]), masks + 1], 1)  # class token, then the window
        out = []
        for part in index.split(WINDOW_CHUNK):
            seq = tokens[:, part].flatten(0, 1)  # (B * chunk, 1 + k * k, W), batch-first
            pooled, _ = visual._pool(visual.transformer(seq))
            out.append((pooled @ visual.proj).unflatten(0, (B, part.shape[0])))
        return torch.cat(out, 1)

    def preprocess(self, images: Sequence) -> torch.Tensor:
        bb = self.backbone
        return torch.stack([to_tensor(im, bb.image_size, bb.mean, bb.std) for im in images]).to(self.device)

    def reference_memory(self, references: Sequence[ImageInput]) -> tuple[list[torch.Tensor], int]:
        """Sec. 4.3, the visual memory of the references: [patch tokens (K * N, W), windows (K * n_k, D)
        per scale]; one pass over the references, then kept for the same pixels (a few sets)."""
        images = load_references(references)
        key = content_key(images)
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit, len(images)
        _, patches, windows = self.encode(self.preprocess(images))
        memory = [patches.flatten(0, 1)] + [w.flatten(0, 1) for w in windows]
        with self._lock:
            self._memory[key] = memory
            while len(self._memory) > MAX_CACHED_REFERENCE_SETS:
                self._memory.popitem(last=False)
        return memory, len(images)

    @torch.inference_mode()
    def predict(
        self,
        image: ImageInput,
        class_name: str = DEFAULT_CLASS,
        references: Sequence[ImageInput] | None = None,
    ) -> Prediction:
        """One image (path, bytes, PIL image, array) -> a `Prediction` named "WinCLIP", or "WinCLIP+" with
        normal references (at most `wmoe.references.MAX_REFERENCES`)."""
        timings: dict[str, float] = {}
        notes: list[str] = []
        name = " ".join(str(class_name or "").split())
        if not name:
            notes.append(f"no class name given: used '{DEFAULT_CLASS}'")
            name = DEFAULT_CLASS
        if self.truncated(name):
            notes.append("the class name is longer than the text encoder's context: it was cut to fit")
        t0 = time.perf_counter()
        memory, count = self.reference_memory(references) if references else (None, 0)
        timings["references"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pil = load_image(image)
        x = self.preprocess([pil])
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = self.text_embeddings(name)
        timings["text"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        embedding, patches, windows = self.encode(x)
        timings["backbone"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        score = anomaly_probability(embedding, text)  # (1,)
        scale_maps = [score[:, None, None].expand(-1, *self.grid)]  # the whole image is the coarsest scale
        for w, masks in zip(windows, self.masks, strict=True):
            scale_maps.append(harmonic_aggregation(anomaly_probability(w, text), masks, self.grid))
        zero_map = harmonic_mean(scale_maps)
        final_map, final_score, ref_map, ref_score = zero_map, score, None, None
        if memory is not None:
            ref_maps = [association_score(patches, memory[0]).unflatten(1, self.grid)]
            for w, masks, bank in zip(windows, self.masks, memory[1:], strict=True):
                ref_maps.append(harmonic_aggregation(association_score(w, bank), masks, self.grid))
            ref_map = torch.stack(ref_maps).mean(0)
            ref_score = ref_map.flatten(1).amax(1)
            final_map, final_score = (zero_map + ref_map) / 2, (score + ref_score) / 2
        timings["maps"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        size = pil.size[::-1]
        pred = Prediction(
            score=float(final_score[0]),
            anomaly_map=upsample(final_map, size)[0],
            layer_maps=upsample(torch.cat(scale_maps), detail_size(size)),
            cls_score=float(score[0]),
            class_name=name,
            notes=notes,
            method="WinCLIP+" if memory is not None else "WinCLIP",
        )
        pred.zero_shot_map, pred.zero_shot_score = pred.anomaly_map, pred.score
        if memory is not None:
            pred.zero_shot_map, pred.zero_shot_score = upsample(zero_map, size)[0], float(score[0])
            pred.reference_map, pred.reference_score = upsample(ref_map, size)[0], float(ref_score[0])
            pred.references = count
        timings["postprocess"] = time.perf_counter() - t0
        pred.timings = timings
        return pred


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(M, h, w) grid maps -> (M, H, W) float32 numpy, bilinear, clipped to [0, 1]."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return up.clamp_(0, 1).cpu().numpy()
