"""Embedded store speed: Parquet write rate, Sink-to-store rate, and chDB query times over 10 million flows.

    taskset -c 0 python -m pytest bench/test_store_bench.py --benchmark-enable --benchmark-columns=mean,stddev,rounds

(drop ``taskset`` for the query benchmarks to let chDB use both cores, as ``flowmed query`` does.)

The data is ``bench.flowgen.flows_batch``: 32-column flow rows in time order, 4 exporters, 50,000 IPv4 sources,
random destinations and ports, log-normal byte counts. Random ports and destinations compress worse than real
traffic, so the bytes per record reported here are an upper-side figure. ``extra_info`` carries rows and bytes per
row; rows/s = rows / mean round time. With ``--benchmark-disable`` (the test suite default) every benchmark runs once
on a few thousand rows, as a plain test of the same code.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bench.flowgen import T0_MS, flows_batch
from decoders.schema import FLOWS
from storage.layout import HOUR_MS
from storage.outputs import one_batch
from storage.query import QueryEngine
from storage.sink import Sink
from storage.store import ParquetStore


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def _disk_bytes(store: ParquetStore) -> int:
    return sum(f.stat().st_size for f in store.files("flows"))


def test_store_write_rate(benchmark, request, tmp_path: Path) -> None:
    """One 500,000-row batch (one flush at the default store.flush_rows) to a Parquet file, fsync included."""
    n = 500_000 if _enabled(request) else 2000
    store = ParquetStore(tmp_path, compact_after_s=0)
    batch = flows_batch(n, span_ms=60_000, sources=50_000)
    ids = itertools.count(1)
    benchmark.pedantic(lambda: store.write(FLOWS, batch, next(ids)), rounds=10 if _enabled(request) else 1,
                       iterations=1, warmup_rounds=1 if _enabled(request) else 0)
    files = store.files("flows")
    benchmark.extra_info["rows"] = n
    benchmark.extra_info["bytes_per_row"] = round(_disk_bytes(store) / (n * len(files)), 2)
    assert sum(1 for _ in files) == next(ids) - 1


def load_like_batch(n: int, *, t0_ms: int = T0_MS) -> pa.RecordBatch:
    """``n`` flow rows as the daemon stores them under ``python -m bench.load --version 9 --vary``: the load tool's
    pool (2,000 datagrams of 30 records) decoded by ``FlowDecoder``, repeated with the tool's per-pass changes (low
    byte of the source port; every 256 passes the last byte of the destination), received in 2,048-datagram decode
    batches 100 ms apart. Values repeat as in a pool of 60,000 flows: dictionaries fit, unlike ``flows_batch``."""
    from bench.exporter import bulk_datagrams
    from decoders.netflow.decoder import FlowDecoder

    data, template = bulk_datagrams(9, 2000, 30, export_ms=t0_ms)
    decoder = FlowDecoder()
    decoder.decode([(template, "127.0.0.1", t0_ms)])
    pool = decoder.decode([(d, "127.0.0.1", t0_ms) for d in data]).flows
    size = len(pool["src_port"])
    idx = np.arange(n) % size
    passes = np.arange(n) // size
    cols = {k: v[idx] for k, v in pool.items()}
    cols["src_port"] = (cols["src_port"] & 0xFF00) | ((cols["src_port"] + passes) & 0xFF).astype(np.uint16)
    dst = cols["dst_addr"].view(np.uint8).reshape(n, 16)
    dst[:, 15] += (passes >> 8).astype(np.uint8)
    cols["time_received"] = t0_ms + (np.arange(n) // (2048 * 30)) * 100
    return FLOWS.to_arrow(cols)


LAYOUTS = {"default": {}, "dictionary": {"byte_stream_split": False}, "lz4": {"compression": "lz4"},
           "zstd-1": {"compression_level": -1}}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("data", ["load-vary", "flowgen"])
def test_store_write_cpu_per_row(benchmark, request, tmp_path: Path, data: str, layout: str) -> None:
    """CPU per row of writing one 500,000-row flows batch (the sink-writer thread's work per flush) with the
    store's default layout, the dictionary layout (``store.byte_stream_split = false``, as before) and lz4.
    ``extra_info``: ``cpu_us_per_row`` (process CPU, all threads; median of the rounds) and ``bytes_per_row``."""
    n = 500_000 if _enabled(request) else 3000
    batch = load_like_batch(n) if data == "load-vary" else flows_batch(n, span_ms=60_000, sources=50_000)
    store = ParquetStore(tmp_path, compact_after_s=0, **LAYOUTS[layout])
    ids = itertools.count(1)
    cpu: list[float] = []

    def one() -> None:
        c0 = time.process_time()
        store.write(FLOWS, batch, next(ids))
        cpu.append(time.process_time() - c0)

    benchmark.group = f"store write {data}"
    benchmark.pedantic(one, rounds=9 if _enabled(request) else 1, iterations=1,
                       warmup_rounds=1 if _enabled(request) else 0)
    files = store.files("flows")
    assert len(files) == next(ids) - 1
    assert pq.read_table(files[-1]).num_rows == n
    benchmark.extra_info.update(rows=n, cpu_us_per_row=round(sorted(cpu)[len(cpu) // 2] / n * 1e6, 4),
                                bytes_per_row=round(_disk_bytes(store) / (n * len(files)), 2))


def test_sink_to_store_rate(benchmark, request, tmp_path: Path) -> None:
    """2 million rows added in decoder-sized batches (30,000 rows) to a Sink over the store, then flushed."""
    per, count = (30_000, 67) if _enabled(request) else (500, 4)
    batches = [flows_batch(per, seed=i, t0_ms=T0_MS + i * 30, span_ms=30, sources=50_000) for i in range(count)]
    store = ParquetStore(tmp_path, compact_after_s=0)

    def run() -> None:
        sink = Sink([store], flush_rows=500_000, max_pending_rows=10**8)
        for b in batches:
            sink.add("flows", b)
        sink.close()
        assert sink.stats["store"].rows == per * count

    benchmark.pedantic(run, rounds=3 if _enabled(request) else 1, iterations=1)
    benchmark.extra_info["rows"] = per * count


class _Concatenating(ParquetStore):
    """The store as the sink fed it before: the buffered batches concatenated into one record batch first (in the
    writer thread, as the sink did)."""

    def write(self, table, batch, batch_id) -> None:  # type: ignore[no-untyped-def]
        super().write(table, one_batch(batch), batch_id)


class _PoolPeak:
    """Highest Arrow memory-pool allocation above the starting level, sampled every millisecond in a thread."""

    def __init__(self) -> None:
        self.pool = pa.default_memory_pool()
        self.base = self.pool.bytes_allocated()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.pool.bytes_allocated() - self.base)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.parametrize("flush", ["500k-rows", "64MiB"])
@pytest.mark.parametrize("handoff", ["chunks", "concatenated"])
def test_sink_writer_cpu_per_row(benchmark, request, tmp_path: Path, handoff: str, flush: str) -> None:
    """CPU of the sink-writer thread per flow row (its own thread clock: what it takes from the event loop's core)
    for 3 million rows as the daemon adds them (61,440-row decode batches of ``load_like_batch`` rows), the buffered
    batches handed to the store as one table of chunks (now) or concatenated first (before), cut at 500,000 rows or
    at ``store.flush_bytes`` (64 MiB, about 300,000 rows). ``extra_info``: ``writer_cpu_us_per_row`` (median of the
    rounds), ``arrow_peak_mib`` (the writer's Arrow allocations above the buffered batches: sampled every ms),
    ``main_thread_loops_m_per_s`` (pure-Python work the main thread gets done meanwhile: the writer's GIL share),
    ``bytes_per_row`` on disk and ``files``."""
    per, count = (61_440, 49) if _enabled(request) else (1000, 3)
    source = load_like_batch(per * count)
    # independent decode batches (own buffers, not slices of one array), as the decoder hands them over
    batches = [pa.RecordBatch.from_arrays([pa.concat_arrays([c], memory_pool=pa.system_memory_pool())
                                           for c in source.slice(i * per, per).columns], schema=source.schema)
               for i in range(count)]
    del source
    cpu: list[float] = []
    peaks: list[int] = []
    loops: list[float] = []
    stores: list[ParquetStore] = []

    def one() -> None:
        store = (_Concatenating if handoff == "concatenated" else ParquetStore)(
            tmp_path / str(len(stores)), compact_after_s=0)
        stores.append(store)
        sink = Sink([store], flush_rows=500_000 if flush == "500k-rows" else 10**9, max_pending_rows=10**9,
                    flush_bytes=10**12 if flush == "500k-rows" else 64 * 2**20, max_pending_bytes=10**12)
        clock = time.pthread_getcpuclockid(sink._thread.ident)  # type: ignore[arg-type]
        peak = _PoolPeak()
        c0 = time.clock_gettime(clock)
        for b in batches:
            sink.add("flows", b)
        # Until the writer is done, the main thread runs pure-Python work (GIL-bound, as the event loop is): how
        # much it gets done shows how long the writer holds the GIL.
        done = threading.Event()
        threading.Thread(target=lambda: (sink.flush(), done.set()), daemon=True).start()
        n, l0 = 0, time.perf_counter()
        while not done.is_set():
            for _ in range(1000):
                n += 1
        loops.append(n / (time.perf_counter() - l0))
        cpu.append(time.clock_gettime(clock) - c0)
        peaks.append(peak.stop())
        sink.close()

    benchmark.group = "sink writer thread"
    benchmark.pedantic(one, rounds=5 if _enabled(request) else 1, iterations=1,
                       warmup_rounds=1 if _enabled(request) else 0)
    rows = per * count
    files = stores[-1].files("flows")
    assert sum(pq.read_metadata(f).num_rows for f in files) == rows
    benchmark.extra_info.update(rows=rows, writer_cpu_us_per_row=round(sorted(cpu)[len(cpu) // 2] / rows * 1e6, 4),
                                arrow_peak_mib=round(max(peaks) / 2**20, 1), files=len(files),
                                main_thread_loops_m_per_s=round(sorted(loops)[len(loops) // 2] / 1e6, 2),
                                bytes_per_row=round(sum(f.stat().st_size for f in files) / rows, 2))


@pytest.fixture(scope="module")
def big_store(request, tmp_path_factory) -> ParquetStore:
    """10 million flows over 24 hours, written in 500,000-row batches and compacted (one file per hour)."""
    per, count = (500_000, 20) if _enabled(request) else (1000, 4)
    store = ParquetStore(tmp_path_factory.mktemp("store"), compact_after_s=1, compact_target_bytes=2**40)
    for i in range(count):
        batch = flows_batch(per, seed=i, t0_ms=T0_MS - T0_MS % HOUR_MS, span_ms=24 * HOUR_MS, sources=50_000)
        store.write(FLOWS, batch, i + 1)
    store.compact(now=time.time() + 10)
    assert len(store.files("flows")) == 24
    store.bench_rows = per * count  # type: ignore[attr-defined]
    return store


def test_query_group_by_10m(benchmark, big_store: ParquetStore) -> None:
    """``SELECT src_addr, sum(bytes) FROM flows GROUP BY src_addr ORDER BY 2 DESC LIMIT 10`` over 10M rows."""
    with QueryEngine.for_store(big_store.root) as engine:
        sql = "SELECT src_addr, sum(bytes) AS b, count() AS n FROM flows GROUP BY src_addr ORDER BY b DESC LIMIT 10"
        result = benchmark.pedantic(lambda: engine.query(sql), rounds=5, iterations=1, warmup_rounds=1)
        total = engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py()
    assert total == big_store.bench_rows and result.num_rows == 10  # type: ignore[attr-defined]
    assert pc.min(result.column("n")).as_py() > 0
    benchmark.extra_info["rows"] = total
    benchmark.extra_info["bytes_per_row"] = round(_disk_bytes(big_store) / total, 2)


@pytest.mark.parametrize("view", ["flows", "flows_between"])
def test_query_address_in_one_hour(benchmark, big_store: ParquetStore, view: str) -> None:
    """Who talked from 10.0.0.7 in one hour: the plain view with a time filter vs the partition-pruning view."""
    lo, hi = "2026-11-26 03:00:00", "2026-11-26 04:00:00"
    where = "src_addr = toIPv6('10.0.0.7')"
    if view == "flows":
        sql = f"SELECT count() AS n FROM flows WHERE {where} AND time_received >= '{lo}' AND time_received < '{hi}'"
    else:
        sql = f"SELECT count() AS n FROM flows_between(t0='{lo}', t1='{hi}') WHERE {where}"
    with QueryEngine.for_store(big_store.root) as engine:
        result = benchmark.pedantic(lambda: engine.query(sql), rounds=5, iterations=1, warmup_rounds=1)
    assert result.num_rows == 1


@pytest.fixture(scope="module")
def long_store(request, tmp_path_factory) -> ParquetStore:
    """2,000 hourly partitions (83 days) of 5,000 flows each: 10 million rows in 2,000 files (as after compaction)."""
    from storage.layout import file_name, partition_of

    hours, per = (2000, 5000) if _enabled(request) else (30, 100)
    store = ParquetStore(tmp_path_factory.mktemp("long"), compact_after_s=0)
    start = T0_MS - T0_MS % HOUR_MS
    for h in range(hours):
        # Written directly (no fsync per file) to build the fixture quickly; the layout is the store's.
        batch = flows_batch(per, seed=h, t0_ms=start + h * HOUR_MS, span_ms=HOUR_MS, sources=50_000)
        pdir = store.root / "flows" / partition_of(start // HOUR_MS + h)
        pdir.mkdir(parents=True)
        pq.write_table(pa.Table.from_batches([batch]), pdir / file_name(h + 1), compression="zstd")
    store.bench_hours = hours  # type: ignore[attr-defined]
    return store


@pytest.mark.parametrize("view", ["flows", "flows_between", "source"])
def test_query_one_hour_of_2000_partitions(benchmark, long_store: ParquetStore, view: str) -> None:
    """Flows of one source address in one hour out of 2,000 (issue 10's lookups): pruning by partition pays."""
    lo, hi = "2026-12-01 03:00:00", "2026-12-01 04:00:00"
    where = "src_addr = toIPv6('10.0.0.7')"
    with QueryEngine.for_store(long_store.root) as engine:
        if view == "flows":
            sql = f"SELECT count() AS n FROM flows WHERE {where} AND time_received >= '{lo}' " \
                  f"AND time_received < '{hi}'"
        elif view == "flows_between":
            sql = f"SELECT count() AS n FROM flows_between(t0='{lo}', t1='{hi}') WHERE {where}"
        else:
            lo_ms = 1_796_094_000_000  # 2026-12-01T03:00:00Z
            sql = f"SELECT count() AS n FROM {engine.source('flows', lo_ms, lo_ms + HOUR_MS)} WHERE {where}"
        result = benchmark.pedantic(lambda: engine.query(sql), rounds=5, iterations=1, warmup_rounds=1)
        files = engine.query(f"SELECT uniqExact(_path) AS f FROM file('{long_store.glob('flows')}', Parquet) "
                             f"WHERE time_received >= '{lo}' AND time_received < '{hi}'")
    assert result.num_rows == 1
    benchmark.extra_info["files_in_range"] = files.column("f")[0].as_py()
