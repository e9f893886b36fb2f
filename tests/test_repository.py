"""The repository is self-contained: no reference to files outside it.

Outside tests/ no tracked file may mention the design document of the project's workspace
(`method.md`) or a path into the shared folder beside the checkout; the design lives in
docs/design.md, which README links. The Markdown links themselves are checked in test_docs.py.
"""

from __future__ import annotations

from pathlib import Path

from test_docs import links, tracked_files

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("method.md", "../shared", "shared/docs")


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


def test_the_check_catches_what_it_is_for():
    assert foreign_references("see docs/method.md") == ["method.md"]
    assert foreign_references("data in ../shared/data") == ["../shared"]
    assert foreign_references("docs/design.md") == []
