"""Several checkpoints on one backbone: loaded once in memory (`share=`), identical predictions; a shared
backbone is never moved, and one with other settings (activation) is never taken for it."""

import numpy as np
import pytest
import torch
from PIL import Image
from support.helpers import randomize_heads

from training.feature_cache import FeatureCache
from wmoe import CheckpointError, Detector, WMoECLIP, WMoEConfig, load_model, save_pretrained
from wmoe.backbone import Backbone, BackboneInUseError
from wmoe.detector import check_same_backbone
from wmoe.features import FeatureMismatchError


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


def test_a_backbone_in_use_is_never_moved_by_another_detector(checkpoints):
    a = Detector.from_pretrained(checkpoints / "a", device="cpu")
    before = a.predict(image(), "part").score
    with pytest.raises(BackboneInUseError, match="serves detectors on cpu"):
        Detector.from_pretrained(checkpoints / "b", device="meta", share=[a.model.backbone])
    assert {p.device.type for p in a.model.backbone.parameters()} == {"cpu"}
    assert a.predict(image(), "part").score == pytest.approx(before, abs=1e-6)
    own = Detector.from_pretrained(checkpoints / "b", device="meta")  # without share=: its own copy
    assert own.model.backbone is not a.model.backbone and own.device.type == "meta"
    joined = Detector.from_pretrained(
        checkpoints / "b", share=[a.model.backbone]
    )  # no device: the backbone's
    assert joined.model.backbone is a.model.backbone and joined.device == torch.device("cpu")


def quick_gelu_twin(monkeypatch) -> tuple[Backbone, Backbone]:
    """Two tiny backbones with the same weights, the second with QuickGELU (as a pretrained tag sets it)."""
    gelu = Backbone(WMoEConfig.tiny(), load_weights=False)
    monkeypatch.setattr("wmoe.backbone.resolve_backbone_weights", lambda config, *_: (None, True))
    quick = Backbone(WMoEConfig.tiny())
    assert all(torch.equal(v, quick.state_dict()[k]) for k, v in gelu.state_dict().items())
    return gelu, quick


def test_the_fingerprint_covers_the_activation_not_only_the_weights(monkeypatch, tmp_path):
    gelu, quick = quick_gelu_twin(monkeypatch)
    x = torch.rand(1, 3, gelu.image_size, gelu.image_size)
    assert not torch.allclose(gelu.encode_image(x)[0], quick.encode_image(x)[0], atol=1e-4)
    assert gelu.fingerprint() != quick.fingerprint()
    assert gelu.fingerprint() == Backbone(WMoEConfig.tiny(), load_weights=False).fingerprint()  # stable
    with pytest.raises(FeatureMismatchError, match="other weights or settings"):
        check_same_backbone(gelu, quick)
    keys = {FeatureCache(tmp_path, b, (1, 2), torch.float32).setting_id for b in (gelu, quick)}
    assert len(keys) == 2
