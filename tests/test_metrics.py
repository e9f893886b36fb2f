"""Tests for wmoe.metrics: hand cases from docs/design.md, sklearn agreement, an exact slow AUPRO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import wmoe.metrics as M

IMAGE_FUNCS = [M.image_auroc, M.image_ap, M.f1_max]
PIXEL_FUNCS = [M.pixel_auroc, M.pixel_ap, M.pixel_f1_max, M.aupro]


# ----------------------------------------------------------------------------------------------
# helpers: independent references
# ----------------------------------------------------------------------------------------------


def _sk_f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    denom = p + r
    f1 = np.where(denom > 0, 2 * p * r / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def _integrate_to(xs, ys, limit):
    """Area under the polyline (xs, ys) for x in [0, limit], segment by segment (x non-decreasing)."""
    area = 0.0
    for i in range(1, len(xs)):
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_end) / 2
            break
    return area


def _slow_aupro(masks, maps, fpr_limit=0.3):
    """Exact AUPRO by brute force: one binarisation per distinct score, PRO = mean overlap of regions."""
    masks = masks.astype(bool)
    regions = []
    for i in range(masks.shape[0]):
        lab, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for r in range(1, k + 1):
            regions.append((i, lab == r))
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & reg).sum() / reg.sum() for i, reg in regions])
        xs.append(float(fpr))
        ys.append(float(pro))
    return _integrate_to(xs, ys, fpr_limit) / fpr_limit


def _random_pixel_case(rng, n=3, h=12, w=12, levels=25):
    """Masks with several blobs per image (some images normal), maps correlated with them, with ties."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i == 0 or rng.random() < 0.8:
            for _ in range(rng.integers(2, 5)):
                cy, cx = rng.integers(0, h), rng.integers(0, w)
                ry, rx = rng.integers(1, 3), rng.integers(1, 3)
                masks[i, max(cy - ry, 0) : cy + ry, max(cx - rx, 0) : cx + rx] = True
    maps = rng.random((n, h, w)) + 0.7 * masks
    maps = np.round(maps * levels) / levels  # quantised: many ties
    return masks, maps.astype(np.float32)


@pytest.fixture(params=[None, 5], ids=["one_chunk", "chunk5"])
def chunk(request, monkeypatch):
    """Run the streamed computations both in one chunk and in tiny chunks (run boundaries)."""
    if request.param is not None:
        monkeypatch.setattr(M, "_CHUNK", request.param)
    return request.param


# ----------------------------------------------------------------------------------------------
# hand cases (docs/design.md "Metrics conventions")
# ----------------------------------------------------------------------------------------------


def test_perfect_map_gives_one():
    rng = np.random.default_rng(0)
    masks, _ = _random_pixel_case(rng, n=4, h=20, w=20)
    maps = masks.astype(np.float32)
    for f in PIXEL_FUNCS:
        assert f(masks, maps) == pytest.approx(1.0, abs=1e-12), f.__name__
    # strictly separated but not binary
    maps2 = rng.random(masks.shape).astype(np.float32) * 0.4 + 0.6 * masks
    assert M.aupro(masks, maps2) == pytest.approx(1.0, abs=1e-12)
    assert M.pixel_auroc(masks, maps2) == pytest.approx(1.0, abs=1e-12)


def test_reversed_map_gives_zero():
    rng = np.random.default_rng(1)
    masks, _ = _random_pixel_case(rng, n=4, h=20, w=20)
    maps = rng.random(masks.shape).astype(np.float32) * 0.4 + 0.6 * ~masks
    assert M.aupro(masks, maps) == pytest.approx(0.0, abs=1e-12)
    assert M.pixel_auroc(masks, maps) == pytest.approx(0.0, abs=1e-12)
    assert M.aupro(masks, (~masks).astype(np.float32)) == pytest.approx(0.0, abs=1e-12)


def test_ramp_image_aupro_half(chunk):
    # 400x7 image scored by its column index, column 5 anomalous, fpr_limit 1/3:
    # curve (0,0), (1/6,0), (1/6,1), (1/3,1) -> area 1/6, divided by 1/3 -> 0.5.
    maps = np.tile(np.arange(7, dtype=np.float32), (400, 1))[None]
    masks = np.zeros_like(maps, dtype=bool)
    masks[..., 5] = True
    assert M.aupro(masks, maps, fpr_limit=1 / 3) == pytest.approx(0.5, abs=1e-12)


def test_own_hand_case_region_weighting():
    # One 2x4 image, mask and scores:
    #   mask  [[1, 1, 0, 0],      scores [[9, 6, 7, 3],
    #          [0, 0, 0, 1]]              [2, 1, 0, 8]]
    # Regions (8-connectivity): A = {(0,0),(0,1)}, |A| = 2; B = {(1,3)}, |B| = 1; 2 regions.
    # (0,1) and (1,3) are two columns apart, so A and B stay separate. 5 normal pixels.
    # PRO steps: A pixel 1/(2*2) = 0.25, B pixel 1/(1*2) = 0.5; FPR step 1/5 = 0.2.
    # Descending: 9 (A) -> (0, .25); 8 (B) -> (0, .75); 7 (normal) -> (.2, .75);
    #             6 (A) -> (.2, 1); 3 (normal) -> (.4, 1); ...
    # Up to FPR 0.3: .2 * .75 + .1 * 1 = .25; / .3 = 5/6.
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1]]], dtype=bool)
    maps = np.array([[[9, 6, 7, 3], [2, 1, 0, 8]]], dtype=np.float32)
    assert M.aupro(masks, maps, fpr_limit=0.3) == pytest.approx(5 / 6, abs=1e-12)
    assert M.aupro(masks, maps, fpr_limit=0.3) == pytest.approx(_slow_aupro(masks, maps, 0.3), abs=1e-12)


def test_own_hand_case_eight_connectivity():
    # 4x4 image, anomalous pixels (0,0), (1,1), (3,3): with 8-connectivity (0,0)-(1,1) is one
    # region of 2 pixels and (3,3) another (2 regions); 13 normal pixels.
    # Scores: (3,3) = 10, normal (2,0) = 9, everything else 0.
    # Curve: (0,0) -> (0, 1/(1*2) = .5) -> (1/13, .5) -> ...; limit 1/13 gives area .5/13, /(1/13) = .5.
    # (With 4-connectivity it would be 3 regions and PRO 1/3.)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.zeros((1, 4, 4), dtype=np.float64)
    maps[0, 3, 3] = 10
    maps[0, 2, 0] = 9
    assert M.aupro(masks, maps, fpr_limit=1 / 13) == pytest.approx(0.5, abs=1e-12)


def test_regions_numbered_globally_across_images():
    # Image 0 has a 1-pixel region, image 1 a 2-pixel region; numbered globally they are 2 regions,
    # and the 1-pixel one gets PRO step 1/(1*2) = .5 (merging the labels would give 1/3).
    # 15 normal pixels. Scores: region of image 0 = 2, one normal pixel = 1, rest 0.
    # Curve (0,0), (0,.5), (1/15,.5), ...; at limit 1/15: area .5/15 -> .5
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 1, 1] = masks[1, 0, 0] = masks[1, 0, 1] = True
    maps = np.zeros((2, 3, 3))
    maps[0, 1, 1] = 2.0
    maps[1, 2, 2] = 1.0
    assert M.aupro(masks, maps, fpr_limit=1 / 15) == pytest.approx(0.5, abs=1e-12)


def test_f1_max_hand_case():
    # labels 1 0 1 0, scores .9 .8 .7 .1
    # thresholds: >=.9: P=1 R=1/2 F1=2/3; >=.8: P=1/2 R=1/2 F1=1/2;
    #             >=.7: P=2/3 R=1 F1=.8;  >=.1: P=1/2 R=1 F1=2/3.  Max = 0.8
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert M.f1_max(y, s) == pytest.approx(0.8, abs=1e-12)
    # ties: scores .5 .5 .5 .1 with labels 1 0 1 0 -> only thresholds .5 (P=2/3,R=1,F1=.8) and .1
    assert M.f1_max(y, np.array([0.5, 0.5, 0.5, 0.1])) == pytest.approx(0.8, abs=1e-12)
    # all tied: one threshold, P = 1/2, R = 1 -> 2/3
    assert M.f1_max(y, np.ones(4)) == pytest.approx(2 / 3, abs=1e-12)


def test_image_hand_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert M.image_auroc(y, s) == pytest.approx(0.75)
    assert M.image_ap(y, s) == pytest.approx((1 / 2) * 1 + (1 / 2) * (2 / 3))


# ----------------------------------------------------------------------------------------------
# agreement with scikit-learn and with the slow exact AUPRO
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_image_metrics_match_sklearn_with_ties(seed, chunk):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = rng.random(n) < rng.uniform(0.05, 0.95)
    y[0], y[-1] = True, False
    levels = int(rng.integers(1, 30))
    s = rng.integers(0, levels + 1, n) / max(levels, 1) + 0.3 * y * rng.random()
    s = s.astype(np.float32 if seed % 2 else np.float64)
    assert M.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert M.f1_max(y, s) == pytest.approx(_sk_f1_max(y, s), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_metrics_match_sklearn_with_ties(seed, chunk):
    rng = np.random.default_rng(100 + seed)
    masks, maps = _random_pixel_case(rng, n=4, h=24, w=24, levels=int(rng.integers(3, 60)))
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-6)
    assert M.pixel_f1_max(masks, maps) == pytest.approx(_sk_f1_max(y, s), abs=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_aupro_matches_slow_exact_reference(seed, chunk):
    rng = np.random.default_rng(200 + seed)
    masks, maps = _random_pixel_case(rng, n=3, h=12, w=12, levels=int(rng.integers(4, 40)))
    n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    assert n_regions >= 2
    for limit in (0.3, 0.05, 1 / 3, 1.0):
        got = M.aupro(masks, maps, fpr_limit=limit)
        assert got == pytest.approx(_slow_aupro(masks, maps, limit), abs=1e-6)
        assert 0.0 <= got <= 1.0


def test_aupro_continuous_scores_match_slow_reference():
    rng = np.random.default_rng(7)
    masks, _ = _random_pixel_case(rng, n=2, h=10, w=10)
    maps = (rng.random(masks.shape) + 0.5 * masks).astype(np.float64)  # all distinct
    assert M.aupro(masks, maps) == pytest.approx(_slow_aupro(masks, maps), abs=1e-6)


# ----------------------------------------------------------------------------------------------
# invariance, NaN, bundles
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_invariant_to_strictly_increasing_transform(seed):
    rng = np.random.default_rng(300 + seed)
    masks, maps = _random_pixel_case(rng, n=3, h=16, w=16, levels=20)
    transforms = [lambda a: np.exp(3.0 * a) - 5.0, lambda a: a**3 * 100 + 1, lambda a: np.round(a * 20)]
    for tf in transforms:
        maps_t = tf(maps.astype(np.float64))
        for f in PIXEL_FUNCS:
            assert f(masks, maps_t) == pytest.approx(f(masks, maps), abs=1e-12), f.__name__
        labels = masks.any(axis=(1, 2))
        labels[0] = True
        labels[-1] = False
        scores = maps.reshape(len(maps), -1).max(axis=1)
        for f in IMAGE_FUNCS:
            assert f(labels, tf(scores.astype(np.float64))) == pytest.approx(f(labels, scores), abs=1e-12)


def test_single_label_gives_nan():
    s = np.array([0.1, 0.5, 0.3])
    for f in IMAGE_FUNCS:
        assert math.isnan(f(np.zeros(3, bool), s)), f.__name__
        assert math.isnan(f(np.ones(3, bool), s)), f.__name__
    maps = np.random.default_rng(0).random((2, 5, 5))
    for f in PIXEL_FUNCS:
        assert math.isnan(f(np.zeros((2, 5, 5), bool), maps)), f.__name__
        assert math.isnan(f(np.ones((2, 5, 5), bool), maps)), f.__name__
    out = M.compute_all(np.zeros(2, bool), np.array([0.1, 0.2]), np.zeros((2, 5, 5), bool), maps)
    assert set(out) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro",
    }
    assert all(math.isnan(v) for v in out.values())


def test_compute_all_matches_individual_functions():
    rng = np.random.default_rng(5)
    masks, maps = _random_pixel_case(rng, n=5, h=16, w=16)
    labels = masks.any(axis=(1, 2))
    labels[-1] = False
    scores = maps.reshape(5, -1).max(axis=1)
    out = M.compute_all(labels, scores, masks, maps)
    assert out["image_auroc"] == M.image_auroc(labels, scores)
    assert out["image_ap"] == M.image_ap(labels, scores)
    assert out["image_f1_max"] == M.f1_max(labels, scores)
    assert out["pixel_auroc"] == M.pixel_auroc(masks, maps)
    assert out["pixel_ap"] == M.pixel_ap(masks, maps)
    assert out["pixel_f1_max"] == M.pixel_f1_max(masks, maps)
    assert out["pixel_aupro"] == M.aupro(masks, maps)
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in out.values())
    only_image = M.compute_all(labels, scores)
    assert set(only_image) == {"image_auroc", "image_ap", "image_f1_max"}
    with pytest.raises(ValueError):
        M.compute_all(labels, scores, masks=masks)


def test_macro_mean_ignores_nan():
    per_class = {
        "a": {"image_auroc": 0.8, "pixel_aupro": float("nan")},
        "b": {"image_auroc": float("nan"), "pixel_aupro": float("nan")},
        "c": {"image_auroc": 0.6, "pixel_aupro": float("nan")},
    }
    out = M.macro_mean(per_class)
    assert out["image_auroc"] == pytest.approx(0.7)
    assert math.isnan(out["pixel_aupro"])


def test_input_validation():
    with pytest.raises(ValueError):
        M.image_auroc(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        M.image_auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError):
        M.pixel_auroc(np.eye(3, dtype=bool), np.where(np.eye(3) > 0, np.nan, 0).astype(np.float32))
    with pytest.raises(ValueError):
        M.aupro(np.ones((1, 2, 2), bool), np.ones((1, 2, 2)), fpr_limit=0.0)
    # 0/255 uint8 masks and a single (H,W) image are accepted
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    assert M.aupro(mask, mask.astype(np.float32)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.float16, np.int8, np.int32, np.uint8, np.uint32, np.int64]
)
def test_score_dtypes_and_sort_paths(dtype, chunk):
    # float32-representable scores take the packed-uint64 sort, others (true float64, int64) the
    # argsort; negative values, -0.0 vs +0.0 ties and integer scores must all rank correctly.
    rng = np.random.default_rng(11)
    y = rng.random(500) < 0.3
    y[:2] = [True, False]
    if np.issubdtype(dtype, np.unsignedinteger):
        s = rng.integers(0, 200, 500).astype(dtype)
    elif np.issubdtype(dtype, np.integer):
        s = rng.integers(-100, 100, 500).astype(dtype)
    else:
        s = (rng.integers(-50, 50, 500) / 8.0).astype(dtype)
        s[s == 0] = np.where(rng.random(int((s == 0).sum())) < 0.5, -0.0, 0.0)
        if dtype == np.float64:
            s = s + rng.random(500) * 1e-12  # not float32-representable: generic path
    s = s + (y * 3).astype(dtype) if np.issubdtype(dtype, np.signedinteger) else s
    ref = s.astype(np.float64)
    assert M.image_auroc(y, s) == pytest.approx(roc_auc_score(y, ref), abs=1e-9)
    assert M.image_ap(y, s) == pytest.approx(average_precision_score(y, ref), abs=1e-9)
    assert M.f1_max(y, s) == pytest.approx(_sk_f1_max(y, ref), abs=1e-9)


def test_float64_holding_float32_values_takes_fast_path_and_agrees():
    rng = np.random.default_rng(12)
    masks, maps = _random_pixel_case(rng, n=3, h=16, w=16)
    r32 = M._Ranking(maps.ravel())
    r64 = M._Ranking(maps.astype(np.float64).ravel())
    assert r32.packed is not None and r64.packed is not None
    assert M._Ranking((maps.astype(np.float64) + 1e-12).ravel()).order is not None
    for f in PIXEL_FUNCS:
        assert f(masks, maps.astype(np.float64)) == f(masks, maps)
