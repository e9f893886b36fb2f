"""The repository is self-contained: no reference to files outside it, and its Markdown links resolve.

Outside tests/ no tracked file may mention the design document of the project's workspace
(`method.md`) or a path into the shared folder beside the checkout; the design lives in
docs/design.md. Every relative link (and image) in the tracked Markdown files points at a tracked
file, and every `#anchor` at a heading of the target file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("method.md", "../shared", "shared/docs")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def tracked_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except subprocess.CalledProcessError:
        pytest.skip("not a git checkout")
    files = [f for f in out.decode().split("\0") if f]
    assert files, "git ls-files listed nothing"
    return files


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def foreign_references(text: str) -> list[str]:
    """The forbidden strings that `text` contains."""
    return [s for s in FOREIGN if s in text]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", text))}


def links(text: str) -> list[str]:
    """Link and image targets of Markdown text, outside code blocks and code spans."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)


def broken_links(md: str, text: str, files: set[str]) -> list[str]:
    """Relative targets of the Markdown file `md` (a repo path) that are not tracked files or headings."""
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if path:
            resolved = (ROOT / md).parent / path
            try:
                rel = resolved.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{target} (outside the repository)")
                continue
            is_dir = any(f.startswith(rel + "/") for f in files)
            if rel not in files and not is_dir:
                broken.append(f"{target} (no such tracked file)")
                continue
        else:
            rel = md
        target_text = text if rel == md else (ROOT / rel).read_text() if rel.endswith(".md") else None
        if anchor and target_text is not None and anchor.lower() not in anchors(target_text):
            broken.append(f"{target} (no such heading in {rel})")
    return broken


def test_no_tracked_file_outside_tests_refers_outside_the_repository():
    offenders = []
    for name in tracked_files():
        if name.startswith("tests/"):
            continue
        text = read_text(ROOT / name)
        if text is not None and foreign_references(text):
            offenders.append(f"{name}: {foreign_references(text)}")
    assert not offenders, "files refer to files outside the repository:\n" + "\n".join(offenders)


def test_design_document_is_in_the_repository_and_cited():
    files = set(tracked_files())
    assert "docs/design.md" in files
    readme = (ROOT / "README.md").read_text()
    assert "docs/design.md" in links(readme), "README.md does not link docs/design.md"


def test_markdown_links_point_at_files_in_the_repository():
    files = set(tracked_files())
    markdown = sorted(f for f in files if f.endswith(".md"))
    assert "README.md" in markdown and any(f.startswith("docs/") for f in markdown)
    problems = []
    for md in markdown:
        problems += [f"{md}: {b}" for b in broken_links(md, (ROOT / md).read_text(), files)]
    assert not problems, "broken Markdown links:\n" + "\n".join(problems)


def test_the_checks_catch_what_they_are_for():
    files = {"README.md", "docs/design.md", "assets/screenshot.png"}
    text = (
        "# Title\n\n## 5. Metrics conventions (`wmoe/metrics.py`)\n\n"
        "[ok](docs/design.md) ![ok](assets/screenshot.png) [ok](https://example.org/x.md) "
        "[ok](#title) [ok](#5-metrics-conventions-wmoemetricspy) `[code](missing.md)`\n"
        "[gone](docs/method.md) [up](../shared/docs/x.md) [anchor](#nowhere)\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[ref]: docs/missing.png\n"
    )
    found = broken_links("README.md", text, files)
    assert found == [
        "docs/method.md (no such tracked file)",
        "../shared/docs/x.md (outside the repository)",
        "#nowhere (no such heading in README.md)",
        "docs/missing.png (no such tracked file)",
    ]
    assert foreign_references("see docs/method.md") == ["method.md"]
    assert foreign_references("data in ../shared/data") == ["../shared"]
    assert foreign_references("docs/design.md") == []
