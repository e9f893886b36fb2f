"""Reference images (wmoe.references through Detector): the reference map, the combined result, errors, caching."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe import Detector, ImageError, WMoEConfig, load_model
from wmoe.references import CACHE, MAX_REFERENCES, ReferenceCache, combine


def texture(size: int = 96) -> np.ndarray:
    base = (np.indices((size, size)).sum(0) % 16 < 8).astype(np.uint8) * 160 + 40
    return np.stack([base, base, base], -1)


def with_foreign_patch(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[32:64, 32:64] = np.random.default_rng(0).integers(0, 255, (32, 32, 3))
    return out


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    """The tiny checkpoint as a trained one: its zero-shot part is combined with the references."""
    model, info = load_model(tiny_checkpoint)
    return Detector(model, device="cpu", info={**info, "trained": True})


def test_an_image_whose_patches_are_all_in_the_references_gets_zero(detector):
    normal = Image.fromarray(texture())
    p = detector.predict(normal, "tile", references=[normal, Image.fromarray(texture()[::-1].copy())])
    assert p.reference_map.shape == p.anomaly_map.shape == p.zero_shot_map.shape == (96, 96)
    assert p.reference_map.max() < 1e-4 and p.references == 2


def test_a_pasted_foreign_patch_stands_out_and_the_parts_combine_as_documented(detector):
    normal = Image.fromarray(texture())
    p = detector.predict(Image.fromarray(with_foreign_patch(texture())), "tile", references=[normal])
    inside = p.reference_map[32:64, 32:64]
    outside = np.ones(p.reference_map.shape, bool)
    outside[24:72, 24:72] = False
    assert inside.mean() > 0.05 and inside.mean() > 20 * p.reference_map[outside].mean()
    assert 0 <= p.reference_map.min() and p.reference_map.max() <= 1
    alone = detector.predict(Image.fromarray(with_foreign_patch(texture())), "tile")
    assert alone.reference_map is None and alone.zero_shot_map is alone.anomaly_map
    np.testing.assert_allclose(p.zero_shot_map, alone.anomaly_map, atol=1e-6)
    np.testing.assert_allclose(p.anomaly_map, (alone.anomaly_map + p.reference_map) / 2, atol=1e-6)
    assert p.score == pytest.approx((alone.score + p.reference_score) / 2, abs=1e-6)
    assert p.reference_map.max() <= p.reference_score + 1e-6 and p.reference_score > 0.05
    assert p.zero_shot_score == pytest.approx(alone.score, abs=1e-6)
    doc = p.to_dict()
    assert doc["references"] == 1 and doc["reference_score"] == pytest.approx(p.reference_score, abs=1e-5)


def test_references_are_encoded_once_across_requests_whatever_their_form(detector, tmp_path, backbone_images):
    CACHE._entries.clear()
    calls = backbone_images
    path = tmp_path / "normal.png"
    Image.fromarray(texture()).save(path)
    image = with_foreign_patch(texture())
    first = detector.predict(image, "tile", references=[path])
    second = detector.predict(image, "tile", references=[path.read_bytes()])  # same pixels, other form
    third = detector.predict_batch([image, image], "tile", references=[Image.open(path)])
    assert calls == [1, 1, 1, 2]  # the reference once, then only the images
    np.testing.assert_array_equal(first.reference_map, second.reference_map)
    np.testing.assert_allclose(third[0].reference_map, first.reference_map, atol=1e-6)
    detector.predict(image, "tile", references=[Image.fromarray(texture()[::-1].copy())])
    assert calls[-2:] == [1, 1]  # other references: encoded


def test_the_cache_is_bounded():
    cache, backbone = ReferenceCache(max_sets=2), object.__new__(type("B", (), {}))
    for i in range(3):
        cache.get(backbone, (i,), lambda i=i: i)
    assert len(cache) == 2 and cache.get(backbone, (0,), lambda: "again") == "again"


def test_bad_references_get_clear_errors(detector):
    image = Image.fromarray(texture())
    with pytest.raises(ImageError, match="reference 2: .*not an image"):
        detector.predict(image, "tile", references=[image, b"this is not a picture"])
    with pytest.raises(ImageError, match=f"at most {MAX_REFERENCES}"):
        detector.predict(image, "tile", references=[image] * (MAX_REFERENCES + 1))
    with pytest.raises(ImageError, match="a list of images"):
        detector.predict(image, "tile", references=image)
    assert detector.predict(image, "tile", references=[]).reference_map is None


def test_the_training_free_baseline_takes_references_too():
    baseline = Detector.training_free(WMoEConfig.tiny(), device="cpu")
    normal = Image.fromarray(texture())
    p = baseline.predict(Image.fromarray(with_foreign_patch(texture())), "tile", references=[normal])
    assert p.reference_map[32:64, 32:64].mean() > 0.05 and p.references == 1
    # references on their own: the never-trained zero-shot map is not averaged in
    np.testing.assert_array_equal(p.anomaly_map, p.reference_map)
    assert p.score == p.reference_score and p.zero_shot_score != p.reference_score
    assert not np.allclose(p.zero_shot_map, p.reference_map, atol=1e-3)
    buffer = io.BytesIO()
    normal.save(buffer, "png")
    assert baseline.predict(normal, "tile", references=[buffer.getvalue()]).reference_map.max() < 1e-4


def test_an_untrained_checkpoint_gives_the_references_alone(tiny_checkpoint, detector):
    untrained = Detector.from_pretrained(tiny_checkpoint, device="cpu")
    assert not untrained.trained and detector.trained
    image, normal = Image.fromarray(with_foreign_patch(texture())), [Image.fromarray(texture())]
    alone, combined = (d.predict(image, "tile", references=normal) for d in (untrained, detector))
    np.testing.assert_array_equal(alone.anomaly_map, alone.reference_map)
    assert alone.score == alone.reference_score
    assert (alone.method, combined.method) == ("WMoE-CLIP references alone", "WMoE-CLIP")  # names what ran
    np.testing.assert_allclose(alone.reference_map, combined.reference_map, atol=1e-6)
    np.testing.assert_allclose(alone.zero_shot_map, combined.zero_shot_map, atol=1e-6)
    assert not np.allclose(alone.anomaly_map, combined.anomaly_map, atol=1e-3)


@pytest.mark.parametrize("trained", [True, False])
def test_combine_averages_a_trained_part_and_leaves_an_untrained_one_out(trained):
    zero_shot_map, zero_shot_score = torch.full((1, 4, 4), 0.8), torch.tensor([0.6])
    grid = torch.tensor([[[0.0, 0.2], [0.4, 1.5]]])  # (1, 2, 2); 1.5 is clipped in the map, not in the score
    amap, score, ref, ref_score = combine(zero_shot_map, zero_shot_score, grid, trained=trained)
    assert ref.shape == (1, 4, 4) and ref[0, 0, 0] == 0.0 and ref[0, -1, -1] == 1.0  # corners: grid values
    assert ref[0, 1, 1] == pytest.approx(
        0.75 * 0.75 * 0.0 + 0.75 * 0.25 * 0.2 + 0.25 * 0.75 * 0.4 + 0.0625 * 1.5
    )
    assert ref_score.tolist() == [1.5]
    if trained:
        torch.testing.assert_close(amap, (0.8 + ref) / 2)
        assert score.tolist() == pytest.approx([(0.6 + 1.5) / 2])
    else:
        assert torch.equal(amap, ref) and torch.equal(score, ref_score)
