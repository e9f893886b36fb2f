"""Evaluation metrics for zero-shot anomaly detection (plain numpy, no torch).

Image level: AUROC, AP, F1-max. Pixel level: AUROC, AP, F1-max and AUPRO (the exact reference
algorithm of Bergmann et al., IJCV 2021 / MVTec's evaluation code, see docs/design.md "Metrics conventions").

Conventions, shared by every function here:
- Results are fractions in 0..1 (multiply by 100 for tables yourself).
- A set holding a single label (all normal or all anomalous) gives `float('nan')`, never 0: a 0
  would silently lower a macro mean.
- Curves are exact: every distinct score is a threshold. Scores are sorted once (descending) and
  tied scores are resolved by keeping only the last point of each run of ties, which is what
  scikit-learn's `roc_auc_score` / `average_precision_score` do, so results agree with them.
- Scores are ranked in their own precision (never down-cast: that would merge distinct scores
  into ties and change the result). The one sort holds 8 bytes per pixel (uint64 packed
  key+index for float32-representable scores, else an int64 argsort); everything after it is
  streamed in chunks, so pixel metrics need about 8 bytes per pixel of temporaries (12 for
  AUPRO, which adds int32 region labels).
- Non-bool labels/masks are binarised with `> 0.5` (works for 0/1, 0/255 and resized float masks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
from scipy import ndimage

from .errors import ArgumentError

__all__ = [
    "image_auroc",
    "image_ap",
    "f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "aupro",
    "compute_all",
    "macro_mean",
]

_CHUNK = 1 << 20  # pixels handled per streamed chunk after the sort (~50 MB of temporaries at most)
_NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------


def _as_bool(a: np.ndarray) -> np.ndarray:
    """Return `a` as a bool array, without a copy when it already is one."""
    a = np.asarray(a)
    return a if a.dtype == np.bool_ else a > 0.5


def _as_scores(s: np.ndarray) -> np.ndarray:
    """Return scores as a numeric array in their own dtype (bool/int/float accepted)."""
    s = np.asarray(s)
    if s.dtype == np.bool_:
        s = s.view(np.uint8)
    if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
        raise ArgumentError(f"scores must be numeric, got dtype {s.dtype}")
    return s


def _check_pair(y: np.ndarray, s: np.ndarray, what: str) -> None:
    if y.shape != s.shape:
        raise ArgumentError(f"{what}: shapes differ, {y.shape} vs {s.shape}")


def _pixel_inputs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N,H,W) (or a single (H,W)) masks/maps; return (bool masks, numeric maps), both 3-D."""
    m = _as_bool(masks)
    a = _as_scores(maps)
    _check_pair(m, a, "masks/maps")
    if m.ndim == 2:
        m, a = m[None], a[None]
    if m.ndim != 3:
        raise ArgumentError(f"masks/maps must be (N,H,W) or (H,W), got shape {m.shape}")
    return m, a


_LOW32 = np.uint64(0xFFFFFFFF)


def _uint32_keys(part: np.ndarray) -> np.ndarray | None:
    """Order-preserving uint32 keys of a chunk of scores (equal scores <-> equal keys), or None
    when the dtype does not fit in 32 bits losslessly. Raises on NaN (it has no rank)."""
    dt = part.dtype
    if dt == np.float64:
        p32 = part.astype(np.float32)
        if not np.array_equal(p32, part):  # NaN also lands here (NaN != NaN) -> generic path
            return None
        part, dt = p32, p32.dtype
    if dt == np.float16:
        part, dt = part.astype(np.float32), np.dtype(np.float32)
    if dt == np.float32:
        if np.isnan(part).any():
            raise ArgumentError("scores contain NaN")
        u = (part + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0 (they compare equal)
        neg = u >= np.uint32(0x80000000)
        return np.where(neg, ~u, u | np.uint32(0x80000000))
    if dt.kind == "u" and dt.itemsize <= 4:
        return part.astype(np.uint32)
    if dt.kind == "i" and dt.itemsize <= 4:
        return part.astype(np.int32).view(np.uint32) ^ np.uint32(0x80000000)
    return None


class _Ranking:
    """The one sort of a flat score array, walked in descending order chunk by chunk.

    Fast path (scores whose values fit losslessly in 32 bits, i.e. float32/float16/small ints, or
    float64 holding float32 values, and fewer than 2**32 of them): each score becomes an
    order-preserving uint32 key packed with its index into one uint64, and the packed array is
    sorted with `np.sort` (SIMD, ~3x faster than `argsort` on float32). Otherwise an int64
    `argsort`. Either way 8 bytes per element, made chunk by chunk.
    """

    def __init__(self, flat_scores: np.ndarray):
        self.scores = flat_scores
        n = flat_scores.size
        self.packed: np.ndarray | None = None
        self.order: np.ndarray | None = None
        if 0 < n < 2**32:
            packed = np.empty(n, dtype=np.uint64)
            step = _CHUNK
            for lo in range(0, n, step):
                keys = _uint32_keys(flat_scores[lo : lo + step])
                if keys is None:
                    packed = None
                    break
                out = packed[lo : lo + step]
                np.left_shift(keys.astype(np.uint64), np.uint64(32), out=out)
                out |= np.arange(lo, lo + keys.size, dtype=np.uint64)
            if packed is not None:
                packed.sort()
                self.packed = packed
                return
        order = np.argsort(flat_scores)
        # NaN sorts last, so checking the largest element is enough.
        if n and np.isnan(flat_scores[order[-1]]):
            raise ArgumentError("scores contain NaN")
        self.order = order

    def runs(self, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Walk the scores in descending order, one chunk at a time.

        Yields `(idx, last)`: `idx` are flat indices of the chunk's elements (descending score),
        `last` marks the elements that end a run of tied scores (the only points of an exact
        curve: a threshold sits between distinct scores). Chunking keeps temporaries small.
        """
        chunk = int(chunk or _CHUNK)
        hi = self.scores.size
        while hi > 0:
            lo = max(hi - chunk, 0)
            if self.packed is not None:
                seg = self.packed[lo:hi][::-1]
                idx = (seg & _LOW32).astype(np.intp)
                key = seg >> np.uint64(32)
                nxt = (self.packed[lo - 1] >> np.uint64(32)) if lo > 0 else None
            else:
                idx = self.order[lo:hi][::-1]
                key = self.scores[idx]
                nxt = self.scores[self.order[lo - 1]] if lo > 0 else None
            last = np.empty(idx.size, dtype=bool)
            np.not_equal(key[:-1], key[1:], out=last[:-1])
            last[-1] = True if nxt is None else bool(key[-1] != nxt)
            yield idx, last
            hi = lo


# ----------------------------------------------------------------------------------------------
# binary ranking metrics: AUROC, AP, F1-max from one sort
# ----------------------------------------------------------------------------------------------


def _binary_stats(y: np.ndarray, s: np.ndarray, ranking: _Ranking | None = None) -> dict[str, float]:
    """AUROC, AP and F1-max of flat bool labels `y` against flat scores `s` in one pass.

    For each threshold (end of a tie run, descending) with `tp` true positives among the `k`
    highest scores and `fp = k - tp`:
    AUROC = trapezoid area under (fp/N, tp/P) from (0,0), computed exactly in integers;
    AP = sum over points of (tp_i - tp_{i-1})/P * tp_i/k_i (scikit-learn's step definition);
    F1-max = max of 2 tp / (k + P) (= 2PR/(P+R)); predicting nothing gives F1 = 0.
    """
    n = y.size
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"auroc": _NAN, "ap": _NAN, "f1_max": _NAN}
    if ranking is None:
        ranking = _Ranking(s)

    area2 = 0  # 2 * P * N * AUROC, exact Python int
    ap_sum = 0.0  # P * AP
    f1 = 0.0
    prev_tp = prev_fp = 0  # previous curve point (starts at the origin)
    tp_run = k_run = 0  # running counts before the chunk
    for idx, last in ranking.runs():
        m = idx.size
        tp = np.cumsum(y[idx], dtype=np.int64)
        tp += tp_run
        tp_run = int(tp[-1])
        k_l = np.flatnonzero(last) + (k_run + 1)
        k_run += m
        if k_l.size == 0:
            continue
        tp_l = tp[last]
        fp_l = k_l - tp_l
        tp_prev = np.empty_like(tp_l)
        tp_prev[0] = prev_tp
        tp_prev[1:] = tp_l[:-1]
        fp_prev = np.empty_like(fp_l)
        fp_prev[0] = prev_fp
        fp_prev[1:] = fp_l[:-1]
        area2 += int(np.sum((fp_l - fp_prev) * (tp_l + tp_prev)))
        ap_sum += float(np.sum((tp_l - tp_prev) * (tp_l / k_l)))
        f1 = max(f1, float(np.max(2.0 * tp_l / (k_l + n_pos))))
        prev_tp, prev_fp = int(tp_l[-1]), int(fp_l[-1])
    return {
        "auroc": area2 / (2.0 * n_pos * n_neg),
        "ap": ap_sum / n_pos,
        "f1_max": f1,
    }


def _image_stats(labels, scores) -> dict[str, float]:
    y = _as_bool(labels)
    s = _as_scores(scores)
    _check_pair(y, s, "labels/scores")
    return _binary_stats(y.ravel(), s.ravel())


def image_auroc(labels, scores) -> float:
    """Image-level ROC AUC: probability that an anomalous image outscores a normal one
    (ties count half). Equals sklearn's `roc_auc_score`; NaN for a single-label set."""
    return _image_stats(labels, scores)["auroc"]


def image_ap(labels, scores) -> float:
    """Image-level average precision (area under the exact PR curve, step rule).
    Equals sklearn's `average_precision_score`; NaN for a single-label set."""
    return _image_stats(labels, scores)["ap"]


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds of the exact PR curve (every distinct score tried);
    the usual image F1-max of anomaly-detection papers. NaN for a single-label set."""
    return _image_stats(labels, scores)["f1_max"]


def _pixel_stats(masks, maps) -> dict[str, float]:
    m, a = _pixel_inputs(masks, maps)
    return _binary_stats(m.ravel(), a.ravel())


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC AUC over all pixels of all images pooled (masks (N,H,W) bool,
    maps (N,H,W) float). One sort, ~8 bytes/pixel of temporaries. NaN if single label."""
    return _pixel_stats(masks, maps)["auroc"]


def pixel_ap(masks, maps) -> float:
    """Pixel-level average precision over all pixels pooled. NaN if single label."""
    return _pixel_stats(masks, maps)["ap"]


def pixel_f1_max(masks, maps) -> float:
    """Pixel-level best F1 over all thresholds, all pixels pooled. NaN if single label."""
    return _pixel_stats(masks, maps)["f1_max"]


# ----------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------


def _label_regions(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Label ground-truth regions with 8-connectivity per image, numbered globally from 1.

    Returns int32 labels (0 = anomaly-free) and the number of regions.
    """
    structure = np.ones((3, 3), dtype=bool)
    lab = np.zeros(m.shape, dtype=np.int32)
    total = 0
    for i in range(m.shape[0]):
        if not m[i].any():
            continue
        li = lab[i]
        k = ndimage.label(m[i], structure=structure, output=li)
        li[li > 0] += total
        total += int(k)
    return lab, total


def _aupro_core(m: np.ndarray, a: np.ndarray, fpr_limit: float, ranking: _Ranking | None) -> float:
    """Exact AUPRO on validated 3-D inputs (see `aupro`)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ArgumentError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    n_neg = int(m.size - np.count_nonzero(m))
    if n_neg == 0:
        return _NAN
    lab, n_regions = _label_regions(m)
    if n_regions == 0:
        return _NAN
    flat_lab = lab.ravel()
    sizes = np.bincount(flat_lab, minlength=n_regions + 1)
    step = np.zeros(n_regions + 1, dtype=np.float64)  # PRO step per pixel, by region label
    step[1:] = 1.0 / (sizes[1:].astype(np.float64) * n_regions)
    s = a.ravel()
    if ranking is None:
        ranking = _Ranking(s)

    area = 0.0
    px = py = 0.0  # curve starts at (0, 0)
    fp_run = 0
    pro_run = 0.0
    for idx, last in ranking.runs():
        lc = flat_lab[idx]
        fp = np.cumsum(lc == 0, dtype=np.int64)
        fp += fp_run
        fp_run = int(fp[-1])
        pro = np.cumsum(step[lc])
        pro += pro_run
        pro_run = float(pro[-1])
        if not last.any():
            continue
        x = np.empty(int(np.count_nonzero(last)) + 1)
        y = np.empty_like(x)
        x[0], y[0] = px, py
        x[1:] = fp[last] / n_neg
        y[1:] = pro[last]
        beyond = np.flatnonzero(x > fpr_limit)
        if beyond.size:
            j = int(beyond[0])  # >= 1 since x[0] <= fpr_limit
            area += float(np.sum((x[1:j] - x[: j - 1]) * (y[1:j] + y[: j - 1]))) * 0.5
            xa, ya, xb, yb = x[j - 1], y[j - 1], x[j], y[j]
            y_end = ya + (yb - ya) * (fpr_limit - xa) / (xb - xa)
            area += 0.5 * float(ya + y_end) * float(fpr_limit - xa)
            return float(area / fpr_limit)
        area += float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]))) * 0.5
        px, py = float(x[-1]), float(y[-1])
    # The curve ends at FPR 1 >= fpr_limit, so we only get here when fpr_limit == 1 (up to rounding).
    return float(area / fpr_limit)


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, divided by `fpr_limit`.

    The exact reference algorithm (Bergmann et al. 2021; MVTec's evaluation code): regions are
    8-connected components of each ground-truth mask; every distinct score is a threshold; PRO is
    the mean over all regions (of all images) of the fraction of the region above the threshold,
    FPR the fraction of anomaly-free pixels above it. Done with one descending sort and cumulative
    sums of per-pixel steps (FPR step 1/#normal pixels, PRO step 1/(|r| * #regions)), keeping the
    last point of each tie run, starting at (0,0), trapezoid up to `fpr_limit` with the end point
    linearly interpolated. Unlike the 200-threshold variant most CLIP repositories copy, it is
    exact and not normalised by the observed FPR range. NaN if there is no anomalous region or no
    anomaly-free pixel.
    """
    m, a = _pixel_inputs(masks, maps)
    return _aupro_core(m, a, float(fpr_limit), None)


# ----------------------------------------------------------------------------------------------
# bundles
# ----------------------------------------------------------------------------------------------


def compute_all(labels, scores, masks=None, maps=None) -> dict[str, float]:
    """All metrics of one class: image_auroc, image_ap, image_f1_max and, when masks and maps
    are both given, pixel_auroc, pixel_ap, pixel_f1_max, pixel_aupro (FPR limit 0.3).
    The pixel metrics share a single sort of all pixel scores."""
    img = _image_stats(labels, scores)
    out = {"image_auroc": img["auroc"], "image_ap": img["ap"], "image_f1_max": img["f1_max"]}
    if (masks is None) != (maps is None):
        raise ArgumentError("give both masks and maps, or neither")
    if masks is not None:
        m, a = _pixel_inputs(masks, maps)
        flat = a.ravel()
        ranking = _Ranking(flat)
        pix = _binary_stats(m.ravel(), flat, ranking)
        out["pixel_auroc"] = pix["auroc"]
        out["pixel_ap"] = pix["ap"]
        out["pixel_f1_max"] = pix["f1_max"]
        out["pixel_aupro"] = _aupro_core(m, a, 0.3, ranking)
    return out


def macro_mean(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over classes, ignoring NaN (a class with one label has no value,
    and must not count as 0); NaN when every class is NaN for that metric. Metrics missing
    from some classes are averaged over the classes that have them."""
    keys: list[str] = []
    for metrics in per_class.values():
        for k in metrics:
            if k not in keys:
                keys.append(k)
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(v[k]) for v in per_class.values() if k in v and not math.isnan(float(v[k]))]
        out[k] = math.fsum(vals) / len(vals) if vals else _NAN
    return out
