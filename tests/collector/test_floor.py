"""The floors together: no import circle across decoders/, storage/, mediation/, rating/ and collector/, and no import
from a lower floor to a higher one anywhere in their source (imports inside functions included).

The pattern of tests/storage/test_floor.py, over every package: the syntax trees of every module are walked (a lazy
import closes a circle as surely as one at the top) and the graph of module imports is searched for circles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import collector

TOP = Path(collector.__file__).resolve().parent.parent
FLOORS = ("decoders", "storage", "mediation", "rating", "collector")
"""Lowest first: a module may import its own floor and the floors before it."""
MODULES = {".".join(path.relative_to(TOP).with_suffix("").parts).removesuffix(".__init__"): path
           for floor in FLOORS for path in sorted((TOP / floor).rglob("*.py"))}


def _imports(module: str, path: Path) -> set[str]:
    """The modules of the floors that ``module`` imports, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # ``from storage import durable`` imports a module
    return {name for name in found if name in MODULES} - {module}


def _graph() -> dict[str, set[str]]:
    return {m: _imports(m, p) for m, p in MODULES.items()}


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


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def test_every_floor_is_found() -> None:
    assert {"decoders.schema", "storage.factory", "mediation.mediator", "rating.job", "collector.server",
            "collector.components", "collector.pipeline"} <= set(MODULES)


def test_no_import_circles_across_the_floors() -> None:
    assert _circles(_graph()) == []


@pytest.mark.parametrize("floor", FLOORS[:-1])
def test_no_import_runs_upward(floor: str) -> None:
    graph = _graph()
    upward = sorted(f"{m} -> {n}" for m, names in graph.items() if m.split(".")[0] == floor
                    for n in names if _floor(n) > _floor(m))
    assert upward == []


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """Not vacuous: the graph holds real edges, and a circle or an upward edge put into it is found."""
    graph = _graph()
    assert "collector.components" in graph["collector.server"]
    assert "storage.factory" in graph["collector.components"] and "decoders.schema" in graph["storage.sink"]
    graph["collector.components"] = graph["collector.components"] | {"collector.server"}
    assert ["collector.components", "collector.server", "collector.components"] in _circles(graph)
    assert _floor("storage.sink") < _floor("collector.server")
