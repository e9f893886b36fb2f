"""Issue 6 for the demo: awkward uploads, hostile class names, a burst of users, a full queue and requests
for server files, all against one app process (the tiny untrained checkpoint) on 127.0.0.1.

Every request goes through gradio_client, as a user's script would send it; the server runs in this process.
"""

import ctypes
import html
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from gradio import utils as gradio_utils
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from markdown_it import MarkdownIt
from PIL import Image
from support.app_server import serve
from support.badinputs import write_cases

import demo.models as demo_models

REPO = Path(__file__).resolve().parents[1]
BURSTS = 4  # the first fills the allocator's arenas; the growth over the last two is measured
MARKUP = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "**bold** [link](javascript:alert(1))"]


def analyze(client, path, class_name="part"):
    return client.predict(handle_file(str(path)), class_name, 0.5, 0.5, "fixed", False, api_name="/analyze")


def result_of(outputs) -> dict:
    """The result JSON among Analyze's downloads (score, expert weights, class name, image size...)."""
    return json.loads(Path(next(f for f in outputs[7] if f.endswith(".json"))).read_text())


def assert_readable(message: str, *server_paths):
    """A message for a person: no traceback, no folder of this server."""
    assert "Traceback" not in message and 'File "' not in message, message
    for path in (REPO, tempfile.gettempdir(), *server_paths):
        assert str(path) not in message, message


def rendered(markdown: str) -> str:
    """The HTML a CommonMark renderer that passes raw HTML through (as the page's does) makes of it."""
    return MarkdownIt("commonmark", {"html": True}).render(markdown)


def get(url: str, path: str) -> tuple[int, bytes]:
    """A raw GET, the path sent exactly as written (no client-side normalisation of '..')."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------- 1. the battery of uploads


def test_every_awkward_upload_then_a_normal_request(served, client, small_image, tmp_path):
    cases = {n: c for n, c in write_cases(tmp_path).items() if isinstance(c[0], Path)}  # arrays: API only
    assert len(cases) == 15
    for name, (path, expected) in cases.items():
        if expected is None:
            outputs = analyze(client, path)
            size = (20, 40) if name == "exif_rotated.jpg" else Image.open(path).size  # EXIF: turned upright
            assert Image.open(outputs[0]).size == size, name
            result = result_of(outputs)
            assert result["image_size"] == [size[1], size[0]] and 0 <= result["score"] <= 1, name
        else:
            with pytest.raises(AppError) as err:
                analyze(client, path)
            message = str(err.value)
            assert message.startswith(f"{name}: ") and expected in message, message
            assert "damaged" not in message or name == "truncated.png", message  # the real reason
            assert_readable(message, tmp_path, served.checkpoint)

    outputs = analyze(client, small_image, "brick wall")  # the same process still answers correctly
    direct = served.detector.predict(small_image, "brick wall")
    assert result_of(outputs)["score"] == pytest.approx(direct.score, abs=1e-6)
    assert Image.open(outputs[0]).size == (64, 48)


def test_the_battery_as_one_batch(client, tmp_path):
    cases = {n: c for n, c in write_cases(tmp_path).items() if isinstance(c[0], Path)}
    gallery, summary, csv_file, *_ = client.predict(
        [handle_file(str(p)) for p, _ in cases.values()], "part", 0.5, api_name="/batch"
    )
    bad = {n: e for n, (_, e) in cases.items() if e}
    assert len(gallery) == len(cases) - len(bad)
    plain = summary.replace("\\", "")  # Markdown escapes
    assert f"{len(bad)} file(s) not processed" in plain
    for name, expected in bad.items():
        line = next(line for line in plain.splitlines() if line.startswith(f"- {name}: "))
        assert expected in line and ("damaged" not in line or name == "truncated.png"), line
    assert_readable(summary, tmp_path)


# ----------------------------------------------------------------------------- 2. class names


@pytest.mark.parametrize("blank", ["", "   \t  "])
def test_blank_class_name_uses_object_and_says_so(client, small_image, blank):
    outputs = analyze(client, small_image, blank)
    assert result_of(outputs)["class_name"] == "object"
    assert "Class: object" in outputs[1] and "no class name given: used 'object'" in outputs[1]


def test_very_long_class_name_is_cut_with_a_note(client, small_image):
    outputs = analyze(client, small_image, "scratched metal plate " * 455)  # ~10,000 characters
    assert "longer than the text encoder's context" in outputs[1]
    assert len(outputs[1]) < 2000  # the score panel shows the start of the name, not all of it
    assert "Class: scratched metal plate scratched" in outputs[1]


def test_other_scripts_and_emoji_work(client, small_image):
    name = "螺丝 🔩 ネジ винт برغي"
    outputs = analyze(client, small_image, name)
    assert result_of(outputs)["class_name"] == name and f"Class: {name}" in outputs[1]


@pytest.mark.parametrize("markup", MARKUP)
def test_markup_in_the_class_name_is_shown_as_text(client, small_image, markup):
    outputs = analyze(client, small_image, markup)
    assert result_of(outputs)["class_name"] == markup  # the model got exactly what was typed
    [shown] = [line for line in rendered(outputs[1]).splitlines() if "Class: " in line]
    assert shown.startswith("<p>Class: ") and shown.count("<") == 2, shown  # only <p> and </p>: no markup ran
    text = html.unescape(shown[len("<p>Class: ") :])
    assert text.startswith(f"{markup} | image 64x48 px"), shown  # visible, exactly as typed


def test_markup_in_a_file_name_never_reaches_the_error_as_markup(client, tmp_path):
    """gradio drops < and > from upload names, and the app escapes what is left (error toasts render HTML)."""
    path = tmp_path / "<img src=x onerror=alert(1)>.png"
    path.write_text("not an image")
    with pytest.raises(AppError) as err:
        analyze(client, path)
    assert "<" not in str(err.value) and "onerror=alert(1).png: not an image file" in str(err.value)


# ----------------------------------------------------------------------------- 3. load


@pytest.fixture(scope="module")
def load_requests(tmp_path_factory) -> list[tuple[Path, str]]:
    """Four different requests. Noise makes large PNGs (slow downloads, where identical answers sent at
    once can collide); the 1024x768 one holds ~30 MB per request (image, full-size maps): keeping it shows."""
    folder, rng = tmp_path_factory.mktemp("load"), np.random.default_rng(2)
    names = ["screw", "螺丝 🔩", "wood grain", "pill"]
    out = []
    for i, (w, h) in enumerate([(160, 120), (96, 128), (1024, 768), (224, 224)]):
        out.append((folder / f"load{i}.png", names[i]))
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(out[-1][0])
    return out


def pixels(path) -> np.ndarray:
    """Every decoded pixel of a picture (a half-written PNG fails to decode; its header alone would not)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def burst(clients, requests, alone):
    """Every client sends every request at once (16 in flight); each answer must equal the one made alone:
    score, routing weights, and the whole decoded overlay (all but a few pixel values within 2 levels: model
    calls running at the same time split their float sums differently)."""
    jobs = [
        (i, c.submit(handle_file(str(p)), name, 0.5, 0.5, "fixed", False, api_name="/analyze"))
        for c in clients
        for i, (p, name) in enumerate(requests)
    ]
    for i, job in jobs:
        out = job.result(timeout=300)
        result = result_of(out)
        assert result["score"] == pytest.approx(alone[i]["score"], abs=1e-6)
        np.testing.assert_allclose(result["expert_weights"], alone[i]["expert_weights"], atol=1e-6)
        shown = pixels(out[0])
        assert shown.shape == alone[i]["overlay"].shape
        off = (
            np.abs(shown.astype(int) - alone[i]["overlay"]) > 2
        )  # concurrent float sums differ in the last bits
        assert off.mean() < 1e-3, f"{off.sum()} of {off.size} pixel values differ from the request alone"


def test_16_concurrent_requests_equal_the_same_requests_alone(served, load_requests, monkeypatch, tmp_path):
    """The app as `python app.py --concurrency 4` serves it: up to 4 model calls at the same time (counted),
    and every answer equal to the same request made alone."""
    running, most, lock, task = [0], [0], threading.Lock(), demo_models._predict

    def counted(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return task(*args)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(demo_models, "_predict", counted)
    demo, url = serve(served.detector, None, concurrency=4)
    try:
        # four users, each downloading into its own folder (gradio_client's default is the server's cache)
        clients = [Client(url, verbose=False, download_files=str(tmp_path / f"user{i}")) for i in range(4)]
        alone = []
        for i, req in enumerate(load_requests):
            out = analyze(clients[i], *req)
            alone.append({**result_of(out), "overlay": pixels(out[0])})
        assert most[0] == 1
        burst(clients, load_requests, alone)
    finally:
        demo.close()
    assert most[0] > 1, "the model calls were never concurrent"


def test_memory_stays_flat_over_bursts_of_16_requests(tiny_checkpoint, load_requests, tmp_path):
    """Memory kept by a request grows with every burst; memory the allocator keeps for the next burst does
    not. Keeping each model call's prediction (tried by hand) grew 184 MB over the last two bursts; the app
    as it is stays within a few MB. Measured in a process of its own (tests/support/burst_memory.py)."""
    if not Path("/proc/self/status").is_file() or not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("needs Linux with glibc to measure the memory in use")
    spec = {
        "checkpoint": str(tiny_checkpoint),
        "requests": [[str(p), name] for p, name in load_requests],
        "bursts": BURSTS,
        "downloads": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "burst_memory.py")],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mb = json.loads(done.stdout.strip().splitlines()[-1])["mb"]
    print("resident memory after each burst of 16 requests: " + ", ".join(f"{m:.0f} MB" for m in mb))
    assert mb[-1] - mb[-3] < 60, f"the last two bursts of 16 requests kept {mb[-1] - mb[-3]:.0f} MB ({mb})"


def test_a_full_queue_refuses_politely_and_recovers(served, small_image, monkeypatch):
    """A second instance with room for 2 waiting requests; the model is held until 5 more have arrived."""
    started, release, task = threading.Event(), threading.Event(), demo_models._predict

    def held(*args):
        started.set()
        release.wait(60)
        return task(*args)

    monkeypatch.setattr(demo_models, "_predict", held)
    demo, url = serve(served.detector, None, max_queue=2)
    try:
        client = Client(url, verbose=False)

        def submit():
            return client.submit(
                handle_file(str(small_image)), "part", 0.5, 0.5, "fixed", False, api_name="/analyze"
            )

        running = submit()
        assert started.wait(60), "the first request never reached the model"
        more = [submit() for _ in range(5)]
        deadline = time.time() + 60
        while sum(j.done() for j in more) < 3 and time.time() < deadline:
            time.sleep(0.05)
        refused = [j for j in more if j.done()]
        assert len(refused) == 3 and not running.done()  # two wait in the queue, the rest are turned away
        for job in refused:
            with pytest.raises(QueueError, match="Queue is full"):
                job.result()
        release.set()
        for job in [running, *(j for j in more if j not in refused)]:
            assert Image.open(job.result(timeout=120)[0]).size == (64, 48)
        assert Image.open(analyze(client, small_image)[0]).size == (64, 48)  # and it still serves
    finally:
        release.set()
        demo.close()


# ----------------------------------------------------------------------------- 4. server files


def test_no_server_file_is_served_that_the_user_did_not_upload(served, client, small_image):
    config_json = served.checkpoint / "config.json"
    secret = config_json.read_bytes()
    cache = Path(gradio_utils.get_upload_folder())
    downloads = Client(served.url, verbose=False, download_files=False).predict(
        handle_file(str(small_image)), "part", 0.5, 0.5, "fixed", False, api_name="/analyze"
    )[7]
    made = next(f for f in downloads if f["path"].endswith("_result.json"))
    written = next(f for folder in served.scratch for f in folder.glob(f"*/{Path(made['path']).name}"))
    probes = [
        f"/gradio_api/file={config_json}",
        f"/file={config_json}",
        f"/gradio_api/file={written}",
        "/gradio_api/file=/etc/passwd",
        "/file=/etc/passwd",
        "/gradio_api/file=/proc/self/environ",
        "/gradio_api/file=app.py",
        f"/gradio_api/file={REPO / 'app.py'}",
        f"/gradio_api/file={REPO / 'assets/examples/examples.json'}",
        "/gradio_api/file=../../../../etc/passwd",
        "/gradio_api/file=..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"/gradio_api/file={cache}/../../../etc/passwd",
        f"/gradio_api/file={cache}/%2e%2e/%2e%2e/etc/passwd",
        f"/gradio_api/file={made['path']}/../../../../etc/passwd",
        f"/gradio_api/file={Path(made['path']).parent}/{'..%2f' * 6}etc/passwd",
        "/gradio_api/file=%2fetc%2fpasswd",
        "/gradio_api/file=//etc/passwd",
        "/static/../../../etc/passwd",
        "/assets/..%2f..%2f..%2fetc%2fpasswd",
    ]
    for probe in probes:
        status, body = get(served.url, probe)
        assert status in (400, 403, 404), (probe, status)
        assert secret not in body and b"root:" not in body, probe
    status, body = get(served.url, urlsplit(made["url"]).path)  # what the app made for the user is served
    assert status == 200 and json.loads(body)["class_name"] == "part"
    status, page = get(served.url, "/config")
    assert status == 200
    for path in (REPO, served.checkpoint, *served.scratch):
        assert str(path).encode() not in page


def test_a_server_path_is_not_accepted_as_an_upload(served, small_image):
    """An API caller naming a server file instead of uploading one gets an error, never the file's content;
    the same call naming a file it did upload works."""
    api = served.url.rstrip("/") + "/gradio_api"

    def call(path: str) -> str:
        data = [
            {"path": path, "meta": {"_type": "gradio.FileData"}},
            "part",
            0.5,
            0.5,
            "fixed",
            False,
            None,
            None,
        ]
        event = httpx.post(f"{api}/call/analyze", json={"data": data}, timeout=30).json()["event_id"]
        return httpx.get(f"{api}/call/analyze/{event}", timeout=60).text

    with open(small_image, "rb") as f:
        [uploaded] = httpx.post(f"{api}/upload", files={"files": f}, timeout=30).json()
    assert "event: complete" in call(uploaded)
    for path in (str(served.checkpoint / "config.json"), "/etc/passwd"):
        stream = call(path)
        assert "event: error" in stream and "event: complete" not in stream, stream
        assert path not in stream and '"backbone"' not in stream and "root:" not in stream, stream


def test_error_messages_carry_no_server_paths(served, client, small_image, monkeypatch):
    where = served.checkpoint / "model.safetensors"

    def fails(error):
        def run(*args):
            raise error

        return run

    monkeypatch.setattr(demo_models, "_predict", fails(ValueError(f"cannot use {where}: shapes differ")))
    with pytest.raises(AppError, match="cannot use model.safetensors: shapes differ") as err:
        analyze(client, small_image)
    assert_readable(str(err.value), served.checkpoint)
    monkeypatch.setattr(demo_models, "_predict", fails(RuntimeError(f"out of memory near {where}")))
    with pytest.raises(AppError, match=r"The model failed on this request \(RuntimeError\)") as err:
        analyze(client, small_image)
    assert_readable(str(err.value), served.checkpoint)
    monkeypatch.undo()
    assert Image.open(analyze(client, small_image)[0]).size == (64, 48)
