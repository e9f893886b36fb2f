"""One backbone pass, many heads: encode/heads split, Detector.encode/predict_encoded/compare."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.helpers import randomize_heads

from wmoe import Detector, WMoECLIP, WMoEConfig
from wmoe.features import BackboneFeatures, FeatureMismatchError
from wmoe.preprocess import to_tensor

ABLATIONS = [frozenset(), frozenset({"wcma"}), frozenset({"ctds"}), frozenset({"routing"})]
ABLATIONS += [frozenset({"projection"}), frozenset({"moe"})]


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    return Detector.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def baseline(detector):
    return Detector.training_free(detector.config, backbone=detector.model.backbone, device="cpu")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.default_rng(5).random((70, 90, 3)) * 255).astype(np.uint8))


def assert_same(a, b, atol=1e-6):
    assert a.score == pytest.approx(b.score, abs=atol) and a.cls_score == pytest.approx(b.cls_score, abs=atol)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=atol, rtol=0)
    np.testing.assert_allclose(a.layer_maps, b.layer_maps, atol=atol, rtol=0)
    for field in ("expert_weights", "expert_scores", "expert_maps"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def features_by_hand(model: WMoECLIP, x: torch.Tensor) -> BackboneFeatures:
    """The backbone's features computed here, not by `encode`: open_clip's own image embedding, and each tap
    as ln_post + proj of that block's output, the blocks called one by one."""
    visual = model.backbone.clip.visual
    tokens, patches = visual._embeds(x), {}
    for k, block in enumerate(visual.transformer.resblocks, start=1):
        tokens = block(tokens)
        if k in model.config.layers:
            patches[k] = visual.ln_post(tokens[:, 1:]) @ visual.proj
    return BackboneFeatures(
        model.backbone.clip.encode_image(x), patches, model.backbone.grid, tuple(x.shape[-2:])
    )


def test_forward_is_heads_of_encode():
    model = randomize_heads(WMoECLIP(WMoEConfig.tiny())).eval()
    x = torch.randn(2, 3, 104, 104, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x, ["nut", "screw"], ctds_samples=2)
        feats = model.encode(x)
        hand = features_by_hand(model, x)
        split = model.heads(hand, ["nut", "screw"], ctds_samples=2)
    assert isinstance(feats, BackboneFeatures) and feats.layers == (1, 2, 3, 4)
    assert feats.embedding.shape == (2, model.backbone.embed_dim) and feats.image_size == (104, 104)
    assert feats.grid == hand.grid and feats.layers == hand.layers
    torch.testing.assert_close(feats.embedding, hand.embedding, rtol=1e-4, atol=1e-5)
    for a, b in zip(feats.taps(feats.layers), hand.taps(hand.layers), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the uncertainty map is drawn at random; everything else is deterministic
    for name in ("anomaly_map", "layer_maps", "image_score", "cls_score", "moe_score", "expert_maps"):
        torch.testing.assert_close(getattr(whole, name), getattr(split, name), rtol=1e-4, atol=1e-4)


def test_union_of_layers_gives_each_models_own_taps():
    model = WMoECLIP(WMoEConfig.tiny(layers=(2, 4)))
    x = torch.randn(1, 3, 104, 104)
    with torch.no_grad():
        own, union = model.encode(x), model.encode(x, layers=(1, 2, 3, 4))
    assert union.layers == (1, 2, 3, 4) and own.layers == (2, 4)
    for a, b in zip(own.taps((2, 4)), union.taps((2, 4)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FeatureMismatchError, match=r"missing \[1\]"):
        own.taps((1, 2))


def variant_by_hand(detector, image, skip) -> SimpleNamespace:
    """One variant on its own, without the Detector: the model on the preprocessed image (its own backbone
    pass), maps resized to the image here (details: the image is under DETAIL_SIDE), expert maps to max 1."""
    bb = detector.model.backbone
    x = to_tensor(image, bb.image_size, bb.mean, bb.std)[None]
    with torch.no_grad():
        out = detector.model(x, ["bottle"], skip=skip)

    def resize(maps):  # (C, h, w) -> numpy (C, H, W) at the image's size, clipped to [0, 1]
        size = (image.height, image.width)
        return (
            F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1).numpy()
        )

    experts = out.routing_weights is not None
    maps = out.expert_maps[0] / out.expert_maps[0].flatten(1).amax(1)[:, None, None] if experts else None
    return SimpleNamespace(
        score=float(out.image_score[0]),
        cls_score=float(out.cls_score[0]),
        anomaly_map=resize(out.anomaly_map[0][None])[0],
        layer_maps=resize(out.layer_maps[0]),
        expert_weights=out.routing_weights[0].numpy() if experts else None,
        expert_scores=out.expert_scores[0].numpy() if experts else None,
        expert_maps=resize(maps) if experts else None,
    )


def test_shared_features_give_the_variant_by_variant_numbers(detector, image, backbone_images):
    encoded = detector.encode([image])
    shared = [detector.predict_encoded(encoded, "bottle", skip=skip)[0] for skip in ABLATIONS]
    assert backbone_images == [1]  # one pass for every variant
    for skip, p in zip(ABLATIONS, shared, strict=True):
        assert_same(p, variant_by_hand(detector, image, skip))


def test_compare_pays_one_backbone_pass_and_matches_separate_runs(detector, baseline, image, backbone_images):
    variants = [(f"skip {sorted(s)}", detector, s) for s in ABLATIONS] + [("baseline", baseline, frozenset())]
    separate = [detector.predict(image, "bottle", skip=s) for s in ABLATIONS] + [
        baseline.predict(image, "bottle")
    ]
    assert backbone_images == [1] * len(variants)
    backbone_images.clear()
    compared = detector.compare(image, "bottle", variants)
    assert backbone_images == [1]
    assert [name for name, _ in compared] == [name for name, _, _ in variants]
    for (_, p), q in zip(compared, separate, strict=True):
        assert_same(p, q)
    assert compared[0][1].expert_weights is not None and compared[-1][1].expert_weights is None


def test_detectors_tapping_other_layers_share_one_pass(detector, image, backbone_images):
    few = Detector.training_free(detector.config.replace(layers=(2, 3)), backbone=detector.model.backbone)
    [(_, full), (_, mine)] = detector.compare(
        image, "nut", [("a", detector, frozenset()), ("b", few, frozenset())]
    )
    assert backbone_images == [1] and mine.layer_maps.shape[0] == 2
    assert_same(mine, few.predict(image, "nut"))


def test_same_weights_in_another_object_are_accepted(tiny_checkpoint, detector, image):
    twin = Detector.from_pretrained(tiny_checkpoint, device="cpu")
    assert twin.model.backbone is not detector.model.backbone
    assert_same(twin.predict_encoded(detector.encode([image]), "nut")[0], detector.predict(image, "nut"))


def test_features_of_another_backbone_are_refused(detector, image):
    encoded = detector.encode([image])
    other_weights = Detector(WMoECLIP(WMoEConfig.tiny(seed=1)), device="cpu")
    with pytest.raises(FeatureMismatchError, match="other weights"):
        other_weights.predict_encoded(encoded, "nut")
    other_size = Detector.training_free(WMoEConfig.tiny(image_size=112), device="cpu")
    with pytest.raises(FeatureMismatchError, match="112 px"):
        other_size.predict_encoded(encoded, "nut")
    with pytest.raises(FeatureMismatchError, match="other weights"):
        detector.compare(image, "nut", [("x", other_weights, frozenset())])
    bf16 = Detector(detector.model, device="cpu", dtype="bf16")
    with pytest.raises(FeatureMismatchError, match="bf16"):
        bf16.predict_encoded(encoded, "nut")


def test_features_missing_a_layer_are_refused(detector, image):
    encoded = detector.encode([image], layers=(1, 2))
    with pytest.raises(FeatureMismatchError, match=r"missing \[3, 4\]"):
        detector.predict_encoded(encoded, "nut")


def test_class_names_must_match_the_batch(detector, image):
    encoded = detector.encode([image, image])
    with pytest.raises(ValueError, match="2 images but 1 class names"):
        detector.predict_encoded(encoded, ["nut"])
