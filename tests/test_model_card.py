"""training.model_card: the Hub metadata parses back, and every number comes from evaluate's metrics.json."""

import json
import shutil

from huggingface_hub import ModelCard

from training.model_card import build_card, write_card
from training.report import to_json


def metrics_json(path, data, shots, mean):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json({"data": data, "shots": shots, "mean": mean, "per_class": {}, "trained": True}))
    return path


def trained_copy(src, dst, train_data="data/mvtec"):
    shutil.copytree(src, dst)
    saved = json.loads((dst / "config.json").read_text())
    saved["info"] = {"trained": True, "train_data": train_data, "epochs": 15, "steps": 3240, "seed": 0}
    (dst / "config.json").write_text(json.dumps(saved))
    (dst / "train_config.yaml").write_text("seed: 0\noptim:\n  epochs: 15\n")
    return dst


def test_card_metadata_parses_back_with_the_measured_metrics(tmp_path, tiny_checkpoint):
    ckpt = trained_copy(tiny_checkpoint, tmp_path / "ckpt")
    visa = metrics_json(
        tmp_path / "eval/visa/0/metrics.json",
        "data/visa",
        0,
        {"image_auroc": 0.8123, "image_ap": 0.5, "pixel_auroc": float("nan"), "pixel_aupro": 0.25},
    )
    btad = metrics_json(tmp_path / "eval/btad/4/metrics.json", "data/btad", 4, {"image_auroc": 0.9})
    path = write_card(ckpt, [visa, btad], repo_id="org/wmoe-clip")
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "wmoe" and "anomaly-detection" in data.tags and "untrained" not in data.tags
    assert data.license == "cc-by-nc-sa-4.0"  # trained on MVTec AD: its licence's terms
    assert data.datasets == ["MVTec AD"]
    got = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("visa", "zero-shot", "image_auroc"): 81.23,
        ("visa", "zero-shot", "image_ap"): 50.0,
        ("visa", "zero-shot", "pixel_aupro"): 25.0,
        ("btad", "4-shot", "image_auroc"): 90.0,
    }  # NaN (undefined) is left out, never written as 0
    assert data.model_name == "org/wmoe-clip"
    text = card.text
    assert "| visa | zero-shot | 81.2 | 50.0 |" in text and "n/a" in text
    assert "| btad | 4-shot | 90.0 |" in text
    assert "epochs: 15" in text and 'Detector.from_pretrained("org/wmoe-clip")' in text
    assert "WMOE_CHECKPOINT=org/wmoe-clip" in text and "UNTRAINED" not in text


def test_an_untrained_checkpoint_says_so(tmp_path, tiny_checkpoint):
    card = build_card(tiny_checkpoint, [])
    assert "untrained" in card.data.tags and "**UNTRAINED**" in card.text
    assert card.data.eval_results is None and card.data.license == "mit"
    assert card.data.base_model is None  # a random tiny backbone has no Hub base model
    assert "**Random-weight backbone**" in card.text
    ModelCard(str(card))  # the text parses back
