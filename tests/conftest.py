"""Test settings: offline Hub, no analytics, headless matplotlib; tiny models and shared fixtures."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("WMOE_BACKBONE_WEIGHTS", None)
# gradio's upload cache, one per test run: runs side by side never delete each other's uploads
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="wmoe-tests-gradio-"))
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from support.helpers import randomize_heads  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint with perturbed heads, saved once per session."""
    from wmoe import WMoECLIP, WMoEConfig, save_pretrained

    directory = tmp_path_factory.mktemp("tiny-ckpt")
    save_pretrained(randomize_heads(WMoECLIP(WMoEConfig.tiny())), directory)
    return directory


# ------------------------------------------------------------------- shared non-app fixtures (library, training)
@pytest.fixture
def backbone_images(monkeypatch) -> list[int]:
    """The number of images of each pass through any backbone's image tower (Backbone.encode_image)."""
    from wmoe.backbone import Backbone

    calls, real = [], Backbone.encode_image

    def counted(self, images, *args, **kwargs):
        calls.append(images.shape[0])
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Backbone, "encode_image", counted)
    return calls


def _synthetic(root: Path, categories: list[str], **sizes) -> Path:
    from training.prepare_data import prepare
    from training.synthetic import generate

    generate(root, categories, n_test_good=3, n_test_defect_per_type=1, size=48, **sizes)
    prepare("mvtec", root)
    return root


@pytest.fixture(scope="session")
def two_class_data(tmp_path_factory) -> Path:
    """A prepared synthetic dataset (MVTec layout, 48 px): tile and washer, each 3 normal training images,
    3 normal and 1 per defect type test images. Read only."""
    return _synthetic(tmp_path_factory.mktemp("two-class-data"), ["tile:dots", "washer:disc"], n_train_good=3)


@pytest.fixture(scope="session")
def train_heldout_data(tmp_path_factory) -> dict[str, Path]:
    """Two prepared synthetic datasets (48 px, test images only): "train" (felt, nut: 16 images) and
    "heldout" (tile: 8 images). Read only."""
    base = tmp_path_factory.mktemp("train-heldout-data")
    return {
        "train": _synthetic(base / "train", ["felt", "nut"], n_train_good=0),
        "heldout": _synthetic(base / "heldout", ["tile:dots"], n_train_good=0),
    }


# ----------------------------------------------------------------------------- the demo (app fixtures)


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    """The demo on the tiny untrained checkpoint, served on 127.0.0.1 for one test module as `python app.py`
    serves it: its url, the detector and baseline, the checkpoint folder, and the scratch folders it made."""
    from types import SimpleNamespace

    from support.app_server import scratch_folders, serve

    import app

    detectors, baseline, notices = app.load_models(str(tiny_checkpoint))
    detector = detectors[tiny_checkpoint.name]
    others = scratch_folders()
    demo, url = serve(detector, baseline, notices)
    scratch = scratch_folders() - others  # the app's own temporary folder (and any another process just made)
    yield SimpleNamespace(
        url=url, detector=detector, baseline=baseline, checkpoint=tiny_checkpoint, scratch=scratch
    )
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    """gradio_client on the served demo, as a user's script would query it."""
    from gradio_client import Client

    return Client(served.url, verbose=False)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Path:
    """A small odd-sized RGB noise image (64x48) on disk."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("small") / "part.png"
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path
