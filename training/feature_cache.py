"""Feature cache: the frozen backbone's features of every training and evaluation image, computed once.

Training never changes what the backbone computes (it is frozen, and the datasets apply no random
augmentation: training/data.py loads each image through `wmoe.preprocess` alone), so the features of
an image are the same in every epoch, in every ablation variant and in every evaluation. With a cache
folder each image pays the backbone once; later passes read its entry.

Layout: `DIR/<setting>/<aa>/<sha256 of the image file>.safetensors`, and `DIR/<setting>/setting.json`
saying what `<setting>` stands for. The setting is a hash of everything that changes the features: the
backbone's name and image tower, weights and settings such as the activation (`Backbone.fingerprint`,
once per run), input size, normalisation and resize rule (`wmoe.preprocess.PREPROCESSING`), tapped layers,
the precision of the backbone pass, the storage precision, and the torch and open_clip versions. The image
is keyed by its bytes, so an edited file is a new entry; nothing is ever looked up by path or date. Old
entries are never wrong, only unused: delete the folder to reclaim the space.

The raw block outputs MuSc needs (`BackboneFeatures.raw`) are not part of the setting: an entry holds the
raw blocks its writer asked for, serves every request whose raw blocks it holds (a run that asks for none
reads a MuSc entry), and is a miss, recomputed and rewritten with them, for a request it lacks them for.
So a MuSc evaluation and the WMoE-CLIP runs over the same images share one backbone pass per image when
MuSc runs first (`training.reproduce` orders its stages so).

An entry is written to a unique temporary name and renamed into place (atomic), so concurrent
processes (torchrun ranks sharing the folder) never read a partial file; two writers of the same entry
write the same bytes. Each entry carries a CRC32 of its tensors: a damaged or truncated entry is
detected on reading, reported, recomputed and rewritten, never used. A full disk (ENOSPC, EDQUOT) is
reported once and the run continues without writing new entries (the cache is an optimisation; the
results do not depend on it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from training.distributed import World, all_reduce
from wmoe.backbone import Backbone
from wmoe.errors import WMoEError
from wmoe.features import BackboneFeatures
from wmoe.precision import DTYPES, autocast
from wmoe.preprocess import PREPROCESSING

FORMAT = 1
STORAGE = {name: DTYPES[name] for name in ("fp32", "fp16")}  # entry precisions, named as wmoe names dtypes
log = logging.getLogger("wmoe.training")


class FeatureCacheError(WMoEError, OSError):
    """The cache folder cannot be used (not a folder, not writable); the message says which and why."""


@dataclass
class CacheStats:
    """Counts of this process. Entries read by a dataset (`lookup`, maybe in a DataLoader worker) are
    counted when their batch reaches `batch_inputs` in this process, so no count stays in a worker."""

    hits: int = 0
    computed: int = 0  # images that went through the backbone (no entry, or a damaged one)
    damaged: int = 0
    written: int = 0


class FeatureCache:
    """Backbone features by image content, for one backbone, layer set and precision."""

    def __init__(
        self,
        root: str | Path,
        backbone: Backbone,
        layers: tuple[int, ...],
        compute_dtype: torch.dtype,
        storage: str = "fp32",
        raw: tuple[int, ...] = (),
    ):
        if storage not in STORAGE:
            raise FeatureCacheError(f"feature cache storage {storage!r}: choose one of {sorted(STORAGE)}")
        self.layers, self.storage = tuple(sorted(set(layers))), storage
        self.raw = tuple(sorted(set(raw)))
        self.setting = {
            "format": FORMAT,
            "backbone": backbone.name,
            "backbone_sha256": backbone.fingerprint(),  # weights and settings (activation...)
            "image_size": backbone.image_size,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "preprocessing": PREPROCESSING,
            "layers": list(self.layers),
            "compute_dtype": str(compute_dtype).replace("torch.", ""),
            "storage": storage,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        }
        self.setting_id = hashlib.sha256(json.dumps(self.setting, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = Path(root) / self.setting_id
        self.writable = True
        self.stats = CacheStats()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            record = self.dir / "setting.json"
            if not record.is_file():
                self._atomic_write(
                    record, lambda tmp: tmp.write_text(json.dumps(self.setting, indent=2) + "\n")
                )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(e)
            else:
                raise FeatureCacheError(
                    f"feature cache {root}: cannot create {self.dir.name} in it ({e})"
                ) from e

    @staticmethod
    def image_key(path: str | Path) -> str:
        """The entry name of an image file: the sha256 of its bytes."""
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> BackboneFeatures | None:
        """The features of image `key` (a batch of one, in the precision the backbone produced), or None
        when there is no entry or the entry is damaged (then it is reported, counted and will be rewritten)."""
        features, damaged = self._read(key)
        self.stats.damaged += damaged
        return features

    def lookup(self, path: str | Path) -> dict:
        """A dataset item's cache fields for an image file: feature_key, features (None when there is no
        usable entry) and feature_damaged (1 for a damaged entry), which `batch_inputs` counts."""
        path = Path(path)
        key = self.image_key(path) if path.is_file() else ""
        features, damaged = self._read(key) if key else (None, False)
        return {"feature_key": key, "features": features, "feature_damaged": int(damaged)}

    def report(self, world: World) -> dict:
        """The folder, storage and this run's counts summed over processes (every process must call it)."""
        keys = ("hits", "computed", "damaged", "written")
        total = all_reduce(torch.tensor([getattr(self.stats, k) for k in keys], dtype=torch.long), world)
        return {"dir": str(self.dir), "storage": self.storage, **dict(zip(keys, total.tolist(), strict=True))}

    def _read(self, key: str) -> tuple[BackboneFeatures | None, bool]:
        """(features or None, whether the entry was damaged); a damaged entry is logged."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, False
        try:
            meta = _metadata(data)
            tensors = load(data)
            if meta.get("setting") != self.setting_id or meta.get("image") != key:
                raise ValueError("written for another setting or image")
            if meta.get("crc32") != str(_crc(tensors)):
                raise ValueError("checksum mismatch")
            dtypes = json.loads(meta["dtypes"])
            if any(f"raw.{k}" not in tensors for k in self.raw):
                return None, False  # written without the raw blocks asked for: a miss, not damage
            patches = {k: tensors[f"layer.{k}"] for k in self.layers}
            raw = {k: tensors[f"raw.{k}"] for k in self.raw}
            grid, size = json.loads(meta["grid"]), json.loads(meta["input"])
        except (SafetensorError, ValueError, KeyError, TypeError) as e:
            log.warning("feature cache: damaged entry %s (%s); recomputing it", path, e)
            return None, True
        cast = lambda name, t: t.to(getattr(torch, dtypes[name]))[None]  # noqa: E731
        features = BackboneFeatures(
            cast("embedding", tensors["embedding"]),
            {k: cast(f"layer.{k}", v) for k, v in patches.items()},
            tuple(grid),
            tuple(size),
            {k: cast(f"raw.{k}", v) for k, v in raw.items()},
        )
        return features, False

    def store(self, key: str, features: BackboneFeatures) -> BackboneFeatures:
        """Write the entry of image `key` (features: a batch of one); a full disk turns writing off.

        Returns the features as a later `load` gives them (rounded to the storage precision), so the run
        that fills the cache sees what later runs will see.
        """
        dtype = STORAGE[self.storage]
        rounded = BackboneFeatures(
            _rounded(features.embedding, dtype),
            {k: _rounded(v, dtype) for k, v in features.patches.items()},
            features.grid,
            features.image_size,
            {k: _rounded(v, dtype) for k, v in features.raw.items()},
        )
        if not self.writable:
            return rounded
        named = {"embedding": features.embedding[0]}
        named.update({f"layer.{k}": features.patches[k][0] for k in self.layers})
        named.update({f"raw.{k}": features.raw[k][0] for k in self.raw})
        tensors = {k: v.detach().to("cpu", dtype).clone().contiguous() for k, v in named.items()}
        meta = {
            "format": str(FORMAT),
            "setting": self.setting_id,
            "image": key,
            "crc32": str(_crc(tensors)),
            "dtypes": json.dumps({k: str(v.dtype).replace("torch.", "") for k, v in named.items()}),
            "grid": json.dumps(list(features.grid)),
            "input": json.dumps(list(features.image_size)),
        }
        path = self.path(key)
        try:
            path.parent.mkdir(exist_ok=True)
            self._atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise FeatureCacheError(f"feature cache: cannot write {path} ({e})") from e
            self._disk_full(e)
            return rounded
        self.stats.written += 1
        return rounded

    @staticmethod
    def _atomic_write(path: Path, write):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _disk_full(self, error: OSError):
        self.writable = False
        log.warning(
            "feature cache: the disk holding %s is full (%s); continuing without caching new features "
            "(results are unchanged, later runs recompute what is missing). Free space or choose another "
            "--feature-cache folder.",
            self.dir,
            os.strerror(error.errno),
        )


def _metadata(data: bytes) -> dict:
    """The `__metadata__` block of a serialised safetensors file."""
    if len(data) < 8:
        raise ValueError("truncated header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("truncated header")
    try:
        meta = json.loads(data[8 : 8 + n]).get("__metadata__")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"unreadable header ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    return meta


def _rounded(t: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """t as stored and read back: through the storage precision, in its own dtype again."""
    return t if storage == torch.float32 else t.to(storage).to(t.dtype)


def _crc(tensors: dict[str, torch.Tensor]) -> int:
    """CRC32 of every tensor's name, shape, dtype and bytes, in name order."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode(), crc)
        crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def batch_inputs(batch: dict, model, cache: FeatureCache | None, device: torch.device, dtype: torch.dtype):
    """What the model takes for a batch: its images, or with a cache their features (read from the cache,
    or computed in one backbone pass over the batch's missing images and stored)."""
    if cache is None:
        return batch["image"].to(device, non_blocking=True)
    features = list(batch["features"])
    missing = [i for i, f in enumerate(features) if f is None]
    if missing:
        images = torch.stack([batch["image"][i] for i in missing]).to(device, non_blocking=True)
        with torch.no_grad(), autocast(device, dtype):
            computed = model.encode(images, cache.layers, raw=cache.raw)
        for j, i in enumerate(missing):
            features[i] = cache.store(batch["feature_key"][i], computed.item(j))
    cache.stats.computed += len(missing)
    cache.stats.hits += len(features) - len(missing)
    cache.stats.damaged += int(sum(batch["feature_damaged"]))
    return BackboneFeatures.cat([f.to(device) for f in features])
