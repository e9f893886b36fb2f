"""Lay files out as a Hugging Face Hub cache would (models--org--name/snapshots/<sha>, refs/main)."""

import shutil
from pathlib import Path

FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


def populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], sha: str = FAKE_SHA) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot
