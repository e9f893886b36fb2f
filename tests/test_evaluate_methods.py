"""training.evaluate --method musc|winclip|clip|wmoe: every method end to end on the same reports, each equal to
the library's own method; MuSc sees each class as one batch; bad combinations fail clearly."""

import csv
import io
import json

import pytest

from training import evaluate as E
from training.evaluate import main as evaluate_main
from training.prepare_data import prepare
from training.synthetic import generate
from wmoe import Detector, WinCLIP, WMoEConfig, musc
from wmoe import metrics as M
from wmoe.errors import WMoEError


def run(data, out, *extra):
    args = ["--data", str(data), "--out", str(out), "--no-progress", "--cpu-threads", "1", *extra]
    return evaluate_main(args)


@pytest.fixture
def image_scores(monkeypatch) -> list[list[float]]:
    """The image scores of each class, as evaluate hands them to the metrics."""
    seen, real = [], M.compute_all

    def spy(labels, scores, masks=None, maps=None):
        if maps is None:
            seen.append([float(s) for s in scores])
        return real(labels, scores, masks, maps)

    monkeypatch.setattr(M, "compute_all", spy)
    return seen


def class_paths(data) -> dict[str, list]:
    meta = json.loads((data / "meta.json").read_text())["test"]
    return {c: [data / e["img_path"] for e in entries] for c, entries in meta.items()}


def header(out) -> list[str]:
    return next(csv.reader(io.StringIO((out / "results.csv").read_text())))


@pytest.mark.parametrize("method", ["musc", "winclip", "clip"])
def test_each_training_free_method_writes_the_checkpoints_reports(
    method, two_class_data, tiny_checkpoint, tmp_path
):
    assert run(two_class_data, tmp_path / "wmoe", "--checkpoint", str(tiny_checkpoint)) == 0
    assert run(two_class_data, tmp_path / method, "--method", method, "--backbone", "wmoe-tiny") == 0
    got = json.loads((tmp_path / method / "metrics.json").read_text())
    ref = json.loads((tmp_path / "wmoe" / "metrics.json").read_text())
    assert ref["method"] == "WMoE-CLIP" and ref["checkpoint"] == str(tiny_checkpoint)
    assert got["method"] == E.METHODS[method] and got["checkpoint"] is None and got["trained"] is False
    assert got["backbone"] == "wmoe-tiny"
    assert header(tmp_path / method) == header(tmp_path / "wmoe")
    assert set(got["mean"]) == set(ref["mean"]) and list(got["per_class"]) == list(ref["per_class"])
    assert got["counts"] == ref["counts"] and got["images"] == 16
    for m in got["per_class"].values():  # every class has both labels and masks: all seven are defined
        assert all(v is not None for v in m.values())
    assert f"{E.METHODS[method]} (wmoe-tiny) on" in (tmp_path / method / "results.md").read_text()


def test_musc_scores_each_class_as_one_batch(
    two_class_data, tmp_path, backbone_images, image_scores, monkeypatch
):
    batches, real = [], musc.score

    def spy(features, *args, **kwargs):
        batches.append(len(features))
        return real(features, *args, **kwargs)

    monkeypatch.setattr(musc, "score", spy)
    out = tmp_path / "musc"
    assert run(two_class_data, out, "--method", "musc", "--backbone", "wmoe-tiny", "--batch-size", "3") == 0
    sizes = [len(v) for v in class_paths(two_class_data).values()]
    assert batches == sizes == [8, 8]  # each class scored once, all its images together
    assert backbone_images == [3, 3, 2, 3, 3, 2]  # the backbone in chunks of --batch-size, once per image
    assert json.loads((out / "metrics.json").read_text())["musc_ks"] == list(musc.KS)
    # the same image scores as the library's MuSc on each class's images at once
    backbone_images.clear()
    detector = Detector.training_free(like=WMoEConfig.tiny(), device="cpu")
    for paths, scores in zip(class_paths(two_class_data).values(), image_scores, strict=True):
        expected = [p.score for p in musc.predict_batch(detector, paths)]
        assert scores == pytest.approx(expected, abs=1e-5)
    assert backbone_images == [8, 8]


def test_winclip_and_winclip_plus_are_the_librarys(two_class_data, tmp_path, image_scores):
    assert run(two_class_data, tmp_path / "z", "--method", "winclip", "--backbone", "wmoe-tiny") == 0
    assert (
        run(two_class_data, tmp_path / "p", "--method", "winclip", "--backbone", "wmoe-tiny", "--shots", "2")
        == 0
    )
    plus = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert plus["method"] == "WinCLIP+" and plus["shots"] == 2
    assert "# WinCLIP+ (wmoe-tiny) on" in (tmp_path / "p" / "results.md").read_text()
    winclip = WinCLIP.tiny(device="cpu")
    paths = class_paths(two_class_data)
    zero, few = image_scores[:2], image_scores[2:]
    for (cls, files), z, f in zip(paths.items(), zero, few, strict=True):
        name = cls.replace("_", " ")
        assert z == pytest.approx([winclip.predict(p, name).score for p in files], abs=1e-5)
        refs = [two_class_data / r for r in plus["references"][cls]]
        assert f == pytest.approx([winclip.predict(p, name, references=refs).score for p in files], abs=1e-5)
    assert zero != few


def test_clip_with_shots_is_the_reference_map_alone(two_class_data, tmp_path, image_scores):
    assert run(two_class_data, tmp_path, "--method", "clip", "--backbone", "wmoe-tiny", "--shots", "2") == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["method"] == "CLIP references alone"
    detector = Detector.training_free(like=WMoEConfig.tiny(), device="cpu")
    for (cls, files), scores in zip(class_paths(two_class_data).items(), image_scores, strict=True):
        refs = [two_class_data / r for r in result["references"][cls]]
        preds = detector.predict_batch(files, cls, references=refs)
        assert scores == pytest.approx([p.reference_score for p in preds], abs=1e-5)
        assert scores == pytest.approx([p.score for p in preds], abs=1e-5)  # the library's rule


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --checkpoint"),
        (["--method", "musc", "--checkpoint", "ckpt"], "MuSc needs no checkpoint"),
        (["--checkpoint", "ckpt", "--backbone", "wmoe-tiny"], "--backbone is for the training-free"),
        (["--method", "musc", "--backbone", "wmoe-tiny", "--shots", "1"], "takes no --shots"),
        (["--method", "winclip", "--backbone", "wmoe-tiny", "--feature-cache", "c"], "does not apply"),
        (["--method", "clip", "--musc-ks", "1", "8", "9"], "--musc-ks is for --method musc"),
        (["--method", "clip", "--backbone", "no-such-model"], "unknown backbone 'no-such-model'"),
    ],
)
def test_bad_combinations_fail_clearly(two_class_data, tmp_path, capsys, backbone_images, argv, message):
    assert run(two_class_data, tmp_path / "out", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert backbone_images == [] and not (tmp_path / "out").exists()
    assert issubclass(E.MethodError, WMoEError)


def test_musc_with_a_small_class_fails_before_the_backbone(tmp_path, capsys, backbone_images):
    data = tmp_path / "data"
    generate(data, ["tile:dots"], n_train_good=0, n_test_good=2, n_test_defect_per_type=1, size=48)
    prepare("mvtec", data)
    meta = json.loads((data / "meta.json").read_text())
    meta["test"]["tile"] = meta["test"]["tile"][:4]  # one image short of MuSc's minimum
    (data / "meta.json").write_text(json.dumps(meta))
    assert run(data, tmp_path / "out", "--method", "musc", "--backbone", "wmoe-tiny") == 2
    err = capsys.readouterr().err
    assert "class 'tile'" in err and f"at least {musc.min_images()} images" in err
    assert backbone_images == []


def test_clip_reads_the_feature_cache_a_checkpoint_on_its_backbone_filled(
    two_class_data, tiny_checkpoint, tmp_path, backbone_images
):
    """Plain CLIP taps what the checkpoint taps on the same backbone: reproduce's CLIP stage costs no pass."""
    cache = ["--feature-cache", str(tmp_path / "cache")]
    assert run(two_class_data, tmp_path / "wmoe", "--checkpoint", str(tiny_checkpoint), *cache) == 0
    assert sum(backbone_images) == 16
    backbone_images.clear()
    assert run(two_class_data, tmp_path / "clip", "--method", "clip", "--backbone", "wmoe-tiny", *cache) == 0
    assert backbone_images == []
    counts = json.loads((tmp_path / "clip" / "metrics.json").read_text())["feature_cache"]
    assert counts["hits"] == 16 and counts["computed"] == 0
