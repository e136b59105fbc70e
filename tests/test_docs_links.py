"""Links between the project's markdown files resolve: the file exists and, for ``file#section`` or
``#section``, a heading of that file has that GitHub anchor (headings get renamed; links rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "benchmarks" / "README.md",
               *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, spaces, ``-`` and
    ``_`` kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text
    text = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def prose(path: Path):
    """``(line number, line)`` of a markdown file outside its fenced code blocks."""
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield n, line


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose(path):
        if not re.match(r"#{1,6} ", line):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_matches_github():
    assert slug(" The scenes world (issue 16) — reward and FID: yes; judge: **no** (the claim does not hold)") == \
        "the-scenes-world-issue-16--reward-and-fid-yes-judge-no-the-claim-does-not-hold"
    assert slug(" Will it fit: `rats estimate` against measurements") == "will-it-fit-rats-estimate-against-measurements"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    bad = []
    for n, line in prose(doc):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            file, _, anchor = target.partition("#")
            where = (doc.parent / file).resolve() if file else doc
            if not where.exists():
                bad.append(f"line {n}: {target}: no such file")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                bad.append(f"line {n}: {target}: no heading with that anchor in {where.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}:\n" + "\n".join(bad)
