"""training.evaluate --shots K --shot-seed S: the few-shot protocol with normal training images as references."""

import json

import pytest

from training.evaluate import main as evaluate_main
from training.prepare_data import prepare
from training.synthetic import generate
from wmoe import Detector
from wmoe import metrics as M


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shots-data")
    generate(
        root,
        ["tile:dots", "washer:disc"],
        n_train_good=3,
        n_test_good=3,
        n_test_defect_per_type=1,
        size=48,
        seed=0,
    )
    prepare("mvtec", root)
    return root


def run(checkpoint, data, out, *extra):
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--no-progress", *extra]
    return evaluate_main([*args, "--batch-size", "4", "--cpu-threads", "1"])


def test_k_normal_training_images_per_class_serve_as_references(tiny_checkpoint, data, tmp_path, capsys):
    assert run(tiny_checkpoint, data, tmp_path / "a", "--shots", "2", "--shot-seed", "1") == 0
    result = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert result["shots"] == 2 and result["shot_seed"] == 1
    assert "2-shot (seed 1)" in (tmp_path / "a" / "results.md").read_text()
    meta = json.loads((data / "meta.json").read_text())
    detector = Detector.from_pretrained(tiny_checkpoint, device="cpu")
    for cls, refs in result["references"].items():
        pool = {e["img_path"] for e in meta["train"][cls]}
        assert len(refs) == 2 and set(refs) <= pool and all("/train/good/" in r for r in refs)
        entries = meta["test"][cls]
        preds = detector.predict_batch(
            [data / e["img_path"] for e in entries], cls, references=[data / r for r in refs]
        )
        expected = M.compute_all([e["anomaly"] for e in entries], [p.score for p in preds])
        assert result["per_class"][cls]["image_auroc"] == pytest.approx(expected["image_auroc"], abs=1e-6)
        assert result["per_class"][cls]["image_ap"] == pytest.approx(expected["image_ap"], abs=1e-3)
    assert run(tiny_checkpoint, data, tmp_path / "b", "--shots", "2", "--shot-seed", "1") == 0
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert again["references"] == result["references"]  # the seed fixes the draw
    assert run(tiny_checkpoint, data, tmp_path / "z") == 0
    zero = json.loads((tmp_path / "z" / "metrics.json").read_text())
    assert zero["shots"] == 0 and zero["references"] == {}
    assert zero["per_class"] != result["per_class"]  # the references changed the maps
    capsys.readouterr()
    assert run(tiny_checkpoint, data, tmp_path / "c", "--shots", "4") == 2
    assert "has 3 normal training images" in capsys.readouterr().err
