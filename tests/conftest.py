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
from helpers import randomize_heads  # noqa: E402

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
