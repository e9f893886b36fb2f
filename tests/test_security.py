"""The demo under attack: one app process (the tiny untrained checkpoint) on 127.0.0.1, sent the kinds of
request in Gradio's published advisories (2023-2026: path traversal through the file routes, server paths
and URLs handed in as files, server-side request forgery, cross-origin requests, stored HTML/SVG, oversize
uploads) and aimed at our own handlers (formula injection through the Batch CSV, zip bombs, values outside
what the page offers). Every case checks that nothing leaked, that the answer is clear, and that the server
still answers a normal request afterwards. The only addresses used are loopback ones.
"""

import csv
import http.client
import http.server
import io
import json
import stat
import threading
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import httpx
import numpy as np
import pytest
from gradio import utils as gradio_utils
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import demo.archives as demo_archives
from demo.guards import gr
from demo.results import csv_cell

REPO = Path(__file__).resolve().parents[1]
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(1)", " =1+1", "\t=1", "＝1+1"]


def still_serves(client, small_image):
    """The same process still answers a normal request correctly."""
    out = client.predict(handle_file(str(small_image)), "part", 0.5, 0.5, "fixed", False, api_name="/analyze")
    assert np.asarray(Image.open(out[0])).shape == np.asarray(Image.open(small_image)).shape  # 48x64x3


def png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


# ----------------------------------------------------------------------------- 1. formula injection (CSV)


@pytest.mark.parametrize("text", [*FORMULAS, "\r=1", "\tplain", "\n@x", "－1"])
def test_a_csv_cell_never_starts_a_formula(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["plain", "a=b", "1.5", "", "part 7.png", "x-1+2"])
def test_other_text_cells_are_unchanged(text):
    assert csv_cell(text) == text


def test_csv_numbers_stay_numbers():
    assert [csv_cell(v) for v in (0.25, -0.5, np.float32(1), 3, None)] == [
        "0.250000",
        "-0.500000",
        "1.000000",
        "3.000000",
        "",
    ]


def test_batch_csv_neutralises_formulas_in_every_text_cell(client, small_image, tmp_path):
    """Member names and error messages that a spreadsheet would run as formulas come back as text."""
    archive = tmp_path / "names.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, formula in enumerate(FORMULAS):
            z.writestr(f"{formula}.png", png_bytes(i))
        z.writestr("=cmd|' /C calc'!A0.png", b"not an image")  # fails: its name is in an error row
    _, _, csv_file, *_ = client.predict([handle_file(str(archive))], "-part", 0.5, api_name="/batch")
    rows = list(csv.reader(io.StringIO(Path(csv_file).read_text())))
    names = {row[0] for row in rows[1:]}
    assert names == {"'" + n for n in [*(f"{f}.png" for f in FORMULAS), "=cmd|' /C calc'!A0.png"]}
    assert not [cell for row in rows for cell in row if starts_a_formula(cell)]
    still_serves(client, small_image)


def starts_a_formula(cell: str) -> bool:
    """What a spreadsheet may evaluate: text (not a number) starting with a formula character."""
    try:
        float(cell)
        return False
    except ValueError:
        return cell.startswith(("\t", "\r")) or cell.lstrip().startswith(tuple("=+-@＝＋－＠"))


# ----------------------------------------------------------------------------- 2. zip bombs


def lying_zip(path: Path, unpacked_mb: int, claimed: int = 1000) -> Path:
    """A real zip whose one member unpacks to `unpacked_mb` MB of zeros while its local header and its
    central directory both claim `claimed` bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("bomb.png", "w") as f:
        zeros = bytes(2**20)
        for _ in range(unpacked_mb):
            f.write(zeros)
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    assert int.from_bytes(data[local + 22 : local + 26], "little") == unpacked_mb * 2**20
    data[local + 22 : local + 26] = claimed.to_bytes(4, "little")  # local header: uncompressed size
    data[central + 24 : central + 28] = claimed.to_bytes(4, "little")  # central directory: the same
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = lying_zip(tmp_path_factory.mktemp("bomb") / "bomb.zip", 400)
    assert path.stat().st_size < 2**20 and zipfile.ZipFile(path).infolist()[0].file_size == 1000
    return path


def peak_mb(fn) -> float:
    """Peak Python-heap memory (tracemalloc) while fn runs, in MB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_lying_zip_bomb_is_refused_with_bounded_memory(served, bomb):
    """400 MB of zeros behind headers that claim 1,000 bytes: the Batch handler refuses the member with a
    reason, and its peak memory stays a few MB (before the fix: the whole 400 MB at once)."""
    tab = app.build_page(served.detector, served.baseline).batch
    out = {}

    def request():
        out["result"] = tab.batch([str(bomb)], "part", 0.5, progress=lambda *a, **k: None)

    peak = peak_mb(request)
    print(f"Batch request on a 400 MB zip bomb: peak {peak:.1f} MB (tracemalloc)")
    gallery, summary = out["result"][tab.gallery], out["result"][tab.summary]
    assert gallery == [] and "1 file(s) not processed" in summary
    assert "bomb.png: cannot be unpacked" in summary.replace("\\", "")
    assert peak < 3 * demo_archives.ZIP_CHUNK / 2**20 + 8, f"{peak:.0f} MB"


def test_zip_limits_per_member_per_request_and_per_archive(served, tmp_path, monkeypatch):
    """Sizes are counted while unpacking (an honest 60 MB member is over the 50 MB limit); one request's
    archives share one budget; nested archives, encrypted members and absurd entry counts get a reason."""
    tab = app.build_page(served.detector, served.baseline).batch

    def reasons(paths) -> dict[str, str]:
        csv_file = tab.batch([str(p) for p in paths], "part", 0.5, progress=lambda *a, **k: None)[tab.csv]
        rows = list(csv.DictReader(io.StringIO(Path(csv_file).read_text())))
        return {r["file"]: r["error"] for r in rows}

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.png", bytes(60 * 2**20))
        z.writestr("inner.zip", b"PK\x03\x04 a nested archive")
        z.writestr("renamed.png", b"PK\x03\x04 an archive under an image's name")
        z.writestr("ok.png", png_bytes())
    got = reasons([big, lying_zip(tmp_path / "lying.zip", 60)])
    assert "over the limit of 50 MB unpacked per image" in got["big.png"]
    assert "archive inside the archive" in got["inner.zip"] and "archive inside" in got["renamed.png"]
    assert got["ok.png"] == "" and "cannot be unpacked" in got["bomb.png"]
    assert "encrypted" in reasons([encrypted(big, "ok.png", tmp_path / "enc.zip")])["ok.png"]
    linked = tmp_path / "link.zip"  # the library's member rules (wmoe.archives): only plain files are read
    with zipfile.ZipFile(linked, "w") as z:
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
        z.writestr("ok.png", png_bytes())
    got = reasons([linked])
    assert "symlink" in got["link.png"] and got["ok.png"] == ""

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(demo_archives.MAX_ZIP_ENTRIES + 1):
            z.writestr(f"{i}.txt", b"")
    assert "entries, over the limit" in reasons([many])["many.zip"]

    monkeypatch.setattr(demo_archives, "MAX_UNPACKED_BYTES", 3 * 2**20)
    parts = tmp_path / "parts.zip"
    with zipfile.ZipFile(parts, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"p{i}.png", png_bytes(i) + bytes(2**20 + 10))  # a valid PNG with trailing bytes
        z.writestr("p3.png", png_bytes(3))  # small, but the budget was spent on p2's refused bytes
    got = reasons([parts])
    assert got["p0.png"] == "" and got["p1.png"] == ""
    assert "per request" in got["p2.png"] and "per request" in got["p3.png"]


def encrypted(source: Path, member: str, target: Path) -> Path:
    """A copy of a zip with one member marked encrypted (flag bit 0) in its local and central headers."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as z:
        data[z.getinfo(member).header_offset + 6] |= 1
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        length = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + length] == member.encode():
            data[start + 8] |= 1
        start = data.find(b"PK\x01\x02", start + 1)
    target.write_bytes(bytes(data))
    return target


def test_a_zip_bomb_through_the_server_gets_a_reason_and_the_server_still_serves(client, bomb, small_image):
    gallery, summary, csv_file, *_ = client.predict([handle_file(str(bomb))], "part", 0.5, api_name="/batch")
    assert gallery == [] and "bomb.png: cannot be unpacked" in summary.replace("\\", "")
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 3. the file routes


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw GET, the path sent exactly as written (no client-side normalisation of '..' or '%2e')."""
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def secrets(served) -> dict[str, bytes]:
    """Server files no request may read, each with a piece of its content to look for in answers."""
    files = [
        Path("/etc/passwd"),
        REPO / "app.py",
        REPO / "demo" / "guards.py",
        REPO / "wmoe" / "checkpoint.py",
        REPO / "requirements.txt",
        served.checkpoint / "config.json",
    ]
    return {str(f): f.read_bytes()[:64] for f in files if f.is_file()}


TRAVERSALS = [
    "{route}{target}",
    "{route}..{target}",
    "{route}../../../../../..{target}",
    "{route}{upload}/../../../../../..{target}",
    "{route}{upload}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e{target}",
    "{route}{upload}/%252e%252e/%252e%252e/%252e%252e/%252e%252e{target}",  # double encoding
    "{route}{upload}/..%2f..%2f..%2f..%2f..%2f..%2f{target_quoted}",
    "{route}{upload}\\..\\..\\..\\..\\..\\..{target_back}",
    "{route}{upload}/..%5c..%5c..%5c..%5c..%5c..{target_back}",
    "{route}{upload}/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae{target}",  # overlong UTF-8 dots
    "{route}{target_quoted}",
    "{route}/{target}",
    "{route}{target}%00.png",
    "{route}{relative}",
    "{route}./{relative}",
]


def test_the_file_routes_serve_no_server_file(served, client, small_image):
    """gradio's file routes (the subject of several advisories since 2023), with the traversal and encoding
    variants, for system files, the app's own source, and the checkpoint: refused, nothing leaked."""
    upload = gradio_utils.get_upload_folder()
    probes = []
    for target, start in secrets(served).items():
        relative = Path(target).relative_to(REPO) if target.startswith(str(REPO)) else target.lstrip("/")
        for route in ("/gradio_api/file=", "/file=", "/gradio_api/static/", "/static/", "/assets/"):
            for pattern in TRAVERSALS:
                probes.append(
                    (
                        pattern.format(
                            route=route,
                            target=target,
                            target_quoted=quote(target, safe=""),
                            target_back=target.replace("/", "\\"),
                            upload=upload,
                            relative=relative,
                        ),
                        start,
                    )
                )
    for probe, start in probes:
        status, _, body = get(served.url, probe)
        assert status in (400, 403, 404, 405), (probe, status)
        assert start not in body and b"root:x:" not in body, probe
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 4. files that were never uploaded


def call(served, endpoint: str, body: str) -> tuple[int, str]:
    """A raw API call (the JSON body exactly as given): (HTTP status, the event stream's text)."""
    api = served.url.rstrip("/") + "/gradio_api"
    r = httpx.post(f"{api}/call/{endpoint}", content=body, headers={"content-type": "application/json"})
    if r.status_code != 200:
        return r.status_code, r.text
    return 200, httpx.get(f"{api}/call/{endpoint}/{r.json()['event_id']}", timeout=60).text


def with_file(endpoint: str, value) -> list:
    """The arguments of a public endpoint, with `value` where its file goes."""
    return {
        "analyze": [value, "part", 0.5, 0.5, "fixed", False, None, None],
        "compare": [value, "part", 0.5, 0.5, "fixed", None, None],
        "batch": [[value], "part", 0.5, False, None, False],
        "predict_json": [value, "part", 0.5, None],
    }[endpoint]


def file_values(path: str) -> list:
    """The shapes a file value can take: marked as a file or not, as a stream, as a URL-like record, bare."""
    marked = {"_type": "gradio.FileData"}
    return [
        {"path": path},
        {"path": path, "meta": marked},
        {"path": path, "meta": marked, "url": f"/gradio_api/file={path}"},
        {"path": path, "meta": marked, "is_stream": True},
        {"path": path, "orig_name": "x.png", "size": 10, "mime_type": "image/png"},
        path,
    ]


ENDPOINTS = ["analyze", "compare", "batch", "predict_json"]


@pytest.fixture(scope="module")
def private_image(tmp_path_factory) -> Path:
    """An image on the server that nobody uploaded (a dataset image, say): its pixels must not come back."""
    path = tmp_path_factory.mktemp("private") / "private.png"
    path.write_bytes(png_bytes(7))
    return path


def refused(status: int, stream: str) -> bool:
    return status in (400, 413, 422) or ("event: error" in stream and "event: complete" not in stream)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_server_path_as_a_file_is_refused_over_raw_http(
    served, client, small_image, private_image, endpoint
):
    for path, start in {**secrets(served), str(private_image): b"\x89PNG"}.items():
        for value in file_values(path):
            status, stream = call(served, endpoint, json.dumps({"data": with_file(endpoint, value)}))
            assert refused(status, stream), (value, stream[:300])
            assert path not in stream and Path(path).name not in stream, stream[:300]
            assert start.decode("latin-1")[:20] not in stream and "root:x:" not in stream, stream[:300]
    still_serves(client, small_image)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_server_path_as_a_file_is_refused_through_gradio_client(
    served, small_image, private_image, endpoint
):
    """gradio_client uploads a value marked as a file; one not marked goes to the server as it is."""
    client = Client(served.url, verbose=False)
    for path in [*secrets(served), str(private_image)]:
        with pytest.raises(AppError) as err:
            client.predict(*with_file(endpoint, {"path": path}), api_name=f"/{endpoint}")
        assert path not in str(err.value) and "root:x:" not in str(err.value)
        if endpoint != "batch":  # gradio's own refusal (batch) carries no message; ours says why
            assert "Only uploaded files are accepted" in str(err.value)
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 5. URLs handed in as images


@pytest.fixture
def trap():
    """An HTTP server on 127.0.0.1 that records every request it gets (it serves a valid PNG)."""
    hits = []
    body = png_bytes(9)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    urls = [f"http://{host}:{port}/x.png" for host in ("127.0.0.1", "localhost", "127.1", "2130706433")]
    yield SimpleNamespace(urls=urls, hits=hits)
    server.shutdown()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_private_urls_are_refused_by_every_endpoint(served, client, small_image, trap, endpoint):
    """The server never fetches a private URL on a caller's behalf (loopback addresses here, see
    test_fetch.py for the rest): through gradio_client and raw HTTP, a clear refusal and no request made."""
    for url in trap.urls:
        with pytest.raises(AppError) as err:
            client.predict(*with_file(endpoint, handle_file(url)), api_name=f"/{endpoint}")
        assert "loopback address: not fetched" in str(err.value)
        for value in [*file_values(url), {"path": "x.png", "url": url, "meta": {"_type": "gradio.FileData"}}]:
            status, stream = call(served, endpoint, json.dumps({"data": with_file(endpoint, value)}))
            assert refused(status, stream), (value, stream[:300])
    assert trap.hits == []
    still_serves(client, small_image)


def test_only_this_servers_own_file_urls_are_taken_and_read_locally(served, client, small_image, trap):
    """The URL of a file uploaded here (what gradio's MCP upload tool hands back) is read from the upload
    folder, with no request made; the same route naming any other file is refused."""
    api = served.url.rstrip("/") + "/gradio_api"
    with open(small_image, "rb") as f:
        [uploaded] = httpx.post(f"{api}/upload", files={"files": f}).json()
    port = trap.urls[0].rsplit(":", 1)[1].split("/")[0]
    for host in (served.url.rstrip("/"), f"http://127.0.0.1:{port}"):  # never fetched, so the host is moot
        url = f"{host}/gradio_api/file={uploaded}"
        status, stream = call(served, "analyze", json.dumps({"data": with_file("analyze", handle_file(url))}))
        assert "event: complete" in stream, stream[:300]
    for path in ["/etc/passwd", f"{gradio_utils.get_upload_folder()}/../../etc/passwd", str(REPO / "app.py")]:
        url = f"{served.url.rstrip('/')}/gradio_api/file={quote(path)}"
        with pytest.raises(AppError, match="Only uploaded files are accepted"):
            client.predict(*with_file("analyze", handle_file(url)), api_name="/analyze")
    assert trap.hits == []
    still_serves(client, small_image)


@pytest.mark.parametrize("endpoint", ["analyze", "compare"])
def test_server_paths_and_urls_as_reference_images_are_refused(
    served, client, small_image, private_image, trap, endpoint
):
    """The optional reference images are file inputs too: a server path or a URL among them is refused,
    nothing is read, echoed or fetched, while the main image is a real upload."""
    api = served.url.rstrip("/") + "/gradio_api"
    with open(small_image, "rb") as f:
        [uploaded] = httpx.post(f"{api}/upload", files={"files": f}).json()
    main = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    targets = {**secrets(served), str(private_image): b"\x89PNG", trap.urls[0]: b"\x89PNG"}
    for path, start in targets.items():
        for value in file_values(path)[:-1]:  # the bare string is no file list entry
            args = with_file(endpoint, main)
            args[-1] = [value]
            status, stream = call(served, endpoint, json.dumps({"data": args}))
            assert refused(status, stream), (value, stream[:300])
            assert path not in stream and start.decode("latin-1")[:20] not in stream, stream[:300]
    assert trap.hits == []
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 6. another site's pages


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1.evil.example"])
def test_a_foreign_origin_gets_no_cors_permission(served, client, small_image, origin):
    """A page on another site cannot read any answer of this server (no Access-Control-Allow-Origin for it),
    whatever it asks; the server still serves."""
    api = served.url.rstrip("/") + "/gradio_api"
    headers = {"Origin": origin}
    answers = [
        httpx.get(served.url.rstrip("/") + "/config", headers=headers),
        httpx.get(f"{api}/info", headers=headers),
        httpx.post(f"{api}/upload", files={"files": ("x.png", png_bytes())}, headers=headers),
        httpx.post(f"{api}/call/analyze", json={"data": []}, headers=headers),
        httpx.options(
            f"{api}/queue/join",
            headers={
                **headers,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x",
            },
        ),
    ]
    for r in answers:
        allowed = r.headers.get("access-control-allow-origin")
        assert allowed not in (origin, "*"), (r.request.url, r.status_code, dict(r.headers))
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 7. values the page never sends


BAD_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "-1",
    "1.5",
    "1e308",
    '"0.5"',
    '"abc"',
    "null",
    "true",
    "[0.5]",
]
BAD_CHOICES = ['"bogus"', "5", "null", '["fixed"]']
BAD_FLAGS = ['"yes"', "5", "null"]
BAD_TEXT = ["5", "null", '["a"]', '{"a": 1}']


def bad_values(endpoint: str) -> list[tuple[int, str]]:
    """(argument index, JSON value) for every argument but the file."""
    numbers = {"analyze": [2, 3], "compare": [2, 3], "batch": [2], "predict_json": [2]}[endpoint]
    out = [(i, v) for i in numbers for v in BAD_NUMBERS] + [(1, v) for v in BAD_TEXT]
    if endpoint in ("analyze", "compare"):
        out += [(4, v) for v in BAD_CHOICES]
    if endpoint == "analyze":
        out += [(5, v) for v in BAD_FLAGS]
    if endpoint == "batch":
        out += [(i, v) for i in (3, 5) for v in BAD_FLAGS]  # class from folder, MuSc
    return out


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_values_outside_what_the_page_offers_get_a_clear_error(served, client, small_image, endpoint):
    """Raw JSON (NaN and Infinity included, as Python's JSON reader accepts them): every value the page's
    sliders, radios, checkboxes and text boxes could not send is refused with a message saying which."""
    api = served.url.rstrip("/") + "/gradio_api"
    with open(small_image, "rb") as f:
        [uploaded] = httpx.post(f"{api}/upload", files={"files": f}).json()
    good = with_file(endpoint, {"path": uploaded, "meta": {"_type": "gradio.FileData"}})
    for index, value in bad_values(endpoint):
        args = [json.dumps(a) for a in good]
        args[index] = value
        status, stream = call(served, endpoint, '{"data": [' + ", ".join(args) + "]}")
        assert refused(status, stream), (index, value, stream[:300])
        if status == 200:
            [data] = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
            message = json.loads(data)["error"]
            assert message and "must be" in message, (index, value, message)
    status, stream = call(served, endpoint, json.dumps({"data": good}))
    assert "event: complete" in stream
    still_serves(client, small_image)


def test_the_handlers_check_their_values_themselves(served, small_image):
    """Called directly (a ZeroGPU worker, another front end), the handlers refuse the same values."""
    page = app.build_page(served.detector, served.baseline)
    analyze, compare, batch = page.analyze, page.compare, page.batch
    for threshold in (float("nan"), float("inf"), -0.1, 2.0, "0.5", None, True):
        with pytest.raises(gr.Error, match="the threshold must be a number from 0 to 1"):
            analyze.analyze(str(small_image), "part", threshold, 0.5, "fixed", False)
        with pytest.raises(gr.Error, match="the threshold must be"):
            batch.batch([str(small_image)], "part", threshold, progress=lambda *a, **k: None)
        with pytest.raises(gr.Error, match="the threshold must be"):
            analyze.predict_json(str(small_image), "part", threshold)
    with pytest.raises(gr.Error, match="the opacity must be"):
        compare.compare(str(small_image), "part", 0.5, float("nan"), "fixed")
    with pytest.raises(gr.Error, match="the colour scale must be one of 'fixed', 'stretch'"):
        analyze.render(None, 0.5, 0.5, "bogus")
    with pytest.raises(gr.Error, match="the class name must be a str"):
        analyze.analyze(str(small_image), None, 0.5, 0.5, "fixed", False)


# ----------------------------------------------------------------------------- 8. what uploads are served as


@pytest.mark.parametrize(
    "name, content",
    [
        ("page.html", b"<html><script>alert(document.domain)</script></html>"),
        ("page.htm", b"<script>alert(1)</script>"),
        ("page.xhtml", b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>'),
        (
            "icon.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>',
        ),
        ("image.png", b"<html><script>alert(1)</script></html>"),
    ],
)
def test_uploaded_html_and_svg_are_never_served_as_a_page(served, client, small_image, name, content):
    """Stored cross-site scripting through the upload route: what was uploaded comes back as a download or
    as inert bytes, never as HTML or SVG the browser would run; and it is no image for the model."""
    api = served.url.rstrip("/") + "/gradio_api"
    [path] = httpx.post(f"{api}/upload", files={"files": (name, content)}).json()
    status, headers, body = get(served.url, f"/gradio_api/file={quote(path)}")
    assert status in (200, 403, 404)
    if status == 200:
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        attachment = headers.get("content-disposition", "").lower().startswith("attachment")
        assert attachment or kind not in (
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
        ), headers
    status, stream = call(
        served,
        "analyze",
        json.dumps({"data": with_file("analyze", {"path": path, "meta": {"_type": "gradio.FileData"}})}),
    )
    assert refused(status, stream) and "<script" not in stream
    still_serves(client, small_image)


# ----------------------------------------------------------------------------- 9. oversize uploads


def test_an_upload_over_max_file_size_is_refused(served, client, small_image):
    """The app launches with max_file_size 50 MB: a 51 MB upload gets HTTP 413 with the limit in words."""
    api = served.url.rstrip("/") + "/gradio_api"
    r = httpx.post(f"{api}/upload", files={"files": ("big.png", bytes(51 * 2**20))}, timeout=60)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    still_serves(client, small_image)
