"""``flowmed trace`` speed over many compliance records, on the embedded store (chDB over Parquet) and on a local
Debian clickhouse-server 18.16, and the bytes per record on disk of both.

    FLOWMED_TRACE_ROWS=20000000 python -m pytest bench/test_trace_bench.py --benchmark-enable -s

The data (vectorised, seeded): ``FLOWMED_TRACE_ROWS`` ip_detail_records (default 10,000,000 with
``--benchmark-enable``, 50,000 otherwise) spread over ``FLOWMED_TRACE_DAYS`` days (default 7) for 100,000
subscribers behind CGNAT: 64 subscribers share a public address, each holds a 1,000-port block allocated at 00:00
and released at 24:00 every day (two nat_events rows per subscriber and day) and every flow also logs its
translation as an observed nat_events row (``compliance.nat_from_flows``), so nat_events holds about as many rows as
ip_detail_records. One RADIUS binding per subscriber. Rows are written the way the outputs lay them out: hour
partitions in the store, the tables' ORDER BY and day partitions on the server.

Timed: the address query (public address + port + instant: NAT block, binding, flows) at random probes, and the
subscriber query over one day. Each probe's answer is checked (the right subscriber), so a fast wrong answer fails.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from collector.commands.compliance import run_trace, verdict
from decoders.schema import ipv4_mapped
from mediation.compliance.tables import IP_DETAIL_RECORDS, NAT_EVENTS
from mediation.tables import BINDINGS
from storage.clickhouse.client import connect, executor, server_caps
from storage.clickhouse.columns import arrow_to_columns
from storage.clickhouse.query import ClickHouseBackend
from storage.clickhouse.schema import SchemaManager
from storage.query import QueryEngine
from storage.settings import ClickHouseConfig
from storage.store import ParquetStore
from tests.fixtures.clickhouse import _clickhouse_root, _clickhouse_servers, clickhouse_server  # noqa: F401

pytestmark = pytest.mark.external

T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC
DAY = 86_400_000
SUBSCRIBERS = 100_000
SHARE = 64  # subscribers per public address
BLOCK = 1000  # ports per block
PRIVATE_BASE = (100 << 24) | (64 << 16)  # 100.64.0.0/10
PUBLIC_BASE = (203 << 24) | (0 << 16) | (113 << 8)


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def sizes(request) -> tuple[int, int]:
    default = 10_000_000 if _enabled(request) else 50_000
    return int(os.environ.get("FLOWMED_TRACE_ROWS", default)), int(os.environ.get("FLOWMED_TRACE_DAYS", 7))


def private_of(sub: np.ndarray) -> np.ndarray:
    return ipv4_mapped(PRIVATE_BASE + sub.astype(np.uint32))


def public_of(sub: np.ndarray) -> np.ndarray:
    return ipv4_mapped(PUBLIC_BASE + (sub // SHARE).astype(np.uint32))


def block_start(sub: np.ndarray) -> np.ndarray:
    return (1024 + (sub % SHARE) * BLOCK).astype(np.uint16)


def names(sub: np.ndarray) -> pa.Array:
    table = pa.array([f"sub{i:06d}" for i in range(SUBSCRIBERS)], pa.string())
    return table.take(pa.array(sub))


def with_strings(table, columns: dict[str, np.ndarray], strings: dict[str, pa.Array]) -> pa.RecordBatch:
    batch = table.to_arrow(columns)
    return pa.RecordBatch.from_arrays([strings.get(n, batch.column(n)) for n in table.column_names],
                                      schema=table.arrow_schema)


def generate(n: int, days: int, seed: int = 10):
    """Yield (table, batch) per day: ip_detail_records sorted by (subscriber, time); nat_events sorted by (public
    address, port, time); the bindings once."""
    rng = np.random.default_rng(seed)
    subs = np.arange(SUBSCRIBERS)
    yield BINDINGS, with_strings(BINDINGS, {
        "binding_id": subs.astype(np.uint64) + 1, "version": np.ones(SUBSCRIBERS, np.uint64),
        "network": private_of(subs), "prefix_len": np.full(SUBSCRIBERS, 128, np.uint8),
        "valid_from": np.full(SUBSCRIBERS, T0 - DAY), "valid_to": np.full(SUBSCRIBERS, 4_294_967_295_000),
    }, {"subscriber_id": names(subs), "source": pa.array(["radius"] * SUBSCRIBERS),
        "session_id": pa.array([""] * SUBSCRIBERS)})
    per_day = n // days
    for d in range(days):
        day0 = T0 + d * DAY
        sub = rng.integers(0, SUBSCRIBERS, per_day)
        start = day0 + rng.integers(0, DAY - 120_000, per_day)
        order = np.lexsort((start, sub))
        sub, start = sub[order], start[order]
        port = block_start(sub) + rng.integers(0, BLOCK, per_day).astype(np.uint16)
        end = start + rng.integers(0, 120_000, per_day)
        flows = {
            "flow_start": start, "flow_end": end, "protocol": np.full(per_day, 6, np.uint8),
            "src_addr": private_of(sub), "src_port": rng.integers(1024, 65535, per_day).astype(np.uint16),
            "nat_addr": public_of(sub), "nat_port": port, "dst_addr": ipv4_mapped(rng.integers(0, 2**32, per_day)),
            "dst_port": np.full(per_day, 443, np.uint16), "exporter": ipv4_mapped(np.full(per_day, 0xC0000201)),
            "bytes": rng.lognormal(8, 2, per_day).astype(np.uint64) + 1, "packets": np.ones(per_day, np.uint64),
            "binding_id": sub.astype(np.uint64) + 1, "time_received": end + 1000,
        }
        yield IP_DETAIL_RECORDS, with_strings(IP_DETAIL_RECORDS, flows, {
            "subscriber_id": names(sub), "session_id": pa.array([""] * per_day, pa.string()).take(
                pa.array(np.zeros(per_day, np.int64))),
            "binding_source": pa.array(["radius"]).take(pa.array(np.zeros(per_day, np.int64))),
            "status": pa.array(["attributed"]).take(pa.array(np.zeros(per_day, np.int64)))})
        # port blocks: allocate at 00:00, release at 24:00 - 1 s; plus one observed translation per flow
        k = SUBSCRIBERS
        t = np.concatenate([np.full(k, day0), np.full(k, day0 + DAY - 1000), start])
        s = np.concatenate([subs, subs, sub])
        action = np.concatenate([np.full(k, 1, np.uint8), np.full(k, 2, np.uint8), np.full(per_day, 3, np.uint8)])
        first = np.concatenate([block_start(subs), block_start(subs), port])
        last = np.concatenate([block_start(subs) + BLOCK - 1, block_start(subs) + BLOCK - 1, port]).astype(np.uint16)
        pub = public_of(s)
        order = np.lexsort((t, first, pub))
        scope = np.concatenate([np.full(2 * k, 0), np.full(per_day, 1)])[order]
        nat = {"time": t[order], "time_end": np.concatenate([t[:2 * k], end])[order],
               "exporter": ipv4_mapped(np.full(len(t), 0xC0000201)), "nat_event": np.where(action == 1, 16, np.where(
                   action == 2, 17, 0)).astype(np.uint8)[order], "action": action[order],
               "private_addr": private_of(s)[order], "public_addr": pub[order], "public_port_start": first[order],
               "public_port_end": last[order], "port_step": np.ones(len(t), np.uint16), "time_received": t[order]}
        yield NAT_EVENTS, with_strings(NAT_EVENTS, nat, {"scope": pa.array(["block", "flow"]).take(pa.array(scope))})


def probes(n: int, days: int, count: int = 10, seed: int = 3) -> list[tuple[str, int, int, str]]:
    """(public address, port, instant, expected subscriber) at random."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        sub = int(rng.integers(0, SUBSCRIBERS))
        public = PUBLIC_BASE + sub // SHARE
        addr = f"{public >> 24}.{(public >> 16) & 255}.{(public >> 8) & 255}.{public & 255}"
        port = int(block_start(np.array([sub]))[0]) + int(rng.integers(0, BLOCK))
        at = T0 + int(rng.integers(0, days)) * DAY + int(rng.integers(3600_000, DAY - 3600_000))
        out.append((addr, port, at, f"sub{sub:06d}"))
    return out


def timed(engine, probe_list, days) -> dict[str, float]:
    address_s = []
    for addr, port, at, expected in probe_list:
        t = time.perf_counter()
        answer = run_trace(engine, address=addr, port=port, at_ms=at)
        address_s.append(time.perf_counter() - t)
        assert verdict(answer).subscriber_id == expected, answer.to_pylist()
    subscriber_s = []
    for _, _, at, expected in probe_list[:5]:
        day0 = T0 + (at - T0) // DAY * DAY
        t = time.perf_counter()
        rows = run_trace(engine, subscriber=expected, from_ms=day0, to_ms=day0 + DAY)
        subscriber_s.append(time.perf_counter() - t)
        assert set(rows.column("subscriber_id").to_pylist()) <= {expected}
    return {"address_median_s": statistics.median(address_s), "address_max_s": max(address_s),
            "subscriber_day_median_s": statistics.median(subscriber_s)}


@pytest.mark.slow
def test_trace_on_the_store(request, tmp_path_factory) -> None:
    n, days = sizes(request)
    root = Path(os.environ.get("FLOWMED_TRACE_STORE") or tmp_path_factory.mktemp("trace_store"))
    store = ParquetStore(root, compact_after_s=0, recover=False)
    rows: dict[str, int] = {}
    t = time.perf_counter()
    for i, (table, batch) in enumerate(generate(n, days), start=1):
        for off in range(0, batch.num_rows, 2_000_000):
            store.write(table, batch.slice(off, 2_000_000), i * 1000 + off // 2_000_000)
        rows[table.name] = rows.get(table.name, 0) + batch.num_rows
    load_s = time.perf_counter() - t
    store.close()
    with QueryEngine.for_store(root) as engine:
        result = timed(engine, probes(n, days), days)
    on_disk = {name: sum(f.stat().st_size for f in (root / name).rglob("*.parquet")) for name in rows}
    report = {**result, "rows": rows, "load_s": round(load_s, 1),
              "bytes_per_row": {k: round(on_disk[k] / rows[k], 1) for k in rows}}
    print(f"\nstore trace ({n:,} records over {days} days): {report}")
    if _enabled(request):
        assert result["address_median_s"] < 5  # a wrong layout makes it minutes, not seconds


@pytest.mark.slow
def test_trace_on_clickhouse(request, clickhouse_server) -> None:  # noqa: F811
    n, days = sizes(request)
    cfg = ClickHouseConfig(port=clickhouse_server.port, database="bench_trace")
    client = connect(cfg, timeout_s=600)
    caps = server_caps(client)
    client.execute("DROP DATABASE IF EXISTS bench_trace")
    SchemaManager(executor(client), caps, "bench_trace").ensure([IP_DETAIL_RECORDS, NAT_EVENTS, BINDINGS])
    rows: dict[str, int] = {}
    t = time.perf_counter()
    for table, batch in generate(n, days):
        names_sql = ", ".join(table.column_names)
        for off in range(0, batch.num_rows, 1_000_000):
            cols = arrow_to_columns(table, batch.slice(off, 1_000_000), caps)
            client.execute(f"INSERT INTO bench_trace.{table.name} ({names_sql}) VALUES", cols, columnar=True)
        rows[table.name] = rows.get(table.name, 0) + batch.num_rows
    load_s = time.perf_counter() - t
    for name in rows:
        client.execute(f"OPTIMIZE TABLE bench_trace.{name} FINAL")
    parts = dict(client.execute("SELECT table, sum(bytes_on_disk) FROM system.parts WHERE database = 'bench_trace' "
                                "AND active GROUP BY table", settings={"use_numpy": False}))
    client.disconnect()
    engine = QueryEngine(ClickHouseBackend(cfg))
    try:
        result = timed(engine, probes(n, days), days)
    finally:
        engine.close()
    report = {**result, "rows": rows, "load_s": round(load_s, 1),
              "bytes_per_row": {k: round(int(parts[k]) / rows[k], 1) for k in rows}}
    print(f"\nclickhouse 18.16 trace ({n:,} records over {days} days): {report}")
    if _enabled(request):
        assert result["address_median_s"] < 5


def test_compliance_stage_rate(benchmark, request) -> None:
    """``ComplianceStage.process`` on a 200,000-record flows batch (50,000 sources, each bound to a subscriber):
    attribution by source and destination and the ip_detail_records batch; records/s = rows / mean."""
    from bench.flowgen import flows_batch
    from collector.config import load
    from mediation.compliance.stage import ComplianceStage
    from mediation.subscribers.bindings import Bindings, index_from_arrays

    rows = 200_000 if _enabled(request) else 5_000
    batch = flows_batch(rows, sources=50_000)
    src = np.unique(np.frombuffer(batch.column("src_addr").buffers()[1], dtype="S16", count=rows))
    k = len(src)
    index = index_from_arrays(np.arange(k, dtype=np.int32), src, np.full(k, 128), np.zeros(k, np.int64),
                              np.full(k, 4_294_967_295_000))
    stage = ComplianceStage(load(None), Bindings.from_index(index, [f"s{i}" for i in range(k)]))
    out = benchmark.pedantic(stage.process, args=(batch, 0), rounds=5 if _enabled(request) else 1, iterations=1)
    assert out["ip_detail_records"].num_rows == rows
    assert set(out["ip_detail_records"].column("status").to_pylist()) == {"attributed"}
    if benchmark.stats:
        benchmark.extra_info["records_per_s"] = round(rows / benchmark.stats.stats.mean)
        print(f"\ncompliance stage: {benchmark.extra_info['records_per_s']:,} records/s")
