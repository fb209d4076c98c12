"""The direction of imports inside the package: the command line sits on top of the library, never under it.

Read from the source with `ast` (nothing is imported), so the test also sees imports inside functions. What counts:

- an import of `yuyan.cli` (or one of its modules) anywhere in a module outside `yuyan/cli/`, at module level or
  inside a function, is a library module depending on the command line: not allowed (`yuyan/__main__.py`, the
  `python -m yuyan` entry point, is the command line's, not the library's);
- a cycle is a loop in the graph of *module-level* imports between yuyan's modules (statements run when the module
  is imported, including those under a module-level `if` / `try`; not those inside functions or classes, which run
  later). `from yuyan.a import b` counts as an import of `yuyan.a.b` when that is a module, else of `yuyan.a`.
  The implicit import of a parent package (importing `yuyan.a.b` runs `yuyan/a/__init__.py`) is not counted: it
  would make every package `__init__` that re-exports its submodules a cycle;
- a layer is a package's child (a subpackage or a module; its `__init__` counts as one more child). Every import,
  at module level or inside a function, links the two children of the lowest package that holds both the
  importing and the imported module: `yuyan/training/finetune.py` importing `yuyan.cards` links `yuyan.training`
  to `yuyan.cards`, and importing `yuyan.training.recipes.tables` links `yuyan.training.finetune` to
  `yuyan.training.recipes`. The children of each package must form no cycle: an import
  put inside a function to dodge a module-level cycle still makes two packages depend on each other. No
  exceptions are allowed; a name imported through `importlib` is not seen.

And `import yuyan` loads the model, its configuration and the pipelines Yuyan registers, not the training code.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import yuyan

PACKAGE_DIR = Path(yuyan.__file__).resolve().parent
CLI = "yuyan.cli"
ENTRY_POINTS = {"yuyan.__main__"}  # `python -m yuyan`: part of the command line


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        found[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(module, path, node)
        names = [f"{base}.{alias.name}" for alias in node.names]
        return [name if name in MODULES else base for name in names]
    return []


def _module_level(tree: ast.Module):
    """The statements run at import time: the module's body, descending into if/try/with, not into defs."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for name in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, name, []) or [])
            for handler in getattr(node, "handlers", []) or []:
                pending.extend(handler.body)


def _is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def test_the_walk_sees_the_package():
    # A walk that found nothing would pass the tests below vacuously.
    assert {"yuyan", "yuyan.cli", "yuyan.generate", "yuyan.loading", "yuyan.training.evaluation"} <= set(MODULES)
    graph = _graph()
    assert "yuyan.modeling.modeling_yuyan" in graph["yuyan.modeling"]


def test_no_library_module_imports_the_command_line():
    offenders = []
    for module, (path, tree) in MODULES.items():
        if _is_cli(module) or module in ENTRY_POINTS:
            continue
        for node in ast.walk(tree):
            for name in _imported(module, path, node):
                if _is_cli(name):
                    offenders.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} imports {name}")
    assert not offenders, "library modules import the CLI:\n" + "\n".join(offenders)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, (path, tree) in MODULES.items():
        edges = set()
        for node in _module_level(tree):
            edges.update(name for name in _imported(module, path, node) if name in MODULES and name != module)
        graph[module] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first == last), or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_at_module_level():
    cycle = _find_cycle(_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


# ----------------------------------------------------------------------------------------------------------------
# Layers: every import, also inside functions, between the children of each package
# ----------------------------------------------------------------------------------------------------------------


def _tree_parts(module: str) -> tuple[str, ...]:
    """The module's place in the package tree: a package's own code is its `__init__` child."""
    path = MODULES[module][0]
    parts = tuple(module.split("."))
    return parts + ("__init__",) if path.name == "__init__.py" else parts


def _layer_edges() -> dict[tuple[str, str], list[str]]:
    """(child, child) of the same package -> the imports behind the link, as `file:line imports module`."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, (path, tree) in MODULES.items():
        source = _tree_parts(module)
        for node in ast.walk(tree):
            for name in _imported(module, path, node):
                if name not in MODULES or name == module:
                    continue
                target = _tree_parts(name)
                shared = 0
                while source[shared] == target[shared]:
                    shared += 1
                link = (".".join(source[: shared + 1]), ".".join(target[: shared + 1]))
                where = f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} imports {name}"
                if where not in edges.setdefault(link, []):
                    edges[link].append(where)
    return edges


def test_the_layers_see_imports_inside_functions():
    edges = _layer_edges()
    # training/ imports the model cards inside functions only (at the end of a run).
    assert ("yuyan.training", "yuyan.cards") in edges
    assert ("yuyan.__init__", "yuyan.modeling") in edges  # the package's own code is a layer of its own


def test_no_import_cycle_between_the_layers_of_a_package():
    edges = _layer_edges()
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    cycle = _find_cycle(graph)
    if cycle is not None:
        behind = [f"  {a} -> {b}: " + "; ".join(edges[(a, b)]) for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle between layers: " + " -> ".join(cycle) + "\n" + "\n".join(behind))


# Besides the package itself: the model and its configuration (for the Auto classes), the pipelines Yuyan
# registers, the task table the question-answering pipeline reads its default length from, and `yuyan.FastGenerator`
# (whose module imports NumPy and torch only: ONNX packages load when a generator is built).
IMPORT_YUYAN_LOADS = ("yuyan.modeling", "yuyan.pipelines", "yuyan.tasks", "yuyan.fast")


@pytest.mark.slow  # a fresh interpreter, where nothing is imported yet
def test_import_yuyan_loads_no_training_code():
    code = "import json, sys, yuyan; print(json.dumps(sorted(m for m in sys.modules if m.startswith('yuyan.'))))"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE_DIR.parent)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    unexpected = [m for m in loaded if not any(m == top or m.startswith(top + ".") for top in IMPORT_YUYAN_LOADS)]
    assert not unexpected, f"`import yuyan` loads {unexpected}"
    heavy = "import json, sys, yuyan; print(json.dumps(sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", heavy], env=env, capture_output=True, text=True, timeout=120,
                            cwd=PACKAGE_DIR.parent)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], "`import yuyan` loads the ONNX packages"
