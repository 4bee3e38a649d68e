"""ClickHouse output speed against a local Debian clickhouse-server 18.16 started by the test fixture.

    python -m pytest bench/test_clickhouse_bench.py --benchmark-enable --benchmark-columns=mean,stddev,rounds -s

* ``test_columnar_insert_rate``: one 200,000-row flows batch (``output.clickhouse.batch_rows``) converted from Arrow
  to driver columns and inserted (native protocol, ``columnar=True``, numpy): rows/s = rows / mean.
* ``test_write_durable_latency``: ``ClickHouseOutput.write`` of that batch: the time until the batch is durable
  (spooled: Arrow IPC, LZ4, fsync, rename) and, in ``extra_info``, the time until the server has it.
* ``test_storage_bytes_per_row``: bytes per flow row on disk (``system.parts``, after merging), the storage cost
  figure of issue 10.5.

The data is ``bench.flowgen.flows_batch`` (32-column flow rows, 50,000 sources, random destinations and ports,
log-normal byte counts), the same as the embedded store's benchmarks. With ``--benchmark-disable`` (the suite
default) each runs once on a small batch, as a plain test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.flowgen import T0_MS, flows_batch
from decoders.schema import FLOWS
from storage.clickhouse.client import connect, executor, server_caps
from storage.clickhouse.columns import arrow_to_columns
from storage.clickhouse.output import ClickHouseOutput
from storage.clickhouse.schema import SchemaManager
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.fixtures.clickhouse import _clickhouse_root, _clickhouse_servers, clickhouse_server  # noqa: F401

pytestmark = pytest.mark.external


def _enabled(request: pytest.FixtureRequest) -> bool:
    opt = request.config.getoption
    return bool(opt("benchmark_enable", default=False)) or not opt("benchmark_disable", default=True)


def _rows(request) -> int:
    return 200_000 if _enabled(request) else 2_000


def test_columnar_insert_rate(benchmark, request, clickhouse_server) -> None:  # noqa: F811
    n = _rows(request)
    client = connect(ClickHouseConfig(port=clickhouse_server.port))
    caps = server_caps(client)
    SchemaManager(executor(client), caps, "bench_insert").ensure([FLOWS])
    batch = flows_batch(n, sources=50_000)
    names = ", ".join(FLOWS.column_names)
    ids = iter(range(1, 10**6))

    def insert() -> None:
        cols = arrow_to_columns(FLOWS, batch, caps, next(ids))
        client.execute(f"INSERT INTO bench_insert.flows ({names}) VALUES", cols, columnar=True)

    benchmark.pedantic(insert, rounds=5 if _enabled(request) else 1, iterations=1, warmup_rounds=0)
    benchmark.extra_info["rows"] = n
    benchmark.extra_info["rows_per_s"] = round(n / benchmark.stats.stats.mean) if benchmark.stats else None
    t = time.perf_counter()
    arrow_to_columns(FLOWS, batch, caps, 1)
    benchmark.extra_info["convert_s"] = round(time.perf_counter() - t, 4)
    client.disconnect()


def test_write_durable_latency(benchmark, request, clickhouse_server, tmp_path: Path) -> None:  # noqa: F811
    n = _rows(request)
    cfg = ClickHouseConfig(enabled=True, port=clickhouse_server.port, database="bench_latency")
    out = ClickHouseOutput(cfg, SpoolConfig(fsync="always"), tmp_path / "spool", tables=[FLOWS])
    batch = flows_batch(n, sources=50_000)
    ids = iter(range(1, 10**6))
    durable: list[float] = []
    in_server: list[float] = []

    def write() -> None:
        t = time.perf_counter()
        out.write(FLOWS, batch, next(ids))
        durable.append(time.perf_counter() - t)
        assert out.drain(120)
        in_server.append(time.perf_counter() - t)

    benchmark.pedantic(write, rounds=5 if _enabled(request) else 1, iterations=1, warmup_rounds=0)
    out.close()
    benchmark.extra_info["rows"] = n
    benchmark.extra_info["durable_spooled_s"] = round(sum(durable) / len(durable), 4)
    benchmark.extra_info["in_clickhouse_s"] = round(sum(in_server) / len(in_server), 4)
    print(f"\nwrite of {n} rows: durable (spooled) after {benchmark.extra_info['durable_spooled_s']} s, "
          f"in ClickHouse after {benchmark.extra_info['in_clickhouse_s']} s")


def test_storage_bytes_per_row(request, clickhouse_server) -> None:  # noqa: F811
    total = 2_000_000 if _enabled(request) else 20_000
    client = connect(ClickHouseConfig(port=clickhouse_server.port))
    caps = server_caps(client)
    run = executor(client)
    run("DROP DATABASE IF EXISTS bench_storage")
    SchemaManager(run, caps, "bench_storage").ensure([FLOWS])
    names = ", ".join(FLOWS.column_names)
    step = min(total, 200_000)
    for i in range(total // step):
        batch = flows_batch(step, t0_ms=T0_MS + i * 60_000, seed=i + 1, sources=50_000)
        client.execute(f"INSERT INTO bench_storage.flows ({names}) VALUES", arrow_to_columns(FLOWS, batch, caps, i),
                       columnar=True)
    run("OPTIMIZE TABLE bench_storage.flows FINAL")
    (rows, on_disk, parts), = run("SELECT sum(rows), sum(bytes_on_disk), count() FROM system.parts "
                                  "WHERE database = 'bench_storage' AND table = 'flows' AND active")
    per_row = on_disk / rows
    print(f"\n{rows} flow rows in {parts} part(s): {on_disk} bytes on disk, {per_row:.1f} bytes per row "
          f"(server {caps.version_text})")
    assert rows == total and per_row > 0
    client.disconnect()


def test_storage_bytes_per_row_modern_chdb(request, tmp_path: Path) -> None:
    """The same figure with the modern DDL (codecs, LowCardinality, IPv6, DateTime64(3)) in chDB 26.x."""
    import json

    import pyarrow.parquet as pq

    from storage.clickhouse.ddl import ServerCaps
    from storage.query import chdb_session, holding_chdb_session

    total = 2_000_000 if _enabled(request) else 20_000
    db = "bench_chdb_storage"

    def run(sql: str) -> list[tuple]:
        # The process's shared chDB session: chDB has one data path per process (see storage.query).
        with chdb_session() as s:
            text = s.query(sql, "JSONCompact").bytes().decode()
        return [tuple(r) for r in json.loads(text)["data"]] if text.strip() else []

    with holding_chdb_session():
        run(f"DROP DATABASE IF EXISTS {db}")
        run(f"DROP DATABASE IF EXISTS {db}_read")
        try:
            (version,), = run("SELECT version()")
            caps = ServerCaps.from_version(version)
            SchemaManager(run, caps, db).ensure([FLOWS])
            step = min(total, 200_000)
            select = ", ".join(f"CAST(`{c.name}` AS IPv6)" if c.kind == "ip" else f"`{c.name}`"
                               for c in FLOWS.columns)
            for i in range(total // step):
                path = tmp_path / f"part{i}.parquet"
                pq.write_table(pa_table(flows_batch(step, t0_ms=T0_MS + i * 60_000, seed=i + 1, sources=50_000)),
                               path)
                run(f"INSERT INTO {db}.flows SELECT {select} FROM file('{path}', Parquet)")
            run(f"OPTIMIZE TABLE {db}.flows FINAL")
            (rows, on_disk, parts), = run(f"SELECT sum(rows), sum(bytes_on_disk), count() FROM system.parts "
                                          f"WHERE database = '{db}' AND table = 'flows' AND active")
            rows, on_disk = int(rows), int(on_disk)
            print(f"\n{rows} flow rows in {parts} part(s): {on_disk} bytes on disk, {on_disk / rows:.1f} bytes per "
                  f"row (chDB {version}, modern DDL)")
            assert rows == total
        finally:
            run(f"DROP DATABASE IF EXISTS {db}")
            run(f"DROP DATABASE IF EXISTS {db}_read")


def pa_table(batch):
    import pyarrow as pa

    return pa.Table.from_batches([batch])
