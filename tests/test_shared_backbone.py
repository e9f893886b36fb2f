"""Several checkpoints on one backbone: loaded once in memory (`share=`), identical predictions."""

import numpy as np
import pytest
from PIL import Image
from support.helpers import randomize_heads

from wmoe import CheckpointError, Detector, WMoECLIP, WMoEConfig, load_model, save_pretrained


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """a and b: one tiny backbone, different heads; c: another random backbone (another seed)."""
    root = tmp_path_factory.mktemp("ckpts")
    for name, seed, heads in [("a", 0, 1), ("b", 0, 2), ("c", 5, 3)]:
        save_pretrained(randomize_heads(WMoECLIP(WMoEConfig.tiny(seed=seed)), seed=heads), root / name)
    return root


def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


def test_checkpoints_on_one_backbone_share_it_and_predict_as_alone(checkpoints):
    a = Detector.from_pretrained(checkpoints / "a", device="cpu")
    b = Detector.from_pretrained(checkpoints / "b", device="cpu", share=[a.model.backbone])
    assert b.model.backbone is a.model.backbone
    alone = Detector.from_pretrained(checkpoints / "b", device="cpu")
    assert alone.model.backbone is not a.model.backbone
    shared, own = b.predict(image(), "part"), alone.predict(image(), "part")
    np.testing.assert_allclose(shared.anomaly_map, own.anomaly_map, atol=1e-6)
    np.testing.assert_allclose(shared.expert_weights, own.expert_weights, atol=1e-6)
    assert shared.score == pytest.approx(own.score, abs=1e-6)
    assert shared.score != pytest.approx(a.predict(image(), "part").score, abs=1e-6)  # other heads


def test_another_backbone_is_loaded_not_shared(checkpoints):
    a = Detector.from_pretrained(checkpoints / "a", device="cpu")
    c = Detector.from_pretrained(checkpoints / "c", device="cpu", share=[a.model.backbone])
    assert c.model.backbone is not a.model.backbone
    own = Detector.from_pretrained(checkpoints / "c", device="cpu").predict(image(), "part")
    np.testing.assert_allclose(c.predict(image(), "part").anomaly_map, own.anomaly_map, atol=1e-6)
    with pytest.raises(CheckpointError, match="is not the one given"):
        load_model(checkpoints / "c", backbone=a.model.backbone)
