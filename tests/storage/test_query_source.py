"""``QueryEngine.source`` forwards to its backend's ``source`` (a ``QueryBackend`` member, never probed for): the
embedded store names the hour partitions of the range, a server compares whole seconds."""

from __future__ import annotations

import pyarrow as pa

from storage.clickhouse.query import ClickHouseBackend
from storage.query import QueryBackend, QueryEngine
from storage.settings import ClickHouseConfig


class FakeBackend:
    """A backend that records the ranges it was asked for."""

    name = "fake"

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int]] = []

    def query(self, sql: str) -> pa.Table:
        raise AssertionError("not queried")

    def source(self, table: str, t0_ms: int, t1_ms: int) -> str:
        self.asked.append((table, t0_ms, t1_ms))
        return "(SELECT 1)"

    def close(self) -> None:
        pass


def test_the_engine_forwards_source_to_its_backend() -> None:
    backend = FakeBackend()
    fake: QueryBackend = backend  # it is one, structurally (mypy checks the protocol)
    assert QueryEngine(fake).source("flows", 1_000, 2_000) == "(SELECT 1)"
    assert backend.asked == [("flows", 1_000, 2_000)]


def test_a_server_source_compares_whole_seconds_floor_and_ceiling() -> None:
    backend = ClickHouseBackend(ClickHouseConfig())  # connects only when it runs a query
    src = QueryEngine(backend).source("flows", 1_500, 3_001)
    assert src == backend.source("flows", 1_500, 3_001)
    assert src == ("(SELECT * FROM `flows` WHERE `time_received` >= toDateTime(1, 'UTC') "
                   "AND `time_received` < toDateTime(4, 'UTC'))")
    exact = backend.source("usage", 60_000, 120_000)
    assert "toDateTime(60, 'UTC')" in exact and "toDateTime(120, 'UTC')" in exact
