"""``run_trace`` refuses a trace it cannot ask for (found by mypy: ``int(None)`` or a query for subscriber None)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from collector.commands.compliance import run_trace
from storage.query import QueryEngine


class _NoEngine:
    """An engine that must not be asked: the arguments are refused before any query."""

    def query(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("queried")

    def source(self, *args: object) -> None:
        raise AssertionError("queried")


NO_ENGINE = cast(QueryEngine, _NoEngine())


def test_an_address_trace_needs_its_instant() -> None:
    with pytest.raises(ValueError, match="at_ms"):
        run_trace(NO_ENGINE, address="203.0.113.7", port=40112)


@pytest.mark.parametrize("kwargs", [{"from_ms": 0, "to_ms": 1}, {"subscriber": "alice", "to_ms": 1},
                                    {"subscriber": "alice", "from_ms": 0}])
def test_a_subscriber_trace_needs_the_subscriber_and_its_period(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="subscriber, from_ms and to_ms"):
        run_trace(NO_ENGINE, **kwargs)
