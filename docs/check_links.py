"""Check the relative links of the Markdown documentation: every linked file exists, and every `#anchor` names a
heading of the linked file (GitHub's rule: lowercase, punctuation dropped, spaces as hyphens).

    python docs/check_links.py          # prints each broken link; exit status 1 if there is one

Only the standard library; external links (http, https, mailto) are not checked.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\]`]|`[^`]*`)*\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "bench" / "README.md"]
    return [f for f in files if f.is_file()] + sorted((ROOT / "docs").rglob("*.md"))


def prose_lines(text: str):
    """The lines outside fenced code blocks, numbered."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        candidate, n = slug, 1
        while candidate in found:
            candidate, n = f"{slug}-{n}", n + 1
        found.add(candidate)
    return found


def broken_links() -> list[str]:
    problems = []
    for doc in documents():
        for number, line in prose_lines(doc.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (doc.parent / file_part).resolve() if file_part else doc
                where = f"{doc.relative_to(ROOT)}:{number}: {target}"
                if not linked.exists():
                    problems.append(f"{where}: no such file")
                elif anchor and (linked.is_dir() or anchor not in anchors(linked)):
                    problems.append(f"{where}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    return problems


if __name__ == "__main__":
    problems = broken_links()
    print("\n".join(problems) if problems else f"all links resolve ({len(documents())} files)")
    sys.exit(1 if problems else 0)
