"""Write the field's `meta.json` for an anomaly-detection dataset from its published folder layout.

Schema (APRIL-GAN / AnomalyCLIP / AdaCLIP):

    {"train": {cls: [...]}, "test": {cls: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}]}}

`img_path` / `mask_path` are relative to the dataset root (POSIX separators); `mask_path` is ""
when the image has no mask (every normal image, and datasets with image labels only); `anomaly` is 0/1.
The protocol trains on the *test* split of one dataset and evaluates zero-shot on the others (see
training/README.md); "train" lists only normal training images (MVTec-like `train/good/`, BTAD's
`train/ok/`, VisA's split-file `train` rows labelled normal, an own folder's `reference/`), the pool the
few-shot protocol draws its reference images from.

One small loader per dataset, registered in `LOADERS`; each loader's docstring gives the layout it
expects. `folder` is for a user's own data. Usage:

    python -m training.prepare_data --dataset mvtec --root data/mvtec [--out data/mvtec/meta.json]
    python -m training.prepare_data --dataset folder --root my_parts --class-name "metal bracket"

A missing or malformed folder raises `DatasetLayoutError` naming the path and what was expected;
the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import ENTRY_KEYS
from training.registry import Registry
from wmoe.errors import EXIT_ERROR, EXIT_OK, WMoEError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

Entries = list[dict]
Loader = Callable[[Path, "str | None"], dict[str, Entries]]
LOADERS: Registry[Loader] = Registry("dataset")  # loaders `(root, class_name) -> {cls: [entry, ...]}`


class DatasetLayoutError(WMoEError, ValueError):
    """The dataset folder does not have the expected layout (the message names the path)."""


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _images(folder: Path, exclude: Callable[[Path], bool] | None = None) -> list[Path]:
    files = [p for p in folder.iterdir() if _is_image(p) and not (exclude and exclude(p))]
    return sorted(files, key=_natural_key)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key
    )


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: folder not found; expected {expected}")
    return path


def _first_dir(candidates: Iterable[Path], expected: str, where: Path) -> Path:
    cands = list(candidates)
    for c in cands:
        if c.is_dir():
            return c
    tried = ", ".join(str(c.relative_to(where)) if c != where else "." for c in cands)
    raise DatasetLayoutError(f"{where}: none of the folders [{tried}] found; expected {expected}")


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _entry(root: Path, img: Path, cls: str, specie: str, anomaly: bool, mask: Path | None = None) -> dict:
    return {
        "img_path": _rel(root, img),
        "mask_path": _rel(root, mask) if mask is not None else "",
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": int(bool(anomaly)),
    }


def _mask_index(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Map an image stem to its mask in `folder`, a file named `<stem><suffix>.<any image ext>`.

    Suffixes are tried longest first (so `000_mask.png` wins over `000.png`); the empty suffix
    matches the bare stem only when it is listed.
    """
    files = _images(folder)
    index: dict[str, Path] = {}
    for suf in sorted(suffixes, key=len, reverse=True):
        for p in files:
            stem = p.stem
            if not suf:
                index.setdefault(stem, p)
            elif stem.lower().endswith(suf.lower()) and len(stem) > len(suf):
                index.setdefault(stem[: -len(suf)], p)
    return index


def _mask_is_empty(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return not np.asarray(im).any()
    except OSError as e:
        raise DatasetLayoutError(f"{path}: cannot read the mask image ({e})") from e


def _single_class(entries: Entries, default: str, class_name: str | None) -> dict[str, Entries]:
    cls = class_name or default
    for e in entries:
        e["cls_name"] = cls
    return {cls: entries}


def _yes_no(root: Path, candidates: Sequence[Path], cls: str, specie: str) -> Entries:
    """Image-label datasets: `yes/` (anomalous) and `no/` (normal) in the first candidate holding both."""
    folder = next((c for c in candidates if (c / "yes").is_dir() and (c / "no").is_dir()), None)
    if folder is None:
        tried = ", ".join(_rel(root, c) if c != root else "." for c in candidates)
        raise DatasetLayoutError(
            f"{root}: no yes/ and no/ folders in [{tried}]; expected yes/ (anomalous) "
            "and no/ (normal) image folders"
        )
    entries = [_entry(root, p, cls, "good", False) for p in _images(folder / "no")]
    entries += [_entry(root, p, cls, specie, True) for p in _images(folder / "yes")]
    return entries


def _image_mask_pairs(
    root: Path, img_dir: Path, mask_dir: Path, cls: str, specie: str, mask_suffixes: Sequence[str] = ("",)
) -> Entries:
    """All-anomalous datasets: every image in `img_dir` has a mask in `mask_dir`."""
    masks = _mask_index(mask_dir, sorted(mask_suffixes, key=len, reverse=True))
    entries = []
    for img in _images(img_dir):
        mask = masks.get(img.stem)
        if mask is None:
            want = " or ".join(f"{img.stem}{s}.*" for s in mask_suffixes)
            raise DatasetLayoutError(f"{mask_dir}: no mask for {img.name}; expected {want}")
        entries.append(_entry(root, img, cls, specie, True, mask))
    return entries


# ----------------------------------------------------------------------------------------------------
# MVTec-like layouts (MVTec AD, MPDD, DTD-Synthetic, BTAD, VisA converted to MVTec layout)
# ----------------------------------------------------------------------------------------------------
def _mvtec_like(
    root: Path, class_name: str | None, good: str = "good", mask_suffixes: Sequence[str] = ("_mask",)
) -> dict[str, Entries]:
    """`<root>/<class>/test/<specie>/*` with masks in `<root>/<class>/ground_truth/<specie>/`."""
    if (root / "test").is_dir():  # the root is one class folder
        class_dirs = [root]
    else:
        class_dirs = [d for d in _subdirs(root) if (d / "test").is_dir()]
    if not class_dirs:
        raise DatasetLayoutError(
            f"{root}: no class folder with a test/ subfolder; expected <root>/<class>/test/{good}/ and "
            f"<root>/<class>/test/<defect>/ (+ <root>/<class>/ground_truth/<defect>/)"
        )
    if class_name and len(class_dirs) > 1:
        raise DatasetLayoutError(
            f"{root}: --class-name only applies to a single-class dataset, found "
            f"{len(class_dirs)} classes ({', '.join(d.name for d in class_dirs)})"
        )
    suffixes = sorted(mask_suffixes, key=len, reverse=True)
    out: dict[str, Entries] = {}
    for cls_dir in class_dirs:
        cls = class_name or (cls_dir.name if cls_dir != root else root.resolve().name)
        species = _subdirs(cls_dir / "test")
        if not any(s.name == good for s in species):
            raise DatasetLayoutError(
                f"{cls_dir / 'test'}: no {good}/ folder; expected test/{good}/ with the "
                "normal test images and one folder per defect type"
            )
        entries: Entries = []
        for sp in species:
            anomalous = sp.name != good
            masks: dict[str, Path] = {}
            if anomalous:
                gt = _require_dir(
                    cls_dir / "ground_truth" / sp.name,
                    f"the masks of test/{sp.name}/ (ground_truth/{sp.name}/<stem>{mask_suffixes[0]}.png)",
                )
                masks = _mask_index(gt, suffixes)
            for img in _images(sp):
                mask = None
                if anomalous:
                    mask = masks.get(img.stem)
                    if mask is None:
                        raise DatasetLayoutError(
                            f"{cls_dir / 'ground_truth' / sp.name}: no mask for "
                            f"test/{sp.name}/{img.name}; expected {img.stem}{mask_suffixes[0]}.png"
                        )
                entries.append(_entry(root, img, cls, sp.name, anomalous, mask))
        out[cls] = entries
    return out


@LOADERS.register("mvtec", "mpdd", "dtd")
def load_mvtec(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """MVTec AD, MPDD and DTD-Synthetic (same layout):

        <root>/<class>/train/good/*.png                       normal training images ("train": few-shot pool)
        <root>/<class>/test/good/*.png                        normal
        <root>/<class>/test/<defect>/000.png                  anomalous
        <root>/<class>/ground_truth/<defect>/000_mask.png     its mask (a mask named 000.png is accepted too)

    `<root>` may also be a single class folder (holding `test/`). DTD-Synthetic has one defect
    folder per texture (`test/bad`).
    """
    return _mvtec_like(root, class_name, "good", ("_mask", ""))


@LOADERS.register("btad")
def load_btad(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """BTAD (BeanTech, also distributed as `BTech_Dataset_transformed`):

    <root>/01|02|03/train/ok/*.bmp|png                    normal training images ("train": few-shot pool)
    <root>/01|02|03/test/ok/*.bmp|png                     normal
    <root>/01|02|03/test/ko/*.bmp|png                     anomalous
    <root>/01|02|03/ground_truth/ko/<stem>.png|bmp        its mask (same stem; <stem>_mask accepted)
    """
    return _mvtec_like(root, class_name, "ok", ("", "_mask"))


def _visa_split(root: Path) -> tuple[Path, list[dict]] | None:
    """VisA's split file and its rows (lower-case keys, stripped values), or None when there is none."""
    csv_path = next((p for p in (root / "split_csv" / "1cls.csv", root / "1cls.csv") if p.is_file()), None)
    if csv_path is None:
        return None
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        need = ["object", "split", "label", "image", "mask"]
        if not set(need) <= set(cols):
            raise DatasetLayoutError(f"{csv_path}: columns {cols}; expected {','.join(need)}")
        return csv_path, [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]


def _visa_train(root: Path, test: dict[str, Entries]) -> dict[str, Entries]:
    """VisA's few-shot pool: the split file's `train` rows labelled `normal`, per tested object (a class
    renamed with --class-name keeps them). Without a split file, the MVTec-like `train/good/` folders."""
    split = _visa_split(root)
    if split is None:
        return _normal_references(root, test)
    csv_path, rows = split
    single = next(iter(test)) if len(test) == 1 else None  # one tested object, maybe renamed
    tested = {r["object"]: single or r["object"] for r in rows if r["split"].lower() == "test"}
    out: dict[str, Entries] = {}
    for r in rows:
        if r["split"].lower() != "train" or r["label"].lower() != "normal" or r["object"] not in tested:
            continue
        cls = tested[r["object"]]
        if not (root / r["image"]).is_file():
            raise DatasetLayoutError(f"{csv_path}: training image {r['image']} listed but not found")
        out.setdefault(cls, []).append(_entry(root, root / r["image"], cls, "good", False))
    return out


@LOADERS.register("visa")
def load_visa(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """VisA with its split file:

        <root>/split_csv/1cls.csv    (or <root>/1cls.csv) columns: object,split,label,image,mask
        <root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG and <object>/Data/Masks/Anomaly/*.png

    The rows with `split == test` are listed; `label` is `normal` or `anomaly`; the `image` and
    `mask` columns are paths relative to `<root>`. `specie_name` is `good` or `anomaly`. The `train`
    rows labelled `normal` are the few-shot pool ("train", `_visa_train`).
    Without a csv, an MVTec-like conversion of VisA (`<object>/test/good`, `test/bad`,
    `ground_truth/bad`) is accepted.
    """
    split = _visa_split(root)
    if split is None:
        if any((d / "test").is_dir() for d in _subdirs(root)):
            return _mvtec_like(root, class_name, "good", ("_mask", ""))
        raise DatasetLayoutError(
            f"{root}: split_csv/1cls.csv not found; expected VisA's split file "
            "(columns object,split,label,image,mask) or an MVTec-like <object>/test/ layout"
        )
    csv_path, rows = split
    out: dict[str, Entries] = {}
    for i, r in enumerate(rows, start=2):
        if r["split"].lower() != "test":
            continue
        label = r["label"].lower()
        if label not in ("normal", "anomaly"):
            raise DatasetLayoutError(f"{csv_path}:{i}: label {r['label']!r}; expected 'normal' or 'anomaly'")
        anomalous = label == "anomaly"
        if anomalous and not r["mask"]:
            raise DatasetLayoutError(f"{csv_path}:{i}: anomalous image {r['image']} has an empty mask column")
        out.setdefault(r["object"], []).append(
            {
                "img_path": Path(r["image"]).as_posix(),
                "mask_path": Path(r["mask"]).as_posix() if anomalous else "",
                "cls_name": r["object"],
                "specie_name": "anomaly" if anomalous else "good",
                "anomaly": int(anomalous),
            }
        )
    if not out:
        raise DatasetLayoutError(f"{csv_path}: no rows with split 'test'")
    if class_name:
        if len(out) > 1:
            raise DatasetLayoutError(
                f"{root}: --class-name only applies to a single-class dataset, found "
                f"{len(out)} objects in {csv_path.name}"
            )
        return _single_class(next(iter(out.values())), class_name, class_name)
    return out


# ----------------------------------------------------------------------------------------------------
# other industrial sets
# ----------------------------------------------------------------------------------------------------
@LOADERS.register("ksdd")
def load_ksdd(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """KolektorSDD (KSDD / SDD), class `ksdd`:

        <root>/kos01/Part0.jpg + <root>/kos01/Part0_label.bmp   ... kos50/

    An image is anomalous when its label image is non-empty (each label is opened to decide); the label
    is then its mask. KolektorSDD2 is accepted too: `<root>/test/<n>.png` + `<root>/test/<n>_GT.png`.
    """
    kos = [d for d in _subdirs(root) if re.fullmatch(r"kos\d+", d.name, re.IGNORECASE)]
    if kos:
        pairs = []
        for d in kos:
            labels = _mask_index(d, ("_label",))
            for img in _images(d, exclude=lambda p: p.stem.lower().endswith("_label")):
                label = labels.get(img.stem)
                if label is None:
                    raise DatasetLayoutError(f"{d}: no label for {img.name}; expected {img.stem}_label.bmp")
                pairs.append((img, label))
    elif (root / "test").is_dir():
        test = root / "test"
        labels = _mask_index(test, ("_GT",))
        pairs = []
        for img in _images(test, exclude=lambda p: p.stem.upper().endswith("_GT")):
            label = labels.get(img.stem)
            if label is None:
                raise DatasetLayoutError(f"{test}: no label for {img.name}; expected {img.stem}_GT.png")
            pairs.append((img, label))
    else:
        raise DatasetLayoutError(
            f"{root}: no kos01..kos50 folders (KolektorSDD) and no test/ folder "
            "(KolektorSDD2); expected <root>/kosNN/PartN.jpg + PartN_label.bmp"
        )
    entries = []
    for img, label in pairs:
        anomalous = not _mask_is_empty(label)
        entries.append(
            _entry(
                root, img, "ksdd", "defect" if anomalous else "good", anomalous, label if anomalous else None
            )
        )
    return _single_class(entries, "ksdd", class_name)


def _dagm_labels_txt(path: Path) -> dict[str, bool]:
    """Parse DAGM's `Labels.txt`: `<n> <0|1> <image> <0> <label image|0>` per line (header line ok)."""
    flags: dict[str, bool] = {}
    for line in path.read_text(errors="replace").splitlines():
        toks = line.split()
        if len(toks) < 3:
            continue  # the one-number header line, blank lines
        image = next(
            (t for t in toks if Path(t).suffix.lower() in IMAGE_EXTS and "_label" not in t.lower()), None
        )
        if image is None or toks[1] not in ("0", "1"):
            continue
        flags[Path(image).stem] = toks[1] == "1"
    return flags


@LOADERS.register("dagm")
def load_dagm(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """DAGM 2007 (weakly supervised industrial optical inspection), classes `Class1` .. `Class10`:

        <root>/ClassN/Test/*.PNG
        <root>/ClassN/Test/Label/*_label.PNG     masks of the defective images
        <root>/ClassN/Test/Label/Labels.txt      (optional) per-image 0/1 flags

    An image is anomalous when Labels.txt flags it (or, without Labels.txt, when it has a label image).
    """
    class_dirs = [d for d in _subdirs(root) if re.fullmatch(r"class\d+", d.name, re.IGNORECASE)]
    if not class_dirs:
        raise DatasetLayoutError(
            f"{root}: no Class1..Class10 folders; expected <root>/ClassN/Test/ and <root>/ClassN/Test/Label/"
        )
    if class_name and len(class_dirs) > 1:
        raise DatasetLayoutError(
            f"{root}: --class-name only applies to a single-class dataset, found {len(class_dirs)} classes"
        )
    out: dict[str, Entries] = {}
    for cdir in class_dirs:
        test = _first_dir([cdir / "Test", cdir / "test"], "Test/ with the test images", cdir)
        label_dir = _first_dir([test / "Label", test / "label"], "Test/Label/ with *_label.PNG masks", test)
        labels = _mask_index(label_dir, ("_label",))
        txt = next((p for p in (label_dir / "Labels.txt", label_dir / "labels.txt") if p.is_file()), None)
        flags = _dagm_labels_txt(txt) if txt else {}
        cls = class_name or cdir.name
        entries = []
        for img in _images(test):
            label = labels.get(img.stem)
            anomalous = flags.get(img.stem, label is not None)
            if anomalous and label is None:
                raise DatasetLayoutError(
                    f"{label_dir}: {txt.name if txt else 'Labels.txt'} marks {img.name} "
                    f"as defective but {img.stem}_label.PNG is missing"
                )
            entries.append(
                _entry(
                    root, img, cls, "defect" if anomalous else "good", anomalous, label if anomalous else None
                )
            )
        out[cls] = entries
    return out


# ----------------------------------------------------------------------------------------------------
# medical sets
# ----------------------------------------------------------------------------------------------------
@LOADERS.register("headct")
def load_headct(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """Head CT - hemorrhage (Kaggle), class `headct`, image labels only:

        <root>/labels.csv              columns: id, hemorrhage (0/1)   (header spaces are fine)
        <root>/head_ct/000.png ...     (also <root>/head_ct/head_ct/ or the images in <root> itself)

    Image `id` is the integer value of the file stem (`000.png` is id 0).
    """
    csv_path = next((p for p in (root / "labels.csv", root / "head_ct" / "labels.csv") if p.is_file()), None)
    if csv_path is None:
        raise DatasetLayoutError(
            f"{root}: labels.csv not found; expected <root>/labels.csv (columns id, hemorrhage) "
            "and the images in <root>/head_ct/"
        )
    cands = [root / "head_ct" / "head_ct", root / "head_ct", root]
    img_dir = next((c for c in cands if c.is_dir() and _images(c)), None)
    if img_dir is None:
        raise DatasetLayoutError(
            f"{root}: no images in head_ct/head_ct/, head_ct/ or the root; expected "
            "<root>/head_ct/000.png ..."
        )
    by_id: dict[int, Path] = {}
    for p in _images(img_dir):
        if p.stem.isdigit():
            by_id.setdefault(int(p.stem), p)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if not {"id", "hemorrhage"} <= set(cols):
            raise DatasetLayoutError(f"{csv_path}: columns {cols}; expected id, hemorrhage")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    entries = []
    for i, r in enumerate(rows, start=2):
        try:
            idx, flag = int(r["id"]), int(r["hemorrhage"])
        except ValueError as e:
            raise DatasetLayoutError(
                f"{csv_path}:{i}: expected integer id and hemorrhage 0/1, got {r}"
            ) from e
        if flag not in (0, 1):
            raise DatasetLayoutError(f"{csv_path}:{i}: hemorrhage {flag}; expected 0 or 1")
        img = by_id.get(idx)
        if img is None:
            raise DatasetLayoutError(
                f"{img_dir}: no image for id {idx} of {csv_path.name}; expected {idx:03d}.png"
            )
        entries.append(_entry(root, img, "headct", "hemorrhage" if flag else "good", bool(flag)))
    if not entries:
        raise DatasetLayoutError(f"{csv_path}: no rows")
    return _single_class(entries, "headct", class_name)


@LOADERS.register("brainmri")
def load_brainmri(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """Brain MRI images for brain tumor detection (Kaggle), class `brainmri`, image labels only:

    <root>/brain_tumor_dataset/yes/*.jpg   tumour (anomalous)
    <root>/brain_tumor_dataset/no/*.jpg    normal
    (or <root>/yes/ and <root>/no/)
    """
    return _single_class(
        _yes_no(root, [root / "brain_tumor_dataset", root], "brainmri", "tumor"), "brainmri", class_name
    )


@LOADERS.register("br35h")
def load_br35h(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """Br35H brain tumour detection 2020, class `br35h`, image labels only:

    <root>/yes/*.jpg   tumour (anomalous)
    <root>/no/*.jpg    normal
    (or <root>/Br35H/yes|no; the unlabelled pred/ folder is ignored)
    """
    return _single_class(
        _yes_no(root, [root, root / "Br35H", root / "br35h"], "br35h", "tumor"), "br35h", class_name
    )


@LOADERS.register("isic")
def load_isic(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """ISIC 2016 challenge, task 1 (lesion segmentation), class `isic`, all anomalous:

        <root>/ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg
        <root>/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png

    The test pair is used when present, else the training pair (`..._Training_Data` /
    `..._Training_GroundTruth`), else `images/` + `masks/`.
    """
    pairs = [
        ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
        ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        ("images", "masks"),
    ]
    for img_name, mask_name in pairs:
        if (root / img_name).is_dir():
            mask_dir = _require_dir(
                root / mask_name, f"the lesion masks (<stem>_Segmentation.png) beside {img_name}/"
            )
            entries = _image_mask_pairs(
                root, root / img_name, mask_dir, "isic", "lesion", ("_Segmentation", "")
            )
            return _single_class(entries, "isic", class_name)
    raise DatasetLayoutError(
        f"{root}: none of {', '.join(p[0] + '/' for p in pairs)} found; expected "
        "ISBI2016_ISIC_Part1_Test_Data/ + ISBI2016_ISIC_Part1_Test_GroundTruth/"
    )


def _polyp_loader(name: str) -> Loader:
    def load(root: Path, class_name: str | None = None) -> dict[str, Entries]:
        bases = [root] + _subdirs(root)
        img_names = ("images", "Original", "image", "imgs")
        mask_names = ("masks", "Ground Truth", "GroundTruth", "mask", "gt")
        for base in bases:
            img_dir = next((base / n for n in img_names if (base / n).is_dir()), None)
            if img_dir is None:
                continue
            mask_dir = next((base / n for n in mask_names if (base / n).is_dir()), None)
            if mask_dir is None:
                raise DatasetLayoutError(
                    f"{base}: {img_dir.name}/ found but no mask folder; expected one of "
                    f"{', '.join(n + '/' for n in mask_names)}"
                )
            entries = _image_mask_pairs(root, img_dir, mask_dir, name, "polyp", ("", "_mask"))
            return _single_class(entries, name, class_name)
        raise DatasetLayoutError(
            f"{root}: no images/ (or Original/) folder; expected <root>/images/ + <root>/masks/ "
            "(same file stems)"
        )

    load.__name__ = f"load_{name}"
    load.__doc__ = f"""CVC-{name[:-2].capitalize()}DB polyp segmentation, class `{name}`, all anomalous:

        <root>/images/<n>.png + <root>/masks/<n>.png    (PraNet's TestDataset/CVC-*/ layout)
        <root>/Original/<n>.tif + <root>/Ground Truth/<n>.tif   (the original release)

    Masks are matched to images by file stem (any extension). One sub-folder level is searched too.
    """
    return load


load_colondb = LOADERS.register("colondb")(_polyp_loader("colondb"))
load_clinicdb = LOADERS.register("clinicdb")(_polyp_loader("clinicdb"))


@LOADERS.register("tn3k")
def load_tn3k(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """TN3K thyroid nodule ultrasound, class `tn3k`, all anomalous:

    <root>/test-image/0000.jpg + <root>/test-mask/0000.jpg   (matched by file stem)
    """
    img_dir = _require_dir(root / "test-image", "TN3K's test-image/ folder (with test-mask/ beside it)")
    mask_dir = _require_dir(root / "test-mask", "TN3K's test-mask/ folder beside test-image/")
    return _single_class(
        _image_mask_pairs(root, img_dir, mask_dir, "tn3k", "nodule", ("", "_mask")), "tn3k", class_name
    )


# ----------------------------------------------------------------------------------------------------
# a user's own data
# ----------------------------------------------------------------------------------------------------
@LOADERS.register("folder")
def load_folder(root: Path, class_name: str | None = None) -> dict[str, Entries]:
    """A user's own images, one class (the root folder's name, or `--class-name`):

        <root>/good/*.png                               normal
        <root>/<defect>/*.png                           anomalous, one folder per defect type
        <root>/ground_truth/<defect>/<stem>_mask.png    optional masks (<stem>.png accepted too)
        <root>/reference/*.png                          optional normal images, not tested ("train": few-shot pool)

    Masks are optional: an anomalous image without one gets `mask_path` "" (image-level label only).
    """
    good = _require_dir(root / "good", "good/ with the normal images, plus one folder per defect type")
    cls = class_name or root.resolve().name
    entries = [_entry(root, p, cls, "good", False) for p in _images(good)]
    if not entries:
        raise DatasetLayoutError(f"{good}: no images ({', '.join(sorted(IMAGE_EXTS))})")
    for d in _subdirs(root):
        if d.name in ("good", "ground_truth", "reference"):  # reference/: normal few-shot pool, not tested
            continue
        gt = root / "ground_truth" / d.name
        masks = _mask_index(gt, ("_mask", "")) if gt.is_dir() else {}
        entries += [_entry(root, p, cls, d.name, True, masks.get(p.stem)) for p in _images(d)]
    return {cls: entries}


# ----------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------
def _validate(root: Path, test: dict[str, Entries]) -> None:
    if not test:
        raise DatasetLayoutError(f"{root}: no classes found")
    for cls, entries in test.items():
        if not entries:
            raise DatasetLayoutError(f"{root}: class {cls!r} has no test images")
        for e in entries:
            if tuple(e) != ENTRY_KEYS or e["anomaly"] not in (0, 1):
                raise AssertionError(f"malformed entry {e}")  # a loader bug, not a layout problem
            if not (root / e["img_path"]).is_file():
                raise DatasetLayoutError(f"{root / e['img_path']}: image listed but not found")
            if e["mask_path"] and not (root / e["mask_path"]).is_file():
                raise DatasetLayoutError(f"{root / e['mask_path']}: mask listed but not found")
            if not e["anomaly"] and e["mask_path"]:
                raise AssertionError(f"normal image with a mask: {e}")


def _normal_references(root: Path, test: dict[str, Entries]) -> dict[str, Entries]:
    """Each class's normal images outside its test split, the pool of few-shot reference images
    (`python -m training.evaluate --shots K`): `<class>/train/good/` in the MVTec layout (the folder holding
    a class's `test/`; BTAD's `train/ok/`), or a `reference/` folder beside an own folder's `good/`. Classes
    without one are left out. VisA's pool comes from its split file (`_visa_train`)."""
    out: dict[str, Entries] = {}
    for cls, entries in test.items():
        parts = Path(entries[0]["img_path"]).parts
        candidates = [root / "reference"]
        if "test" in parts:
            train = root.joinpath(*parts[: parts.index("test")], "train")
            candidates[:0] = [train / "good", train / "ok"]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is not None:
            normals = [_entry(root, p, cls, "good", False) for p in _images(folder)]
            if normals:
                out[cls] = normals
    return out


def prepare(
    dataset: str, root: str | Path, out: str | Path | None = None, class_name: str | None = None
) -> dict:
    """Build the meta dict for `dataset` (a key of `LOADERS`) under `root` and write it.

    Written to `out` (default `<root>/meta.json`); returns `{"train": {cls: [...]}, "test": {cls: [...]}}`,
    "train" listing each class's normal training images where the dataset has them (`_normal_references`,
    `_visa_train`).
    `class_name` renames the class of a single-class dataset (an error for multi-class ones).
    Raises `DatasetLayoutError` (a `ValueError`) on a missing or malformed layout.
    """
    key = dataset.strip().lower()
    if key not in LOADERS:
        raise DatasetLayoutError(f"unknown dataset {dataset!r}; expected one of {', '.join(sorted(LOADERS))}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset root not found (expected a folder)")
    test = LOADERS[key](root, class_name or None)
    _validate(root, test)
    train = _visa_train(root, test) if key == "visa" else _normal_references(root, test)
    meta = {"train": train, "test": test}
    out_path = Path(out) if out is not None else root / "meta.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(meta, indent=4) + "\n")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.prepare_data",
        description="Write meta.json for an anomaly-detection dataset.",
    )
    ap.add_argument(
        "--dataset",
        required=True,
        choices=sorted(LOADERS),
        metavar="NAME",
        help="one of: " + ", ".join(sorted(LOADERS)),
    )
    ap.add_argument("--root", required=True, help="dataset root folder")
    ap.add_argument("--out", default=None, help="output path (default: ROOT/meta.json)")
    ap.add_argument("--class-name", default=None, help="class name for a single-class dataset / own folder")
    args = ap.parse_args(argv)
    try:
        meta = prepare(args.dataset, args.root, args.out, args.class_name)
    except WMoEError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    out = args.out or str(Path(args.root) / "meta.json")
    for cls, entries in meta["test"].items():
        n_bad = sum(e["anomaly"] for e in entries)
        n_mask = sum(bool(e["mask_path"]) for e in entries)
        print(f"{cls}: {len(entries) - n_bad} normal, {n_bad} anomalous ({n_mask} with masks)")
    print(f"wrote {out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
