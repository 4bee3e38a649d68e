"""Shared test setup.

Fixture modules live in ``tests/fixtures/`` (one per real peer or area) and are all loaded here. Tests that need a
real peer call :func:`tests.fixtures.peers.require_tool`: on a developer machine a missing peer skips the test, in CI
(``CI=true``) it fails it, so a green CI run has exercised every peer.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ and fuzz/ are tools of the checkout, not installed with flowmed: processes the tests start
# (`python -m bench.cmts`, `python -m bench.load`) find them here, whatever their working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
