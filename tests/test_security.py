"""The demo under attack: one app process (the tiny untrained checkpoint) on 127.0.0.1, sent the kinds of
request in Gradio's published advisories (2023-2026: path traversal through the file routes, server paths
and URLs handed in as files, server-side request forgery, cross-origin requests, stored HTML/SVG, oversize
uploads) and aimed at our own handlers (formula injection through the Batch CSV, zip bombs, values outside
what the page offers). Every case checks that nothing leaked, that the answer is clear, and that the server
still answers a normal request afterwards. The only addresses used are loopback ones.
"""

import csv
import io
import tracemalloc
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from app_server import serve
from gradio_client import Client, handle_file
from PIL import Image

import app
import app_views

REPO = Path(__file__).resolve().parents[1]
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(1)", " =1+1", "\t=1", "＝1+1"]


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    detector, baseline, notices = app.load_models(str(tiny_checkpoint))
    demo, url = serve(detector, baseline, notices)
    yield SimpleNamespace(url=url, detector=detector, baseline=baseline, checkpoint=tiny_checkpoint)
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served.url, verbose=False)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "part.png"
    rng = np.random.default_rng(3)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(path)
    return path


def still_serves(client, small_image):
    """The same process still answers a normal request correctly."""
    out = client.predict(handle_file(str(small_image)), "part", 0.5, 0.5, "fixed", False, api_name="/analyze")
    assert np.asarray(Image.open(out[0])).shape == (40, 56, 3)


def png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


# ----------------------------------------------------------------------------- 1. formula injection (CSV)


@pytest.mark.parametrize("text", [*FORMULAS, "\r=1", "\tplain", "\n@x", "－1"])
def test_a_csv_cell_never_starts_a_formula(text):
    assert app_views.csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["plain", "a=b", "1.5", "", "part 7.png", "x-1+2"])
def test_other_text_cells_are_unchanged(text):
    assert app_views.csv_cell(text) == text


def test_csv_numbers_stay_numbers():
    assert [app_views.csv_cell(v) for v in (0.25, -0.5, np.float32(1), 3, None)] == [
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
    _, _, csv_file = client.predict([handle_file(str(archive))], "-part", 0.5, api_name="/batch")
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
    views = app_views.Views(served.detector, served.baseline)
    out = {}

    def request():
        out["result"] = views.batch([str(bomb)], "part", 0.5, progress=lambda *a, **k: None)

    peak = peak_mb(request)
    print(f"Batch request on a 400 MB zip bomb: peak {peak:.1f} MB (tracemalloc)")
    gallery, summary, _ = out["result"]
    assert gallery == [] and "1 file(s) not processed" in summary
    assert "bomb.png: cannot be unpacked" in summary.replace("\\", "")
    assert peak < 3 * app_views.ZIP_CHUNK / 2**20 + 8, f"{peak:.0f} MB"


def test_zip_limits_per_member_per_request_and_per_archive(served, tmp_path, monkeypatch):
    """Sizes are counted while unpacking (an honest 60 MB member is over the 50 MB limit); one request's
    archives share one budget; nested archives, encrypted members and absurd entry counts get a reason."""
    views = app_views.Views(served.detector, served.baseline)

    def reasons(paths) -> dict[str, str]:
        _, summary, csv_file = views.batch(
            [str(p) for p in paths], "part", 0.5, progress=lambda *a, **k: None
        )
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

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(app_views.MAX_ZIP_ENTRIES + 1):
            z.writestr(f"{i}.txt", b"")
    assert "entries, over the limit" in reasons([many])["many.zip"]

    monkeypatch.setattr(app_views, "MAX_UNPACKED_BYTES", 3 * 2**20)
    parts = tmp_path / "parts.zip"
    with zipfile.ZipFile(parts, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"p{i}.png", png_bytes(i) + bytes(2**20 + 10))  # a valid PNG with trailing bytes
    got = reasons([parts])
    assert got["p0.png"] == "" and got["p1.png"] == ""
    assert "per request" in got["p2.png"]


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
    gallery, summary, csv_file = client.predict([handle_file(str(bomb))], "part", 0.5, api_name="/batch")
    assert gallery == [] and "bomb.png: cannot be unpacked" in summary.replace("\\", "")
    still_serves(client, small_image)
