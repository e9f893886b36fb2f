"""Tests for the seeded synthetic anomaly generator (training/synthetic.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import synthetic as syn


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


SMALL = dict(categories=3, n_train_good=2, n_test_good=2, n_test_defect_per_type=1, size=48)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = syn.generate(tmp_path / "a", seed=3, **SMALL)
    b = syn.generate(tmp_path / "b", seed=3, **SMALL)
    assert a == b
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa.keys() == fb.keys() and len(fa) > 0
    assert all(fa[k] == fb[k] for k in fa)
    syn.generate(tmp_path / "c", seed=4, **SMALL)
    fc = _files(tmp_path / "c")
    assert fc.keys() == fa.keys()
    assert sum(fa[k] != fc[k] for k in fa) > len(fa) // 2


def test_one_image_does_not_depend_on_what_else_is_generated(tmp_path):
    syn.generate(
        tmp_path / "a",
        categories=["nut", "felt"],
        n_train_good=1,
        n_test_good=1,
        n_test_defect_per_type=1,
        size=40,
        seed=0,
    )
    syn.generate(
        tmp_path / "b",
        categories=["felt"],
        n_train_good=3,
        n_test_good=1,
        n_test_defect_per_type=2,
        size=40,
        seed=0,
        defects=["hole"],
    )
    for rel in ("felt/train/good/000.png", "felt/test/hole/000.png", "felt/ground_truth/hole/000_mask.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_mvtec_layout_and_mask_format(tmp_path):
    names = syn.generate(
        tmp_path, categories=2, n_train_good=3, n_test_good=2, n_test_defect_per_type=2, size=64, seed=0
    )
    assert names == [syn.DEFAULT_CATEGORIES[0][0], syn.DEFAULT_CATEGORIES[1][0]]
    for cls in names:
        base = tmp_path / cls
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
            "002.png",
        ]
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(("good",) + syn.DEFECT_KINDS)
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(syn.DEFECT_KINDS)
        for kind in syn.DEFECT_KINDS:
            for i in range(2):
                img = Image.open(base / "test" / kind / f"{i:03d}.png")
                mask = Image.open(base / "ground_truth" / kind / f"{i:03d}_mask.png")
                assert img.mode == "RGB" and img.size == (64, 64)
                assert mask.mode == "L" and mask.size == (64, 64)
                m = np.asarray(mask)
                assert set(np.unique(m).tolist()) <= {0, 255}
                assert (m > 0).sum() >= 4


@pytest.mark.parametrize("kind", syn.DEFECT_KINDS)
def test_mask_is_exactly_the_changed_pixels(kind):
    cats = syn.default_categories(len(syn.DEFAULT_CATEGORIES), seed=0)
    for i, cat in enumerate(cats):
        img, region = cat.render(i, 80)
        before = img.copy()
        out, mask = syn.draw_defect(img, kind, np.random.default_rng(100 + i), region=region)
        assert np.array_equal(img, before), "the input must not be modified"
        assert out.shape == img.shape and out.dtype == np.uint8
        assert mask.dtype == bool and mask.shape == img.shape[:2]
        assert np.array_equal(mask, (out != img).any(axis=-1))
        assert mask.sum() >= 4
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=-1)
        assert diff[mask].min() >= syn.MIN_DELTA  # every masked pixel is visibly changed
        if region is not None:
            assert not (mask & ~region).any(), "object defects stay on the object"


def test_draw_defect_on_any_image_grey_input_seed_and_source():
    rng = np.random.default_rng(0)
    grey = (rng.random((70, 90)) * 60 + 100).astype(np.uint8)
    out, mask = syn.draw_defect(grey, "stain", 5)
    assert out.shape == (70, 90, 3)
    assert np.array_equal(mask, (out != np.stack([grey] * 3, -1)).any(-1))
    # an int seed is reproducible
    out2, mask2 = syn.draw_defect(grey, "stain", 5)
    assert np.array_equal(out, out2) and np.array_equal(mask, mask2)
    # cut-paste from another image, of another size
    other = (rng.random((50, 40, 3)) * 255).astype(np.uint8)
    img = np.full((64, 64, 3), 128, np.uint8)
    out, mask = syn.draw_defect(img, "cut_paste", 1, source=other)
    assert mask.any() and np.array_equal(mask, (out != img).any(-1))
    with pytest.raises(ValueError, match="unknown defect"):
        syn.draw_defect(img, "smudge", 0)
    with pytest.raises(ValueError, match="RGB"):
        syn.draw_defect(np.zeros((4, 4, 2), np.uint8), "hole", 0)


def test_defects_vary_in_size_and_scale_is_monotonic():
    cat = syn.make_category("t", "noise", seed=1)
    img, _ = cat.render(0, 128)
    for kind in syn.DEFECT_KINDS:
        areas = [syn.draw_defect(img, kind, s)[1].sum() for s in range(12)]
        assert min(areas) < 0.02 * 128 * 128, f"{kind}: some defects must be small"
        assert max(areas) > 2 * min(areas), f"{kind}: sizes must vary"
    small = np.mean([syn.draw_defect(img, "hole", s, scale=0.0)[1].sum() for s in range(5)])
    large = np.mean([syn.draw_defect(img, "hole", s, scale=1.0)[1].sum() for s in range(5)])
    assert large > 4 * small


def _features(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64) / 255.0
    grey = f.mean(-1)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    bins = [spec[(r >= lo) & (r < hi)].sum() for lo, hi in ((1, 4), (4, 8), (8, 16), (16, 32))]
    bins = np.log1p(np.array(bins)) / 10
    return np.concatenate([f.mean((0, 1)), f.std((0, 1)), bins])


def test_categories_look_clearly_different():
    cats = syn.default_categories(8, seed=0)
    assert len({c.kind for c in cats}) == 8
    size = 64
    feats = {c.name: np.stack([_features(c.render(i, size)[0]) for i in range(6)]) for c in cats}
    cents = {k: v[:3].mean(0) for k, v in feats.items()}
    for name, f in feats.items():  # nearest-centroid: held-out samples land on their own category
        for x in f[3:]:
            nearest = min(cents, key=lambda k: np.linalg.norm(x - cents[k]))
            assert nearest == name
    # mean images differ between categories by far more than between two draws of the same one
    a = cats[0].render(0, size)[0].astype(float)
    b = cats[0].render(1, size)[0].astype(float)
    c = cats[1].render(0, size)[0].astype(float)
    assert np.abs(a.mean((0, 1)) - c.mean((0, 1))).sum() > 3 * np.abs(a.mean((0, 1)) - b.mean((0, 1))).sum()
    # the same name with another seed has another look
    n0 = syn.make_category("x", "stripes", 0).render(0, size)[0]
    n1 = syn.make_category("x", "stripes", 1).render(0, size)[0]
    assert np.abs(n0.astype(int) - n1.astype(int)).mean() > 10


def test_category_resolution_and_errors(tmp_path):
    cats = syn._resolve_categories(["nut", "stripes", "rug:weave"], seed=0)
    assert [(c.name, c.kind) for c in cats] == [("nut", "disc"), ("stripes", "stripes"), ("rug", "weave")]
    assert [c.name for c in syn.default_categories(10)][8:] == ["felt2", "fabric2"]
    with pytest.raises(ValueError, match="unknown category"):
        syn.generate(tmp_path, categories=["nope"])
    with pytest.raises(ValueError, match="unknown kind"):
        syn.make_category("a", "blob")
    with pytest.raises(ValueError, match="duplicate"):
        syn.generate(tmp_path, categories=["nut", "nut"])


def test_speed_sanity_six_categories_sixty_images(tmp_path):
    t0 = time.perf_counter()
    names = syn.generate(tmp_path, categories=6, size=128, seed=0)  # defaults: 20 + 10 + 5 x 6 = 60 each
    elapsed = time.perf_counter() - t0
    n_images = sum(1 for p in tmp_path.rglob("*.png") if "ground_truth" not in p.parts)
    assert len(names) == 6 and n_images == 360
    print(f"generated 6 x 60 images at 128 px in {elapsed:.1f} s")  # informative only, no time assert


def test_cli(tmp_path, capsys):
    rc = syn.main(
        [
            str(tmp_path / "d"),
            "--categories",
            "2",
            "--size",
            "32",
            "--n-train-good",
            "1",
            "--n-test-good",
            "1",
            "--n-test-defect",
            "1",
            "--defects",
            "hole,scratch",
        ]
    )
    assert rc == 0
    assert "wrote 2 categories" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d" / "felt" / "test").iterdir()) == ["good", "hole", "scratch"]
    with pytest.raises(SystemExit) as e:
        syn.main([str(tmp_path / "e"), "--categories", "nope"])
    assert e.value.code == 2
