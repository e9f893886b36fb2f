"""MuSc (wmoe.musc): each step on hand-computed cases, invariances on the tiny random backbone, the raw
block outputs of the shared pass, and the feature cache keeping them."""

import math

import numpy as np
import pytest
import torch

from wmoe import Detector, WMoECLIP, WMoEConfig, WMoEError, musc
from wmoe.features import BackboneFeatures, FeatureMismatchError
from wmoe.preprocess import load_image, to_tensor

EPS = 1e-5  # torch.nn.LayerNorm's default, which the reference code uses


@pytest.fixture(scope="module")
def detector():
    return Detector(WMoECLIP(WMoEConfig.tiny()), device="cpu")


def picture(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def with_patch(image: np.ndarray, seed: int = 9) -> np.ndarray:
    out = image.copy()
    out[20:36, 20:36] = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return out


# LNAMD


def grid_tokens() -> torch.Tensor:
    """One image, 3 x 3 grid, 2 channels: channel 0 holds 1..9 row by row, channel 1 is all 0."""
    values = torch.arange(1.0, 10.0)
    return torch.stack([values, torch.zeros(9)], -1)[None]  # (1, 9, 2)


def test_layer_norm_covers_the_whole_map_and_r1_is_that_alone():
    out = musc.neighbour_aggregate(grid_tokens(), 1)
    # over all 18 values: mean 45 / 18 = 2.5; variance 285 / 18 - 2.5^2 = 9.5833...
    sigma = math.sqrt(285 / 18 - 2.5**2 + EPS)
    assert out.shape == (1, 9, 2)
    assert out[0, 4, 0].item() == pytest.approx((5 - 2.5) / sigma, abs=1e-5)  # centre patch, value 5
    assert out[0, 4, 1].item() == pytest.approx(-2.5 / sigma, abs=1e-5)  # per-channel LN would give 0


def test_a_border_patch_averages_its_neighbourhood_with_the_zero_padding_counted():
    out = musc.neighbour_aggregate(grid_tokens(), 3)
    sigma = math.sqrt(285 / 18 - 2.5**2 + EPS)
    # corner (0, 0): inside the 3 x 3 window are values 1, 2, 4, 5; five padded zeros count in the mean
    assert out[0, 0, 0].item() == pytest.approx(((1 + 2 + 4 + 5) - 4 * 2.5) / sigma / 9, abs=1e-5)
    assert out[0, 0, 1].item() == pytest.approx(4 * (-2.5 / sigma) / 9, abs=1e-5)
    # centre: its window is the whole grid, no padding: channel 0's nine values, minus 9 means, over 9
    assert out[0, 4, 0].item() == pytest.approx((45 - 9 * 2.5) / sigma / 9, abs=1e-5)


def test_aggregation_refuses_a_non_square_grid_and_an_even_r():
    with pytest.raises(musc.MuScError, match="square grid"):
        musc.neighbour_aggregate(torch.zeros(1, 8, 2), 3)
    with pytest.raises(musc.MuScError, match="odd"):
        musc.neighbour_aggregate(grid_tokens(), 2)


# MSM


def line_batch() -> torch.Tensor:
    """5 images of 2 patches on a line (1 channel): image k has patches at k and 10 + 2k."""
    return torch.tensor([[[k], [10.0 + 2 * k]] for k in range(5)])


def test_each_patch_averages_an_interval_of_its_sorted_nearest_distances():
    Z = line_batch()
    # image 0, patch at 0: nearest patch of image j is j -> sorted [1, 2, 3, 4]
    # image 0, patch at 10: images 1..4 give min(10 - j, 2j) -> [2, 4, 6, 6]
    first = musc.mutual_scores(Z)  # n = 4 others: positions [0, int(1.2)) = the smallest alone
    assert first[0].tolist() == pytest.approx([1.0, 2.0])
    whole = musc.mutual_scores(Z, 0.0, 1.0)
    assert whole[0].tolist() == pytest.approx([2.5, 4.5])
    middle = musc.mutual_scores(Z, 0.25, 0.75)  # positions [1, 3)
    assert middle[0].tolist() == pytest.approx([2.5, 5.0])
    # image 2, patch at 2: others 0, 1, 3, 4 (and far 10 + 2j) -> [1, 1, 2, 2]
    assert whole[2, 0].item() == pytest.approx(1.5)


def test_distances_in_small_blocks_give_the_same_scores(monkeypatch):
    Z = torch.nn.functional.normalize(
        torch.randn(7, 16, 8, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    whole = musc.mutual_scores(Z)
    monkeypatch.setattr(musc, "DISTANCE_BLOCK", 1)  # one image pair per block
    np.testing.assert_allclose(musc.mutual_scores(Z).numpy(), whole.numpy(), atol=1e-5)
    slow = torch.cdist(Z[0], Z[1:].reshape(-1, 8)).view(16, 6, 16).amin(2).sort(1).values[:, :1].mean(1)
    np.testing.assert_allclose(whole[0].numpy(), slow.numpy(), atol=1e-5)


def test_the_minimum_batch_follows_from_the_interval_and_is_named():
    assert musc.min_images() == 5  # int(4 * 0.3) = 1 is the first non-empty interval
    assert musc.min_images(0.0, 0.5) == 3 and musc.min_images(0.0, 1.0) == 2
    with pytest.raises(musc.MuScError, match="at least 5 images") as error:
        musc.mutual_scores(torch.zeros(4, 9, 3))
    assert isinstance(error.value, WMoEError)
    with pytest.raises(musc.MuScError, match="lo < hi"):
        musc.min_images(0.3, 0.3)


# RsCIN


def test_rescoring_by_hand_on_three_images():
    scores = torch.tensor([0.0, 1.0, 2.0])  # min-max -> 0, 0.5, 1
    emb = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])  # unit: (1, 0), (0.6, 0.8), (0, 1)
    # similarities: 0-1 0.6, 0-2 0, 1-2 0.8. k = 1: itself. k = 2: itself and the most similar other:
    # row 0: (1 * 0 + 0.6 * 0.5) / 1.6; row 1: (1 * 0.5 + 0.8 * 1) / 1.8; row 2: (1 * 1 + 0.8 * 0.5) / 1.8
    k2 = [0.3 / 1.6, 1.3 / 1.8, 1.4 / 1.8]
    assert musc.rescore(scores, emb, [1]).tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert musc.rescore(scores, emb, [2]).tolist() == pytest.approx(k2)
    both = [(a + b) / 2 for a, b in zip([0.0, 0.5, 1.0], k2, strict=True)]
    assert musc.rescore(scores, emb, [1, 2]).tolist() == pytest.approx(both)
    with pytest.raises(musc.MuScError, match="1..3"):
        musc.rescore(scores, emb, [4])


def test_rescoring_equal_scores_gives_zeros_not_nan():
    out = musc.rescore(torch.ones(4), torch.randn(4, 3), [1, 2])
    assert torch.equal(out, torch.zeros(4, dtype=out.dtype))


# the shared pass: raw block outputs


def test_raw_tokens_are_the_block_outputs_of_the_same_pass(detector, backbone_images):
    calls = backbone_images
    encoded = detector.encode([picture(0), picture(1)], raw=(2, 4))
    assert calls == [2] and sorted(encoded.features.raw) == [2, 4]
    bb = detector.model.backbone
    visual = bb.clip.visual
    images = torch.stack([to_tensor(load_image(picture(s)), bb.image_size, bb.mean, bb.std) for s in (0, 1)])
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, N, W)
        cls = visual.class_embedding.expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding)
        manual = {}
        for k, block in enumerate(visual.transformer.resblocks, start=1):
            x = block(x)
            manual[k] = x[:, 1:]
    for k in (2, 4):
        raw = encoded.features.raw[k]
        assert raw.shape == (2, 13 * 13, 64)
        torch.testing.assert_close(raw, manual[k], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(raw, encoded.features.patches[k], atol=1e-2)  # not ln_post + projection


def test_features_without_raw_outputs_say_which_are_missing(detector):
    features = detector.encode([picture(0)]).features
    assert features.raw == {}
    with pytest.raises(FeatureMismatchError, match="missing"):
        features.raw_taps((1, 2))


def test_raw_outputs_travel_with_item_cat_select_and_the_feature_cache(detector, tmp_path):
    from training.feature_cache import FeatureCache

    features = detector.encode([picture(0), picture(1)], raw=(1, 3)).features
    again = BackboneFeatures.cat([features.item(0), features.item(1)])
    assert all(torch.equal(again.raw[k], features.raw[k]) for k in (1, 3))
    assert sorted(features.select((3, 4)).raw) == [3]
    bb = detector.model.backbone
    plain = FeatureCache(tmp_path, bb, (1, 2, 3, 4), torch.float32)
    cache = FeatureCache(tmp_path, bb, (1, 2, 3, 4), torch.float32, raw=(1, 3))
    assert cache.setting_id == plain.setting_id  # one folder: an entry says which raw blocks it holds
    cache.store("ab" * 32, features.item(1))
    back = cache.load("ab" * 32)
    assert sorted(back.raw) == [1, 3] and all(torch.equal(back.raw[k], features.raw[k][1:]) for k in (1, 3))
    served = plain.load("ab" * 32)  # a run without MuSc reads the MuSc entry: no second backbone pass
    assert served.raw == {} and torch.equal(served.patches[2], back.patches[2])
    plain.store("cd" * 32, features.item(0))
    assert cache.load("cd" * 32) is None and cache.stats.damaged == 0  # lacks the raw blocks: a miss


# the method end to end on the tiny random backbone


def test_a_pasted_foreign_patch_stands_out(detector, backbone_images):
    calls = backbone_images
    base = picture(0)
    images = [base] * 3 + [with_patch(base)] + [base] * 2
    preds = musc.predict_batch(detector, images, "part")
    assert calls == [6]  # one backbone pass for the batch (within a chunk of 8)
    assert [p.method for p in preds] == ["MuSc"] * 6 and preds[3].class_name == "part"
    scores = [p.score for p in preds]
    assert int(np.argmax(scores)) == 3 and scores[3] > 5 * max(scores[:3] + scores[4:])
    m = preds[3].anomaly_map
    assert m.shape == (64, 64) and preds[3].layer_maps.shape == (4, 64, 64)
    assert m[22:34, 22:34].mean() > 3 * m[:, 44:].mean()
    # one scale for the whole batch: the foreign patch reaches 1, the plain copies stay near 0
    assert max(p.anomaly_map.max() for p in preds) == pytest.approx(1.0, abs=0.02)
    assert max(preds[0].anomaly_map.max(), preds[5].anomaly_map.max()) < 0.05


def test_the_pass_runs_in_chunks_and_gives_the_results_of_one_pass(detector, backbone_images):
    """Each image through the backbone once, `chunk` at a time (memory: the activations of a chunk), with
    the results of the whole batch in one call."""
    images = [picture(s) for s in range(6)] + [with_patch(picture(0))]
    calls = backbone_images
    whole = musc.predict_batch(detector, images, chunk=len(images))
    chunked = musc.predict_batch(detector, images, chunk=3)
    assert calls == [7, 3, 3, 1]
    for a, b in zip(whole, chunked, strict=True):
        assert b.score == pytest.approx(a.score, abs=1e-5)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=1e-5)
    with pytest.raises(musc.MuScError, match="chunk must be at least 1"):
        musc.predict_batch(detector, images, chunk=0)
    kept = musc.encode(detector, images, chunk=3).features  # only what MuSc scores
    assert kept.patches == {} and sorted(kept.raw) == list(musc.musc_layers(detector.model.backbone.depth))
    assert len(kept) == 7 and kept.embedding.shape[0] == 7


def test_copies_of_one_image_score_about_zero_everywhere(detector):
    preds = musc.predict_batch(detector, [picture(3)] * 5)
    assert max(p.score for p in preds) < 0.05
    assert max(float(p.anomaly_map.max()) for p in preds) < 0.05


def test_permuting_the_batch_permutes_the_results(detector):
    images = [picture(s) for s in range(5)] + [with_patch(picture(0))]
    order = [4, 0, 5, 2, 1, 3]
    preds = musc.predict_batch(detector, images)
    moved = musc.predict_batch(detector, [images[i] for i in order])
    for j, i in enumerate(order):
        assert moved[j].score == pytest.approx(preds[i].score, abs=1e-5)
        np.testing.assert_allclose(moved[j].anomaly_map, preds[i].anomaly_map, atol=1e-5)


def test_fewer_images_than_the_minimum_fail_before_the_backbone(detector, backbone_images):
    calls = backbone_images
    with pytest.raises(musc.MuScError, match="at least 5 images.*got 4"):
        musc.predict_batch(detector, [picture(0)] * 4)
    assert calls == []
    encoded = detector.encode([picture(0)] * 3, raw=(1, 2, 3, 4))
    with pytest.raises(musc.MuScError, match="at least 5 images"):
        musc.predictions(encoded)
