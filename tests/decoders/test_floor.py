"""decoders/ is the ground floor: it imports nothing of the floors above and does no network or clock I/O.

Each module is imported alone in a fresh interpreter (an import made earlier by another test cannot hide one), and
the modules it pulled in are read from ``sys.modules``. The source check walks the syntax trees of every module:
no socket (or event loop) import, and no reading of a clock (time is a parameter, as in aioquic).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import decoders

ROOT = Path(decoders.__file__).resolve().parent
# from the files, not pkgutil: decoders/ipdr is a namespace package, which pkgutil does not walk into
MODULES = sorted(".".join(("decoders", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))
UPPER_FLOORS = ("storage", "mediation", "rating", "collector")
NETWORK_MODULES = {"socket", "socketserver", "asyncio", "selectors", "ssl", "http", "urllib"}
CLOCKS = {("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("time", "monotonic_ns"),
          ("time", "perf_counter"), ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"),
          ("date", "today")}

_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def test_every_module_is_found() -> None:
    assert {"decoders.netflow.decoder", "decoders.netflow.state", "decoders.ipdr.session", "decoders.sflow.kernel",
            "decoders.result", "decoders.schema"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_upper_floor(module: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent, timeout=300)
    loaded = json.loads(out.stdout)
    assert module in loaded
    upward = [name for name in loaded if name.split(".")[0] in UPPER_FLOORS]
    assert upward == [], f"{module} imports {upward}"


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(ROOT.rglob("*.py"))]


def _network_imports(tree: ast.Module) -> list[str]:
    """Modules of the network or an event loop that ``tree`` imports."""
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [n for n in names if n.split(".")[0] in NETWORK_MODULES]
    return found


def _clock_reads(tree: ast.Module) -> list[str]:
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


def test_no_network_module_is_imported() -> None:
    assert [(path.name, _network_imports(tree)) for path, tree in _sources() if _network_imports(tree)] == []


def test_no_clock_is_read() -> None:
    assert [(path.name, _clock_reads(tree)) for path, tree in _sources() if _clock_reads(tree)] == []


def test_the_checks_see_what_they_look_for() -> None:
    """The source checks catch a socket and a clock (they are not vacuous)."""
    tree = ast.parse("import socket\nimport time\nfrom datetime import datetime\nt = time.time()\n"
                     "d = datetime.now()\n")
    assert _network_imports(tree) == ["socket"]
    assert sorted(_clock_reads(tree)) == ["datetime.now (line 5)", "from datetime import datetime",
                                          "time.time (line 4)"]
