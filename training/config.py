"""The training recipe as a YAML file: model, data, optimiser, loss, evaluation and checkpointing.

Strict: an unknown or mistyped key is an error naming the file and the key, never ignored, so a
typo cannot silently train with a default. Paths are relative to the working directory, except
that "{output}" stands for the run's output folder (used for generated synthetic data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.distributed import DEVICES, PRECISIONS
from training.feature_cache import STORAGE as CACHE_STORAGE
from training.synthetic import generate
from wmoe.config import ConfigError, WMoEConfig
from wmoe.errors import WMoEError
from wmoe.loss import LossWeights


class TrainConfigError(WMoEError, ValueError):
    """A training YAML that cannot be used; the message names the file and the key."""


SCHEDULES = ("constant", "cosine")


def _check(ok: bool, key: str, rule: str, value) -> None:
    """One rule of a recipe field; the loader puts the file and the section in front of the message."""
    if not ok:
        raise TrainConfigError(f"{key}: expected {rule}, got {value!r}")


@dataclass
class DataSource:
    """A prepared dataset: its root, its meta.json (relative to the root) and the classes to use."""

    root: str
    meta: str = "meta.json"
    classes: list[str] | None = None  # None = every class in the meta file
    name: str = ""  # label in the results (default: the root folder's name)

    def __post_init__(self):
        _check(isinstance(self.root, str), "root", "a folder path", self.root)
        classes_ok = isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes)
        _check(self.classes is None or classes_ok, "classes", "a list of class names", self.classes)
        self.name = self.name or Path(self.root).name


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8  # per process; the effective batch is batch_size x number of processes
    epochs: int = 15
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    schedule: str = "constant"  # constant (the anchors) | cosine (decay to 0 over the run)
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self):
        _check(self.lr > 0, "lr", "> 0", self.lr)
        betas = self.betas if isinstance(self.betas, (list, tuple)) else [self.betas]
        betas_ok = len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        _check(betas_ok, "betas", "two numbers in [0, 1)", self.betas)
        self.betas = (float(betas[0]), float(betas[1]))
        _check(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _check(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _check(self.grad_clip >= 0, "grad_clip", ">= 0", self.grad_clip)
        _check(self.schedule in SCHEDULES, "schedule", f"one of {list(SCHEDULES)}", self.schedule)
        _check(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)


@dataclass
class Eval:
    batch_size: int = 32
    # side of the maps and masks of the pixel metrics: 0 = the model input size (the field's protocol),
    # else min(map_size, image_size) to save memory (training/README.md "Evaluation memory")
    map_size: int = 0
    untrained: bool = False  # also evaluate the initial heads (the "untrained" block of metrics.json)
    datasets: list[DataSource] = field(default_factory=list)

    def __post_init__(self):
        _check(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _check(
            self.map_size == 0 or self.map_size >= 8,
            "map_size",
            "0 (model input size) or >= 8",
            self.map_size,
        )
        names = [s.name for s in self.datasets]
        _check(len(set(names)) == len(names), "datasets", "unique names (set name:)", names)


@dataclass
class Checkpoint:
    every_steps: int = 0  # also save the training state every N steps (0 = at the end of each epoch only)
    keep: int = 2  # training states kept on disk (the newest ones)

    def __post_init__(self):
        _check(self.every_steps >= 0, "every_steps", ">= 0", self.every_steps)
        _check(self.keep >= 1, "keep", ">= 1", self.keep)


@dataclass
class TrainConfig:
    model: WMoEConfig
    train: DataSource
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a CUDA GPU that supports it, else fp32) | fp32 | bf16
    cpu_threads: int = 0  # torch CPU threads of each process; 0 = PyTorch's default (one per core)
    feature_cache: str = ""  # folder of cached backbone features (training/feature_cache.py); "" = none
    # entry precision: fp32 (training gives the weights of an uncached run) | fp16 (half the disk)
    feature_cache_dtype: str = "fp32"
    # datasets generated before training: training.synthetic.generate arguments, with a root
    synthetic: list[dict] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    loss: LossWeights = field(default_factory=LossWeights)
    eval: Eval = field(default_factory=Eval)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    text: str = field(default="", repr=False)  # the YAML as written, saved beside the checkpoint

    def __post_init__(self):
        _check(self.device in DEVICES, "device", f"one of {list(DEVICES)}", self.device)
        _check(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}", self.precision)
        self.check_cpu_threads(self.cpu_threads)
        storages = list(CACHE_STORAGE)
        _check(
            self.feature_cache_dtype in CACHE_STORAGE,
            "feature_cache_dtype",
            f"one of {storages}",
            self.feature_cache_dtype,
        )

    @staticmethod
    def check_cpu_threads(threads: int) -> None:
        """The rule of `cpu_threads`, shared with `python -m training.evaluate --cpu-threads`."""
        _check(threads >= 0, "cpu_threads", ">= 0", threads)

    @property
    def sha256(self) -> str:
        """Fingerprint of the recipe; --resume refuses a state written under another recipe."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_config(path: str | Path, output: str | Path) -> TrainConfig:
    """Read and check a training YAML; "{output}" in paths becomes `output`."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except OSError as e:
        raise TrainConfigError(f"{path}: cannot read the training config ({e})") from e
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{path}: expected a mapping of sections (model, train, optim, ...)")
    where = str(path)
    raw = _substitute(raw, str(Path(output)))
    _check_keys(
        raw, {f.name for f in dataclasses.fields(TrainConfig)} - {"text"}, where, required={"model", "train"}
    )
    model = _model(raw["model"], raw.get("seed", 0), f"{where}: model")
    sections = dict(
        model=model,
        train=_section(DataSource, raw["train"], f"{where}: train"),
        seed=_typed(raw.get("seed", 0), int, f"{where}: seed"),
        device=raw.get("device", "auto"),
        precision=raw.get("precision", "auto"),
        cpu_threads=_typed(raw.get("cpu_threads", 0), int, f"{where}: cpu_threads"),
        feature_cache=_typed(raw.get("feature_cache", ""), str, f"{where}: feature_cache"),
        feature_cache_dtype=raw.get("feature_cache_dtype", "fp32"),
        synthetic=[
            _synthetic(s, f"{where}: synthetic[{i}]") for i, s in enumerate(_listed(raw, "synthetic", where))
        ],
        optim=_section(Optim, raw.get("optim") or {}, f"{where}: optim"),
        loss=_section(LossWeights, raw.get("loss") or {}, f"{where}: loss"),
        eval=_eval(raw.get("eval") or {}, f"{where}: eval"),
        checkpoint=_section(Checkpoint, raw.get("checkpoint") or {}, f"{where}: checkpoint"),
        text=text,
    )
    try:
        return TrainConfig(**sections)
    except TrainConfigError as e:
        raise TrainConfigError(f"{where}: {e}") from e


def _listed(raw: dict, key: str, where: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise TrainConfigError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value


def _substitute(value, output: str):
    if isinstance(value, str):
        return value.replace("{output}", output)
    if isinstance(value, list):
        return [_substitute(v, output) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, output) for k, v in value.items()}
    return value


def _check_keys(d, known: set[str], where: str, required: set[str] = frozenset()):
    if not isinstance(d, dict):
        raise TrainConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - known)
    if unknown:
        raise TrainConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = sorted(required - set(d))
    if missing:
        raise TrainConfigError(f"{where}: missing key(s) {missing}")


def _typed(value, kind, where: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TrainConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _section(cls, d, where: str):
    """A dataclass from a mapping: unknown keys are errors, scalar types are checked against the defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    _check_keys(d, set(fields), where, required)
    values = {}
    for name, value in d.items():
        default = fields[name].default
        if isinstance(default, (bool, int, float, str)):
            value = _typed(value, type(default), f"{where}.{name}")
        values[name] = value
    try:
        return cls(**values)
    except TrainConfigError as e:  # a rule of the section's own fields: "<file>: <section>.<key>: ..."
        raise TrainConfigError(f"{where}.{e}") from e
    except (TypeError, ValueError) as e:
        raise TrainConfigError(f"{where}: {e}") from e


def _model(d, seed: int, where: str) -> WMoEConfig:
    """`tiny: true` starts from WMoEConfig.tiny(); other keys are WMoEConfig fields; seed: the run's."""
    if not isinstance(d, dict):
        raise TrainConfigError(f"{where}: expected a mapping of WMoEConfig fields (or tiny: true)")
    d = dict(d)
    tiny = _typed(d.pop("tiny", False), bool, f"{where}.tiny")
    known = {f.name for f in dataclasses.fields(WMoEConfig)}
    _check_keys(d, known, where)
    d.setdefault("seed", seed)
    try:
        return WMoEConfig.tiny(**d) if tiny else WMoEConfig(**d)
    except (ConfigError, TypeError, ValueError) as e:
        raise TrainConfigError(f"{where}: {e}") from e


def _synthetic(d, where: str) -> dict:
    """Arguments of training.synthetic.generate (root required); checked against its signature."""
    known = set(inspect.signature(generate).parameters)
    _check_keys(d, known, where, required={"root"})
    return dict(d)


def _eval(d, where: str) -> Eval:
    d = dict(d)
    datasets = d.pop("datasets", None) or []
    if not isinstance(datasets, list):
        raise TrainConfigError(f"{where}.datasets: expected a list of {{root, meta, classes, name}}")
    sources = [_section(DataSource, s, f"{where}.datasets[{i}]") for i, s in enumerate(datasets)]
    return _section(Eval, {**d, "datasets": sources}, where)
