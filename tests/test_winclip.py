"""WinCLIP / WinCLIP+ (wmoe.winclip): hand-computed steps, invariances on the tiny random backbone, weights."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from wmoe import Prediction, WeightsNotFoundError
from wmoe.winclip import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    WEIGHTS_ENV,
    WinCLIP,
    anomaly_probability,
    association_score,
    harmonic_aggregation,
    harmonic_mean,
    prompt_ensemble,
    window_masks,
    window_scales,
)


@pytest.fixture(scope="module")
def winclip():
    return WinCLIP.tiny(device="cpu")


@pytest.fixture(scope="module")
def pasted():
    """A plain noisy grey picture and the same with a foreign striped patch pasted at rows 120:168, cols 40:88."""
    rng = np.random.default_rng(0)
    base = (128 + rng.integers(-8, 8, (208, 208, 3))).astype(np.uint8)
    image = base.copy()
    patch = np.zeros((48, 48, 3), np.uint8)
    patch[::8, :] = 255
    patch[:, ::8, 0] = 255
    image[120:168, 40:88] = patch
    mask = np.zeros((208, 208), bool)
    mask[120:168, 40:88] = True
    return base, image, mask


def test_window_masks_4x4_scale_2():
    masks = window_masks((4, 4), 2)
    assert masks.shape == (9, 4)  # (4 - 2 + 1) ** 2 windows of 2 x 2 patches
    expected = [[r * 4 + c, r * 4 + c + 1, r * 4 + c + 4, r * 4 + c + 5] for r in range(3) for c in range(3)]
    assert masks.tolist() == expected
    assert masks[0].tolist() == [0, 1, 4, 5] and masks[-1].tolist() == [10, 11, 14, 15]
    assert window_masks((4, 4), 2, stride=2).tolist() == [
        [0, 1, 4, 5],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [10, 11, 14, 15],
    ]
    with pytest.raises(ValueError):
        window_masks((4, 4), 5)


def test_window_scales_follow_the_grid():
    assert window_scales((15, 15)) == (2, 3)  # the paper's ViT-B-16-plus-240 at 240 px
    assert window_scales((37, 37)) == (5, 7)


def test_harmonic_aggregation_by_hand():
    masks = window_masks((3, 3), 2)  # windows {0,1,3,4}, {1,2,4,5}, {3,4,6,7}, {4,5,7,8}
    scores = torch.tensor([[0.5, 0.25, 1.0, 0.2]])  # inverses 2, 4, 1, 5
    expected = [[0.5, 2 / 6, 0.25], [2 / 3, 4 / 12, 2 / 9], [1.0, 2 / 6, 0.2]]
    out = harmonic_aggregation(scores, masks, (3, 3))
    assert out.shape == (1, 3, 3)
    assert torch.allclose(out[0], torch.tensor(expected))
    zero = harmonic_aggregation(torch.tensor([[0.0, 0.5, 0.5, 0.5]]), masks, (3, 3))[0]
    assert zero[0, 0] == 0 and zero[1, 1] == 0 and zero[2, 2] == 0.5  # a zero window zeroes what it covers
    assert torch.allclose(harmonic_mean([torch.tensor(0.5), torch.tensor(0.25)]), torch.tensor(1 / 3))


def test_scores_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # normal, anomalous
    p = anomaly_probability(torch.tensor([[0.0, 2.0], [3.0, 0.0]]), text, temperature=0.5)
    e = math.exp(2.0)
    assert torch.allclose(p, torch.tensor([e / (e + 1), 1 / (1 + e)]))
    memory = torch.tensor([[1.0, 0.0]])
    d = association_score(torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [0.0, 5.0]]]), memory)
    assert torch.allclose(d, torch.tensor([[0.0, 1.0, 0.5]]))


def test_prompt_ensemble_shapes(winclip):
    normal, anomalous = prompt_ensemble("screw")
    assert len(normal) == len(NORMAL_STATES) * len(TEMPLATES) and len(set(normal)) == len(normal)
    assert len(anomalous) == len(ANOMALOUS_STATES) * len(TEMPLATES)
    assert "a photo of a damaged screw." in anomalous and "a photo of the flawless screw." in normal
    text = winclip.text_embeddings("screw")
    assert text.shape == (2, winclip.backbone.embed_dim)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():  # the reference code's order: the raw embeddings averaged, then normalised
        raw = [winclip.backbone.encode_text(prompts).float() for prompts in (normal, anomalous)]
    expected = torch.stack([r.mean(0) / r.mean(0).norm() for r in raw])
    assert torch.allclose(text, expected, atol=1e-5)
    unit_first = torch.stack([F.normalize(F.normalize(r, dim=-1).mean(0), dim=0) for r in raw])
    assert not torch.allclose(unit_first, expected, atol=1e-4)  # the order matters on this model
    assert not torch.allclose(text[0], text[1], atol=1e-3)
    assert not torch.allclose(text, winclip.text_embeddings("wood"), atol=1e-3)


def test_windows_get_different_embeddings(winclip, pasted):
    """The permute trap: windows mixed by a sequence-first permute all get one embedding (a flat map)."""
    x = winclip.preprocess([Image.fromarray(pasted[1])])
    image, patches, windows = winclip.encode(x)
    assert torch.allclose(image, winclip.backbone.clip.encode_image(x), atol=1e-5)
    assert patches.shape[1] == winclip.grid[0] * winclip.grid[1]
    for emb, masks in zip(windows, winclip.masks, strict=True):
        assert emb.shape[:2] == (1, masks.shape[0])
        assert emb.std(dim=1).mean() > 1e-2  # not all equal
        # window 5 through the transformer on its own gives what the batched pass gave it
        visual = winclip.backbone.clip.visual
        tokens = visual._embeds(x)[:, torch.cat([torch.zeros(1, dtype=torch.long), masks[5] + 1])]
        alone = visual._pool(visual.transformer(tokens))[0] @ visual.proj
        assert torch.allclose(emb[0, 5], alone[0], atol=1e-5)


def test_predict_returns_a_prediction(winclip, pasted):
    p = winclip.predict(pasted[1][:150], "screw")
    assert isinstance(p, Prediction) and p.method == "WinCLIP" and p.to_dict()["method"] == "WinCLIP"
    assert p.anomaly_map.shape == (150, 208) and p.anomaly_map.dtype == np.float32
    assert 0 <= p.anomaly_map.min() and p.anomaly_map.max() <= 1 and 0 <= p.score <= 1
    assert p.score == p.cls_score and p.references == 0 and p.reference_map is None
    assert p.layer_maps.shape == (1 + len(winclip.scales), 150, 208)
    assert "no class name" in winclip.predict(pasted[1][:150], "").notes[0]
    assert not winclip.predict(pasted[1][:150], "screw").notes
    assert "cut to fit" in winclip.predict(pasted[1][:150], "screw " * 70).notes[0]


def test_pasted_patch_stands_out(winclip, pasted):
    """Random weights: the map's deviation from its median is larger on the foreign patch than elsewhere."""
    _, image, mask = pasted
    amap = winclip.predict(image, "object").anomaly_map
    dev = np.abs(amap - np.median(amap))
    assert dev[mask].mean() > 2 * dev[~mask].mean()


def test_winclip_plus_reference_identical_scores_low(winclip, pasted):
    base, image, mask = pasted
    alone = winclip.predict(base, "object")
    same = winclip.predict(base, "object", references=[base])
    assert same.method == "WinCLIP+" and same.references == 1
    assert same.reference_score < 1e-4 and same.reference_map.max() < 1e-4
    assert same.score < alone.score and same.zero_shot_score == pytest.approx(alone.score)
    assert np.allclose(same.anomaly_map, (same.zero_shot_map + same.reference_map) / 2, atol=1e-6)
    other = winclip.predict(image, "object", references=[base])
    assert other.reference_score > 100 * same.reference_score + 0.01
    assert other.reference_map[mask].mean() > 5 * other.reference_map[~mask].mean()


def test_offline_without_weights_is_fast_and_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        WinCLIP.from_pretrained(device="cpu")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert WEIGHTS_ENV in msg and "laion400m_e31" in msg and "hf download" in msg


def test_local_weights_file_via_the_variable(monkeypatch, tmp_path, winclip, pasted):
    path = tmp_path / "winclip.safetensors"
    save_file({k: v.contiguous() for k, v in winclip.backbone.clip.state_dict().items()}, str(path))
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    loaded = WinCLIP.tiny(device="cpu", seed=7)  # another random init: only the file can make them equal
    assert loaded.backbone.source[-1] == str(path)
    assert loaded.backbone.fingerprint() == winclip.backbone.fingerprint()
    assert loaded.predict(pasted[1], "object").score == pytest.approx(
        winclip.predict(pasted[1], "object").score
    )
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_ENV):
        WinCLIP.tiny(device="cpu")
