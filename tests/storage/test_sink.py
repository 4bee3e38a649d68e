"""Sink: per-table batching by rows and time, one writer thread, batch ids, retries, bounds, and the real store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.flowgen import flows_batch
from decoders.schema import FLOWS, TABLES, Column, table
from storage.outputs import BatchIdGenerator, Output, batch_id_time_ms
from storage.sink import Sink
from storage.store import ParquetStore

NOTES = TABLES.get("test_sink_notes") or table(
    "test_sink_notes", "Test-only table without a batch_id column.",
    (Column("at", "timestamp_ms", "When."), Column("text", "string", "What.")), time_column="at", order_by=("at",))
TABLES.pop("test_sink_notes")  # registered only while this module's tests run: others iterate every table


@pytest.fixture(autouse=True, scope="module")
def _notes_table_registered() -> Iterator[None]:
    TABLES["test_sink_notes"] = NOTES
    yield
    TABLES.pop("test_sink_notes", None)


class Recorder:
    """An Output that records what it is given; can fail the first N writes or block until released."""

    def __init__(self, name: str = "rec", fail_first: int = 0, always_fail: bool = False) -> None:
        self.name = name
        self.writes: list[tuple[str, pa.RecordBatch, int]] = []
        self.attempts: list[int] = []
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.flushes = 0
        self.closed = False

    def write(self, table, batch, batch_id) -> None:
        self.entered.set()
        self.gate.wait()
        self.attempts.append(batch_id)
        if self.always_fail or len(self.attempts) <= self.fail_first:
            raise OSError("disk on fire")
        self.writes.append((table.name, batch, batch_id))

    def replay(self, table, batch, batch_id) -> bool:
        """Takes a replayed batch unless it holds that batch id already."""
        if any(b == batch_id for _, _, b in self.writes):
            return False
        self.write(table, batch, batch_id)
        return True

    def flush(self) -> None:
        self.flushes += 1

    def drain(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    @property
    def rows(self) -> int:
        return sum(b.num_rows for _, b, _ in self.writes)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_recorder_is_an_output() -> None:
    assert isinstance(Recorder(), Output)


def test_outputs_are_known_by_their_name() -> None:
    """Stats, hooks and logs use ``Output.name`` (a protocol member, not probed for)."""
    a, b = Recorder("a", fail_first=1), Recorder("b")
    errors: list[str] = []
    sink = Sink([a, b], flush_rows=1, retry_backoff_s=0.0)
    sink.on_error = lambda name, table, exc: errors.append(name)
    sink.add("flows", flows_batch(1))
    sink.close()
    assert set(sink.stats) == {"a", "b"}
    assert sink.stats["a"].errors == 1 and sink.stats["b"].errors == 0
    assert errors == ["a"]


def test_batches_are_cut_by_rows_and_by_time() -> None:
    clock = FakeClock()
    rec = Recorder()
    sink = Sink([rec], flush_rows=1000, flush_interval_s=5.0, clock=clock)
    try:
        sink.add("flows", flows_batch(400, seed=1))
        sink.add("flows", flows_batch(400, seed=2))
        clock.t += 4.9
        sink.maybe_flush()
        assert rec.writes == [] and sink.batches_cut == 0  # neither 1000 rows nor 5 s yet
        sink.add("flows", flows_batch(300, seed=3))  # 1100 rows: cut now
        assert sink.batches_cut == 1
        sink.add("flows", flows_batch(10, seed=4))
        clock.t += 5.0
        sink.maybe_flush()  # the 10 rows are 5 s old
        assert sink.batches_cut == 2
        sink.flush()
        assert [b.num_rows for _, b, _ in rec.writes] == [1100, 10]
        assert rec.flushes >= 1
    finally:
        sink.close()
    assert rec.closed


def test_each_table_is_buffered_on_its_own() -> None:
    rec = Recorder()
    sink = Sink([rec], flush_rows=100)
    notes = NOTES.to_arrow({"at": pa.array([1, 2], pa.int64()).to_numpy(), "text": pa.array(["a", "b"]).to_numpy(
        zero_copy_only=False)})
    sink.add("flows", flows_batch(50))
    sink.add("test_sink_notes", notes)
    sink.add("flows", flows_batch(60, seed=5))  # flows reaches 110: only flows is cut
    sink.flush()  # then notes
    sink.close()
    assert [(t, b.num_rows) for t, b, _ in rec.writes] == [("flows", 110), ("test_sink_notes", 2)]
    assert rec.writes[1][1].column("text").to_pylist() == ["a", "b"]


def test_batch_id_is_stamped_unique_and_shared_by_outputs() -> None:
    a, b = Recorder("a"), Recorder("b")
    sink = Sink([a, b], flush_rows=100, worker=7)
    for i in range(5):
        sink.add("flows", flows_batch(100, seed=i))
    sink.close()
    ids = [bid for _, _, bid in a.writes]
    assert ids == [bid for _, _, bid in b.writes]
    assert ids == sorted(set(ids)) and len(ids) == 5
    for _, batch, bid in a.writes:
        assert pc.all(pc.equal(batch.column("batch_id"), pa.scalar(bid, pa.uint64()))).as_py()
        assert (bid >> 14) & 0xFF == 7  # the worker bits


def test_failed_write_is_retried_with_the_same_id_and_others_unaffected() -> None:
    flaky, good = Recorder("flaky", fail_first=2), Recorder("good")
    errors = []
    sink = Sink([flaky, good], flush_rows=10, retries=3, retry_backoff_s=0.0,
                on_error=lambda out, tbl, exc: errors.append((out, tbl, str(exc))))
    sink.add("flows", flows_batch(10))
    sink.close()
    assert len(set(flaky.attempts)) == 1 and len(flaky.attempts) == 3  # two failures, then success, same id
    assert flaky.rows == 10 and good.rows == 10
    assert sink.stats["flaky"].errors == 2 and sink.stats["flaky"].rows == 10
    assert sink.stats["flaky"].last_error == "OSError: disk on fire"
    assert errors == [("flaky", "flows", "disk on fire")] * 2


def test_output_that_keeps_failing_drops_the_batch_counted() -> None:
    broken, good = Recorder("broken", always_fail=True), Recorder("good")
    writes = []
    sink = Sink([broken, good], flush_rows=10, retries=1, retry_backoff_s=0.0,
                on_write=lambda out, tbl, rows, dt: writes.append((out, tbl, rows)))
    sink.add("flows", flows_batch(10))
    sink.add("flows", flows_batch(10, seed=3))
    sink.close()
    st = sink.stats["broken"]
    assert (st.errors, st.dropped_batches, st.dropped_rows, st.rows) == (4, 2, 20, 0)
    assert good.rows == 20 and sink.stats["good"].rows_by_table == {"flows": 20}
    assert writes == [("good", "flows", 10)] * 2


def test_add_never_waits_for_a_slow_output_and_is_bounded() -> None:
    slow = Recorder("slow")
    slow.gate.clear()  # the output hangs (disk stalled)
    sink = Sink([slow], flush_rows=100, max_pending_rows=350)
    try:
        assert sink.add("flows", flows_batch(100))  # cut, the writer takes it and hangs
        assert slow.entered.wait(10)
        assert sink.add("flows", flows_batch(100, seed=2))
        assert sink.add("flows", flows_batch(100, seed=3))
        assert sink.backlogged
        assert not sink.add("flows", flows_batch(100, seed=4))  # would exceed 350 pending rows: refused, counted
        assert sink.dropped_rows == {"flows": 100}
        assert sink.pending_rows == 300
        notes = NOTES.to_arrow({"at": np.arange(100, dtype=np.int64), "text": np.full(100, "x", dtype=object)})
        assert sink.add("test_sink_notes", notes)  # not droppable (think usage): accepted over the limit
        assert sink.pending_rows == 400
    finally:
        slow.gate.set()
        sink.close()
    assert slow.rows == 400 and sink.pending_rows == 0 and not sink.backlogged
    assert sink.rows_in == {"flows": 300, "test_sink_notes": 100}


def test_bad_input_from_the_caller_is_an_error() -> None:
    sink = Sink([Recorder()])
    try:
        with pytest.raises(KeyError):
            sink.add("no_such_table", flows_batch(1))
        with pytest.raises(ValueError):
            sink.add("test_sink_notes", flows_batch(1))
    finally:
        sink.close()
    with pytest.raises(RuntimeError):
        sink.add("flows", flows_batch(1))


def test_writer_survives_an_unexpected_exception() -> None:
    class Exploding(Recorder):
        def write(self, table, batch, batch_id) -> None:
            if batch.num_rows == 1:
                raise MemoryError("boom")  # not an I/O error: still costs only this batch
            super().write(table, batch, batch_id)

    out = Exploding()
    sink = Sink([out], flush_rows=1, retries=0)
    sink.add("flows", flows_batch(1))
    sink.add("flows", flows_batch(5))
    sink.close()
    assert out.rows == 5
    assert sink.stats["rec"].dropped_rows == 1


def test_sink_into_the_real_store(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    sink = Sink([store], flush_rows=20_000)
    total = 0
    for i in range(7):
        b = flows_batch(7000, seed=i, span_ms=3_600_000)
        total += pc.sum(b.column("bytes")).as_py()
        sink.add("flows", b)
    sink.close()
    files = store.files("flows")
    rows = 0
    got = 0
    for f in files:
        t = pq.read_table(f)
        bid = int(f.name.split(".")[0])
        assert t.column("batch_id").unique().to_pylist() == [bid]  # the column carries the file's batch id
        rows += t.num_rows
        got += pc.sum(t.column("bytes")).as_py()
    assert rows == 49_000 and got == total
    assert sink.stats["store"].rows == 49_000


def test_batch_id_generator_monotonic_and_unique_across_workers() -> None:
    t = [1_800_000_000.0]
    gen0, gen1 = BatchIdGenerator(0, clock=lambda: t[0]), BatchIdGenerator(1, clock=lambda: t[0])
    ids0 = [gen0.next() for _ in range(20_000)]  # more than the 14-bit sequence of one millisecond
    ids1 = [gen1.next() for _ in range(100)]
    assert ids0 == sorted(set(ids0)) and not set(ids0) & set(ids1)
    assert all((i >> 14) & 0xFF == 0 for i in ids0)
    t[0] -= 3600  # the wall clock steps back an hour: ids still increase
    later = gen0.next()
    assert later > ids0[-1]
    assert abs(batch_id_time_ms(ids1[0]) - 1_800_000_000_000) < 1
    with pytest.raises(ValueError):
        BatchIdGenerator(256)


def test_flows_table_has_a_batch_id_column() -> None:
    assert FLOWS.column("batch_id").kind == "u64"
