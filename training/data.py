"""The test split of a prepared dataset (the field's meta.json) as model inputs, for training and evaluation.

Images go through wmoe.preprocess, the exact code inference uses (no second copy). Masks: an
anomalous image's mask file; a normal image's mask is all zero, but only in a class whose anomalous
images have masks at all (in image-label-only classes nothing is known at pixel level, so no image of
the class gets pixel supervision or pixel metrics).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from training.feature_cache import FeatureCache
from wmoe.errors import WMoEError
from wmoe.preprocess import load_image, mask_to_tensor, to_tensor

ENTRY_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")


class MetaError(WMoEError, ValueError):
    """A meta.json that cannot be used; the message names the file and the problem."""


def resolve_meta(root: str | Path, meta: str | Path = "meta.json") -> Path:
    """An absolute meta path as is; a relative one inside the dataset root, else in the working directory."""
    meta = Path(meta)
    candidates = [meta] if meta.is_absolute() else [Path(root) / meta, meta]
    for path in candidates:
        if path.is_file():
            return path
    raise MetaError(
        f"no meta file at {' or '.join(str(c) for c in candidates)}; write one with "
        f"`python -m training.prepare_data --dataset NAME --root {root}`"
    )


def load_entries(
    root: str | Path, meta: str | Path = "meta.json", classes: list[str] | None = None
) -> list[dict]:
    """The test entries of the chosen classes (all by default), class by class in the meta's order."""
    path = resolve_meta(root, meta)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetaError(f"{path}: not a readable JSON file ({e})") from e
    test = data.get("test") if isinstance(data, dict) else None
    if not isinstance(test, dict) or not test:
        raise MetaError(
            f"{path}: expected {{'train': {{}}, 'test': {{class: [entries]}}}} with at least one class"
        )
    if classes is not None:
        unknown = [c for c in classes if c not in test]
        if unknown:
            raise MetaError(f"{path}: no class {unknown} in this meta file; it has {sorted(test)}")
    entries = []
    for cls in classes if classes is not None else list(test):
        items = test[cls]
        if not isinstance(items, list) or not items:
            raise MetaError(f"{path}: class {cls!r} has no entries")
        for i, e in enumerate(items):
            if not isinstance(e, dict) or any(k not in e for k in ENTRY_KEYS) or e["anomaly"] not in (0, 1):
                raise MetaError(
                    f"{path}: test[{cls!r}][{i}] must have keys {list(ENTRY_KEYS)} with anomaly 0 or 1, "
                    f"got {e!r}"
                )
        entries += items
    return entries


def prompt_name(cls_name: str) -> str:
    """The class name typed into the prompts: meta names use underscores ("metal_nut" -> "metal nut")."""
    return " ".join(cls_name.replace("_", " ").split())


class MetaDataset(Dataset):
    """Items: image (3, S, S) CLIP-normalised, mask (M, M) bool, has_mask, label, class_name, cls_name,
    path, index. With a feature cache also feature_key, feature_damaged and features (the cached
    BackboneFeatures, or None); image is then None when features are cached. Batch them with `collate`."""

    def __init__(
        self,
        root: str | Path,
        meta: str | Path = "meta.json",
        classes: list[str] | None = None,
        *,
        image_size: int,
        mean: tuple,
        std: tuple,
        mask_size: int | None = None,
        name: str = "",
        features: FeatureCache | None = None,
    ):
        self.root = Path(root)
        self.name = name or self.root.name
        self.entries = load_entries(root, meta, classes)
        self.image_size, self.mean, self.std = image_size, mean, std
        self.features = features
        self.mask_size = mask_size or image_size
        masked = {e["cls_name"] for e in self.entries if e["anomaly"] and e["mask_path"]}
        self.has_mask = [
            bool(e["mask_path"]) or (not e["anomaly"] and e["cls_name"] in masked) for e in self.entries
        ]
        self.classes = list(dict.fromkeys(e["cls_name"] for e in self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def indices_of(self, cls_name: str) -> list[int]:
        return [i for i, e in enumerate(self.entries) if e["cls_name"] == cls_name]

    def __getitem__(self, index: int) -> dict:
        e = self.entries[index]
        path = self.root / e["img_path"]
        item = {}
        if (
            self.features is not None
        ):  # the entry when there is a valid one, else the image to compute it from
            item = self.features.lookup(path)
        if item.get("features") is None:
            item["image"] = to_tensor(load_image(path), self.image_size, self.mean, self.std)
        else:
            item["image"] = None
        if e["mask_path"]:
            mask = mask_to_tensor(load_image(self.root / e["mask_path"]), self.mask_size)
        else:
            mask = torch.zeros(self.mask_size, self.mask_size, dtype=torch.bool)
        return {
            **item,
            "mask": mask,
            "has_mask": self.has_mask[index],
            "label": int(e["anomaly"]),
            "class_name": prompt_name(e["cls_name"]),
            "cls_name": e["cls_name"],
            "path": str(path),
            "index": index,
        }


def collate(items: list[dict]) -> dict:
    """torch's default collation, except that image and features stay lists when a feature cache is on
    (a batch then mixes cached features and images still to encode)."""
    if "features" not in items[0]:
        return default_collate(items)
    kept = {k: [it[k] for it in items] for k in ("image", "features", "feature_key")}
    rest = default_collate([{k: v for k, v in it.items() if k not in kept} for it in items])
    return {**rest, **kept}
