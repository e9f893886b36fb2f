"""The wheel: the library alone, usable outside the checkout through the `wmoe` console script."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_library_and_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: the checkout stays clean
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "wmoe", src / "wmoe", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("wmoe-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "wmoe/model_configs/wmoe-tiny.json" in names and "wmoe/cli.py" in names
    assert not [n for n in names if n.startswith(("tests/", "training/", "benchmarks/", "app"))], names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "wmoe = wmoe.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(work / "img.png")
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed wheel only, never the checkout
    cli = [str(site / "bin" / "wmoe")]
    made = subprocess.run(
        [*cli, "make-tiny", "t"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    out = subprocess.run(
        [*cli, "predict", "img.png", "--checkpoint", "t", "--out", "o"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (work / "o" / "img_overlay.png").is_file() and '"score"' in out.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import wmoe; print(wmoe.__file__, wmoe.__version__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert where.startswith(str(site)), where
