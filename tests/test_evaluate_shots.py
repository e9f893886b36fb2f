"""training.evaluate --shots K --shot-seed S: the few-shot protocol with normal training images as references."""

import json

import numpy as np
import pytest

from training.evaluate import main as evaluate_main
from training.prepare_data import prepare
from training.synthetic import generate
from wmoe import Detector, load_model, save_pretrained
from wmoe import metrics as M


@pytest.fixture(scope="module")
def data(two_class_data):
    return two_class_data


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


@pytest.mark.parametrize("trained", [False, True])
def test_shots_pixel_maps_are_the_detectors_maps(tiny_checkpoint, tmp_path, monkeypatch, trained):
    """The maps evaluate scores (the pixel metrics' input) equal Detector.predict_batch's maps, at images of
    the model input size (so neither side resizes its maps): the reference map alone for an untrained
    checkpoint, combined with the zero-shot map for a trained one (wmoe.references.combine)."""
    model, info = load_model(tiny_checkpoint)
    checkpoint = save_pretrained(model, tmp_path / "ckpt", {**info, "trained": trained})
    data = tmp_path / "data"
    side = model.config.image_size
    generate(data, ["tile:dots"], n_train_good=2, n_test_good=2, n_test_defect_per_type=1, size=side, seed=3)
    prepare("mvtec", data)
    scored = []
    real = M.compute_all

    def spy(labels, scores, masks=None, maps=None):
        if maps is not None:
            scored.append(np.array(maps))
        return real(labels, scores, masks, maps)

    monkeypatch.setattr(M, "compute_all", spy)
    assert run(checkpoint, data, tmp_path / "out", "--shots", "2") == 0
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())
    entries = json.loads((data / "meta.json").read_text())["test"]["tile"]
    detector = Detector.from_pretrained(checkpoint, device="cpu")
    assert detector.trained == trained
    preds = detector.predict_batch(
        [data / e["img_path"] for e in entries],
        "tile",
        references=[data / r for r in result["references"]["tile"]],
    )
    (maps,) = scored
    assert maps.shape == (len(entries), side, side)
    for got, p in zip(maps, preds, strict=True):
        np.testing.assert_allclose(got, p.anomaly_map, atol=1e-5)
        assert not np.allclose(got, p.zero_shot_map, atol=1e-3)  # the reference map is in it
