"""rating/ is the floor above mediation: it imports nothing of the process layer (collector/).

Each module of rating/ is imported in a fresh interpreter (an import made earlier by another test cannot hide one),
and what it pulled in is read from ``sys.modules``, so an upward import is named with the module that made it. The
pattern of tests/storage/test_floor.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rating

ROOT = Path(rating.__file__).resolve().parent
MODULES = sorted(".".join(("rating", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                 for path in ROOT.rglob("*.py"))
UPPER_FLOORS = ("collector",)

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
    assert {"rating", "rating.engine", "rating.job", "rating.plans", "rating.tables"} <= set(MODULES)


def test_importing_rating_does_not_import_collector() -> None:
    """``python -c 'import rating'``, then every module of it in turn: nothing of collector/ comes in."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *MODULES], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent, timeout=300)
    pulled = json.loads(out.stdout)
    assert set(pulled) == set(MODULES)
    upward = {module: up for module, names in pulled.items()
              if (up := [n for n in names if n.split(".")[0] in UPPER_FLOORS])}
    assert upward == {}, f"rating imports the process layer: {upward}"


def test_the_probe_sees_an_upward_import() -> None:
    """Not vacuous: the same probe on a collector module reports collector modules."""
    out = subprocess.run([sys.executable, "-c", _PROBE, "collector.configtree"], capture_output=True, text=True,
                         check=True, cwd=ROOT.parent, timeout=300)
    assert "collector.configtree" in json.loads(out.stdout)["collector.configtree"]
