"""The sink's memory: buffers bounded by bytes as well as rows, and batches handed on without a copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.flowgen import T0_MS, flows_batch
from decoders.schema import FLOWS, TABLES
from storage.clickhouse.spool import read_ipc, write_ipc
from storage.layout import HOUR_MS
from storage.outputs import buffered, one_batch, with_batch_id
from storage.sink import Sink
from storage.store import ParquetStore
from tests.storage.test_sink import NOTES, Recorder


@pytest.fixture(autouse=True, scope="module")
def _notes_table_registered() -> Iterator[None]:
    TABLES["test_sink_notes"] = NOTES
    yield
    TABLES.pop("test_sink_notes", None)


def _address(arr: pa.Array | pa.ChunkedArray) -> int:
    """Address of the data buffer of a fixed-width column (its only chunk when chunked)."""
    chunk = arr.chunk(0) if isinstance(arr, pa.ChunkedArray) else arr
    return chunk.buffers()[1].address


def test_a_buffer_is_cut_by_bytes_before_it_reaches_flush_rows() -> None:
    rec = Recorder()
    one = flows_batch(1000).get_total_buffer_size()
    sink = Sink([rec], flush_rows=10**9, flush_interval_s=3600, flush_bytes=3 * one)
    try:
        for i in range(7):
            sink.add("flows", flows_batch(1000, seed=i))
        sink.flush()
        assert [b.num_rows for _, b, _ in rec.writes] == [3000, 3000, 1000]  # 2 cut by bytes, the rest by flush
    finally:
        sink.close()
    assert sink.pending_bytes == 0 and sink.pending_rows == 0


def test_pending_bytes_bound_refuses_raw_flows_only() -> None:
    slow = Recorder("slow")
    slow.gate.clear()  # the output hangs (disk stalled)
    one = flows_batch(100).get_total_buffer_size()
    sink = Sink([slow], flush_rows=100, max_pending_rows=10**9, max_pending_bytes=3 * one + one // 2)
    try:
        assert sink.add("flows", flows_batch(100))
        assert slow.entered.wait(10)
        assert sink.add("flows", flows_batch(100, seed=2))
        assert sink.add("flows", flows_batch(100, seed=3))
        assert sink.backlogged and sink.pending_bytes == 3 * one
        assert not sink.add("flows", flows_batch(100, seed=4))  # a fourth would exceed the bytes: refused, counted
        assert sink.dropped_rows == {"flows": 100}
        notes = NOTES.to_arrow({"at": np.arange(100, dtype=np.int64), "text": np.full(100, "x", dtype=object)})
        assert sink.add("test_sink_notes", notes)  # money-like tables are accepted over the limit
    finally:
        slow.gate.set()
        sink.close()
    assert slow.rows == 400 and sink.pending_bytes == 0 and not sink.backlogged


def test_outputs_get_the_buffered_batches_without_a_copy() -> None:
    rec = Recorder()
    batches = [flows_batch(500, seed=i) for i in range(4)]
    sink = Sink([rec], flush_rows=2000)
    for b in batches:
        sink.add("flows", b)
    sink.close()
    (_, got, batch_id), = rec.writes
    assert isinstance(got, pa.Table) and got.num_rows == 2000
    column = got.column("bytes")
    assert [_address(c) for c in column.chunks] == [_address(b.column("bytes")) for b in batches]
    assert pc.all(pc.equal(got.column("batch_id"), pa.scalar(batch_id, pa.uint64()))).as_py()


def test_buffered_and_one_batch() -> None:
    a, b = flows_batch(10), flows_batch(5, seed=1)
    assert buffered(FLOWS, [a]) is a
    table = buffered(FLOWS, [a, b])
    assert isinstance(table, pa.Table) and table.column("bytes").num_chunks == 2
    joined = one_batch(with_batch_id(FLOWS, table, 42))
    assert isinstance(joined, pa.RecordBatch) and joined.num_rows == 15
    assert joined.column("batch_id").to_pylist() == [42] * 15
    assert joined.column("bytes").to_pylist() == a.column("bytes").to_pylist() + b.column("bytes").to_pylist()
    assert one_batch(a) is a
    assert one_batch(table.slice(0, 0)).num_rows == 0


def test_store_writes_a_table_of_chunks_across_hours_in_and_out_of_order(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, compact_after_s=0)
    chunks = [flows_batch(4000, seed=i, t0_ms=T0_MS + i * HOUR_MS // 2, span_ms=HOUR_MS // 2) for i in range(5)]
    in_order = pa.Table.from_batches(chunks)
    shuffled = pa.Table.from_batches(chunks[::-1])  # hours out of order: sorted once, then sliced
    store.write(FLOWS, with_batch_id(FLOWS, in_order, 1), 1)
    store.write(FLOWS, with_batch_id(FLOWS, shuffled, 2), 2)
    for batch_id, source in ((1, in_order), (2, shuffled)):
        files = [f for f in store.files("flows") if int(f.name.split(".")[0]) == batch_id]
        assert len(files) == len({int(t) // HOUR_MS for t in
                                  source.column("time_received").cast(pa.int64()).to_numpy()})
        total = 0
        for f in files:
            t = pq.read_table(f)
            hour = int(f.parent.name.split("=")[1])
            assert set((t.column("time_received").cast(pa.int64()).to_numpy() // HOUR_MS % 24).tolist()) == {hour}
            total += pc.sum(t.column("bytes")).as_py()
        assert total == pc.sum(source.column("bytes")).as_py()


def test_ipc_files_take_a_table_of_chunks(tmp_path: Path) -> None:
    table = pa.Table.from_batches([flows_batch(30, seed=i) for i in range(3)])
    write_ipc(tmp_path / "x.arrow", "flows", 9, table, fsync=False)
    back = read_ipc(tmp_path / "x.arrow", 90)
    assert isinstance(back, pa.RecordBatch) and back.num_rows == 90
    assert back.column("bytes").to_pylist() == table.column("bytes").to_pylist()


def test_byte_settings_reach_the_sink(tmp_path: Path) -> None:
    from collector.config import load
    from storage.factory import build_sink

    cfg = load(None, [f"store.path={tmp_path}", "store.flush_bytes=1234567", "store.max_pending_bytes=7654321"])
    sink = build_sink(cfg)
    try:
        assert (sink.flush_bytes, sink.max_pending_bytes) == (1234567, 7654321)
    finally:
        sink.close()
