"""The model card of a checkpoint folder: its README.md with the Hub's metadata and the measured results.

The metadata (huggingface_hub's `ModelCardData`): library name, tags, licence (the training data's: a
model trained on CC BY-NC-SA data is published under the same terms), datasets, base model, and a
`model-index` whose every number is read from a `metrics.json` written by `training.evaluate`; nothing
else feeds it. The text: the status (an untrained checkpoint says so first), the results table, the
recipe (`train_config.yaml`), how to load it and how to point the demo at it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from training.datasets import CC_BY_NC_SA, DATASETS
from training.evaluate import METRICS
from wmoe.checkpoint import CARD_NAME, CONFIG_NAME, CheckpointError, includes_backbone
from wmoe.config import WMoEConfig

TAGS = ["anomaly-detection", "zero-shot", "clip", "mixture-of-experts", "wmoe-clip"]
HUB_LICENCE = {CC_BY_NC_SA: "cc-by-nc-sa-4.0"}
# open_clip (name, pretrained tag) -> the Hub repo holding the same weights
BASE_MODELS = {("ViT-L-14-336", "openai"): "openai/clip-vit-large-patch14-336"}
LABELS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "pixel_aupro": "pixel AUPRO",
}


def load_evaluation(path: str | Path) -> dict:
    """One `training.evaluate` metrics.json as {dataset, shots, mean}; the dataset is its folder's name."""
    metrics = json.loads(Path(path).read_text())
    for key in ("data", "mean"):
        if key not in metrics:
            raise CheckpointError(
                f"{Path(path).name}: no {key!r}; expected a metrics.json of training.evaluate"
            )
    return {
        "dataset": Path(metrics["data"]).name,
        "shots": int(metrics.get("shots") or 0),
        "mean": metrics["mean"],
    }


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def protocol(shots: int) -> str:
    return "zero-shot" if shots == 0 else f"{shots}-shot"


def results_table(evaluations: list[dict]) -> str:
    """One row per (dataset, protocol), the mean over its classes x100; n/a where a metric is undefined."""
    lines = [
        "| dataset | protocol | " + " | ".join(LABELS[k] for k in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for e in evaluations:
        cells = [f"{100 * e['mean'][k]:.1f}" if _finite(e["mean"].get(k)) else "n/a" for k in METRICS]
        lines.append(f"| {e['dataset']} | {protocol(e['shots'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def card_data(config: WMoEConfig, info: dict, evaluations: list[dict], name: str) -> ModelCardData:
    train = Path(str(info.get("train_data") or "")).name
    source = DATASETS.get(train)
    # no public training data (untrained, or synthetic data): the project's own licence
    licence = HUB_LICENCE.get(source.licence, "other") if source else "mit"
    results = [
        EvalResult(
            task_type="anomaly-detection",
            task_name=f"{protocol(e['shots'])} anomaly detection",
            dataset_type=e["dataset"],
            dataset_name=DATASETS[e["dataset"]].title if e["dataset"] in DATASETS else e["dataset"],
            dataset_split="test",
            dataset_config=protocol(e["shots"]),
            metric_type=k,
            metric_name=f"{LABELS[k]} (%)",
            metric_value=round(100 * e["mean"][k], 2),
        )
        for e in evaluations
        for k in METRICS
        if _finite(e["mean"].get(k))
    ]
    return ModelCardData(
        model_name=name,
        library_name="wmoe",
        tags=TAGS + ([] if info.get("trained") else ["untrained"]),
        license=licence,
        license_name=None if licence != "other" else "the training data's licence",
        datasets=[source.title] if source else None,
        base_model=BASE_MODELS.get((config.backbone, config.pretrained)),
        eval_results=results or None,
    )


def build_card(
    checkpoint: str | Path, evaluations: list[str | Path], repo_id: str | None = None
) -> ModelCard:
    """The card of `checkpoint` (a folder with config.json) and the metrics.json files of its evaluations."""
    checkpoint = Path(checkpoint)
    config, info = WMoEConfig.load(checkpoint / CONFIG_NAME)
    evals = [load_evaluation(p) for p in evaluations]
    name = repo_id or checkpoint.name
    data = card_data(config, info, evals, name)
    status = (
        f"Trained on {info.get('train_data')} ({info.get('epochs')} epochs, {info.get('steps')} steps, seed "
        f"{info.get('seed')})."
        if info.get("trained")
        else "**UNTRAINED**: random heads, for tests and demos of the plumbing only. Its numbers say nothing "
        "about what a trained model does."
    )
    if includes_backbone(config):
        status += (
            " **Random-weight backbone** (a test configuration, stored here): its numbers say nothing about "
            "real images."
        )
    recipe = checkpoint / "train_config.yaml"
    body = [
        f"# WMoE-CLIP: {name}",
        "Zero-shot anomaly detection (WMoE-CLIP: wavelet-enhanced mixture-of-experts prompt learning on a "
        "frozen CLIP backbone).",
        status,
        f"Backbone: open_clip `{config.backbone}` ({config.pretrained or 'random weights, stored here'}), "
        f"{config.image_size} px.",
        "## Results",
        "Measured by `python -m training.evaluate` (macro mean over each dataset's classes, x100); the numbers of "
        "the `model-index` above are the same values."
        if evals
        else "Not evaluated yet.",
    ]
    if evals:
        body.append(results_table(evals))
    if recipe.is_file():
        body += [
            "## Recipe",
            "`train_config.yaml`, as trained:",
            f"```yaml\n{recipe.read_text().rstrip()}\n```",
        ]
    load_id = repo_id or "path/to/this/folder"
    body += [
        "## Use",
        f'```python\nfrom wmoe import Detector\ndetector = Detector.from_pretrained("{load_id}")\n'
        'prediction = detector.predict("image.png", class_name="bottle")\n```',
        f"The demo (`app.py`, and a Space running it) loads it with `WMOE_CHECKPOINT={load_id}`.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n")


def write_card(checkpoint: str | Path, evaluations: list[str | Path], repo_id: str | None = None) -> Path:
    """Write `checkpoint/README.md` (replacing the card `save_pretrained` wrote); returns its path."""
    path = Path(checkpoint) / CARD_NAME
    tmp = path.with_name(f".{CARD_NAME}.tmp")
    tmp.write_text(str(build_card(checkpoint, evaluations, repo_id)))
    tmp.replace(path)
    return path
