"""training.reproduce end to end on tiny archives served over loopback: download -> prepare -> train ->
evaluate -> training-free methods -> model card -> a fake Hub push; then a kill at each kind of stage and a
changed recipe. Every method runs on the tiny random backbone."""

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from support.dataset_server import DatasetServer, btad_archive, mvtec_archive, visa_archive
from support.hubcache import populate_hub_cache

from training import evaluate, reproduce, train
from training.model_card import protocol

MVTEC, VISA, BTAD = "mvtec_anomaly_detection.tar.xz", "VisA_20220922.tar", "btad.zip"
# the training-free stages in run order: datasets in the recipes' order, each with its shot pool
FREE = [
    *(("eval", "musc", d, "0-shot") for d in ("visa", "btad", "mvtec")),
    *(
        ("eval", m, d, f"{k}-shot")
        for m in ("winclip", "clip")
        for d in ("visa", "btad", "mvtec")
        for k in (0, 1, 2, 4)
    ),
]


def tiny_recipe(train_on: str, evaluate_on: list[str], epochs: int = 1) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "precision": "fp32",
        "cpu_threads": 1,
        "model": {"tiny": True, "image_size": 48},
        "train": {"root": f"data/{train_on}"},
        "optim": {"lr": 1.0e-3, "batch_size": 8, "epochs": epochs, "num_workers": 0},
        "eval": {"batch_size": 32, "datasets": [{"name": d, "root": f"data/{d}"} for d in evaluate_on]},
    }


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing on the way catches it."""


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archives")
    return {MVTEC: mvtec_archive(tmp), VISA: visa_archive(tmp), BTAD: btad_archive(tmp)}


@pytest.fixture
def world(tmp_path, archives, monkeypatch):
    """Recipes, a loopback server, a fake Hub (uploads land in a Hub-layout cache), call recorders."""
    recipes = {
        "mvtec_to_others": tiny_recipe("mvtec", ["visa", "btad"]),
        "visa_to_mvtec": tiny_recipe("visa", ["mvtec"]),
    }
    for name, r in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
    pushed = []

    def fake_upload(directory, repo_id):
        files = {p.name: p for p in Path(directory).iterdir()}
        pushed.append((repo_id, populate_hub_cache(tmp_path / "hub", repo_id, files)))
        return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(train, "upload_checkpoint", fake_upload)
    state = {"calls": [], "kill": None}
    real_train, real_eval = train.main, evaluate.main

    def record(call):
        state["calls"].append(call)
        if state["kill"] is not None and state["kill"](call):
            raise Killed

    def recorded_train(argv):
        record(("train", Path(argv[argv.index("--output") + 1]).name, "--resume" in argv))
        return real_train(argv)

    def recorded_eval(argv):
        out = Path(argv[argv.index("--out") + 1])
        record(("eval", out.parent.parent.parent.name, out.parent.name, out.name))
        return real_eval(argv)

    monkeypatch.setattr(train, "main", recorded_train)
    monkeypatch.setattr(evaluate, "main", recorded_eval)
    with DatasetServer(archives) as server:
        sums = server.checksums(tmp_path / "SHA256SUMS")
        argv = ["--output", str(tmp_path / "repro"), "--data", str(tmp_path / "data"), "--mirror", server.url]
        argv += ["--checksums", str(sums), "--no-progress", "--backbone", "wmoe-tiny", "--recipes"]
        argv += [str(tmp_path / f"{n}.yaml") for n in recipes]
        yield {"argv": argv, "tmp": tmp_path, "out": tmp_path / "repro", "pushed": pushed, "state": state,
               "server": server}  # fmt: skip


@pytest.mark.slow  # 35 to 100 s on the shared 2-core machine, by its load (27 of its 39 evaluations are training-free)
def test_end_to_end_download_train_evaluate_card_push(world):
    assert reproduce.main([*world["argv"], "--push-to-hub", "org/wmoe-repro"]) == 0
    out = world["out"]
    assert {r[0] for r in world["server"].requests} == {MVTEC, VISA, BTAD}
    assert [c for c in world["state"]["calls"] if c[0] == "train"] == [
        ("train", "mvtec_to_others", True),
        ("train", "visa_to_mvtec", True),
    ]
    evals = {c[1:] for c in world["state"]["calls"] if c[0] == "eval"}
    # MVTec AD's train/good, VisA's csv train rows and BTAD's train/ok list normal images: 0, 1, 2 and 4 shots
    assert evals == {
        *{("mvtec_to_others", d, f"{k}-shot") for d in ("visa", "btad") for k in (0, 1, 2, 4)},
        *{("visa_to_mvtec", "mvtec", f"{k}-shot") for k in (0, 1, 2, 4)},
        *{c[1:] for c in FREE},
    }
    stages = json.loads((out / "stages.json").read_text())
    assert all(s["state"] == "done" for s in stages.values()) and len(stages) == 2 + 12 + len(FREE)
    visa_refs = json.loads((out / "mvtec_to_others/eval/visa/4-shot/metrics.json").read_text())["references"]
    assert all(len(v) == 4 and all("/Data/Images/Normal/" in p for p in v) for v in visa_refs.values())
    assert len(list((out / "features").rglob("*.safetensors"))) > 0  # one shared feature cache
    # one backbone pass per image and backbone: here the recipes' tiny model (48 px) and the training-free
    # methods' (104 px) are two backbones, each with its cache setting; MuSc runs first and pays the test
    # images' pass for CLIP (tests/test_musc.py shows a MuSc entry serving a run without raw blocks)
    cache = lambda m: json.loads(m.read_text())["feature_cache"]  # noqa: E731
    refs = lambda ms: {p for m in ms for v in json.loads(m.read_text())["references"].values() for p in v}  # noqa: E731
    assert all(cache(m)["computed"] > 0 for m in (out / "training-free/musc/eval").rglob("metrics.json"))
    for evals in (
        list((out / "training-free/clip/eval").rglob("metrics.json")),
        list(out.glob("*_to_*/eval/*/*-shot/metrics.json")),
    ):  # the test images are all hits; each reference image is computed once over the evaluations
        assert evals and sum(cache(m)["computed"] for m in evals) == len(refs(evals)) > 0

    metrics = json.loads((out / "visa_to_mvtec/eval/mvtec/4-shot/metrics.json").read_text())
    assert metrics["shots"] == 4 and metrics["trained"] is True
    results = (out / "results.md").read_text()
    auroc = f"{100 * metrics['mean']['image_auroc']:.1f}"
    assert (
        f"| WMoE-CLIP (this run, visa_to_mvtec; random-weight backbone) | visa | mvtec | 4-shot | {auroc} |"
        in results
    )
    assert "| AnomalyCLIP [2] |  | mvtec | zero-shot | 91.6 | 96.4 |" in results  # published, with its source
    assert "[3] WinCLIP: WinCLIP (Jeong et al., CVPR 2023)" in results
    # the training-free methods beside them, measured on the same data, and their published numbers
    free = out / "training-free"
    for method, dataset, k, label in [
        ("musc", "visa", 0, "MuSc"),
        ("winclip", "mvtec", 0, "WinCLIP"),
        ("winclip", "mvtec", 1, "WinCLIP+"),
        ("clip", "mvtec", 4, "CLIP references alone"),
    ]:
        m = json.loads((free / method / "eval" / dataset / f"{k}-shot" / "metrics.json").read_text())
        assert m["method"] == label and m["backbone"] == "wmoe-tiny" and m["checkpoint"] is None
        row = f"| {label} (this run, wmoe-tiny; random-weight backbone) | (training-free) | {dataset} | "
        assert (
            row + f"{'zero-shot' if k == 0 else f'{k}-shot'} | {100 * m['mean']['image_auroc']:.1f} |"
            in results
        )
    musc_visa = json.loads((free / "musc/eval/visa/0-shot/metrics.json").read_text())
    assert musc_visa["musc_ks"] == [1, 8, 9]  # the authors' RsCIN list for VisA
    assert json.loads((free / "musc/eval/mvtec/0-shot/metrics.json").read_text())["musc_ks"] == [1, 2, 3]
    assert "| MuSc [6] |  | mvtec | zero-shot | 97.8 |  |  | 97.3 |  |  | 93.8 |" in results
    assert "| WinCLIP+ [4] |  | mvtec | 1-shot | 93.1 |  |  | 95.2 |" in results
    assert "[6] MuSc: MuSc (Li et al., ICLR 2024)" in results

    [(repo, snapshot)] = world["pushed"]
    assert repo == "org/wmoe-repro"
    assert {"config.json", "model.safetensors", "README.md", "train_config.yaml"} <= {
        p.name for p in snapshot.iterdir()
    }
    card = ModelCard.load(snapshot / "README.md")
    got = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    for k in (0, 4):
        visa = json.loads((out / f"mvtec_to_others/eval/visa/{k}-shot/metrics.json").read_text())["mean"]
        assert got[("visa", protocol(k), "image_auroc")] == round(100 * visa["image_auroc"], 2)
    assert {d for d, _, _ in got} == {"visa", "btad"}
    assert 'Detector.from_pretrained("org/wmoe-repro")' in card.text and "UNTRAINED" not in card.text
    assert "**Random-weight backbone**" in card.text  # the tiny test model says what its numbers are worth


@pytest.mark.slow  # 50 to 70 s on the shared 2-core machine
def test_a_killed_run_resumes_and_a_changed_recipe_is_redone(world):
    state, out = world["state"], world["out"]
    calls = state["calls"]
    # the training-free methods run first (MuSc's cache entries then serve the checkpoints)
    state["kill"] = lambda call: call == ("eval", "winclip", "mvtec", "1-shot")
    with pytest.raises(Killed):
        reproduce.main(world["argv"])
    killed = FREE.index(("eval", "winclip", "mvtec", "1-shot"))
    assert calls == FREE[: killed + 1]

    calls.clear()
    state["kill"] = lambda call: call[:2] == ("train", "visa_to_mvtec")  # killed as the 2nd training starts
    with pytest.raises(Killed):
        reproduce.main(world["argv"])
    # the killed training-free evaluation and the ones after it, then the first recipe, then the second
    assert calls[: len(FREE) - killed] == FREE[killed:] and calls[len(FREE) - killed][:2] == (
        "train",
        "mvtec_to_others",
    )
    assert calls[-1][:2] == ("train", "visa_to_mvtec")
    first = (out / "mvtec_to_others/model.safetensors").stat().st_mtime_ns

    calls.clear()
    state["kill"] = lambda call: call == ("eval", "visa_to_mvtec", "mvtec", "1-shot")
    with pytest.raises(Killed):
        reproduce.main(world["argv"])
    # the finished stages are not run again; the killed training resumes
    assert calls == [
        ("train", "visa_to_mvtec", True),
        ("eval", "visa_to_mvtec", "mvtec", "0-shot"),
        ("eval", "visa_to_mvtec", "mvtec", "1-shot"),
    ]

    calls.clear()
    state["kill"] = None
    assert reproduce.main(world["argv"]) == 0
    assert calls == [("eval", "visa_to_mvtec", "mvtec", f"{k}-shot") for k in (1, 2, 4)]
    calls.clear()
    assert reproduce.main(world["argv"]) == 0
    assert calls == []  # every stage done: nothing runs again

    steps = json.loads((out / "visa_to_mvtec/metrics.json").read_text())["steps"]
    (world["tmp"] / "visa_to_mvtec.yaml").write_text(yaml.safe_dump(tiny_recipe("visa", ["mvtec"], epochs=2)))
    assert reproduce.main(world["argv"]) == 0
    assert calls == [("train", "visa_to_mvtec", True)] + [
        ("eval", "visa_to_mvtec", "mvtec", f"{k}-shot") for k in (0, 1, 2, 4)
    ]  # a changed recipe: its training (from scratch: its old states are gone) and every evaluation redone;
    # the training-free methods do not depend on it: not run again
    assert json.loads((out / "visa_to_mvtec/metrics.json").read_text())["steps"] == 2 * steps
    assert (out / "mvtec_to_others/model.safetensors").stat().st_mtime_ns == first


def test_a_training_dataset_behind_a_login_stops_with_where_to_get_it(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe("mpdd", ["headct"])))
    argv = [
        "--output",
        str(tmp_path / "out"),
        "--data",
        str(tmp_path / "data"),
        "--recipes",
        str(tmp_path / "r.yaml"),
    ]
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: MPDD" in err and "github.com/stepanje/MPDD" in err and "test/<defect>/000.png" in err
    assert "note: headct is not evaluated" in err  # an evaluation dataset behind a login is only skipped
    assert not (tmp_path / "out" / "r").exists()
