"""Tests for training/prepare_data.py: meta.json from every supported folder layout (tiny fake trees)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.prepare_data import ENTRY_KEYS, LOADERS, DatasetLayoutError, main, prepare

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def img(path: Path, value: int = 100, size: int = 8) -> Path:
    """A tiny image; the format follows the suffix (.png .jpg .bmp .tif ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def mask(path: Path, empty: bool = False, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    if not empty:
        m[2:5, 3:6] = 255
    Image.fromarray(m, mode="L").save(path)
    return path


def check_meta(meta: dict, root: Path, out: Path) -> None:
    """Schema, relative and existing paths, labels consistent, and the file equals the returned dict."""
    assert set(meta) == {"train", "test"} and set(meta["train"]) <= set(meta["test"])
    tested = {e["img_path"] for entries in meta["test"].values() for e in entries}
    for entries in meta["train"].values():  # normal training images only: the few-shot reference pool
        for e in entries:
            assert e["anomaly"] == 0 and not e["mask_path"] and (root / e["img_path"]).is_file()
            folders = (
                "/train/good/",
                "/train/ok/",
                "/Images/Normal/",
                "/reference/",
            )  # MVTec, BTAD, VisA, own
            assert any(f in f"/{e['img_path']}" for f in folders)
            assert e["img_path"] not in tested
    assert json.loads(out.read_text()) == meta
    for cls, entries in meta["test"].items():
        assert entries, cls
        for e in entries:
            assert tuple(e) == ENTRY_KEYS
            assert e["cls_name"] == cls
            assert e["anomaly"] in (0, 1)
            for key in ("img_path", "mask_path"):
                p = e[key]
                if not p:
                    continue
                assert not Path(p).is_absolute() and "\\" not in p and ".." not in Path(p).parts
                assert (root / p).is_file(), p
            assert e["img_path"]
            if not e["anomaly"]:
                assert e["mask_path"] == ""


def counts(meta: dict) -> dict[str, tuple[int, int, int]]:
    """cls -> (normal, anomalous, with mask)."""
    return {
        cls: (
            sum(1 - e["anomaly"] for e in es),
            sum(e["anomaly"] for e in es),
            sum(bool(e["mask_path"]) for e in es),
        )
        for cls, es in meta["test"].items()
    }


def run(dataset: str, root: Path, tmp_path: Path, **kw) -> dict:
    out = tmp_path / "out" / f"{dataset}_meta.json"
    meta = prepare(dataset, root, out=out, **kw)
    check_meta(meta, root, out)
    return meta


# ----------------------------------------------------------------------------------------------------
# fake trees, one per published layout
# ----------------------------------------------------------------------------------------------------
def make_mvtec(root: Path, classes=("bottle", "screw"), defect="broken") -> Path:
    for cls in classes:
        img(root / cls / "train" / "good" / "000.png")
        for i in range(2):
            img(root / cls / "test" / "good" / f"{i:03d}.png")
        for i in range(3):
            img(root / cls / "test" / defect / f"{i:03d}.png", 200)
            mask(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png")
        (root / cls / "license.txt").write_text("x")
    return root


def make_visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(2):
            p = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            img(root / p)
            rows.append(f"{obj},{'train' if i == 0 else 'test'},normal,{p},")
        for i in range(2):
            p, m = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            img(root / p, 200)
            mask(root / m)
            rows.append(f"{obj},test,anomaly,{p},{m}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_btad(root: Path) -> Path:
    for cls, ext, mext in (("01", ".bmp", ".png"), ("02", ".png", ".png"), ("03", ".bmp", ".bmp")):
        img(root / cls / "train" / "ok" / f"0000{ext}")
        img(root / cls / "test" / "ok" / f"0000{ext}")
        for i in (1, 2):
            img(root / cls / "test" / "ko" / f"000{i}{ext}", 200)
            mask(root / cls / "ground_truth" / "ko" / f"000{i}{mext}")
    return root


def make_ksdd(root: Path) -> Path:
    for k in (1, 2):
        d = root / f"kos{k:02d}"
        for part in range(3):
            img(d / f"Part{part}.jpg")
            mask(d / f"Part{part}_label.bmp", empty=(part != 1))  # only Part1 is defective
    return root


def make_dagm(root: Path) -> Path:
    # Class1 with Labels.txt, Class2 without (decided by the label images)
    for cls in ("Class1", "Class2"):
        test = root / cls / "Test"
        for i in range(1, 5):
            img(test / f"{i:04d}.PNG")
        for i in (2, 4):
            mask(test / "Label" / f"{i:04d}_label.PNG")
        img(root / cls / "Train" / "0001.PNG")
    lines = [
        "1",
        "1\t0\t0001.PNG\t0\t0",
        "2\t1\t0002.PNG\t0\t0002_label.PNG",
        "3\t0\t0003.PNG\t0\t0",
        "4\t1\t0004.PNG\t0\t0004_label.PNG",
    ]
    (root / "Class1" / "Test" / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root


def make_headct(root: Path) -> Path:
    for i in range(4):
        img(root / "head_ct" / "head_ct" / f"{i:03d}.png")
    (root / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
    return root


def make_brainmri(root: Path) -> Path:
    base = root / "brain_tumor_dataset"
    img(base / "yes" / "Y1.jpg")
    img(base / "yes" / "Y2.JPG")
    img(base / "yes" / "Y3.png")
    img(base / "no" / "1 no.jpeg")
    img(base / "no" / "no 2.jpg")
    return root


def make_br35h(root: Path) -> Path:
    for i in range(3):
        img(root / "yes" / f"y{i}.jpg")
    for i in range(2):
        img(root / "no" / f"no{i}.jpg")
    img(root / "pred" / "pred0.jpg")  # unlabelled, ignored
    return root


def make_isic(root: Path) -> Path:
    for n in ("ISIC_0000003", "ISIC_0000012", "ISIC_0000013"):
        img(root / "ISBI2016_ISIC_Part1_Test_Data" / f"{n}.jpg")
        mask(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"{n}_Segmentation.png")
    img(root / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000000.jpg")  # the test pair wins
    return root


def make_colondb(root: Path) -> Path:
    for i in range(1, 4):
        img(root / "images" / f"{i}.png")
        mask(root / "masks" / f"{i}.png")
    return root


def make_clinicdb(root: Path) -> Path:  # the original release: Original/ + Ground Truth/, .tif
    for i in range(1, 3):
        img(root / "Original" / f"{i}.tif")
        mask(root / "Ground Truth" / f"{i}.tif")
    return root


def make_tn3k(root: Path) -> Path:
    for i in range(3):
        img(root / "test-image" / f"{i:04d}.jpg")
        mask(root / "test-mask" / f"{i:04d}.jpg")
    img(root / "trainval-image" / "0100.jpg")
    return root


# dataset -> (builder, expected {cls: (normal, anomalous, with mask)})
LAYOUTS = {
    "mvtec": (make_mvtec, {"bottle": (2, 3, 3), "screw": (2, 3, 3)}),
    "mpdd": (make_mvtec, {"bottle": (2, 3, 3), "screw": (2, 3, 3)}),
    "dtd": (
        lambda r: make_mvtec(r, ("Blotchy_099", "Woven_001"), "bad"),
        {"Blotchy_099": (2, 3, 3), "Woven_001": (2, 3, 3)},
    ),
    "visa": (make_visa, {"candle": (1, 2, 2), "pcb1": (1, 2, 2)}),
    "btad": (make_btad, {"01": (1, 2, 2), "02": (1, 2, 2), "03": (1, 2, 2)}),
    "ksdd": (make_ksdd, {"ksdd": (4, 2, 2)}),
    "dagm": (make_dagm, {"Class1": (2, 2, 2), "Class2": (2, 2, 2)}),
    "headct": (make_headct, {"headct": (2, 2, 0)}),
    "brainmri": (make_brainmri, {"brainmri": (2, 3, 0)}),
    "br35h": (make_br35h, {"br35h": (2, 3, 0)}),
    "isic": (make_isic, {"isic": (0, 3, 3)}),
    "colondb": (make_colondb, {"colondb": (0, 3, 3)}),
    "clinicdb": (make_clinicdb, {"clinicdb": (0, 2, 2)}),
    "tn3k": (make_tn3k, {"tn3k": (0, 3, 3)}),
}


def test_every_published_dataset_has_a_loader():
    assert set(LAYOUTS) | {"folder"} == set(LOADERS)
    assert len(LAYOUTS) == 14


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_layout(dataset, tmp_path):
    build, expected = LAYOUTS[dataset]
    root = build(tmp_path / dataset)
    meta = run(dataset, root, tmp_path)
    assert counts(meta) == expected


def test_mvtec_details(tmp_path):
    meta = run("mvtec", make_mvtec(tmp_path / "d"), tmp_path)
    e = meta["test"]["bottle"]
    assert [x["img_path"] for x in e if not x["anomaly"]] == [
        "bottle/test/good/000.png",
        "bottle/test/good/001.png",
    ]
    bad = [x for x in e if x["anomaly"]][0]
    assert bad == {
        "img_path": "bottle/test/broken/000.png",
        "mask_path": "bottle/ground_truth/broken/000_mask.png",
        "cls_name": "bottle",
        "specie_name": "broken",
        "anomaly": 1,
    }
    assert not any("train" in x["img_path"] for x in e)
    # a single class folder as the root, renamed
    meta = run("mvtec", tmp_path / "d" / "screw", tmp_path, class_name="metal screw")
    assert list(meta["test"]) == ["metal screw"]
    assert meta["test"]["metal screw"][0]["img_path"] == "test/broken/000.png"


def test_ksdd_decides_by_opening_the_label(tmp_path):
    meta = run("ksdd", make_ksdd(tmp_path / "k"), tmp_path)
    by_img = {e["img_path"]: e for e in meta["test"]["ksdd"]}
    assert by_img["kos01/Part1.jpg"]["anomaly"] == 1
    assert by_img["kos01/Part1.jpg"]["mask_path"] == "kos01/Part1_label.bmp"
    assert by_img["kos01/Part0.jpg"] == {
        "img_path": "kos01/Part0.jpg",
        "mask_path": "",
        "cls_name": "ksdd",
        "specie_name": "good",
        "anomaly": 0,
    }
    assert not any("_label" in p for p in by_img)


def test_ksdd2_variant(tmp_path):
    root = tmp_path / "k2"
    img(root / "test" / "10000.png")
    mask(root / "test" / "10000_GT.png", empty=True)
    img(root / "test" / "10001.png")
    mask(root / "test" / "10001_GT.png")
    assert counts(run("ksdd", root, tmp_path)) == {"ksdd": (1, 1, 1)}


def test_dagm_labels_txt_wins_over_file_presence(tmp_path):
    root = make_dagm(tmp_path / "dagm")
    (root / "Class1" / "Test" / "Label" / "Labels.txt").write_text(
        "1\n1\t0\t0001.PNG\t0\t0\n2\t1\t0002.PNG\t0\t0002_label.PNG\n"
        "3\t0\t0003.PNG\t0\t0\n4\t0\t0004.PNG\t0\t0\n"
    )
    assert counts(run("dagm", root, tmp_path))["Class1"] == (3, 1, 1)


def test_headct_variants(tmp_path):
    root = tmp_path / "h"
    for i in range(3):
        img(root / "head_ct" / f"{i:03d}.png")
    (root / "labels.csv").write_text("id,hemorrhage\n0,0\n1,1\n2,1\n")
    meta = run("headct", root, tmp_path)
    assert counts(meta) == {"headct": (1, 2, 0)}
    assert meta["test"]["headct"][1]["specie_name"] == "hemorrhage"


def test_visa_mvtec_like_fallback(tmp_path):
    root = make_mvtec(tmp_path / "visa_pytorch", ("candle",), "bad")
    assert counts(run("visa", root, tmp_path)) == {"candle": (2, 3, 3)}


def test_polyp_nested_one_level(tmp_path):
    root = tmp_path / "TestDataset"
    make_colondb(root / "CVC-ColonDB")
    meta = run("colondb", root, tmp_path)
    assert meta["test"]["colondb"][0]["img_path"] == "CVC-ColonDB/images/1.png"
    assert meta["test"]["colondb"][0]["mask_path"] == "CVC-ColonDB/masks/1.png"


def test_class_name_override_for_single_class_sets(tmp_path):
    meta = run("tn3k", make_tn3k(tmp_path / "t"), tmp_path, class_name="thyroid")
    assert list(meta["test"]) == ["thyroid"]
    assert {e["cls_name"] for e in meta["test"]["thyroid"]} == {"thyroid"}
    with pytest.raises(DatasetLayoutError, match="single-class"):
        prepare("mvtec", make_mvtec(tmp_path / "m"), out=tmp_path / "x.json", class_name="x")


# ----------------------------------------------------------------------------------------------------
# a user's own folder
# ----------------------------------------------------------------------------------------------------
def make_own(root: Path, with_masks: bool) -> Path:
    for i in range(3):
        img(root / "good" / f"g{i}.png")
    for defect in ("scratch", "dent"):
        for i in range(2):
            img(root / defect / f"{defect}{i}.jpg", 200)
            if with_masks:
                name = f"{defect}{i}_mask.png" if defect == "scratch" else f"{defect}{i}.png"
                mask(root / "ground_truth" / defect / name)
    return root


def test_own_folder_with_masks(tmp_path):
    root = make_own(tmp_path / "my_bracket", with_masks=True)
    meta = run("folder", root, tmp_path)
    assert counts(meta) == {"my_bracket": (3, 4, 4)}
    by_img = {e["img_path"]: e for e in meta["test"]["my_bracket"]}
    assert by_img["scratch/scratch0.jpg"]["mask_path"] == "ground_truth/scratch/scratch0_mask.png"
    assert by_img["dent/dent1.jpg"]["mask_path"] == "ground_truth/dent/dent1.png"
    assert by_img["dent/dent1.jpg"]["specie_name"] == "dent"


def test_own_folder_without_masks_and_class_name(tmp_path):
    root = make_own(tmp_path / "x", with_masks=False)
    meta = run("folder", root, tmp_path, class_name="metal bracket")
    assert counts(meta) == {"metal bracket": (3, 4, 0)}
    # default: the class is the folder's name and meta.json goes next to the data
    prepare("folder", root)
    written = json.loads((root / "meta.json").read_text())
    assert list(written["test"]) == ["x"]
    assert written["test"]["x"] == [dict(e, cls_name="x") for e in meta["test"]["metal bracket"]]


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def _break(dataset: str, root: Path) -> tuple[Path, str]:
    """Damage a freshly built tree; return (root, text the error must contain)."""
    if dataset == "mvtec":
        (root / "bottle" / "ground_truth" / "broken" / "001_mask.png").unlink()
        return root, "001_mask.png"
    if dataset == "visa":
        (root / "split_csv" / "1cls.csv").write_text("obj,split\ncandle,test\n")
        return root, "object,split,label,image,mask"
    if dataset == "btad":
        for p in (root / "02" / "ground_truth" / "ko").iterdir():
            p.unlink()
        (root / "02" / "ground_truth" / "ko").rmdir()
        return root, "ground_truth"
    if dataset == "ksdd":
        (root / "kos02" / "Part2_label.bmp").unlink()
        return root, "Part2_label.bmp"
    if dataset == "dagm":
        (root / "Class1" / "Test" / "Label" / "0004_label.PNG").unlink()
        return root, "0004_label.PNG"
    if dataset == "headct":
        (root / "head_ct" / "head_ct" / "003.png").unlink()
        return root, "id 3"
    if dataset == "brainmri":
        (root / "brain_tumor_dataset" / "no").rename(root / "brain_tumor_dataset" / "normal")
        return root, "no/"
    if dataset == "isic":
        (root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000012_Segmentation.png").unlink()
        return root, "ISIC_0000012"
    if dataset == "tn3k":
        for p in (root / "test-mask").iterdir():
            p.unlink()
        (root / "test-mask").rmdir()
        return root, "test-mask"
    if dataset == "clinicdb":
        for p in (root / "Ground Truth").iterdir():
            p.unlink()
        (root / "Ground Truth").rmdir()
        return root, "mask folder"
    raise AssertionError(dataset)


@pytest.mark.parametrize(
    "dataset", ["mvtec", "visa", "btad", "ksdd", "dagm", "headct", "brainmri", "isic", "tn3k", "clinicdb"]
)
def test_malformed_layouts_give_clear_errors(dataset, tmp_path):
    root = LAYOUTS[dataset][0](tmp_path / dataset)
    root, needle = _break(dataset, root)
    with pytest.raises(DatasetLayoutError) as e:
        prepare(dataset, root, out=tmp_path / "m.json")
    assert needle in str(e.value)
    assert str(root) in str(e.value)  # names the path
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("dataset", sorted(LOADERS))
def test_empty_root_gives_a_clear_error(dataset, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetLayoutError) as e:
        prepare(dataset, root, out=tmp_path / "m.json")
    assert str(root) in str(e.value)
    assert "expected" in str(e.value)


def test_missing_root_unknown_dataset_and_wrong_type(tmp_path):
    with pytest.raises(DatasetLayoutError, match="not found"):
        prepare("mvtec", tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="unknown dataset 'imagenet'.*mvtec"):
        prepare("imagenet", tmp_path)
    with pytest.raises(ValueError):  # DatasetLayoutError is a ValueError
        prepare("folder", tmp_path)
    # a loader pointed at another dataset's layout
    with pytest.raises(DatasetLayoutError, match="ok/"):
        prepare("btad", make_mvtec(tmp_path / "m"), out=tmp_path / "m.json")


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def test_cli_writes_default_meta_and_summarises(tmp_path, capsys):
    root = make_br35h(tmp_path / "br35h")
    assert main(["--dataset", "br35h", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "br35h: 2 normal, 3 anomalous" in out
    check_meta(json.loads((root / "meta.json").read_text()), root, root / "meta.json")


def test_cli_error_exits_2_without_traceback(tmp_path):
    (tmp_path / "test-image").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.prepare_data",
            "--dataset",
            "tn3k",
            "--root",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "test-mask" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------------
# the real MVTec-layout images in ../shared/data (skipped when absent)
# ----------------------------------------------------------------------------------------------------
def test_mvtec_loader_on_real_mvtec_mini(tmp_path):
    root = SHARED_DATA / "mvtec_mini"
    if not root.is_dir():
        pytest.skip("../shared/data/mvtec_mini is absent")
    out = tmp_path / "meta.json"  # never write into the shared data
    meta = prepare("mvtec", root, out=out)
    check_meta(meta, root, out)
    assert set(meta["test"]) == {"hazelnut", "transistor"}
    for cls, entries in meta["test"].items():
        assert counts(meta)[cls] == (2, 8, 8)
        assert {e["specie_name"] for e in entries} >= {"good"}
        for e in entries:
            if e["mask_path"]:
                with Image.open(root / e["img_path"]) as im, Image.open(root / e["mask_path"]) as m:
                    assert im.size == m.size
                    assert np.asarray(m).any()
    assert {e["specie_name"] for e in meta["test"]["hazelnut"]} == {"good", "crack", "cut", "hole", "print"}


def test_normal_training_images_are_listed_for_few_shot_references(tmp_path):
    meta = prepare("mvtec", make_mvtec(tmp_path / "mvtec"))
    assert {c: [e["img_path"] for e in es] for c, es in meta["train"].items()} == {
        "bottle": ["bottle/train/good/000.png"],
        "screw": ["screw/train/good/000.png"],
    }
    own = tmp_path / "own"
    img(own / "good" / "a.png")
    img(own / "scratch" / "b.png", 200)
    assert prepare("folder", own)["train"] == {}
    img(own / "reference" / "r1.png")
    meta = prepare("folder", own)
    assert [e["img_path"] for e in meta["train"]["own"]] == ["reference/r1.png"]
    assert all(not e["img_path"].startswith("reference/") for e in meta["test"]["own"])


def test_visa_and_btad_list_their_normal_training_images(tmp_path):
    """VisA: the split file's train rows labelled normal (never a test row, never an anomaly); BTAD: train/ok/."""
    root = make_visa(tmp_path / "visa")
    csv_path = root / "split_csv" / "1cls.csv"
    extra = "candle/Data/Images/Anomaly/9.JPG"  # an anomalous image in the train split stays out of the pool
    img(root / extra, 200)
    csv_path.write_text(
        csv_path.read_text() + f"candle,train,anomaly,{extra},candle/Data/Masks/Anomaly/000.png\n"
    )
    meta = prepare("visa", root)
    assert {c: [e["img_path"] for e in es] for c, es in meta["train"].items()} == {
        "candle": ["candle/Data/Images/Normal/0000.JPG"],
        "pcb1": ["pcb1/Data/Images/Normal/0000.JPG"],
    }
    assert all(e["cls_name"] == c and e["anomaly"] == 0 for c, es in meta["train"].items() for e in es)
    check_meta(meta, root, root / "meta.json")
    meta = prepare("btad", make_btad(tmp_path / "btad"))
    assert {c: [e["img_path"] for e in es] for c, es in meta["train"].items()} == {
        "01": ["01/train/ok/0000.bmp"],
        "02": ["02/train/ok/0000.png"],
        "03": ["03/train/ok/0000.bmp"],
    }


def test_a_renamed_visa_object_keeps_its_training_images(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for i, split in enumerate(("train", "train", "test")):
        p = f"candle/Data/Images/Normal/{i:04d}.JPG"
        img(root / p)
        rows.append(f"candle,{split},normal,{p},")
    p, m = "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"
    img(root / p, 200)
    mask(root / m)
    rows.append(f"candle,test,anomaly,{p},{m}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    meta = prepare("visa", root, class_name="wax candle")
    assert list(meta["test"]) == list(meta["train"]) == ["wax candle"]
    assert [e["img_path"] for e in meta["train"]["wax candle"]] == [
        "candle/Data/Images/Normal/0000.JPG",
        "candle/Data/Images/Normal/0001.JPG",
    ]
    (root / "candle/Data/Images/Normal/0001.JPG").unlink()
    with pytest.raises(DatasetLayoutError, match="training image candle/Data/Images/Normal/0001.JPG"):
        prepare("visa", root)
