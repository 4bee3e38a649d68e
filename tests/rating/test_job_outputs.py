"""How the rating job writes: through every output, flushed, then drained (``Output.drain``: the store is readable at
once, ClickHouse once its spool is delivered), so the next run reads what this one wrote."""

from __future__ import annotations

import pyarrow as pa
import pytest

from collector.config import load
from decoders.schema import Table
from rating import tables as rt
from rating.job import RatingJob
from storage.clickhouse.output import ClickHouseOutput
from storage.outputs import Output
from storage.settings import ClickHouseConfig, SpoolConfig
from storage.store import ParquetStore
from tests.rating.helpers import HOME_PLAN, assignments, plans


class FakeOutput:
    """An Output that only records what it was given; ``drained`` is what its ``drain`` answers."""

    name = "fake"

    def __init__(self, drained: bool = True) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.drained = drained

    def write(self, table: Table, batch: pa.RecordBatch, batch_id: int) -> None:
        self.calls.append(("write", table.name, batch.num_rows))

    def replay(self, table: Table, batch: pa.RecordBatch, batch_id: int) -> bool:
        return True

    def flush(self) -> None:
        self.calls.append(("flush", "", 0))

    def drain(self, timeout: float) -> bool:
        self.calls.append(("drain", "", timeout))
        return self.drained

    def close(self) -> None:
        self.calls.append(("close", "", 0))


@pytest.fixture
def clickhouse(tmp_path):
    """A ClickHouse output that never connects (its spool empty, so draining it succeeds at once)."""
    out = ClickHouseOutput(ClickHouseConfig(enabled=True, port=1), SpoolConfig(), tmp_path / "spool", start=False)
    yield out
    out.spool.close()


def _job(tmp_path, outputs) -> RatingJob:
    config = load(None, [f"store.path={tmp_path}"])
    return RatingJob(config, outputs=outputs, plans=plans(HOME_PLAN), assignments=assignments(
        "subscriber_id,plan_id,from\nalice,home,2026-01-01T00:00:00+01:00\n"))


def test_every_output_is_an_output_with_drain(tmp_path, clickhouse) -> None:
    store = ParquetStore(tmp_path / "store")
    for out in (FakeOutput(), clickhouse, store):
        assert isinstance(out, Output)
    assert store.drain(0.0) is True  # nothing spooled: readable once written
    assert clickhouse.drain(0.1) is True  # its spool is empty


def test_write_visible_writes_flushes_and_drains_every_output(tmp_path, clickhouse, monkeypatch) -> None:
    fake = FakeOutput()
    drains: list[float] = []
    monkeypatch.setattr(clickhouse, "drain", lambda timeout: drains.append(timeout) or True)
    monkeypatch.setattr(clickhouse, "write", lambda table, batch, batch_id: None)
    job = _job(tmp_path, [fake, clickhouse])
    job._write_visible(rt.RATING_LEASE, pa.RecordBatch.from_pylist([], schema=rt.RATING_LEASE.arrow_schema))
    assert [c[0] for c in fake.calls] == ["write", "flush", "drain"]
    assert fake.calls[-1][2] == 120.0 and drains == [120.0]
    job.close()
    assert fake.calls[-1][0] == "drain"  # outputs given by the caller stay open


def test_write_visible_fails_when_the_spool_does_not_drain(tmp_path, clickhouse, monkeypatch) -> None:
    monkeypatch.setattr(clickhouse, "drain", lambda timeout: False)
    monkeypatch.setattr(clickhouse, "write", lambda table, batch, batch_id: None)
    job = _job(tmp_path, [clickhouse])
    with pytest.raises(RuntimeError, match="output clickhouse: rated records not delivered"):
        job._write_visible(rt.RATING_LEASE, pa.RecordBatch.from_pylist([], schema=rt.RATING_LEASE.arrow_schema))
    job.close()


def test_write_visible_fails_for_any_output_that_does_not_drain(tmp_path) -> None:
    job = _job(tmp_path, [FakeOutput(), FakeOutput(drained=False)])
    with pytest.raises(RuntimeError, match="output fake: rated records not delivered"):
        job._write_visible(rt.RATING_LEASE, pa.RecordBatch.from_pylist([], schema=rt.RATING_LEASE.arrow_schema))
    job.close()
