"""mediation/ is the floor above decoders and storage: it imports nothing of rating or the process layer, and the
flow Mediator reads no clock (time is given to every stage as ``now``).

The imports are checked in a fresh interpreter (an import made earlier by another test cannot hide one): every
module of mediation/ is imported in turn, and what each newly pulled in is read from ``sys.modules``, so an upward
import is named with the module that made it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mediation

ROOT = Path(mediation.__file__).resolve().parent
MODULES = sorted(".".join(("mediation", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))
UPPER_FLOORS = ("rating", "collector")
NO_CLOCK = ("mediator.py", "flow_stages.py", "stage.py", "aggregate.py", "validate.py", "classify.py", "reconcile.py",
            "bounded.py", "compliance/stage.py")
"""The modules of the flow stages' per-batch path: they are given ``now``."""
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


def test_every_module_is_found() -> None:
    assert {"mediation.mediator", "mediation.stage", "mediation.flow_stages", "mediation.settings",
            "mediation.subscribers.store", "mediation.ipdr.journal", "mediation.compliance.stage"} <= set(MODULES)


def test_importing_mediation_imports_no_upper_floor() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, *MODULES], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent, timeout=300)
    pulled: dict[str, list[str]] = json.loads(out.stdout)
    upward = {module: [n for n in names if n.split(".")[0] in UPPER_FLOORS] for module, names in pulled.items()}
    assert {module: names for module, names in upward.items() if names} == {}


def test_the_package_alone_imports_no_upper_floor() -> None:
    """``python -c "import mediation"``, as the issue asks it."""
    code = "import json, sys, mediation; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent,
                         timeout=300)
    assert not set(json.loads(out.stdout)) & set(UPPER_FLOORS)


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


def test_the_flow_stages_read_no_clock() -> None:
    reads = {name: _clock_reads(ast.parse((ROOT / name).read_text(), name)) for name in NO_CLOCK}
    assert {name: found for name, found in reads.items() if found} == {}


def test_the_clock_check_sees_what_it_looks_for() -> None:
    tree = ast.parse("import time\nfrom datetime import datetime\nt = time.monotonic()\n")
    assert sorted(_clock_reads(tree)) == ["from datetime import datetime", "time.monotonic (line 3)"]
