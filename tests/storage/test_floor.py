"""storage/ is the floor above decoders: it imports nothing of the floors above it, has no import circles and
imports no module by name.

Its modules are imported in turn in a fresh interpreter (:func:`tests.floors.pulled_in`); the circle check walks the
syntax trees of every module, imports inside functions included (a lazy import closes a circle as surely as one at
the top).
"""

from __future__ import annotations

import ast

from tests.floors import circles, import_graph, module_paths, upward_imports

MODULES = module_paths("storage")


def test_every_module_is_found() -> None:
    assert {"storage.factory", "storage.settings", "storage.durable", "storage.errors", "storage.sink",
            "storage.store", "storage.query", "storage.clickhouse.output", "storage.clickhouse.types"} <= set(MODULES)


def test_no_module_imports_an_upper_floor() -> None:
    assert upward_imports("storage") == {}


def test_no_import_circles() -> None:
    assert circles(import_graph("storage")) == []


def test_the_circle_check_sees_a_circle() -> None:
    """Not vacuous: the graph holds real edges, and a circle put into it is found."""
    graph = import_graph("storage")
    assert "storage.durable" in graph["storage.store"] and "storage.errors" in graph["storage.clickhouse.query"]
    graph["storage.durable"] = {"storage.store"}
    (circle,) = circles(graph)
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
    trees = [(p, ast.parse(p.read_text(), str(p))) for p in MODULES.values()]
    assert [(p.name, _dynamic_imports(t)) for p, t in trees if _dynamic_imports(t)] == []
    assert _dynamic_imports(ast.parse("import importlib\nm = __import__('x')\n")) == [
        "import importlib (line 1)", "__import__ (line 2)"]
