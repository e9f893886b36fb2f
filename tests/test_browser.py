"""A real browser (Debian's Chromium through Playwright) uses the demo: upload, class, Run, example click.

Also writes assets/screenshot.png (the tiny untrained model), which README shows.
"""

import contextlib
import shutil
from pathlib import Path

import pytest
from PIL import Image
from support.app_server import serve

import app
from demo.models import UNTRAINED

playwright = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE = REPO / "assets" / "examples" / "brick_crack.png"
SCREENSHOT = REPO / "assets" / "screenshot.png"
MAX_SCREENSHOT_BYTES = 500_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium (apt-get install)"),
]


@pytest.fixture(scope="module")
def url(served):
    return served.url


@contextlib.contextmanager
def chromium(tmp_path: Path):
    """A page of a fresh headless Chromium (its own profile under tmp_path), closed afterwards."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_analyze_in_chromium(url, tmp_path):
    expect = playwright.expect
    with chromium(tmp_path) as page:
        page.goto(url)
        expect(page.locator("#banner")).to_contain_text(UNTRAINED)

        page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#input-image img")).to_be_visible(timeout=15_000)
        page.locator("#class-name input, #class-name textarea").first.fill("brick wall")
        page.locator("#run").click()
        overlay = page.locator("#overlay img")
        expect(overlay).to_be_visible(timeout=30_000)
        expect(page.locator("#routing img")).to_be_visible(timeout=30_000)
        expect(page.locator("#score")).to_contain_text("Score 0.")
        expect(page.locator("#score")).to_contain_text("brick wall")
        size = overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == list(Image.open(EXAMPLE).size)  # the user's own resolution, not a model square
        expect(page.locator("#experts img").first).to_be_visible()
        expect(page.locator("#layers img").first).to_be_visible()
        # panels with nothing to show are hidden, not empty boxes: no sampling, no references
        expect(page.locator("#uncertainty")).to_be_hidden()
        expect(page.locator("#reference-parts")).to_be_hidden()

        page.mouse.wheel(0, 5000)  # load the lazy gallery images before the full-page screenshot
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete)")
        page.mouse.wheel(0, -5000)
        raw = tmp_path / "app.png"
        page.screenshot(path=str(raw), full_page=True)

        page.locator("#examples button.gallery-item").last.click()  # an example runs on click
        expect(page.locator("#score")).to_contain_text("retina", timeout=30_000)

        dialogs = []  # markup typed as the class name is shown as text, never run
        page.on("dialog", lambda dialog: dialogs.append(dialog.message) or dialog.dismiss())
        hostile = "<img src=x onerror=alert(1)> <script>alert(2)</script> **bold**"
        page.locator("#class-name input, #class-name textarea").first.fill(hostile)
        page.locator("#run").click()
        expect(page.locator("#score")).to_contain_text(hostile, timeout=30_000)
        assert page.locator("#score img, #score script").count() == 0 and not dialogs
        assert page.locator("#score strong", has_text="bold").count() == 0

        page.locator("#ctds input[type=checkbox]").check()  # with sampling the uncertainty panel shows
        page.locator("#run").click()
        expect(page.locator("#uncertainty img")).to_be_visible(timeout=30_000)
        expect(page.locator("#reference-parts")).to_be_hidden()
    shot = Image.open(raw)
    assert shot.width >= 1280 and shot.height > 900
    save_small(raw, SCREENSHOT)
    assert SCREENSHOT.stat().st_size < MAX_SCREENSHOT_BYTES


def save_small(source: Path, target: Path):
    """Copy the screenshot, palette-quantised when the plain PNG is too large for the README."""
    shutil.copyfile(source, target)
    if target.stat().st_size >= MAX_SCREENSHOT_BYTES:
        small = Image.open(source).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        small.save(target, optimize=True)


@pytest.fixture(scope="module")
def two_url(tmp_path_factory):
    """Two tiny untrained checkpoints on one backbone (alpha, beta) and WinCLIP, as `app.py --checkpoint A
    --checkpoint B --baseline tiny`."""
    from support.helpers import randomize_heads

    from wmoe import WMoECLIP, WMoEConfig, save_pretrained

    root = tmp_path_factory.mktemp("two-browser")
    for name, seed in [("alpha", 1), ("beta", 2)]:
        save_pretrained(randomize_heads(WMoECLIP(WMoEConfig.tiny()), seed=seed), root / name)
    winclip, _ = app.load_winclip("tiny")  # every method in Compare (random backbones)
    demo, url = serve(*app.load_models([str(root / "alpha"), str(root / "beta")]), winclip=winclip)
    yield url
    demo.close()


def shoot(page, locator, tmp_path, target: Path):
    """A screenshot of part of the page for the README (palette-quantised when large)."""
    raw = tmp_path / target.name
    locator.screenshot(path=str(raw))
    save_small(raw, target)
    assert target.stat().st_size < MAX_SCREENSHOT_BYTES


def test_references_checkpoints_and_batch_routing_in_chromium(two_url, tmp_path):
    """The new inputs of the demo: reference images, the checkpoint menu, the batch routing strips."""
    import zipfile

    expect = playwright.expect
    normal = []
    for i in range(2):
        normal.append(tmp_path / f"normal{i}.png")
        Image.open(REPO / "assets" / "examples" / "brick_good.png").convert("RGB").rotate(180 * i).save(
            normal[-1]
        )
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, folder in enumerate(["brick", "brick", "grass"]):
            source = "brick_crack.png" if folder == "brick" else "grass_stain.png"
            z.write(REPO / "assets" / "examples" / source, f"{folder}/{i}.png")
    with chromium(tmp_path) as page:
        page.goto(two_url)
        page.locator("#checkpoint input").first.click()  # the checkpoint menu: pick beta
        page.get_by_role("option", name="beta").click()
        page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#input-image img")).to_be_visible(timeout=15_000)
        page.locator("#references input[type=file]").set_input_files([str(f) for f in normal])
        expect(page.locator("#references")).to_contain_text("normal1", timeout=15_000)
        page.locator("#class-name input, #class-name textarea").first.fill("brick wall")
        page.locator("#run").click()
        expect(page.locator("#score")).to_contain_text("With 2 reference image(s)", timeout=60_000)
        expect(page.locator("#score")).to_contain_text("beta")
        expect(page.locator("#reference-parts img")).to_have_count(2, timeout=30_000)
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete)")
        shoot(
            page,
            page.locator("#reference-parts"),
            tmp_path,
            REPO / "assets" / "screenshot_references.png",
        )

        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-image input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#compare-image img")).to_be_visible(timeout=15_000)
        page.locator("#compare-run").click()
        gallery = page.locator("#compare-gallery")
        expect(page.locator("#compare-scores")).to_contain_text("alpha", timeout=60_000)
        expect(page.locator("#compare-scores")).to_contain_text("beta")
        expect(page.locator("#compare-scores")).to_contain_text("training-free CLIP baseline")
        expect(page.locator("#compare-scores")).to_contain_text("WinCLIP")
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete)")
        shoot(page, gallery, tmp_path, REPO / "assets" / "screenshot_checkpoints.png")

        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files(str(archive))
        expect(page.locator("#batch-files")).to_contain_text("parts", timeout=15_000)
        page.locator("#batch-class-from-folder input").check()
        page.locator("#batch-run").click()
        expect(page.locator("#batch-routing-strips img")).to_have_count(3, timeout=60_000)
        expect(page.locator("#batch-routing")).to_contain_text("grass")
        expect(page.locator("#batch-routing")).to_contain_text("brick")
        expect(page.locator("#batch-routing-chart img")).to_be_visible()
        page.wait_for_function("() => [...document.querySelectorAll('img')].every(i => i.complete)")
        shoot(
            page,
            page.locator("#batch-routing-strips").locator(".."),
            tmp_path,
            REPO / "assets" / "screenshot_batch_routing.png",
        )


def test_every_method_in_compare_and_musc_in_batch_in_chromium(two_url, tmp_path):
    """Compare with references shows every method (WinCLIP+ and the references alone too); Batch scores a
    folder of six images against itself with MuSc and says there is no routing."""
    import zipfile

    expect = playwright.expect
    good = REPO / "assets" / "examples" / "brick_good.png"
    archive = tmp_path / "bricks.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(6):
            z.write(EXAMPLE if i == 0 else good, f"brick/{i}.png")
    with chromium(tmp_path) as page:
        page.goto(two_url)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-image input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#compare-image img")).to_be_visible(timeout=15_000)
        page.locator("#compare-references input[type=file]").set_input_files([str(good)])
        expect(page.locator("#compare-references")).to_contain_text("brick_good", timeout=15_000)
        page.locator("#compare-run").click()
        scores = page.locator("#compare-scores")
        expect(scores).to_contain_text("references alone", timeout=90_000)
        for name in ("alpha", "beta", "WinCLIP", "WinCLIP+", "training-free CLIP baseline"):
            expect(scores).to_contain_text(name)
        expect(page.locator("#compare-gallery img").first).to_be_visible()

        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files(str(archive))
        expect(page.locator("#batch-files")).to_contain_text("bricks", timeout=15_000)
        page.locator("#batch-class-from-folder input").check()
        page.locator("#batch-musc input").check()
        page.locator("#batch-run").click()
        expect(page.locator("#batch-summary")).to_contain_text("Method: MuSc", timeout=90_000)
        expect(page.locator("#batch-summary")).to_contain_text("6 image(s) scored")
        expect(page.locator("#batch-routing")).to_contain_text("MuSc has no experts")
        expect(page.locator("#batch-gallery img")).to_have_count(6, timeout=30_000)
