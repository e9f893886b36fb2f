"""The training-free methods in the demo (issue 17): WinCLIP in Analyze without a checkpoint, MuSc in
Batch, every method in Compare on one colour scale for one pass per backbone; the handlers called in-process."""

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_app import EXAMPLE, count_model_runs

import app
from demo.guards import gr
from demo.models import UNTRAINED, load_winclip
from wmoe import WinCLIP, musc
from wmoe.winclip import WEIGHTS_ENV

NO_PROGRESS = dict(progress=lambda *a, **k: None)


@pytest.fixture(scope="module")
def winclip() -> WinCLIP:
    model, missing = load_winclip("tiny")
    assert missing == []
    return model


@pytest.fixture(scope="module")
def part(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("part") / "part.png"
    Image.open(EXAMPLE).convert("RGB").resize((97, 71)).save(path)
    return path


@pytest.fixture(scope="module")
def normal(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("normal")
    paths = [root / "good1.png", root / "good2.png"]
    for i, p in enumerate(paths):
        Image.open(EXAMPLE).convert("RGB").rotate(180 * i).resize((80, 60)).save(p)
    return paths


def encode_passes(winclip: WinCLIP, monkeypatch) -> list:
    """("winclip", images) for each pass of WinCLIP's own backbone."""
    calls, real = [], winclip.encode
    monkeypatch.setattr(winclip, "encode", lambda x: calls.append(("winclip", x.shape[0])) or real(x))
    return calls


def json_download(downloads) -> dict:
    return json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text())


def analyze(tab, image, references=None):
    return tab.analyze(str(image), "brick wall", 0.5, 0.5, "fixed", False, "", references)


def test_missing_winclip_weights_are_a_banner_line(monkeypatch, tmp_path, part):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    model, missing = load_winclip("clip", "cpu")
    assert (
        model is None
        and missing[0].startswith("WinCLIP is not available")
        and "WMOE\\_WINCLIP\\_WEIGHTS" in missing[0]
    )
    detectors, baseline, notices = app.load_models(None, baseline="tiny")
    lines = app.status_lines(detectors, baseline, notices + missing)
    assert any("**training-free CLIP baseline** (fixed prompts; WinCLIP could not load)" in x for x in lines)
    assert str(tmp_path) not in " ".join(lines)
    page = app.build_page(detectors, baseline, notices + missing)  # no crash: the baseline runs
    result = json_download(analyze(page.analyze, part)[page.analyze.downloads])
    assert result["method"] == "CLIP" and result["model"]["name"].startswith("training-free CLIP baseline")


def test_missing_clip_weights_with_winclip_loaded_still_run_winclip(monkeypatch, tmp_path, winclip, part):
    """The banner says what runs (WinCLIP) and what cannot (MuSc, the baseline), never "nothing can run";
    with WinCLIP missing too, it says Run is disabled."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    detectors, baseline, notices = app.load_models(None)  # the real CLIP weights: not in this cache
    assert not detectors and baseline is None and "cannot run either" in notices[-1]
    banner = " ".join(app.status_lines(detectors, baseline, notices, winclip))
    assert "Analyze runs **WinCLIP**" in banner and "MuSc (Batch) and the plain-CLIP baseline need" in banner
    assert "Nothing can run" not in banner and str(tmp_path) not in banner
    page = app.build_page(detectors, baseline, notices, winclip=winclip)
    assert json_download(analyze(page.analyze, part)[page.analyze.downloads])["method"] == "WinCLIP"
    alone = " ".join(app.status_lines(detectors, baseline, notices))
    assert "Nothing can run here, so Run is disabled" in alone and "Analyze runs" not in alone


def test_analyze_without_a_checkpoint_runs_winclip_and_names_it(winclip, part, normal):
    detectors, baseline, notices = app.load_models(None, baseline="tiny")
    lines = app.status_lines(detectors, baseline, notices, winclip)
    assert "Analyze runs **WinCLIP** (with reference images: **WinCLIP+**)." in lines
    tab = app.build_page(detectors, baseline, notices, winclip=winclip).analyze
    out = analyze(tab, part)
    direct = winclip.predict(Image.open(part), "brick wall")
    result = json_download(out[tab.downloads])
    assert result["method"] == "WinCLIP" and result["model"]["name"].startswith("WinCLIP")
    assert result["score"] == pytest.approx(direct.score, abs=1e-6)
    assert "Method: **WinCLIP** | model: WinCLIP" in out[tab.score]
    assert [x[1].split(":")[0] for x in out[tab.layers]] == [
        "whole image",
        "2 x 2 windows",
        "3 x 3 windows",
    ]
    assert Image.open(out[tab.overlay]).size == (97, 71)
    out = analyze(tab, part, [str(p) for p in normal])
    plus = winclip.predict(Image.open(part), "brick wall", references=[Image.open(p) for p in normal])
    result = json_download(out[tab.downloads])
    assert result["method"] == "WinCLIP+" and result["references"] == 2
    assert result["score"] == pytest.approx(plus.score, abs=1e-6)
    assert "Method: **WinCLIP+**" in out[tab.score] and "the mean of the two parts" in out[tab.score]
    assert [p[1].split(" ")[0] for p in out[tab.parts]] == ["zero-shot", "reference"]
    assert tab.predict_json(str(part), "brick wall", 0.5)[tab.result_json]["method"] == "WinCLIP"


def test_references_with_a_never_trained_model_are_shown_alone(tiny_checkpoint, part, normal):
    """The baseline (WinCLIP absent) and an untrained checkpoint: the result is the reference part alone,
    and the page says so instead of "the mean of the two parts"."""
    for detectors, baseline, notices in [
        app.load_models(None, baseline="tiny"),
        app.load_models(str(tiny_checkpoint)),
    ]:
        tab = app.build_page(detectors, baseline, notices).analyze
        out = analyze(tab, part, [str(p) for p in normal])
        result = json_download(out[tab.downloads])
        assert result["references"] == 2 and result["score"] == pytest.approx(result["reference_score"])
        assert "the reference part alone" in out[tab.score]
        assert "mean of the two parts" not in out[tab.score]
        assert result["method"] == ("WMoE-CLIP" if detectors else "CLIP") + " references alone"
        assert f"Method: **{result['method']}**" in out[tab.score]


def test_compare_shows_every_method_for_one_pass_per_backbone(
    tiny_checkpoint, winclip, part, monkeypatch, tmp_path
):
    normal = [tmp_path / "a.png", tmp_path / "b.png"]  # references no earlier test cached
    for i, p in enumerate(normal):
        Image.open(EXAMPLE).convert("RGB").rotate(90 + 180 * i).resize((70, 50)).save(p)
    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    [detector] = detectors.values()
    runs, passes = count_model_runs(detector, baseline), encode_passes(winclip, monkeypatch)
    tab = app.build_page(detectors, baseline, notices, winclip=winclip).compare
    out = tab.compare(str(part), "brick wall", 0.5, 0.5, "stretch", "", [str(p) for p in normal])
    main = [c for c in runs if c != "heads"]
    assert main == [("backbone", 2), ("backbone", 1)]  # the references once, then the image once
    assert passes == [("winclip", 2), ("winclip", 1)]  # WinCLIP's own backbone: the same
    names = [caption.split(":")[0] for _, caption in out[tab.gallery]]
    assert names == [
        "full WMoE-CLIP",
        "without WCMA",
        "without CTDS",
        "SA-MoE with uniform weights",
        "WinCLIP",
        "training-free CLIP baseline",
        "full WMoE-CLIP + references",
        "WinCLIP+",
        "references alone",
    ]
    scores = {n: float(c.rsplit(" ", 1)[1]) for n, (_, c) in zip(names, out[tab.gallery], strict=True)}
    image, refs = Image.open(part), [Image.open(p) for p in normal]
    plus = winclip.predict(image, "brick wall", references=refs)
    assert scores["WinCLIP"] == pytest.approx(winclip.predict(image, "brick wall").score, abs=1e-3)
    assert scores["WinCLIP+"] == pytest.approx(plus.score, abs=1e-3)
    alone = baseline.predict(image, "brick wall", references=refs)
    assert scores["references alone"] == pytest.approx(alone.reference_score, abs=1e-3)
    assert "stretched jointly over the 9 maps" in out[tab.table]  # one colour scale for every method
    assert "references, references alone: the reference map and score alone" in out[tab.table]
    rows = [r.split(" | ") for r in out[tab.table].splitlines() if r.startswith("| ") and "---" not in r]
    methods = {r[0].strip("| "): r[1] for r in rows[1:]}
    assert methods["WinCLIP+"] == "WinCLIP+" and methods["references alone"] == "CLIP references alone"
    runs.clear(), passes.clear()
    out = tab.compare(str(part), "brick wall", 0.5, 0.5, "fixed", "")
    assert [c for c in runs if c != "heads"] == [("backbone", 1)] and passes == [("winclip", 1)]
    assert "WinCLIP+" not in [c.split(":")[0] for _, c in out[tab.gallery]]


def test_compare_without_winclip_says_so(tiny_checkpoint, part):
    tab = app.build_page(*app.load_models(str(tiny_checkpoint))).compare
    out = tab.compare(str(part), "brick wall", 0.5, 0.5, "fixed", "")
    assert "WinCLIP" not in [c.split(":")[0] for _, c in out[tab.gallery]]
    assert "Not shown: WinCLIP, which could not load" in out[tab.table]


@pytest.fixture(scope="module")
def parts_zip(tmp_path_factory) -> Path:
    """Six rotations of the example in folder screw/, two in nut/."""
    archive = tmp_path_factory.mktemp("zip") / "parts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, folder in enumerate(["screw"] * 6 + ["nut"] * 2):
            buffer = io.BytesIO()
            Image.open(EXAMPLE).convert("RGB").rotate(45 * i).resize((64, 48)).save(buffer, "png")
            z.writestr(f"{folder}/{i}.png", buffer.getvalue())
    return archive


def test_batch_scores_each_folder_against_itself_with_musc(tiny_checkpoint, parts_zip):
    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    [detector] = detectors.values()
    runs = count_model_runs(detector, baseline)
    tab = app.build_page(detectors, baseline, notices).batch
    out = tab.batch([str(parts_zip)], "part", 0.5, True, "", True, **NO_PROGRESS)
    assert [c for c in runs if c != "heads"] == [("backbone", 6)] and "heads" not in runs  # one pass
    rows = {r["file"]: r for r in csv.DictReader(io.StringIO(Path(out[tab.csv]).read_text()))}
    with zipfile.ZipFile(parts_zip) as z:
        images = [Image.open(io.BytesIO(z.read(f"screw/{i}.png"))).convert("RGB") for i in range(6)]
    direct = musc.predict_batch(detector, images, "screw")  # normalised over the screw images alone
    for i, p in enumerate(direct):
        assert float(rows[f"screw/{i}.png"]["score"]) == pytest.approx(p.score, abs=1e-5)
        assert rows[f"screw/{i}.png"]["model"].startswith("MuSc on")
    need = musc.min_images()
    for i in (6, 7):
        assert (
            rows[f"nut/{i}.png"]["error"]
            == f"not scored: MuSc needs at least {need} images of a class, 'nut' has 2"
        )
    assert [g[1].split(":")[0] for g in out[tab.gallery]] == sorted(
        (f"screw/{i}.png" for i in range(6)), key=lambda f: -float(rows[f]["score"])
    )
    assert (
        "Method: **MuSc**" in out[tab.summary] and "normalised over each class's images" in out[tab.summary]
    )
    assert out[tab.strips] == [] and out[tab.routing] == "MuSc has no experts, so there is no routing."
    with pytest.raises(gr.Error, match=f"at least {need} readable images of a class; 'part' has 2"):
        tab.batch([write_two(parts_zip)], "part", 0.5, False, "", True, **NO_PROGRESS)


def test_batch_without_a_checkpoint_runs_winclip_per_image(winclip, parts_zip, monkeypatch):
    detectors, baseline, notices = app.load_models(None, baseline="tiny")
    passes = encode_passes(winclip, monkeypatch)
    tab = app.build_page(detectors, baseline, notices, winclip=winclip).batch
    out = tab.batch([str(parts_zip)], "part", 0.5, True, "", False, **NO_PROGRESS)
    rows = list(csv.DictReader(io.StringIO(Path(out[tab.csv]).read_text())))
    assert len(rows) == 8 and all(r["model"].startswith("WinCLIP") for r in rows)
    assert len(passes) == 8 and "Method: **WinCLIP**" in out[tab.summary]  # one pass per image
    with zipfile.ZipFile(parts_zip) as z:
        image = Image.open(io.BytesIO(z.read("screw/0.png"))).convert("RGB")
    score = float(next(r for r in rows if r["file"] == "screw/0.png")["score"])
    assert score == pytest.approx(winclip.predict(image, "screw").score, abs=1e-5)


def write_two(parts_zip: Path) -> str:
    """A zip of two images, at the top level (so they take the given class name)."""
    out = parts_zip.with_name("two.zip")
    with zipfile.ZipFile(parts_zip) as src, zipfile.ZipFile(out, "w") as z:
        for i in (6, 7):
            z.writestr(f"{i}.png", src.read(f"nut/{i}.png"))
    return str(out)


def test_untrained_banner_still_shown_with_winclip(tiny_checkpoint, winclip):
    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    lines = app.status_lines(detectors, baseline, notices, winclip)
    assert any(UNTRAINED in x for x in lines) and any(
        "WinCLIP's backbone has random weights" in x for x in lines
    )
