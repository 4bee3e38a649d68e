"""How the rating job writes: through every output, flushed, and waiting for the spooled (ClickHouse) ones to drain;
the outputs to wait for are picked by their class, never by probing for a ``drain`` attribute."""

from __future__ import annotations

import pyarrow as pa
import pytest

from collector.config import load
from decoders.schema import Table
from rating import tables as rt
from rating.job import RatingJob, _spooled
from storage.clickhouse.output import ClickHouseOutput
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.rating.helpers import HOME_PLAN, assignments, plans


class FakeOutput:
    """An Output that only records what it was given (no spool: nothing to drain)."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def write(self, table: Table, batch: pa.RecordBatch, batch_id: int) -> None:
        self.calls.append(("write", table.name, batch.num_rows))

    def replay(self, table: Table, batch: pa.RecordBatch, batch_id: int) -> bool:
        return True

    def flush(self) -> None:
        self.calls.append(("flush", "", 0))

    def close(self) -> None:
        self.calls.append(("close", "", 0))

    def drain(self, timeout: float) -> bool:  # an attribute the job must not go looking for
        raise AssertionError("the job waits only for spooled outputs")


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


def test_only_clickhouse_outputs_are_spooled(clickhouse) -> None:
    fake = FakeOutput()
    assert _spooled([fake, clickhouse]) == [clickhouse]
    assert _spooled([fake]) == []


def test_write_visible_writes_flushes_and_drains(tmp_path, clickhouse, monkeypatch) -> None:
    fake = FakeOutput()
    drains: list[float] = []
    monkeypatch.setattr(clickhouse, "drain", lambda timeout: drains.append(timeout) or True)
    monkeypatch.setattr(clickhouse, "write", lambda table, batch, batch_id: None)
    job = _job(tmp_path, [fake, clickhouse])
    job._write_visible(rt.RATING_LEASE, pa.RecordBatch.from_pylist([], schema=rt.RATING_LEASE.arrow_schema))
    assert [c[0] for c in fake.calls] == ["write", "flush"]
    assert drains == [120.0]
    job.close()
    assert fake.calls[-1][0] == "flush"  # outputs given by the caller stay open


def test_write_visible_fails_when_the_spool_does_not_drain(tmp_path, clickhouse, monkeypatch) -> None:
    monkeypatch.setattr(clickhouse, "drain", lambda timeout: False)
    monkeypatch.setattr(clickhouse, "write", lambda table, batch, batch_id: None)
    job = _job(tmp_path, [clickhouse])
    with pytest.raises(RuntimeError, match="output clickhouse: rated records not delivered"):
        job._write_visible(rt.RATING_LEASE, pa.RecordBatch.from_pylist([], schema=rt.RATING_LEASE.arrow_schema))
    job.close()
