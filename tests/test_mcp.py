"""The demo's tools driven as an agent drives them: the `mcp` package's own client over streamable HTTP,
against the app served with its MCP server on 127.0.0.1 (the tiny untrained checkpoint: numbers are
meaningless, only their plumbing is tested). Images go in as an uploaded file's URL and as a public image
URL (a loopback server let through `demo.fetch.refusal` for one test only)."""

import asyncio
import base64
import contextlib
import io
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from support.app_server import serve

import app
from demo import fetch

EXAMPLE = next(iter(app.load_examples()), [None])[0]
TOOLS = {"analyze", "compare", "batch", "predict_json"}


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    demo, url = serve(next(iter(detectors.values())), baseline, notices, mcp=True)
    yield url, next(iter(detectors.values()))
    demo.close()


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    buffer = io.BytesIO()
    source = Image.open(EXAMPLE) if EXAMPLE else Image.new("RGB", (173, 121), (90, 120, 60))
    source.convert("RGB").resize((173, 121)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def uploaded(served, image_bytes) -> str:
    """The URL of a file uploaded through gradio's upload route, as an MCP client gets it."""
    url, _ = served
    [path] = httpx.post(f"{url}gradio_api/upload", files={"files": ("part.png", image_bytes)}).json()
    return f"{url}gradio_api/file={path}"


@contextlib.contextmanager
def web_site(body: bytes):
    """A loopback web server answering every GET with `body` as a PNG, at a URL without a file extension;
    (its URL, the requests it received)."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/photos/part?size=large", hits  # no extension
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def image_site(image_bytes):
    with web_site(image_bytes) as site:
        yield site


@pytest.fixture
def site_is_public(monkeypatch):
    """The loopback server counts as a public host for this test (and every other address keeps the rule)."""
    real, loopback = fetch.refusal, fetch.ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(fetch, "refusal", lambda address: None if address == loopback else real(address))


def session(url: str, calls: list[tuple[str, dict]]):
    """(tool names, [CallToolResult for each call]) over one MCP session."""

    async def run():
        async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                names = {t.name for t in (await s.list_tools()).tools}
                return names, [await s.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(run())


def texts(result) -> list[str]:
    return [c.text for c in result.content if c.type == "text"]


def images(result) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(c.data))) for c in result.content if c.type == "image"]


def answer(result) -> dict:
    """The JSON tool's answer: its first content is JSON text."""
    assert not result.isError, texts(result)
    return json.loads(result.content[0].text)


def arguments(tool: str, image: str) -> dict:
    common = {"class_name": "brick wall", "threshold": 0.5}
    view = {"opacity": 0.5, "scale": "fixed"}
    return {
        "predict_json": {"image_path": image, **common},
        "analyze": {"image_path": image, **common, **view, "sample_ctds": False, "references": [image]},
        "compare": {"image_path": image, **common, **view, "references": [image]},
        "batch": {"paths": [image], **common},
    }[tool]


def test_every_tool_is_listed_and_answers_for_an_uploaded_file(served, uploaded):
    url, detector = served
    names, results = session(url, [(tool, arguments(tool, uploaded)) for tool in sorted(TOOLS)])
    assert names == TOOLS
    by_tool = dict(zip(sorted(TOOLS), results, strict=True))
    for tool, result in by_tool.items():
        assert not result.isError, (tool, texts(result)[:2])
        for text in texts(result):  # JSON, Markdown, a URL or a file's URL, never a Python repr
            assert not text.startswith(("(", "[{'", "{'")), (tool, text[:200])
            if text.startswith(("[", "{")):
                json.loads(text)
    assert any("Score" in t for t in texts(by_tool["analyze"])) and images(by_tool["analyze"])
    assert any("| full WMoE-CLIP |" in t for t in texts(by_tool["compare"]))
    assert any("Image URL:" in t and ".csv" not in t for t in texts(by_tool["batch"]))
    direct = detector.predict(Image.open(io.BytesIO(httpx.get(uploaded).content)), "brick wall")
    assert answer(by_tool["predict_json"])["score"] == pytest.approx(direct.score, abs=1e-6)


def test_the_json_tool_answers_json_text_and_the_map_as_an_image(served, uploaded):
    url, detector = served
    _, [result] = session(url, [("predict_json", arguments("predict_json", uploaded))])
    data = answer(result)
    assert {"score", "decision", "expert_weights", "expert_scores", "notes", "model", "timings"} <= set(data)
    assert data["decision"] == ("anomalous" if data["score"] >= 0.5 else "normal")
    assert len(result.content[0].text) < 2000 and "base64" not in result.content[0].text
    [amap] = images(result)
    assert [c.mimeType for c in result.content if c.type == "image"] == ["image/png"]
    assert amap.mode.startswith("I;16") and amap.size == (173, 121)
    assert all(len(t) < 2000 for t in texts(result))  # nothing inlined: the map's URL at most
    direct = detector.predict(Image.open(io.BytesIO(httpx.get(uploaded).content)), "brick wall")
    np.testing.assert_allclose(np.asarray(amap, dtype=np.float64) / 65535, direct.anomaly_map, atol=1e-4)


def test_a_public_image_url_is_fetched_by_every_tool(served, uploaded, image_site, site_is_public):
    url, detector = served
    link, hits = image_site
    calls = [(tool, arguments(tool, link)) for tool in sorted(TOOLS)]
    _, results = session(url, calls)
    for (tool, _), result in zip(calls, results, strict=True):
        assert not result.isError, (tool, texts(result)[:2])
    assert len(hits) == 6  # analyze, compare: the image and one reference; batch, predict_json: the image
    direct = detector.predict(Image.open(io.BytesIO(httpx.get(uploaded).content)), "brick wall")
    assert answer(results[-1])["score"] == pytest.approx(direct.score, abs=1e-6)


def test_a_public_image_url_through_gradio_client(served, uploaded, image_site, site_is_public):
    """The same endpoints for scripts: `handle_file(url)` is fetched by the server, as docs/usage.md says."""
    url, detector = served
    link, hits = image_site
    client = Client(url, verbose=False)
    result, map_file = client.predict(handle_file(link), "brick wall", 0.5, api_name="/predict_json")
    _, summary, *_ = client.predict([handle_file(link)], "brick wall", 0.5, False, None, api_name="/batch")
    assert len(hits) == 2 and "1 image(s) scored" in summary
    direct = detector.predict(Image.open(io.BytesIO(httpx.get(uploaded).content)), "brick wall")
    assert result["score"] == pytest.approx(direct.score, abs=1e-6)
    np.testing.assert_allclose(np.asarray(Image.open(map_file), float) / 65535, direct.anomaly_map, atol=1e-4)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_private_url_is_refused_with_its_reason_and_never_requested(served, image_site, tool):
    url, _ = served
    link, hits = image_site
    _, [result] = session(url, [(tool, arguments(tool, link))])
    assert result.isError
    assert any("loopback address: not fetched" in t for t in texts(result)), texts(result)[:2]
    assert hits == []


def test_a_url_larger_than_the_upload_limit_is_refused(
    tiny_checkpoint, image_site, site_is_public, image_bytes
):
    """The app's upload size limit (`--max-file-size`, 1kb = 1,024 bytes for gradio) bounds a fetched URL too."""
    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    demo, url = serve(next(iter(detectors.values())), baseline, notices, mcp=True, max_file_size="1kb")
    try:
        link, hits = image_site
        assert len(image_bytes) > 1024
        _, [result] = session(url, [("predict_json", arguments("predict_json", link))])
    finally:
        demo.close()
    assert result.isError and hits == ["/photos/part?size=large"]
    assert any("over the size limit of 1,024 bytes: not fetched" in t for t in texts(result)), texts(result)


@pytest.mark.parametrize("tool", ["predict_json", "batch"])
def test_a_fetched_url_that_is_no_image_gets_its_reason_without_server_paths(served, site_is_public, tool):
    """Bytes declared a PNG that are none: the tool answers wmoe's reason, naming the URL's file, never the
    folder on this server it was saved in."""
    url, _ = served
    with web_site(b"<html>not an image</html>") as (link, hits):
        _, [result] = session(url, [(tool, arguments(tool, link))])
    assert hits and result.isError == (tool == "predict_json")  # Batch lists the file and goes on
    [reason] = [t for t in texts(result) if "not an image file that can be read" in t]
    assert "part" in reason and tempfile.gettempdir() not in reason and "gradio_api" not in reason
