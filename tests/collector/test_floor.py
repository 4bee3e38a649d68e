"""The floors together: no import circle across decoders/, storage/, mediation/, rating/ and collector/, and no import
from a lower floor to a higher one anywhere in their source (imports inside functions included).

The pattern of tests/storage/test_floor.py, over every package: the syntax trees of every module are walked (a lazy
import closes a circle as surely as one at the top) and the graph of module imports is searched for circles.
"""

from __future__ import annotations

import pytest

from tests.floors import FLOORS, circles, import_graph, module_paths

MODULES = module_paths(*FLOORS)


def _graph() -> dict[str, set[str]]:
    return import_graph(*FLOORS)


def _floor(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def test_every_floor_is_found() -> None:
    assert {"decoders.schema", "storage.factory", "mediation.mediator", "rating.job", "collector.server",
            "collector.components", "collector.pipeline"} <= set(MODULES)


def test_no_import_circles_across_the_floors() -> None:
    assert circles(_graph()) == []


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
    assert ["collector.components", "collector.server", "collector.components"] in circles(graph)
    assert _floor("storage.sink") < _floor("collector.server")
