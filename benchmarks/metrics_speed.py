"""Speed and agreement of wmoe.metrics against the usual alternatives, on synthetic maps.

Measures, interleaved in one run (ours, then the alternative, per repeat):
- `aupro`: our exact one-sort AUPRO vs the "200 thresholds" AUPRO most CLIP anomaly repositories
  use (200 thresholds, masks relabelled at every threshold, FPR < 0.3 kept and rescaled by its
  observed range, sklearn `auc`; our own re-implementation of that recipe). That variant is slow, so it is timed on
  the first `--ref-n` maps and its time scaled linearly to `--n` (its cost is linear in the
  number of maps); the JSON says so. Values are compared on that same subset.
- `pixel_auroc`: ours vs sklearn `roc_auc_score` on all pixels.
- `aupro_exact`: ours vs a brute-force exact AUPRO (one binarisation per distinct score) on a
  small subset (default 5 maps of 64x64), to show the fast path computes the same curve.

Prints one JSON line per measurement. Example: `python -m benchmarks.metrics_speed --n 200`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

from wmoe import metrics as M

# ----------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------


def make_data(n: int, size: int, seed: int, anomalous_frac: float = 0.6):
    """N blobby masks (bool) and noisy float32 maps correlated with them; ~40% normal images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = np.empty((n, size, size), dtype=np.float32)
    low = max(size // 8, 8)
    zoom = size / low
    for i in range(n):
        if rng.random() < anomalous_frac:
            field = ndimage.gaussian_filter(rng.standard_normal((low, low)), sigma=1.5)
            thr = np.quantile(field, 1.0 - rng.uniform(0.01, 0.06))  # 1..6% of the image
            up = ndimage.zoom(field, zoom, order=1)[:size, :size]
            masks[i] = up > thr
        bg = ndimage.zoom(ndimage.gaussian_filter(rng.standard_normal((low, low)), 1.0), zoom, order=1)
        soft = ndimage.gaussian_filter(masks[i].astype(np.float32), sigma=size / 100)
        m = 0.5 * bg[:size, :size] + 1.0 * soft + 0.3 * rng.standard_normal((size, size))
        maps[i] = m.astype(np.float32)
    return masks, maps


# ----------------------------------------------------------------------------------------------
# comparison implementations
# ----------------------------------------------------------------------------------------------


def aupro_200_thresholds(masks: np.ndarray, amaps: np.ndarray, steps: int = 200, fpr_cap: float = 0.3):
    """The AUPRO variant most CLIP anomaly repositories use, re-implemented here as the comparison point.

    Its recipe: `steps` evenly spaced thresholds from the lowest score up; at each one, binarise the
    maps, label the ground-truth regions again (8-connectivity) and average each region's covered
    fraction; keep the points with FPR below the cap, rescale those FPRs to span 0..1, and take the
    area. Coarse (200 points) and biased (the rescaling); kept only to be measured against.
    """
    lo, hi = float(amaps.min()), float(amaps.max())
    normal = ~masks.astype(bool)
    n_normal = normal.sum()
    curve = []
    for t in lo + (hi - lo) * np.arange(steps) / steps:
        hit = amaps > t
        overlaps = []
        for pred_i, mask_i in zip(hit, masks, strict=True):
            labels, n = ndimage.label(mask_i, structure=np.ones((3, 3)))
            if n:
                overlaps.extend(ndimage.mean(pred_i, labels, index=np.arange(1, n + 1)))
        curve.append(((hit & normal).sum() / n_normal, np.mean(overlaps)))
    fpr, pro = np.array(curve).T
    keep = fpr < fpr_cap
    fpr = fpr[keep]
    return float(auc((fpr - fpr.min()) / (fpr.max() - fpr.min()), pro[keep]))


def aupro_exact_slow(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Brute-force exact AUPRO: binarise at every distinct score, PRO = mean region overlap."""
    lab = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i in range(masks.shape[0]):
        li, k = ndimage.label(masks[i], structure=np.ones((3, 3)))
        lab[i] = np.where(li > 0, li + total, 0)
        total += k
    sizes = np.bincount(lab.ravel(), minlength=total + 1)[1:]
    normal = ~masks
    n_normal = normal.sum()
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / n_normal)
        hit = np.bincount(lab[pred], minlength=total + 1)[1:]
        ys.append(float(np.mean(hit / sizes)))
    area = 0.0
    for i in range(1, len(xs)):
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            area += (fpr_limit - x0) * (2 * y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)) / 2
            break
    return area / fpr_limit


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def _timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - t0, value


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of synthetic maps")
    ap.add_argument("--size", type=int, default=518, help="map side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ref-n",
        type=int,
        default=20,
        help="maps on which the slow 200-threshold AUPRO is timed (time scaled to --n)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the minimum time is kept")
    ap.add_argument("--exact-n", type=int, default=5, help="maps for the brute-force exact AUPRO check")
    ap.add_argument("--exact-size", type=int, default=64, help="side of those maps")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    masks, maps = make_data(args.n, args.size, args.seed)
    gen_s = time.perf_counter() - t0
    n_pix = masks.size
    ref_n = max(2, min(args.ref_n, args.n))
    # Stratified subset for the slow variant: the same share of anomalous maps as the whole set
    # (at least one anomalous and one normal), so linear time scaling and the values are fair.
    anomalous = np.flatnonzero(masks.any(axis=(1, 2)))
    normal = np.flatnonzero(~masks.any(axis=(1, 2)))
    k_anom = min(len(anomalous), max(1, round(ref_n * len(anomalous) / args.n)))
    k_norm = min(len(normal), ref_n - k_anom)
    sub = np.sort(np.concatenate([anomalous[:k_anom], normal[:k_norm]]))
    ref_n = len(sub)
    sub_masks, sub_maps = masks[sub], maps[sub]

    # warm-up (first-call costs: imports, allocator) so that no timing below pays them
    M.compute_all(np.array([0, 1]), np.array([0.1, 0.2]), masks[:2, :32, :32], maps[:2, :32, :32])
    roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])  # warm-up

    # --- AUPRO: ours (all maps, and the subset) vs the 200-threshold variant (subset, scaled) ---
    ours_s, ref_s, ours_sub_s = [], [], []
    for _ in range(args.repeats):
        t, v_ours_full = _timed(M.aupro, masks, maps)
        ours_s.append(t)
        t, v_ours_sub = _timed(M.aupro, sub_masks, sub_maps)
        ours_sub_s.append(t)
        t, v_ref = _timed(aupro_200_thresholds, sub_masks, sub_maps)
        ref_s.append(t)
    ref_scaled = min(ref_s) * args.n / ref_n
    print(
        json.dumps(
            {
                "bench": "aupro",
                "n": args.n,
                "size": args.size,
                "pixels": n_pix,
                "gen_s": round(gen_s, 2),
                "ours_s": round(min(ours_s), 3),
                "ref": "200-threshold AUPRO (the common CLIP-repository recipe)",
                "ref_n": ref_n,
                "ref_s": round(min(ref_s), 3),
                "ref_s_scaled_to_n": round(ref_scaled, 3),
                "ref_timing_note": (
                    f"ref timed on a subset of {ref_n} maps ({k_anom} anomalous, {k_norm} normal, "
                    f"same anomalous share), time scaled linearly to n={args.n}"
                    if ref_n < args.n
                    else "ref timed on all maps"
                ),
                "speedup": round(ref_scaled / min(ours_s), 1),
                "ours_s_on_ref_subset": round(min(ours_sub_s), 4),
                "speedup_on_ref_subset": round(min(ref_s) / min(ours_sub_s), 1),
                "value_ours_all_maps": v_ours_full,
                "value_ours": v_ours_sub,
                "value_ref": v_ref,
                "abs_diff": abs(v_ours_sub - v_ref),
                "value_note": "values on the ref subset; the 200-threshold variant is coarse and "
                "FPR-range normalised",
            }
        ),
        flush=True,
    )

    # --- pixel AUROC: ours vs sklearn, all pixels ---
    ours_s, ref_s = [], []
    y, s = masks.ravel(), maps.ravel()
    for _ in range(args.repeats):
        t, v_ours = _timed(M.pixel_auroc, masks, maps)
        ours_s.append(t)
        t, v_ref = _timed(roc_auc_score, y, s)
        ref_s.append(t)
    print(
        json.dumps(
            {
                "bench": "pixel_auroc",
                "n": args.n,
                "size": args.size,
                "pixels": n_pix,
                "ours_s": round(min(ours_s), 3),
                "ref": "sklearn roc_auc_score",
                "ref_s": round(min(ref_s), 3),
                "speedup": round(min(ref_s) / min(ours_s), 2),
                "value_ours": v_ours,
                "value_ref": float(v_ref),
                "abs_diff": abs(v_ours - float(v_ref)),
            }
        ),
        flush=True,
    )

    # --- exactness: ours vs brute-force exact AUPRO on small maps ---
    em, ea = make_data(args.exact_n, args.exact_size, args.seed + 1, anomalous_frac=1.0)
    t_ours, v_ours = _timed(M.aupro, em, ea)
    t_ref, v_ref = _timed(aupro_exact_slow, em, ea)
    print(
        json.dumps(
            {
                "bench": "aupro_exact",
                "n": args.exact_n,
                "size": args.exact_size,
                "ours_s": round(t_ours, 4),
                "ref": "brute-force exact AUPRO (every distinct threshold)",
                "ref_s": round(t_ref, 3),
                "speedup": round(t_ref / t_ours, 1),
                "value_ours": v_ours,
                "value_ref": v_ref,
                "abs_diff": abs(v_ours - v_ref),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
