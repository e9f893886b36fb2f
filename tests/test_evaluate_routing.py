"""training.evaluate reports each class's mean SA-MoE routing and routing entropy (or says there is none)."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from training.evaluate import main as evaluate_main
from wmoe import Detector, WMoECLIP, WMoEConfig, save_pretrained
from wmoe.routing import routing_entropy


@pytest.fixture(scope="module")
def data(two_class_data):
    return two_class_data


def run(checkpoint, data, out):
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--no-progress"]
    assert evaluate_main([*args, "--batch-size", "4", "--cpu-threads", "1"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_each_class_gets_its_mean_routing_and_entropy(tiny_checkpoint, data, tmp_path):
    result = run(tiny_checkpoint, data, tmp_path)
    meta = json.loads((data / "meta.json").read_text())["test"]
    detector = Detector.from_pretrained(tiny_checkpoint, device="cpu")
    assert list(result["routing"]) == list(meta)
    rows = {r["class"]: r for r in csv.DictReader(io.StringIO((tmp_path / "routing.csv").read_text()))}
    table = (tmp_path / "results.md").read_text()
    for cls, entries in meta.items():
        preds = detector.predict_batch([data / e["img_path"] for e in entries], cls)
        weights = np.stack([p.expert_weights for p in preds])
        got = result["routing"][cls]
        assert got["images"] == len(entries)
        np.testing.assert_allclose(got["mean_weights"], weights.mean(0), atol=1e-4)
        assert got["entropy"] == pytest.approx(routing_entropy(weights).mean(), abs=1e-4)
        assert got["normalized_entropy"] == pytest.approx(got["entropy"] / np.log(weights.shape[1]), abs=1e-5)
        assert float(rows[cls]["weight_expert1"]) == pytest.approx(got["mean_weights"][0], abs=1e-5)
        assert f"| {cls} | {len(entries)} | {got['mean_weights'][0]:.3f} |" in table
    assert "## SA-MoE routing per class" in table
    assert Image.open(tmp_path / "routing.png").width == 640


def test_a_model_without_samoe_says_so(data, tmp_path):
    save_pretrained(WMoECLIP(WMoEConfig.tiny(use_moe=False)), tmp_path / "ckpt")
    result = run(tmp_path / "ckpt", data, tmp_path / "out")
    assert result["routing"] is None
    assert "This model has no SA-MoE" in (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "out" / "routing.csv").exists() and not (tmp_path / "out" / "routing.png").exists()
