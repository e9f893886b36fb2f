"""The Gradio demo, served on 127.0.0.1 and queried with gradio_client as a user's script would be."""

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from support.app_server import free_port, page_config, serve
from support.helpers import randomize_heads

import app
import demo.models as demo_models
from demo.analyze import CTDS_SAMPLES
from demo.compare import ABLATIONS
from demo.guards import gr
from wmoe import WMoECLIP, WMoEConfig, save_pretrained
from wmoe.render import routing_chart

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "examples" / "brick_crack.png"


def prop(config: dict, elem_id: str, key: str):
    found = [c["props"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    assert len(found) == 1, f"{len(found)} components with elem_id {elem_id}"
    return found[0].get(key)


def count_model_runs(*detectors) -> list:
    """Records ("backbone", images) for each pass of a backbone's image tower and "heads" for each run of
    a model's learned part; detectors sharing a backbone share its record."""
    calls = []

    def wrap(owner, name, entry):
        real = getattr(owner, name)
        setattr(owner, name, lambda x, *a, **k: calls.append(entry(x)) or real(x, *a, **k))

    for bb in {id(d.model.backbone): d.model.backbone for d in detectors}.values():
        wrap(bb, "encode_image", lambda images: ("backbone", images.shape[0]))
    for d in detectors:
        wrap(d.model, "heads", lambda features: "heads")
    return calls


@pytest.fixture(scope="module")
def model_runs(served) -> list:
    """The served demo's model runs (`count_model_runs`), from the first test that asks on."""
    return count_model_runs(served.detector, served.baseline)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """An odd-sized, non-square input, so resizing back to the user's resolution is really tested."""
    path = tmp_path_factory.mktemp("img") / "part 7.png"
    Image.open(EXAMPLE).convert("RGB").resize((173, 121)).save(path)
    return path


def analyze(client, path, class_name="brick wall", threshold=0.5, opacity=0.5, scale="fixed", ctds=False):
    return client.predict(
        handle_file(str(path)), class_name, threshold, opacity, scale, ctds, api_name="/analyze"
    )


def test_analyze_outputs(client, served, image_file):
    overlay, score_md, chart, experts, layers, uncertainty, timings, downloads, parts = analyze(
        client, image_file
    )
    assert parts == []  # no reference images
    assert Image.open(overlay).size == (173, 121)
    files = {Path(f).suffix: f for f in downloads}
    result = json.loads(Path(files[".json"]).read_text())
    assert 0 <= result["score"] <= 1 and result["class_name"] == "brick wall"
    assert sum(result["expert_weights"]) == pytest.approx(1.0, abs=1e-4)
    assert result["decision"] == ("anomalous" if result["score"] >= 0.5 else "normal")
    assert result["image_size"] == [121, 173] and result["model"]["trained"] is False
    assert f"Score {result['score']:.3f}" in score_md and demo_models.UNTRAINED in score_md
    png16 = Image.open(files[".png"])
    raw = np.load(files[".npy"])
    assert png16.mode.startswith("I;16") and png16.size == (173, 121) and raw.shape == (121, 173)
    np.testing.assert_allclose(np.asarray(png16, dtype=np.float64) / 65535, raw, atol=1e-4)
    assert Image.open(chart).width > 300
    E, layer_ids = served.detector.config.num_experts, served.detector.config.layers
    assert len(experts) == E and all("weight" in e["caption"] and "score" in e["caption"] for e in experts)
    assert [x["caption"].split(":")[0] for x in layers] == [f"layer {i}" for i in layer_ids]
    assert uncertainty is None
    assert all(stage in timings for stage in ("backbone", "wcma", "moe", "total"))


def test_display_changes_redraw_without_running_the_model(served, model_runs, image_file):
    """The page's redraw event (private: no endpoint for clients) draws from the stored prediction."""
    tab = app.build_page(served.detector, None).analyze
    first = tab.analyze(str(image_file), "brick wall", 0.5, 0.5, "fixed", False)
    stored = first[tab.state]  # the detail maps come from the library at the picture's size: no second resize
    assert stored.pred.layer_maps.shape[1:] == stored.pred.expert_maps.shape[1:] == stored.small.size[::-1]
    calls = len(model_runs)
    redrawn = tab.render(first[tab.state], 0.2, 0.9, "stretch")
    overlay, score_md, downloads = redrawn[tab.overlay], redrawn[tab.score], redrawn[tab.downloads]
    assert len(model_runs) == calls  # the stored prediction was redrawn; the model did not run
    assert not np.array_equal(np.asarray(Image.open(overlay)), np.asarray(Image.open(first[tab.overlay])))
    assert "threshold 0.20" in score_md and "stretched per image" in score_md
    result = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text())
    before = json.loads(Path(first[tab.downloads][2]).read_text())
    assert result["threshold"] == 0.2 and result["score"] == before["score"]


PUBLIC = {"/analyze", "/compare", "/batch", "/predict_json"}


def test_public_api_is_the_four_tools_with_short_names(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == PUBLIC and not api["unnamed_endpoints"]
    for endpoint in api["named_endpoints"].values():
        names = [r["label"] for r in endpoint["returns"]] + [
            a["parameter_name"] for a in endpoint["parameters"]
        ]
        assert all(n and len(n) <= 20 and not re.fullmatch(r"value_\d+", n) for n in names), names
    with pytest.raises(ValueError, match="render"):  # the redraw event is page-internal
        client.predict(0.2, 0.9, "stretch", api_name="/render")


def test_predict_json_returns_scores_routing_and_the_16_bit_map(client, served, image_file):
    result, map_file = client.predict(
        handle_file(str(image_file)), "brick wall", 0.3, api_name="/predict_json"
    )
    assert result["decision"] == ("anomalous" if result["score"] >= 0.3 else "normal")
    assert result["threshold"] == 0.3 and result["class_name"] == "brick wall"
    assert len(result["expert_weights"]) == len(result["expert_scores"]) == served.detector.config.num_experts
    assert sum(result["expert_weights"]) == pytest.approx(1.0, abs=1e-4)
    assert "anomaly_map_png16" not in result and len(json.dumps(result)) < 2000  # small: the map comes apart
    png16 = Image.open(map_file)
    assert png16.mode.startswith("I;16") and png16.size == (173, 121)
    direct = served.detector.predict(Image.open(image_file), "brick wall")
    np.testing.assert_allclose(np.asarray(png16, dtype=np.float64) / 65535, direct.anomaly_map, atol=1e-4)
    assert result["score"] == pytest.approx(direct.score, abs=1e-6) and result["model"]["trained"] is False


def test_mcp_server_lists_each_public_endpoint_as_a_described_tool(tiny_checkpoint):
    demo, url = serve(*app.load_models(str(tiny_checkpoint)), mcp=True)
    try:
        with urllib.request.urlopen(url + "gradio_api/mcp/schema", timeout=30) as r:
            tools = {t["name"]: t for t in json.load(r)}
    finally:
        demo.close()
    assert set(tools) == {name.lstrip("/") for name in PUBLIC}
    page = app.build_page(None)
    handlers = {
        "analyze": page.analyze,
        "predict_json": page.analyze,
        "compare": page.compare,
        "batch": page.batch,
    }
    for tool in tools.values():
        first_line = getattr(handlers[tool["name"]], tool["name"]).__doc__.splitlines()[0]
        assert tool["description"].startswith(first_line) and "Returns: " in tool["description"]
        params = tool["inputSchema"]["properties"]
        assert params and all(len(p.get("description", "")) > 10 for p in params.values()), params


def test_mcp_flag_and_space_variable(monkeypatch):
    assert app.parse_args(["--mcp"]).mcp and not app.parse_args([]).mcp
    monkeypatch.setenv("WMOE_MCP", "1")
    assert app.parse_args([]).mcp


def test_ctds_sampling_gives_an_uncertainty_map(client, image_file):
    out = analyze(client, image_file, ctds=True)
    assert Image.open(out[5]).size == (173, 121)
    assert "Uncertainty over 8 CTDS samples" in out[1]


def test_bad_uploads_give_readable_errors(client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(AppError, match="not an image") as err:
        analyze(client, text)
    assert "/tmp" not in str(err.value) and "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="Upload, paste or capture an image first"):
        client.predict(None, "object", 0.5, 0.5, "fixed", False, api_name="/analyze")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(EXAMPLE.read_bytes()[:3000])
    with pytest.raises(AppError, match="cut.png: the image data is damaged or truncated") as err:
        analyze(client, truncated)
    assert str(tmp_path) not in str(err.value)


def test_compare_puts_the_variants_side_by_side(client, served, model_runs, image_file):
    calls = len(model_runs)
    gallery, table = client.predict(
        handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", api_name="/compare"
    )
    names = [
        "full WMoE-CLIP",
        "without WCMA",
        "without CTDS",
        "SA-MoE with uniform weights",
        "training-free CLIP baseline",
    ]
    assert [g["caption"].split(":")[0] for g in gallery] == names
    assert model_runs[calls:] == [("backbone", 1)] + ["heads"] * 5  # one backbone pass for the 5 variants
    scores = [float(g["caption"].rsplit(" ", 1)[1]) for g in gallery]
    assert all(0 <= s <= 1 for s in scores) and len(set(scores)) > 1  # the variants really differ
    assert all(Image.open(g["image"]).size == (173, 121) for g in gallery)
    assert "One colour scale for all" in table and all(n in table for n in names)


def test_batch_sorts_by_score_and_lists_unreadable_files(client, tmp_path):
    paths = []
    for i, size in enumerate([(64, 48), (90, 90), (50, 70)]):
        paths.append(tmp_path / f"img{i}.png")
        Image.open(EXAMPLE).convert("RGB").rotate(90 * i).resize(size).save(paths[-1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(paths[0], "inside/a.png")
        z.writestr("inside/readme.txt", "hello")
    files = [handle_file(str(p)) for p in [*paths, bad, archive]]
    gallery, summary, csv_file, *_ = client.predict(files, "brick wall", 0.5, api_name="/batch")
    scores = [float(g["caption"].split(": ")[1].split(" ")[0]) for g in gallery]
    assert len(gallery) == 4 and scores == sorted(scores, reverse=True)
    plain = summary.replace("\\", "")  # Markdown escapes
    assert "broken.jpg: the image data is damaged" in plain
    assert "inside/readme.txt: not an image file" in plain
    assert "2 file(s) not processed" in plain
    rows = list(csv.DictReader(io.StringIO(Path(csv_file).read_text())))
    scored = [r for r in rows if not r["error"]]
    assert sorted(r["file"] for r in scored) == ["img0.png", "img1.png", "img2.png", "inside/a.png"]
    for r in scored:
        assert sum(float(r[f"weight_expert{i}"]) for i in range(1, 5)) == pytest.approx(1.0, abs=1e-4)
    assert {r["file"] for r in rows if r["error"]} == {"broken.jpg", "inside/readme.txt"}


def test_gpu_task_gets_plain_arguments(served, image_file, monkeypatch):
    """On ZeroGPU the task's arguments travel pickled to a worker: the model goes by key, never by value."""
    sent, task = [], demo_models._predict
    monkeypatch.setattr(demo_models, "_predict", lambda *args: sent.append(args) or task(*args))
    page = app.build_page(served.detector, None)
    page.analyze.analyze(str(image_file), "brick wall", 0.5, 0.5, "fixed", True)
    [(key, images, class_name, samples, variants, references, detail_side)] = sent
    assert demo_models.LOADED[key] is served.detector
    assert all(isinstance(im, Image.Image) for im in images) and class_name == "brick wall"
    assert samples == CTDS_SAMPLES and variants == () and references is None and isinstance(detail_side, int)
    sent.clear()
    page.compare.compare(str(image_file), "brick wall", 0.5, 0.5, "fixed")
    [(key, images, class_name, _, variants, *_)] = sent
    assert demo_models.LOADED[key] is served.detector and len(images) == 1
    assert [(v.name, demo_models.LOADED[v.detector], v.skip, v.references) for v in variants] == [
        (a.name, served.detector, a.skip, None) for a in ABLATIONS
    ]


def test_untrained_checkpoint_shows_its_banner_and_serving_limits(served):
    config = page_config(served.url)
    banner = prop(config, "banner", "value")
    assert demo_models.UNTRAINED in banner and prop(config, "banner", "visible") is True
    assert prop(config, "run", "interactive") is not False
    assert config["max_file_size"] and config["max_file_size"] <= 50 * 2**20
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"input-image", "class-name", "run", "overlay", "score", "routing"} <= ids


def test_panels_with_nothing_to_show_are_hidden(served, image_file):
    """Uncertainty and Reference parts start hidden (not empty boxes); after a run the page's private
    follow-up shows each one only when the run has something for it (tests/test_browser.py sees it drawn)."""
    config = page_config(served.url)
    assert (
        prop(config, "uncertainty", "visible") is False
        and prop(config, "reference-parts", "visible") is False
    )
    assert prop(config, "layers", "visible") is not False  # a panel every run fills is shown
    tab = app.build_page(served.detector, None).analyze
    plain = tab.analyze(str(image_file), "brick wall", 0.5, 0.5, "fixed", False)[tab.state]
    sampled = tab.analyze(str(image_file), "brick wall", 0.5, 0.5, "fixed", True)[tab.state]
    referenced = tab.analyze(
        str(image_file), "brick wall", 0.5, 0.5, "fixed", False, references=[str(image_file)]
    )
    shown = lambda result: {c.elem_id: u["visible"] for c, u in tab.panels(result).items()}  # noqa: E731
    assert shown(None) == shown(plain) == {"uncertainty": False, "reference-parts": False}
    assert shown(sampled) == {"uncertainty": True, "reference-parts": False}
    assert shown(referenced[tab.state]) == {"uncertainty": False, "reference-parts": True}
    assert len(referenced[tab.parts]) == 2 and referenced[tab.uncertainty] is None


def test_trained_checkpoint_has_no_untrained_banner(tmp_path):
    save_pretrained(WMoECLIP(WMoEConfig.tiny()), tmp_path, {"trained": True})
    detectors, baseline, notices = app.load_models(str(tmp_path))
    lines = app.status_lines(detectors, baseline, notices)
    assert detectors[tmp_path.name].trained and not any(demo_models.UNTRAINED in line for line in lines)
    assert any("random weights" in line for line in lines)  # the tiny backbone is still no CLIP


def test_unloadable_checkpoint_falls_back_to_the_baseline(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{broken")
    detectors, baseline, notices = app.load_models(str(tmp_path / "ckpt"), baseline="tiny")
    assert detectors == {} and baseline is not None
    assert "could not be loaded" in notices[0] and str(tmp_path) not in notices[0]
    banner = " ".join(app.status_lines(detectors, baseline, notices))
    assert "Analyze runs the **training-free CLIP baseline**" in banner  # no WinCLIP given: the baseline


def test_no_checkpoint_offers_the_baseline(image_file):
    detectors, baseline, notices = app.load_models(None, baseline="tiny")
    assert detectors == {} and "No WMoE-CLIP checkpoint was given" in notices[0]
    demo, url = serve(detectors, baseline, notices)
    try:
        assert "training-free CLIP baseline" in prop(page_config(url), "banner", "value")
        client = Client(url, verbose=False)
        overlay, score_md, chart, experts, *_, downloads, _ = analyze(client, image_file)
        result = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text())
        assert result["model"]["name"].startswith("training-free CLIP baseline")
        assert result["expert_weights"] is None
        assert chart is None and experts == [] and Image.open(overlay).size == (173, 121)
        gallery, table = client.predict(
            handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", api_name="/compare"
        )
        assert [g["caption"].split(":")[0] for g in gallery] == ["training-free CLIP baseline"]
        assert "need a checkpoint" in table
    finally:
        demo.close()


def test_python_app_py_starts_without_checkpoint_or_weights(tmp_path, image_file):
    """The real entry point, offline with an empty Hub cache: it starts, says why, and refuses to run."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WMOE_CHECKPOINT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "WMOE_BACKBONE_WEIGHTS")
    }
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 45
        while True:
            try:
                config = page_config(url)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "app.py did not start within 45 s"
                time.sleep(0.5)
        banner = prop(config, "banner", "value")
        assert "No WMoE-CLIP checkpoint was given" in banner and "cannot run either" in banner
        assert "Run is disabled" in banner  # WinCLIP's weights are missing too
        assert "HF\\_HUB\\_OFFLINE is set" in banner and str(tmp_path) not in banner
        assert prop(config, "run", "interactive") is False
        with pytest.raises(AppError, match="Nothing can run here"):
            analyze(Client(url, verbose=False), image_file)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_respects_spaces_environment(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    monkeypatch.setenv("WMOE_CHECKPOINT", "org/wmoe-clip")
    args = app.parse_args([])
    assert (args.host, args.port, args.checkpoint) == ("0.0.0.0", 7000, ["org/wmoe-clip"])
    args = app.parse_args(["--host", "127.0.0.1", "--port", "9", "--checkpoint", "ckpt"])
    assert (args.host, args.port, args.checkpoint) == ("127.0.0.1", 9, ["ckpt"])
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    monkeypatch.delenv("WMOE_CHECKPOINT")
    assert (app.parse_args([]).host, app.parse_args([]).checkpoint) == ("127.0.0.1", [])


def test_examples_are_listed_with_class_names():
    examples = app.load_examples()
    assert examples and all(Path(path).is_file() and name for path, name in examples)


def test_routing_chart():
    a = np.asarray(routing_chart(np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.2, 0.9, 0.5, 0.4])))
    b = np.asarray(routing_chart(np.array([0.1, 0.1, 0.1, 0.7]), np.array([0.2, 0.9, 0.5, 0.4])))
    assert a.shape == b.shape and a.shape[2] == 3 and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="one weight and one score per expert"):
        routing_chart(np.ones(3) / 3, np.ones(4))


def test_batch_shows_each_images_routing_and_the_mean_per_zip_folder(client, served, tmp_path):
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, folder in enumerate(["screw", "screw", "nut"]):
            buffer = io.BytesIO()
            Image.open(EXAMPLE).convert("RGB").rotate(60 * i).resize((64 + 8 * i, 48)).save(buffer, "png")
            z.writestr(f"{folder}/{i}.png", buffer.getvalue())
    gallery, _, csv_file, strips, table, chart = client.predict(
        [handle_file(str(archive))], "part", 0.5, True, api_name="/batch"
    )
    rows = {r["file"]: r for r in csv.DictReader(io.StringIO(Path(csv_file).read_text()))}
    assert {f: r["class_name"] for f, r in rows.items()} == {
        "screw/0.png": "screw",
        "screw/1.png": "screw",
        "nut/2.png": "nut",
    }
    E = served.detector.config.num_experts
    names = [g["caption"].split(":")[0] for g in gallery]
    assert [
        s["caption"].split(":")[0] for s in strips
    ] == names  # one strip per image, in the gallery's order
    for s in strips:
        weights = [float(w) for w in s["caption"].split(": ")[1].split()]
        csv_weights = [float(rows[s["caption"].split(":")[0]][f"weight_expert{e + 1}"]) for e in range(E)]
        np.testing.assert_allclose(weights, csv_weights, atol=0.006)
        assert Image.open(s["image"]).size == (32 * E - 1, 20)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for cls, files in {"screw": ["screw/0.png", "screw/1.png"], "nut": ["nut/2.png"]}.items():
        cells = [c.strip() for c in lines[cls].strip("|").split("|")]
        assert int(cells[1]) == len(files)
        mean = [np.mean([float(rows[f][f"weight_expert{e + 1}"]) for f in files]) for e in range(E)]
        np.testing.assert_allclose([float(c) for c in cells[2 : 2 + E]], mean, atol=2e-3)
        assert 0 <= float(cells[2 + E]) <= 1
    assert Image.open(chart).width == 640
    _, _, csv_file, _, table, _ = client.predict(
        [handle_file(str(archive))], "part", 0.5, False, api_name="/batch"
    )
    assert {r["class_name"] for r in csv.DictReader(io.StringIO(Path(csv_file).read_text()))} == {"part"}
    assert "| part | 3 |" in table and "| screw |" not in table


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Two tiny checkpoints on one random backbone, with different heads."""
    root = tmp_path_factory.mktemp("two")
    for name, seed in [("alpha", 1), ("beta", 2)]:
        save_pretrained(randomize_heads(WMoECLIP(WMoEConfig.tiny()), seed=seed), root / name)
    return root / "alpha", root / "beta"


def test_several_checkpoints_share_one_backbone_in_memory_and_in_compare(two_checkpoints, image_file):
    detectors, baseline, notices = app.load_models([str(c) for c in two_checkpoints])
    assert list(detectors) == ["alpha", "beta"] and not notices
    alpha, beta = detectors.values()
    assert alpha.model.backbone is beta.model.backbone is baseline.model.backbone  # one copy in memory
    calls = count_model_runs(alpha, beta, baseline)
    demo, url = serve(detectors, baseline, notices)
    try:
        client = Client(url, verbose=False)
        gallery, table = client.predict(
            handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", "beta", api_name="/compare"
        )
        assert calls.count(("backbone", 1)) == 1  # one backbone pass for both checkpoints and all variants
        names = [g["caption"].split(":")[0] for g in gallery]
        assert names == [
            "alpha",
            "beta",
            "beta without WCMA",
            "beta without CTDS",
            "beta SA-MoE with uniform weights",
            "training-free CLIP baseline",
        ]
        scores = dict(zip(names, (float(g["caption"].rsplit(" ", 1)[1]) for g in gallery), strict=True))
        image = Image.open(image_file)
        for name, d in detectors.items():
            assert scores[name] == pytest.approx(d.predict(image, "brick wall").score, abs=1e-3)
        assert scores["alpha"] != scores["beta"]
        result, _ = client.predict(
            handle_file(str(image_file)), "brick wall", 0.5, "beta", api_name="/predict_json"
        )
        assert result["model"]["checkpoint"] == "beta"
        assert result["score"] == pytest.approx(beta.predict(image, "brick wall").score, abs=1e-6)
        with pytest.raises((AppError, ValueError), match="gamma"):
            client.predict(handle_file(str(image_file)), "brick wall", 0.5, "gamma", api_name="/predict_json")
        assert "checkpoint" in {c["props"].get("elem_id") for c in page_config(url)["components"]}
    finally:
        demo.close()
    tab = app.build_page(detectors, baseline).analyze
    with pytest.raises(gr.Error, match="No checkpoint named gamma is loaded; choose one of: alpha, beta"):
        tab.predict_json(str(image_file), "brick wall", 0.5, "gamma")


def test_checkpoints_from_flags_or_the_space_variable(monkeypatch):
    assert app.parse_args(["--checkpoint", "a", "--checkpoint", "org/b"]).checkpoint == ["a", "org/b"]
    monkeypatch.setenv("WMOE_CHECKPOINT", "a, org/b\norg/c\n")
    assert app.parse_args([]).checkpoint == ["a", "org/b", "org/c"]
    monkeypatch.delenv("WMOE_CHECKPOINT")
    assert app.parse_args([]).checkpoint == []


def test_reference_images_in_analyze_and_compare(client, served, model_runs, image_file, tmp_path):
    """Two normal references: Analyze shows the zero-shot and reference maps apart and the combined one;
    Compare shows each model with and without them; the references are encoded once across requests."""
    normal = [tmp_path / "good1.png", tmp_path / "good2.png"]
    for i, path in enumerate(normal):
        Image.open(EXAMPLE).convert("RGB").rotate(180 * i).resize((150, 110)).save(path)
    refs = [handle_file(str(p)) for p in normal]
    calls = len(model_runs)
    out = client.predict(
        handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", False, None, refs, api_name="/analyze"
    )
    score_md, downloads, parts = out[1], out[7], out[8]
    passes = [c for c in model_runs[calls:] if c != "heads"]
    assert passes == [("backbone", 2), ("backbone", 1)]  # the references once, then the image
    assert [p["caption"].split(" ")[0] for p in parts] == ["zero-shot", "reference"]
    assert all(Image.open(p["image"]).size == (173, 121) for p in parts)
    result = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text())
    direct = served.detector.predict(
        Image.open(image_file), "brick wall", references=[Image.open(p) for p in normal]
    )
    assert result["references"] == 2 and result["score"] == pytest.approx(direct.score, abs=1e-5)
    assert result["zero_shot_score"] == pytest.approx(direct.zero_shot_score, abs=1e-5)
    assert result["reference_score"] == pytest.approx(direct.reference_score, abs=1e-5)
    assert "With 2 reference image(s)" in score_md
    raw = np.load(next(f for f in downloads if f.endswith(".npy")))
    np.testing.assert_allclose(raw, direct.anomaly_map, atol=1e-5)  # the combined map
    gallery, table = client.predict(
        handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", None, refs, api_name="/compare"
    )
    names = [g["caption"].split(":")[0] for g in gallery]
    assert names[-2:] == ["full WMoE-CLIP + references", "references alone"]  # the baseline's, not averaged
    assert "full WMoE-CLIP" in names and "training-free CLIP baseline" in names
    calls = len(model_runs)
    gallery, table = client.predict(
        handle_file(str(image_file)), "brick wall", 0.5, 0.5, "fixed", None, refs, api_name="/compare"
    )
    assert [c for c in model_runs[calls:] if c != "heads"] == [("backbone", 1)]  # cached references
    with pytest.raises(AppError, match="reference 2: notes.png"):
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        client.predict(
            handle_file(str(image_file)),
            "brick wall",
            0.5,
            0.5,
            "fixed",
            False,
            None,
            [refs[0], handle_file(str(bad))],
            api_name="/analyze",
        )
