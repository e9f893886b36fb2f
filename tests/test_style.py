"""One docstring convention: plain prose with Markdown single backticks (no reST/Sphinx markup)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPHINX = re.compile(r"(?<!`)``[^`\n]+``(?!`)|:(?:class|func|meth|mod|attr|param|returns?|rtype):")


def test_no_sphinx_markup_in_the_code():
    files = [
        *REPO.glob("*.py"),
        *(p for d in ("wmoe", "training", "benchmarks", "assets", "demo") for p in (REPO / d).rglob("*.py")),
    ]
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if SPHINX.search(line)
    ]
    assert not hits, hits
