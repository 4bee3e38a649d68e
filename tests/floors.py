"""What the floor tests share (tests/*/test_floor.py): the floors, their modules, what importing them pulls in, the
graph of imports in the source and its circles, and the clock reads of a syntax tree."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
FLOORS = ("decoders", "storage", "mediation", "rating", "collector")
"""Lowest first: a module may import its own floor and the floors before it."""
CLOCKS = {("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "monotonic_ns"),
          ("time", "perf_counter"), ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
          ("date", "today")}

_PROBE = """
import importlib, json, sys
pulled = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(name)
    pulled[name] = sorted(set(sys.modules) - before)
print(json.dumps(pulled))
"""


def module_paths(*packages: str) -> dict[str, Path]:
    """Every module of ``packages`` by dotted name, from the files (a namespace package such as decoders/ipdr is
    not walked by pkgutil)."""
    return {".".join(path.relative_to(TOP).with_suffix("").parts).removesuffix(".__init__"): path
            for package in packages for path in sorted((TOP / package).rglob("*.py"))}


def pulled_in(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` in turn in a fresh interpreter (an import made earlier by a test cannot hide one): what each
    newly brought into ``sys.modules``. An upward import is reported with the first module that makes it."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, check=True,
                         cwd=TOP, timeout=300)
    return json.loads(out.stdout)


def upward_imports(floor: str) -> dict[str, list[str]]:
    """Per module of ``floor`` (only those that have any): the modules of higher floors its import pulled in."""
    higher = FLOORS[FLOORS.index(floor) + 1:]
    pulled = pulled_in(sorted(module_paths(floor)))
    return {m: up for m, names in pulled.items() if (up := [n for n in names if n.split(".")[0] in higher])}


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``known`` modules that ``module`` imports anywhere in its source (lazy imports too)."""
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
    return (found & known) - {module}


def import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (the syntax trees: a lazy import closes a circle too)."""
    paths = module_paths(*packages)
    return {m: _imports(m, p, set(paths)) for m, p in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph`` (one path around each, found by a depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def clock_reads(tree: ast.Module) -> list[str]:
    """Clocks ``tree`` reads (``time.time``, ``datetime.now``, ...) or imports by name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id, node.attr) in CLOCKS:
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if (node.module, a.name) in CLOCKS or a.name in ("datetime", "date")]
    return found
