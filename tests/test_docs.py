"""The documentation holds together: links resolve, numbers have a source, README's commands are CI's.

- Every relative link (and image) in the tracked Markdown files points at a tracked file, and every
  `#anchor` at a heading of the target file, slugged as GitHub does (duplicates get `-1`, `-2`, ...).
- Every measured number in README.md, SECURITY.md, docs/*.md and benchmarks/README.md (a ratio such as
  `1.23x`, a time in s, ms or min, a size in MB or GB) is a value of a JSON line in a
  `benchmarks/results/*.jsonl` file named in the same paragraph, list item or table row, or is a limit
  that a named test asserts (TEST_BACKED). Targets (`<= 1.2x`, `target: >= 20x`) are not measurements.
- The set-up commands README gives are the ones `.ci/run` runs (the lines it marks `# README:`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)

# a measured quantity: 1.23x, 6.48 s, 1,071 s, 250 ms, 2 min, 2.98 GB, 50 MB
MEASURE = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:x\b|\s?(?:ms|s|min|minutes|MB|GB)\b)")
TARGET = re.compile(r"(<=?|>=?|target:?)\s*$")
CITED = re.compile(r"\b((?:cpu|gpu)-[\w.-]+?\.jsonl)\b")
# the measured-number rule covers these Markdown files (training/README.md: see its own sections)
NUMBERED_DOCS = ("README.md", "SECURITY.md", "benchmarks/README.md")
# limits and sizes that a test asserts (or builds), with that test: the number -> the test's name
TEST_BACKED = {
    "50 MB": "test_an_upload_over_max_file_size_is_refused",
    "51 MB": "test_an_upload_over_max_file_size_is_refused",
    "60 MB": "test_memory_stays_flat_over_bursts_of_16_requests",
    "400 MB": "test_a_lying_zip_bomb_is_refused_with_bounded_memory",
    "1 MB": "test_a_lying_zip_bomb_is_refused_with_bounded_memory",
    "8 MB": "test_a_lying_zip_bomb_is_refused_with_bounded_memory",
    "500 MB": "test_zip_limits_per_member_per_request_and_per_archive",
    "5 s": "test_an_unreachable_hub_fails_within_5_seconds",
}


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


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


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


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows of Markdown text (fenced code left out): a citation's scope."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in FENCE.sub("\n", text).splitlines():
        starts = re.match(r"\s{0,3}(\|| *[-*] |\d+\. |#)", line)
        if not line.strip() or starts:
            if current:
                out.append(current)
            current = [line] if line.strip() else []
        else:
            current.append(line)
        if line.lstrip().startswith(("|", "#")):  # a table row or a heading is a block of its own
            out.append(current)
            current = []
    if current:
        out.append(current)
    return ["\n".join(b) for b in out if b]


def measured_numbers(block: str) -> list[tuple[str, Decimal]]:
    """(text, value) of each measured quantity in a block's prose, targets left out."""
    prose = CODE_SPAN.sub("", block)
    found = []
    for m in MEASURE.finditer(prose):
        if TARGET.search(prose[: m.start()]):
            continue
        found.append((m.group(0), Decimal(m.group(1).replace(",", "") + (m.group(2) or ""))))
    return found


def values(data) -> list[float]:
    """Every number in a parsed JSON value."""
    if isinstance(data, bool):
        return []
    if isinstance(data, int | float):
        return [float(data)]
    if isinstance(data, dict):
        return [v for item in data.values() for v in values(item)]
    if isinstance(data, list):
        return [v for item in data for v in values(item)]
    return []


def result_values(name: str) -> list[float] | None:
    """The numbers of a results file's JSON lines, or None when there is no such file."""
    path = RESULTS / name
    if not path.is_file():
        return None
    return [v for line in path.read_text().splitlines() if line.strip() for v in values(json.loads(line))]


def shown_as(value: float, number: Decimal) -> bool:
    """Whether `value` rounds (half up) to `number` at the number's decimals."""
    return (
        Decimal(repr(value)).quantize(Decimal(1).scaleb(number.as_tuple().exponent), ROUND_HALF_UP) == number
    )


def unsourced_numbers(md: str, text: str) -> list[str]:
    """Measured numbers of `text` found neither in a results file cited beside them nor in TEST_BACKED."""
    problems = []
    for block in blocks(text):
        cited = CITED.findall(block)
        pools = {name: result_values(name) for name in cited}
        problems += [
            f"{md}: {name} is cited but not in benchmarks/results/" for name, v in pools.items() if v is None
        ]
        for shown, number in measured_numbers(block):
            if shown in TEST_BACKED:
                continue
            if not any(shown_as(v, number) for pool in pools.values() if pool for v in pool):
                where = ", ".join(cited) or "no results file cited in its paragraph or row"
                problems.append(f"{md}: {shown!r} ({where}): {block.strip()[:80]!r}")
    return problems


def numbered_docs(files: set[str]) -> list[str]:
    docs = sorted(f for f in files if f.startswith("docs/") and f.endswith(".md"))
    return [f for f in NUMBERED_DOCS if f in files] + docs


def test_markdown_links_point_at_files_in_the_repository():
    files = set(tracked_files())
    markdown = sorted(f for f in files if f.endswith(".md"))
    for md in ("README.md", "SECURITY.md", "training/README.md", "benchmarks/README.md"):
        assert md in markdown, md
    assert any(f.startswith("docs/") for f in markdown)
    problems = []
    for md in markdown:
        problems += [f"{md}: {b}" for b in broken_links(md, (ROOT / md).read_text(), files)]
    assert not problems, "broken Markdown links:\n" + "\n".join(problems)


def test_readme_links_every_page_the_rest_moved_to():
    readme = links((ROOT / "README.md").read_text())
    for page in ("docs/usage.md", "docs/design.md", "docs/reliability.md", "training/README.md"):
        assert page in readme, page
    assert "benchmarks/README.md#performance" in readme and "SECURITY.md" in readme
    security = links((ROOT / "SECURITY.md").read_text())
    assert "docs/reliability.md#security" in security


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_measured_number_has_a_source():
    files = set(tracked_files())
    problems = []
    for md in numbered_docs(files):
        problems += unsourced_numbers(md, (ROOT / md).read_text())
    assert not problems, "numbers without a results line or a test behind them:\n" + "\n".join(problems)


def test_each_test_backed_number_names_a_real_test_and_is_used():
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    missing = [f"{n}: {t}" for n, t in TEST_BACKED.items() if f"def {t}(" not in tests]
    assert not missing, f"TEST_BACKED names tests that do not exist: {missing}"
    shown = {
        s
        for md in numbered_docs(set(tracked_files()))
        for b in blocks((ROOT / md).read_text())
        for s, _ in measured_numbers(b)
    }
    assert not set(TEST_BACKED) - shown, f"TEST_BACKED entries no document uses: {set(TEST_BACKED) - shown}"


def test_readme_gives_the_commands_ci_runs():
    commands = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        command, _, comment = line.partition("#")
        if "README:" in comment and not command.lstrip().startswith("if "):
            command = re.sub(r"\s+\|\|.*$", "", command).replace(" -q ", " ").strip()
            commands.append(" ".join(command.split()))
    assert len(commands) >= 6, commands
    readme = (ROOT / "README.md").read_text()
    shell = {
        " ".join(line.partition("#")[0].split())
        for m in re.finditer(r"^```bash\n(.*?)^```", readme, re.M | re.S)
        for line in m.group(1).splitlines()
    }
    missing = [c for c in commands if c not in shell]
    assert not missing, f"README does not give these commands of .ci/run as they are: {missing}"


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    files = {"README.md", "docs/design.md", "assets/screenshot.png"}
    text = (
        "# Title\n\n## 5. Metrics conventions (`wmoe/metrics.py`)\n\n## Notes\n\n## Notes\n\n"
        "[ok](docs/design.md) ![ok](assets/screenshot.png) [ok](https://example.org/x.md) "
        "[ok](#title) [ok](#5-metrics-conventions-wmoemetricspy) [ok](#notes-1) `[code](missing.md)`\n"
        "[gone](docs/method.md) [up](../shared/docs/x.md) [anchor](#nowhere) [third](#notes-2)\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[ref]: docs/missing.png\n"
    )
    assert broken_links("README.md", text, files) == [
        "docs/method.md (no such tracked file)",
        "../shared/docs/x.md (outside the repository)",
        "#nowhere (no such heading in README.md)",
        "#notes-2 (no such heading in README.md)",
        "docs/missing.png (no such tracked file)",
    ]

    monkeypatch.setattr(f"{__name__}.RESULTS", tmp_path)
    (tmp_path / "cpu-x.jsonl").write_text('{"ratio": 1.2334, "runs": [6.4828], "gb": 2.655}\n')
    doc = (
        "Measured 1.23x, 6.48 s and 2.66 GB (`cpu-x.jsonl`); target <= 1.2x; `code 9.9x`.\n\n"
        "| row | 1,071 s | 50 MB | cpu-x.jsonl |\n"
        "| row | 1.24x | cpu-x.jsonl |\n\n"
        "- 4.2x before, with no source\n"
        "- 1.23x in another item, from `cpu-missing.jsonl`\n"
    )
    assert unsourced_numbers("d.md", doc) == [
        "d.md: '1,071 s' (cpu-x.jsonl): '| row | 1,071 s | 50 MB | cpu-x.jsonl |'",
        "d.md: '1.24x' (cpu-x.jsonl): '| row | 1.24x | cpu-x.jsonl |'",
        "d.md: '4.2x' (no results file cited in its paragraph or row): '- 4.2x before, with no source'",
        "d.md: cpu-missing.jsonl is cited but not in benchmarks/results/",
        "d.md: '1.23x' (cpu-missing.jsonl): '- 1.23x in another item, from `cpu-missing.jsonl`'",
    ]
