"""Bad and awkward images through the Python API and the CLI: a clear message or a correct result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.badinputs import write_cases

from wmoe import Detector, ImageError
from wmoe.preprocess import load_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):
    return Detector.from_pretrained(tiny_checkpoint)


def test_every_case_through_the_api(inputs, detector):
    for name, (source, expected) in inputs.items():
        if expected is None:
            pred = detector.predict(source, "part")
            size = load_image(source).size
            assert pred.anomaly_map.shape == (size[1], size[0]), name
            assert np.isfinite(pred.anomaly_map).all() and 0 <= pred.score <= 1, name
        else:
            with pytest.raises(ImageError, match=expected):
                detector.predict(source, "part")


def test_conversions_are_right(inputs):
    assert load_image(inputs["exif_rotated.jpg"][0]).size == (20, 40)  # orientation respected
    assert load_image(inputs["rgba.png"][0]).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    gif = load_image(inputs["animated.gif"][0])
    assert gif.size == (24, 16) and gif.mode == "RGB"
    sixteen = np.asarray(load_image(inputs["sixteen_bit.png"][0]))
    assert sixteen.dtype == np.uint8 and sixteen.max() > 200  # scaled from 16 bits, not clipped to white
    assert load_image(inputs["cmyk.jpg"][0]).mode == "RGB"
    assert load_image(inputs["strip_3x20000.png"][0]).size == (3, 20000)


def test_array_inputs():
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2)))
    with pytest.raises(ImageError, match="no pixels"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="expected 0..1"):
        load_image(np.full((4, 4), -3.0))
    with pytest.raises(ImageError, match="unsupported input type"):
        load_image(12)
    assert load_image(np.full((4, 4), 1.0)).getpixel((0, 0)) == (255, 255, 255)


def test_markup_class_name_is_plain_text(detector, inputs):
    pred = detector.predict(inputs["one_pixel.png"][0], "<script>alert(1)</script> 螺丝 🔩")
    assert pred.class_name == "<script>alert(1)</script> 螺丝 🔩"


def test_cli_reports_each_bad_file_and_goes_on(inputs, tiny_checkpoint, tmp_path):
    files = [str(p) for p, _ in inputs.values() if isinstance(p, Path)]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "wmoe",
            "predict",
            *files,
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    good = [json.loads(line)["path"] for line in out.stdout.splitlines()]
    bad = [line for line in out.stderr.splitlines() if line.startswith("skipped: ")]
    expected_bad = [n for n, (p, e) in inputs.items() if isinstance(p, Path) and e]
    assert len(bad) == len(expected_bad) and len(good) == len(files) - len(expected_bad)
    for name in expected_bad:
        assert any(name in line for line in bad), name
    assert Image.open(tmp_path / "exif_rotated_overlay.png").size == (20, 40)
