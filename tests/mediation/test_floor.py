"""mediation/ is the floor above decoders and storage: it imports nothing of rating or the process layer, and the
flow stages read no clock (time is given to every stage as ``now``).

Its modules are imported in turn in a fresh interpreter (:func:`tests.floors.pulled_in`), so an upward import is
named with the module that made it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.floors import TOP, clock_reads, module_paths, upward_imports

NO_CLOCK = ("mediator.py", "flow_stages.py", "stage.py", "aggregate.py", "validate.py", "classify.py", "reconcile.py",
            "bounded.py", "compliance/stage.py")
"""The modules of the flow stages' per-batch path: they are given ``now``."""


def test_every_module_is_found() -> None:
    assert {"mediation.mediator", "mediation.stage", "mediation.flow_stages", "mediation.settings",
            "mediation.subscribers.store", "mediation.ipdr.journal", "mediation.compliance.stage"} <= set(
        module_paths("mediation"))


def test_importing_mediation_imports_no_upper_floor() -> None:
    assert upward_imports("mediation") == {}


def test_the_package_alone_imports_no_upper_floor() -> None:
    """``python -c "import mediation"``, as the issue asks it."""
    code = "import json, sys, mediation; print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=TOP,
                         timeout=300)
    assert not set(json.loads(out.stdout)) & {"rating", "collector"}


def test_the_flow_stages_read_no_clock() -> None:
    root = TOP / "mediation"
    reads = {name: clock_reads(ast.parse((root / name).read_text(), name)) for name in NO_CLOCK}
    assert {name: found for name, found in reads.items() if found} == {}


def test_the_clock_check_sees_what_it_looks_for() -> None:
    tree = ast.parse("import time\nfrom datetime import datetime\nt = time.monotonic()\n")
    assert sorted(clock_reads(tree)) == ["from datetime import datetime", "time.monotonic (line 3)"]
