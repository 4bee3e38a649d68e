"""Shared test setup.

Fixture modules live in ``tests/fixtures/`` (one per real peer or area) and are all loaded here. Tests that need a
real peer call :func:`tests.fixtures.peers.require_tool`: on a developer machine a missing peer skips the test, in CI
(``CI=true``) it fails it, so a green CI run has exercised every peer.
"""

import os
from pathlib import Path

# Every table registered, as the process does before it builds outputs or a query engine (collector/tables.py): a
# test that opens a QueryEngine on a daemon's store otherwise sees only the tables some earlier test imported.
import collector.tables  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# bench/ and fuzz/ are tools of the checkout, not installed with flowmed: processes the tests start
# (`python -m bench.cmts`, `python -m bench.load`) find them here, whatever their working directory.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)


SLOW_S = 5.0
"""A test that takes longer than this carries the ``slow`` marker (``scripts/test --quick`` leaves those out)."""
_unmarked_slow: list[tuple[str, float]] = []


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 (pytest's TestReport)
    """Note tests that ran longer than :data:`SLOW_S` without the ``slow`` marker (listed at the end of the run)."""
    if report.when == "call" and report.duration > SLOW_S and "slow" not in report.keywords:
        _unmarked_slow.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 (pytest's TerminalReporter)
    """List the unmarked slow tests, so the marker can be added (a listing, not a failure: timings vary)."""
    if _unmarked_slow:
        terminalreporter.section(f"tests over {SLOW_S:.0f} s without the slow marker")
        for nodeid, duration in sorted(_unmarked_slow, key=lambda item: -item[1]):
            terminalreporter.line(f"{duration:6.1f} s  {nodeid}")
