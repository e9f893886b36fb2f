"""The repository's layout: commands run as modules from the repository root, nothing patches `sys.path`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATCHING = re.compile(r"sys\.path\.(insert|append)\b")


def test_no_code_patches_sys_path():
    files = [*REPO.glob("app*.py")]
    for folder in ("wmoe", "training", "benchmarks", "assets", "demo"):
        files += (REPO / folder).rglob("*.py")
    assert len(files) > 20  # the globs found the code
    patching = [str(f.relative_to(REPO)) for f in files if PATCHING.search(f.read_text())]
    assert patching == []


@pytest.mark.parametrize(
    "module",
    [
        "training.train",
        "training.evaluate",
        "training.prepare_data",
        "training.synthetic",
        "training.ablate",
        "benchmarks.latency",
        "benchmarks.precision",
        "benchmarks.throughput",
        "benchmarks.memory",
        "benchmarks.app_request",
        "benchmarks.metrics_speed",
        "benchmarks.compare_request",
        "benchmarks.training_cache",
    ],
)
def test_each_command_runs_as_a_module_from_the_repository_root(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")
    if module.startswith("training."):
        assert done.stdout.startswith(f"usage: python -m {module} ")


def test_prepare_data_module_writes_the_meta_file(tmp_path):
    root = tmp_path / "parts"
    for folder in ("good", "scratch"):
        (root / folder).mkdir(parents=True)
        (root / folder / "0.png").write_bytes((REPO / "assets" / "examples" / "brick_good.png").read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "training.prepare_data", "--dataset", "folder", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parts: 1 normal, 1 anomalous (0 with masks)" in done.stdout
    assert (root / "meta.json").is_file()
