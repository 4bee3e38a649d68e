"""storage/ is the floor above decoders: it imports nothing of the floors above it and has no import circles.

Each module is imported alone in a fresh interpreter (an import made earlier by another test cannot hide one), and
the modules it pulled in are read from ``sys.modules``. The circle check walks the syntax trees of every module,
imports inside functions included (a lazy import closes a circle as surely as one at the top).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import storage

ROOT = Path(storage.__file__).resolve().parent
MODULES = sorted(".".join(("storage", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))
UPPER_FLOORS = ("mediation", "rating", "collector")

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def test_every_module_is_found() -> None:
    assert {"storage.factory", "storage.settings", "storage.durable", "storage.errors", "storage.sink",
            "storage.store", "storage.query", "storage.clickhouse.output", "storage.clickhouse.types"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_upper_floor(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent, timeout=300)
    loaded = json.loads(out.stdout)
    assert module in loaded
    upward = [name for name in loaded if name.split(".")[0] in UPPER_FLOORS]
    assert upward == [], f"{module} imports {upward}"


def _imports(path: Path) -> set[str]:
    """The storage modules that the module at ``path`` imports, anywhere in it."""
    package = ".".join(("storage", *path.relative_to(ROOT).parent.parts))
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *base.split(".")])
                base = base.rstrip(".")
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # ``from storage import durable`` imports a module
    return {name for name in found if name in MODULES}


def _graph() -> dict[str, set[str]]:
    by_name = {m: ROOT.joinpath(*m.split(".")[1:]).with_suffix(".py") for m in MODULES}
    by_name = {m: p if p.exists() else p.with_suffix("") / "__init__.py" for m, p in by_name.items()}
    return {m: _imports(p) - {m} for m, p in by_name.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph`` (one path around each, found by a depth-first search)."""
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return circles


def test_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_the_circle_check_sees_a_circle() -> None:
    """Not vacuous: the graph holds real edges, and a circle put into it is found."""
    graph = _graph()
    assert "storage.durable" in graph["storage.store"] and "storage.errors" in graph["storage.clickhouse.query"]
    graph["storage.durable"] = {"storage.store"}
    (circle,) = _circles(graph)
    assert circle[0] == circle[-1] and set(circle) == {"storage.store", "storage.durable"}


def _dynamic_imports(tree: ast.Module) -> list[str]:
    """Imports by name in ``tree``: ``importlib`` used, or ``__import__`` called (module names in strings)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {n} (line {node.lineno})" for n in names if n.split(".")[0] == "importlib"]
        if isinstance(node, ast.Name) and node.id == "__import__":
            found.append(f"__import__ (line {node.lineno})")
    return found


def test_no_module_is_imported_by_name() -> None:
    """Tables and outputs come in by plain imports (the composition root, collector/tables.py, registers tables):
    no list of module names that a misspelling would silently shorten."""
    trees = [(p, ast.parse(p.read_text(), str(p))) for p in sorted(ROOT.rglob("*.py"))]
    assert [(p.name, _dynamic_imports(t)) for p, t in trees if _dynamic_imports(t)] == []
    assert _dynamic_imports(ast.parse("import importlib\nm = __import__('x')\n")) == [
        "import importlib (line 1)", "__import__ (line 2)"]
