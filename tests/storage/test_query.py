"""QueryEngine over the embedded store with real chDB: views per table, address text, empty tables, live writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench.flowgen import T0_MS, addr, flows_batch
from collector.tables import load_tables
from decoders.schema import FLOWS, TABLES
from storage.query import QueryEngine, QueryError, file_vanished, render
from storage.store import ParquetStore


def _mixed_batch() -> pa.RecordBatch:
    """Three flows: two from 192.0.2.1 (IPv4) and one from 2001:db8::1, with exact millisecond times."""
    src = np.array([addr("192.0.2.1"), addr("192.0.2.1"), addr("2001:db8::1")], dtype="S16")
    return FLOWS.to_arrow({
        "time_received": np.array([T0_MS + 1, T0_MS + 2, T0_MS + 999], dtype=np.int64),
        "src_addr": src, "dst_addr": src[::-1].copy(),
        "bytes": np.array([100, 23, 5000], dtype=np.uint64),
        "packets": np.array([1, 2, 3], dtype=np.uint64),
    })


@pytest.fixture
def store(tmp_path: Path) -> ParquetStore:
    return ParquetStore(tmp_path / "data")


@pytest.fixture
def engine(store: ParquetStore):
    with QueryEngine.for_store(store.root) as e:
        yield e


def test_addresses_print_as_text_and_compare_as_ipv6(store: ParquetStore, engine: QueryEngine) -> None:
    store.write(FLOWS, _mixed_batch(), 1)
    r = engine.query("SELECT src_addr, sum(bytes) AS b FROM flows GROUP BY src_addr ORDER BY b")
    assert r.to_pylist() == [{"src_addr": "192.0.2.1", "b": 123}, {"src_addr": "2001:db8::1", "b": 5000}]
    for where in ("src_addr = toIPv6('192.0.2.1')", "src_addr = '::ffff:192.0.2.1'",
                  "isIPAddressInRange(toString(src_addr), '::ffff:192.0.2.0/120')"):
        assert engine.query(f"SELECT count() AS n FROM flows WHERE {where}").column("n").to_pylist() == [2], where
    assert engine.query("SELECT count() AS n FROM flows WHERE src_addr = '2001:db8::1'").column("n")[0].as_py() == 1
    types = engine.query("SELECT toTypeName(src_addr) AS a, toTypeName(time_received) AS t FROM flows LIMIT 1")
    assert types.to_pylist() == [{"a": "IPv6", "t": "DateTime64(3, 'UTC')"}]


def test_timestamps_keep_milliseconds_in_utc(store: ParquetStore, engine: QueryEngine) -> None:
    store.write(FLOWS, _mixed_batch(), 1)
    r = engine.query("SELECT toUnixTimestamp64Milli(max(time_received)) AS ms, max(time_received) AS t FROM flows")
    assert r.column("ms")[0].as_py() == T0_MS + 999
    assert render(r, "csv").splitlines()[1].endswith('"2026-11-25 19:40:00.999"')
    assert json.loads(render(r, "json"))["t"] == "2026-11-25T19:40:00.999Z"


def test_every_registered_table_is_queryable_when_empty(engine: QueryEngine) -> None:
    tables = load_tables()
    assert {"flows", "usage"} <= set(tables)
    shown = set(engine.query("SHOW TABLES").column("name").to_pylist())
    for name, t in tables.items():
        assert name in shown
        r = engine.query(f"SELECT * FROM {name}")
        assert r.num_rows == 0 and r.column_names == t.column_names
        assert engine.query(f"SELECT count() AS n FROM {name}").column("n").to_pylist() == [0]


def test_totals_are_exact_over_many_files_and_hours(store: ParquetStore, engine: QueryEngine) -> None:
    total_bytes = total_rows = 0
    for i in range(6):
        b = flows_batch(20_000, seed=i, span_ms=3 * 3_600_000)
        store.write(FLOWS, b, 100 + i)
        total_bytes += pc.sum(b.column("bytes")).as_py()
        total_rows += b.num_rows
    r = engine.query("SELECT count() AS n, sum(bytes) AS b, uniqExact(batch_id) AS ids FROM flows")
    assert r.to_pylist() == [{"n": total_rows, "b": total_bytes, "ids": 1}]  # batch_id column unset here (0)
    by_src = engine.query("SELECT src_addr, sum(bytes) AS b FROM flows GROUP BY src_addr ORDER BY b DESC LIMIT 10")
    assert all(s.startswith("10.0.") for s in by_src.column("src_addr").to_pylist())


def test_between_view_reads_only_the_range(store: ParquetStore, engine: QueryEngine) -> None:
    for i in range(3):
        store.write(FLOWS, flows_batch(5000, seed=i, span_ms=4 * 3_600_000), 10 + i)
    lo, hi = "2026-11-25 20:15:00", "2026-11-25 21:30:00.5"
    a = engine.query(f"SELECT count() AS n, sum(bytes) AS b FROM flows_between(t0='{lo}', t1='{hi}')")
    b = engine.query(f"SELECT count() AS n, sum(bytes) AS b FROM flows WHERE time_received >= '{lo}' "
                     f"AND time_received < '{hi}'")
    assert a.to_pylist() == b.to_pylist() and a.column("n")[0].as_py() > 0


@pytest.mark.parametrize(("lo_ms", "hi_ms"), [
    (T0_MS + 35 * 60_000, T0_MS + 95 * 60_000 + 1),  # 20:15:00 .. 21:15:00.001, two partitions
    (T0_MS - 3_600_000, T0_MS + 30 * 3_600_000),  # wider than the data, across midnight
    (T0_MS + 10 * 86_400_000, T0_MS + 11 * 86_400_000),  # no data
    (T0_MS, T0_MS + 500 * 86_400_000),  # beyond a year: every partition
])
def test_source_reads_exactly_the_range(store: ParquetStore, engine: QueryEngine, lo_ms: int, hi_ms: int) -> None:
    for i in range(3):
        store.write(FLOWS, flows_batch(5000, seed=i, span_ms=8 * 3_600_000), 10 + i)
    src = engine.source("flows", lo_ms, hi_ms)
    a = engine.query(f"SELECT count() AS n, sum(bytes) AS b FROM {src} WHERE src_addr != toIPv6('10.255.0.1')")
    b = engine.query(f"SELECT count() AS n, sum(bytes) AS b FROM flows WHERE toUnixTimestamp64Milli(time_received) "
                     f">= {lo_ms} AND toUnixTimestamp64Milli(time_received) < {hi_ms}")
    assert a.to_pylist() == b.to_pylist()


def test_partial_and_temporary_files_are_invisible(store: ParquetStore, engine: QueryEngine) -> None:
    store.write(FLOWS, _mixed_batch(), 1)
    pdir = store.files("flows")[0].parent
    (pdir / "00000000000000000002.parquet.12345.tmp").write_bytes(b"PAR1 half written")
    (pdir / "00000000000000000003.parquet.replaced").write_bytes(store.files("flows")[0].read_bytes())
    assert engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 3


def test_queries_while_a_writer_adds_files_see_whole_batches_only(store: ParquetStore, engine: QueryEngine) -> None:
    batch = flows_batch(10_000, span_ms=60_000)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            store.write(FLOWS, batch, 1000 + i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    try:
        for _ in range(15):
            seen.append(engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py())
    finally:
        stop.set()
        t.join()
    assert all(n % 10_000 == 0 for n in seen), seen
    assert seen == sorted(seen)


def test_compaction_crash_is_never_double_counted_by_chdb(store: ParquetStore, engine: QueryEngine) -> None:
    store.compact_after_s = 1
    for i in range(4):
        store.write(FLOWS, flows_batch(1000, seed=i), 50 + i)
    store._crash_after_step = 4  # merged file in place, sources not yet removed
    with pytest.raises(Exception, match="simulated crash"):
        store.compact(now=time.time() + 10)
    assert engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 4000
    ParquetStore(store.root)  # restart: recovery finishes the compaction
    assert engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 4000


def test_two_engines_in_one_process_see_their_own_store(tmp_path: Path) -> None:
    s1, s2 = ParquetStore(tmp_path / "a"), ParquetStore(tmp_path / "b")
    s1.write(FLOWS, flows_batch(10), 1)
    s2.write(FLOWS, flows_batch(20), 1)
    with QueryEngine.for_store(s1.root) as e1, QueryEngine.for_store(s2.root) as e2:
        assert e1.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 10
        assert e2.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 20
    with QueryEngine.for_store(s1.root) as e3:  # the shared session was closed and opens again
        assert e3.query("SELECT count() AS n FROM flows").column("n")[0].as_py() == 10


def test_errors_are_query_errors(engine: QueryEngine) -> None:
    with pytest.raises(QueryError, match="UNKNOWN_IDENTIFIER|Unknown"):
        engine.query("SELECT no_such_column FROM flows")
    with pytest.raises(QueryError):
        engine.query("SELEC 1")
    assert engine.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]  # the engine still works


def test_render_formats() -> None:
    t = pa.table({"addr": ["192.0.2.1", "2001:db8::1"], "bytes": pa.array([5, 123456], pa.uint64())})
    text = render(t, "table")
    assert text.splitlines() == ["addr          bytes", "-----------  ------", "192.0.2.1         5",
                                 "2001:db8::1  123456"]
    assert render(t, "csv") == '"addr","bytes"\n"192.0.2.1",5\n"2001:db8::1",123456\n'
    assert [json.loads(line) for line in render(t, "json").splitlines()] == t.to_pylist()
    with pytest.raises(ValueError):
        render(t, "xml")


def test_flowmed_query_from_another_process_while_this_one_writes(store: ParquetStore, tmp_path: Path) -> None:
    """The daemon holds the store; ``flowmed query`` in another process reads it (the CLI end to end)."""
    store.write(FLOWS, _mixed_batch(), 1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    sql = "SELECT src_addr, sum(bytes) FROM flows GROUP BY src_addr ORDER BY 2 DESC LIMIT 10"
    out = subprocess.run([sys.executable, "-m", "collector.cli", "query", "--set", f"store.path={store.root}", sql,
                          "--format", "csv"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    if out.returncode != 0 and "No module named collector.cli.__main__" in out.stderr:
        pytest.fail("collector.cli is not runnable with -m")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['"src_addr","sum(bytes)"', '"2001:db8::1",5000', '"192.0.2.1",123']
    bad = subprocess.run([sys.executable, "-m", "collector.cli", "query", "--set", f"store.path={store.root}",
                          "SELECT nope FROM flows"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr


def test_for_config_picks_the_store(tmp_path: Path) -> None:
    from collector.config import load

    cfg = load(None, [f"store.path={tmp_path}"])
    with QueryEngine.for_config(cfg) as e:
        assert e.target == "store"
    with pytest.raises(ValueError):
        QueryEngine.for_config(cfg, "mysql")


def test_views_cover_tables_registered_later(engine: QueryEngine) -> None:
    from decoders.schema import Column, table

    name = "test_query_late"
    if name not in TABLES:
        table(name, "Registered after the engine opened.", (Column("at", "timestamp_ms", "When."),),
              time_column="at", order_by=("at",))
    assert engine.query(f"SELECT count() AS n FROM {name}").column("n")[0].as_py() == 0


def test_queries_survive_partitions_dropped_under_them(store: ParquetStore, engine: QueryEngine) -> None:
    """Retention (or compaction) removing files a query has already listed: the engine runs it again.

    The churn is paced so that at most ``steps_per_query`` hours are written and dropped while one query runs: each
    drop can fail at most one attempt, and the engine makes ten, so the outcome never depends on how the threads
    happen to be scheduled (unpaced, a busy machine let the churn fail all ten attempts of one query)."""
    steps_per_query = 3  # (one more may be under way when a query starts): fewer than the engine's ten attempts
    budget = threading.Semaphore(0)
    stop = threading.Event()
    store.set_retention("flows", 1)

    def churn() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            if not budget.acquire(timeout=0.05):
                continue
            i += 1
            store.write(FLOWS, flows_batch(2000, t0_ms=T0_MS + i * 3_600_000, span_ms=1000), i)
            store.apply_retention(now=(T0_MS + i * 3_600_000) / 1000 + 86_400 - 3 * 3600)

    t = threading.Thread(target=churn)
    t.start()
    counts = []
    try:
        for _ in range(40):
            while budget.acquire(blocking=False):  # steps left over from the last query do not carry over
                pass
            for _ in range(steps_per_query):
                budget.release()
            counts.append(engine.query("SELECT count() AS n FROM flows").column("n")[0].as_py())
    finally:
        stop.set()
        t.join()
    assert all(n % 2000 == 0 and n <= 5 * 2000 for n in counts), counts


# ---- ReplacingMergeTree tables collapse re-sent rows on the embedded store, as FINAL does on a server ---------------


def _usage_rows(n: int = 4) -> pa.RecordBatch:
    usage = TABLES["usage"]
    start = T0_MS - T0_MS % 300_000
    return usage.to_arrow({
        "interval_start": np.full(n, start, dtype=np.int64),
        "interval_end": np.full(n, start + 300_000, dtype=np.int64),
        "subscriber_id": np.array([f"sub-{i % 2}" for i in range(n)], dtype=object),
        "direction": np.array(["up", "down"] * (n // 2), dtype=object),
        "traffic_class": np.array(["all"] * n, dtype=object),
        "bytes": np.arange(1, n + 1, dtype=np.uint64) * 1000,
        "packets": np.ones(n, dtype=np.uint64),
        "flows": np.ones(n, dtype=np.uint64),
        "source": np.array(["radius"] * n, dtype=object),
        "exporter": np.array([addr("192.0.2.1")] * n, dtype="S16"),
        "correction": np.zeros(n, dtype=np.uint32),
        "created": np.full(n, T0_MS, dtype=np.int64),
        "row_id": np.arange(100, 100 + n, dtype=np.uint64),
    })


def test_usage_rows_written_twice_count_once(store: ParquetStore, engine: QueryEngine) -> None:
    """A RADIUS journal replay / IPDR crash-window re-send writes the same rows (same row_id) in a second batch."""
    usage = TABLES["usage"]
    rows = _usage_rows()
    store.write(usage, rows, 1)
    store.write(usage, rows, 2)
    assert engine.query("SELECT sum(bytes) AS b FROM usage").column("b").to_pylist() == [10_000]
    assert engine.query("SELECT sum(bytes) AS b FROM usage_raw").column("b").to_pylist() == [20_000]
    by_sub = engine.query("SELECT subscriber_id, sum(bytes) AS b FROM usage WHERE exporter = toIPv6('192.0.2.1') "
                          "GROUP BY subscriber_id ORDER BY subscriber_id")
    assert by_sub.to_pylist() == [{"subscriber_id": "sub-0", "b": 4000}, {"subscriber_id": "sub-1", "b": 6000}]
    start = T0_MS - T0_MS % 300_000
    ranged = engine.query(f"SELECT sum(bytes) AS b FROM {engine.source('usage', start, start + 300_000)}")
    assert ranged.column("b").to_pylist() == [10_000]
    between = engine.query(f"SELECT sum(bytes) AS b FROM usage_between(t0 = fromUnixTimestamp64Milli({start}), "
                           f"t1 = fromUnixTimestamp64Milli({start + 300_000}))")
    assert between.column("b").to_pylist() == [10_000]
    # The columns, their order and types are those of the table (addresses as text).
    whole = engine.query("SELECT * FROM usage ORDER BY row_id")
    assert whole.column_names == usage.column_names and whole.num_rows == 4
    assert whole.column("exporter").to_pylist() == ["192.0.2.1"] * 4


def test_versioned_rows_keep_the_highest_version(store: ParquetStore, engine: QueryEngine) -> None:
    """bindings (ReplacingMergeTree by version): a binding re-written with a higher version reads as that one."""
    bindings = TABLES["bindings"]

    def binding(version: int, valid_to: int) -> pa.RecordBatch:
        return bindings.to_arrow({
            "binding_id": np.array([7], dtype=np.uint64), "version": np.array([version], dtype=np.uint64),
            "subscriber_id": np.array(["alice"], dtype=object), "network": np.array([addr("10.0.0.1")], dtype="S16"),
            "prefix_len": np.array([128], dtype=np.uint8), "valid_from": np.array([T0_MS], dtype=np.int64),
            "valid_to": np.array([valid_to], dtype=np.int64), "source": np.array(["radius"], dtype=object),
            "session_id": np.array(["s1"], dtype=object), "nas": np.array([addr("192.0.2.9")], dtype="S16"),
        })

    store.write(bindings, binding(2, T0_MS + 5000), 1)
    store.write(bindings, binding(1, T0_MS + 9999), 2)
    store.write(bindings, binding(2, T0_MS + 5000), 3)
    r = engine.query("SELECT version, toUnixTimestamp64Milli(valid_to) AS to_ms, network FROM bindings")
    assert r.to_pylist() == [{"version": 2, "to_ms": T0_MS + 5000, "network": "10.0.0.1"}]
    assert engine.query("SELECT count() AS n FROM bindings_raw").column("n").to_pylist() == [3]


def test_a_file_gone_under_a_query_is_told_from_other_errors() -> None:
    """chDB names a vanished file three ways (all retried); a file that cannot be read for another reason is not."""
    gone = "Cannot stat file /s/flows/date=2026-11-26/hour=00/5.parquet: , errno: 2, strerror: No such file or " \
           "directory: While executing File. (CANNOT_STAT)"
    assert file_vanished(gone)
    assert file_vanished("File /s/x.parquet doesn't exist (FILE_DOESNT_EXIST)")
    assert file_vanished("Cannot open file /s/x.parquet, errno: 2 (CANNOT_OPEN_FILE)")
    assert not file_vanished("Cannot stat file /s/x.parquet: , errno: 13, strerror: Permission denied (CANNOT_STAT)")
    assert not file_vanished("Syntax error: failed at position 1 (SYNTAX_ERROR)")
