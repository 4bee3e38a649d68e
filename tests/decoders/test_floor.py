"""decoders/ is the ground floor: it imports nothing of the floors above and does no network or clock I/O.

Its modules are imported in turn in a fresh interpreter (:func:`tests.floors.pulled_in`) and what each pulled in is
read from ``sys.modules``. The source check walks the syntax trees of every module: no socket (or event loop)
import, and no reading of a clock (time is a parameter, as in aioquic).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.floors import clock_reads, module_paths, upward_imports

MODULES = module_paths("decoders")
NETWORK_MODULES = {"socket", "socketserver", "asyncio", "selectors", "ssl", "http", "urllib"}


def test_every_module_is_found() -> None:
    assert {"decoders.netflow.decoder", "decoders.netflow.state", "decoders.ipdr.session", "decoders.sflow.kernel",
            "decoders.result", "decoders.schema", "decoders.jit"} <= set(MODULES)


def test_no_module_imports_an_upper_floor() -> None:
    assert upward_imports("decoders") == {}


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in MODULES.values()]


def _network_imports(tree: ast.Module) -> list[str]:
    """Modules of the network or an event loop that ``tree`` imports."""
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [n for n in names if n.split(".")[0] in NETWORK_MODULES]
    return found


def test_no_network_module_is_imported() -> None:
    assert [(path.name, _network_imports(tree)) for path, tree in _sources() if _network_imports(tree)] == []


def test_no_clock_is_read() -> None:
    assert [(path.name, clock_reads(tree)) for path, tree in _sources() if clock_reads(tree)] == []


def test_the_checks_see_what_they_look_for() -> None:
    """The source checks catch a socket and a clock (they are not vacuous)."""
    tree = ast.parse("import socket\nimport time\nfrom datetime import datetime\nt = time.time()\n"
                     "d = datetime.now()\n")
    assert _network_imports(tree) == ["socket"]
    assert sorted(clock_reads(tree)) == ["datetime.now (line 5)", "from datetime import datetime",
                                         "time.time (line 4)"]
