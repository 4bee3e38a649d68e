"""rating/ is the floor above mediation: it imports nothing of the process layer (collector/).

Its modules are imported in turn in a fresh interpreter (:func:`tests.floors.pulled_in`), so an upward import is
named with the module that made it.
"""

from __future__ import annotations

from tests.floors import module_paths, pulled_in, upward_imports


def test_every_module_is_found() -> None:
    assert {"rating", "rating.engine", "rating.job", "rating.plans", "rating.tables"} <= set(module_paths("rating"))


def test_importing_rating_does_not_import_collector() -> None:
    assert upward_imports("rating") == {}


def test_the_probe_sees_an_upward_import() -> None:
    """Not vacuous: the same probe on a collector module reports collector modules."""
    assert "collector.configtree" in pulled_in(["collector.configtree"])["collector.configtree"]
