"""The README's drawing of the package (its "Development" section) matches the package: every path it names
exists, and every module and subpackage of `yuyan/` and `yuyan/training/` is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "yuyan"


def drawn_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Development"):]
    drawing = section[section.index("```\nyuyan/\n") + len("```\nyuyan/\n"):]
    drawing = drawing[: drawing.index("```")]
    paths = []
    for line in drawing.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue  # continuation lines of a description
        names = re.split(r"\s{2,}", line.strip())
        # A row names one path, or several separated by two spaces before the description ("hub.py  cards.py").
        paths += [name for name in names if re.fullmatch(r"[\w/]+(\.py|/)", name)]
    return paths


def test_every_drawn_path_exists():
    paths = drawn_paths()
    assert len(paths) > 20, paths  # the parse found the drawing
    missing = [path for path in paths if not (PACKAGE / path).exists()]
    assert not missing, f"the README's drawing names paths that do not exist: {missing}"


def test_every_module_is_drawn():
    paths = set(drawn_paths())

    def drawn(path: str) -> bool:
        return path in paths or any(p.startswith(path) for p in paths)

    entries = [p for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())]
    entries += [p for p in (PACKAGE / "training").iterdir() if p.name != "__init__.py"
                and (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))]
    names = [p.relative_to(PACKAGE).as_posix() + ("/" if p.is_dir() else "") for p in entries]
    undrawn = sorted(name for name in names if name != "__main__.py" and not drawn(name))
    assert not undrawn, f"modules missing from the README's drawing of the package: {undrawn}"
