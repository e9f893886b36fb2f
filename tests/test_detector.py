"""Detector and Prediction: the public inference API."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe import Detector, ImageError, Prediction

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    return Detector.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(3).random((45, 120, 3)) * 255).astype(np.uint8))


def test_prediction_fields(detector, image):
    p = detector.predict(image, "bottle")
    E, L = detector.config.num_experts, len(detector.config.layers)
    assert isinstance(p, Prediction) and 0 <= p.score <= 1
    assert p.anomaly_map.shape == (45, 120) and p.anomaly_map.dtype == np.float32
    assert 0 <= p.anomaly_map.min() and p.anomaly_map.max() <= 1
    assert p.layer_maps.shape == (L, 45, 120)
    assert p.expert_weights.shape == p.expert_scores.shape == (E,)
    assert p.expert_weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert p.expert_maps.shape == (E, 45, 120)
    assert p.uncertainty_map is None
    assert {"preprocess", "backbone", "text", "wcma", "maps", "moe", "postprocess"} <= set(p.timings)
    json.dumps(p.to_dict())


def test_inputs_path_pil_numpy_agree(detector, image, tmp_path):
    image.save(tmp_path / "x.png")
    a = detector.predict(image, "bottle")
    b = detector.predict(tmp_path / "x.png", "bottle")
    c = detector.predict(np.asarray(image), "bottle")
    d = detector.predict(np.asarray(image) / 255.0, "bottle")
    assert a.score == b.score == c.score
    assert d.score == pytest.approx(a.score, abs=1e-3)


def test_batch_equals_single(detector, image):
    other = image.transpose(Image.FLIP_LEFT_RIGHT).resize((64, 64))
    batch = detector.predict_batch([image, other], ["bottle", "screw"])
    single = [detector.predict(image, "bottle"), detector.predict(other, "screw")]
    for b, s in zip(batch, single, strict=True):
        assert b.score == pytest.approx(s.score, abs=1e-5)
        np.testing.assert_allclose(b.anomaly_map, s.anomaly_map, atol=1e-5)
    assert batch[1].anomaly_map.shape == (64, 64)


def test_uncertainty_map_on_request(detector, image):
    p = detector.predict_batch([image], "bottle", ctds_samples=4)[0]
    assert p.uncertainty_map.shape == (45, 120) and p.uncertainty_map.max() > 0


BF16_TOLERANCE = 0.02  # README's target for bf16 autocast vs fp32 (maps max abs, scores)


def test_bf16_close_to_fp32(tiny_checkpoint, image):
    """The checkpoint's heads are perturbed (no head is an identity, see tests/support/helpers.py): bf16 autocast
    moves the maps, the score and the routing weights by less than the stated tolerance."""
    fp32 = Detector.from_pretrained(tiny_checkpoint).predict(image, "bottle")
    bf16 = Detector.from_pretrained(tiny_checkpoint, dtype="bf16").predict(image, "bottle")
    map_diff = float(np.abs(fp32.anomaly_map - bf16.anomaly_map).max())
    print(
        f"bf16 vs fp32 (tiny model, perturbed heads): maps {map_diff:.4f}, score {abs(bf16.score - fp32.score):.5f}"
    )
    assert map_diff < BF16_TOLERANCE
    assert bf16.score == pytest.approx(fp32.score, abs=BF16_TOLERANCE)
    np.testing.assert_allclose(bf16.expert_weights, fp32.expert_weights, atol=BF16_TOLERANCE)


def test_the_heads_compute_in_float32_under_autocast(tiny_checkpoint):
    """Under autocast `.float()` alone does not keep a matmul in float32: the patch-text logits (divided by
    0.07), WCMA's refined text and SA-MoE's logits are computed with autocast off."""
    from wmoe.anomaly_map import abnormal_logits

    model = Detector.from_pretrained(tiny_checkpoint).model
    D, L = model.backbone.embed_dim, len(model.config.layers)
    h, w = model.backbone.grid
    tokens = torch.nn.functional.normalize(torch.randn(1, h * w, D), dim=-1).bfloat16()
    text = torch.nn.functional.normalize(torch.randn(1, 1, 2, D), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = abnormal_logits(tokens, text, 0.07)
        refined = model.wcma(text, [tokens] * L, (h, w))
        moe = model.moe(
            logits[:, None].expand(1, L, 1, h * w)[:, :, 0].unflatten(-1, (h, w)), tokens, text[:, 0, 0], None
        )
    assert logits.dtype == torch.float32 and all(t.dtype == torch.float32 for t in refined)
    assert moe.score.dtype == moe.weights.dtype == moe.expert_maps.dtype == torch.float32
    exact = torch.einsum("bnd,bksd->bksn", tokens.double(), text.double()) / 0.07
    assert (logits.double() - (exact[:, :, 1] - exact[:, :, 0])).abs().max() < 1e-4


def test_device_is_chosen_automatically(detector):
    assert detector.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_class_name_cleanup(detector, image):
    assert detector.predict(image, "   ").notes == ["no class name given: used 'object'"]
    long = detector.predict(image, "bolt " * 2000)
    assert any("cut to fit" in n for n in long.notes)
    assert detector.predict(image, "  metal   nut ").class_name == "metal nut"


def test_bad_image_message(detector, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        detector.predict(tmp_path / "empty.png")


def test_cli_make_tiny_and_predict(tmp_path, image):
    image.save(tmp_path / "some.png")

    def run(*a):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "wmoe", *a],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )

    made = run("make-tiny", "tiny-ckpt")
    assert made.returncode == 0, made.stderr
    out = run(
        "predict", "some.png", "missing.png", "--class", "bottle", "--checkpoint", "tiny-ckpt", "--out", "out"
    )
    assert out.returncode == 1  # one image could not be read
    assert "missing.png: no such file" in out.stderr and "Traceback" not in out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["path"] == "some.png" and line["class_name"] == "bottle" and len(line["expert_weights"]) == 4
    overlay = Image.open(tmp_path / "out" / "some_overlay.png")
    assert overlay.size == image.size
    assert (tmp_path / "out" / "predictions.jsonl").read_text().strip() == out.stdout.strip()
    bad = run("predict", "some.png", "--checkpoint", "nowhere/none")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_training_free_baseline_shares_the_backbone(detector, image):
    base = Detector.training_free(detector.config, backbone=detector.model.backbone)
    assert base.model.backbone is detector.model.backbone and base.model.head_parameters() == {}
    p = base.predict(image, "bottle")
    assert p.expert_weights is None and p.score == p.cls_score
    assert base.info["training_free"] and not base.trained


PREDICT_MEMORY = """
import sys
from pathlib import Path
import numpy as np
from wmoe import Detector, WMoECLIP, WMoEConfig
from wmoe.preprocess import MAX_PIXELS

def peak() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmHWM")).split()[1]) * 1024

detector = Detector(WMoECLIP(WMoEConfig.tiny()))
detector.predict(np.zeros((64, 64, 3), np.uint8), "x")
side = int(MAX_PIXELS**0.5)
image = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
Path("/proc/self/clear_refs").write_text("5")  # restart the peak count here
start = peak()
detector.predict(image, "x")
print(side, (peak() - start) / side**2)
"""
PREDICT_BYTES_PER_PIXEL = 12  # README, Performance: memory of one prediction beyond the loaded model


def test_detail_maps_are_bounded_and_the_anomaly_map_is_full_size(detector):
    from wmoe.detector import DETAIL_SIDE

    p = detector.predict_batch([np.zeros((1500, 3000, 3), np.uint8)], "x", ctds_samples=2)[0]
    assert p.anomaly_map.shape == (1500, 3000)
    detail = (DETAIL_SIDE // 2, DETAIL_SIDE)
    assert p.layer_maps.shape[1:] == p.expert_maps.shape[1:] == p.uncertainty_map.shape == detail


def test_a_viewer_gets_detail_maps_at_the_size_it_shows_never_over_the_bound(detector):
    """`detail_side` (the demo's display size): the detail maps come at most that size, made once; the
    anomaly map stays at the image's size, and no request goes over DETAIL_SIDE (the memory bound)."""
    from wmoe.detector import DETAIL_SIDE

    p = detector.predict_batch([np.zeros((300, 600, 3), np.uint8)], "x", ctds_samples=2, detail_side=200)[0]
    assert p.anomaly_map.shape == (300, 600)
    assert p.layer_maps.shape[1:] == p.expert_maps.shape[1:] == p.uncertainty_map.shape == (100, 200)
    big = detector.predict_batch([np.zeros((1500, 3000, 3), np.uint8)], "x", detail_side=4 * DETAIL_SIDE)[0]
    assert big.layer_maps.shape[1:] == (DETAIL_SIDE // 2, DETAIL_SIDE)


@pytest.mark.slow
def test_a_prediction_at_the_largest_accepted_input_stays_within_its_stated_memory():
    """One predict on a square input at the 40 MP limit (6324 px), in a fresh process: the peak resident
    memory it adds to the loaded model stays under README's figure per input pixel: only the anomaly map
    comes back at the image's own size, the detail maps at most DETAIL_SIDE (36 bytes per pixel before)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak resident memory")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_MEMORY], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    side, per_pixel = done.stdout.split()
    print(f"{side} px square: {float(per_pixel):.1f} bytes per input pixel beyond the loaded model")
    assert float(per_pixel) < PREDICT_BYTES_PER_PIXEL
