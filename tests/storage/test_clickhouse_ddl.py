"""DDL from the schema: executed on a real clickhouse-server 18.16 and, with the modern features, in chDB (26.x)."""

from __future__ import annotations

import json
import re
import time

import pytest

from collector.tables import load_tables
from decoders.schema import Column, Table
from storage.clickhouse.client import connect, executor, server_caps
from storage.clickhouse.ddl import (
    LEGACY,
    MODERN,
    ServerCaps,
    column_type,
    create_table_sql,
    quote_ident,
)
from storage.clickhouse.schema import SchemaManager
from storage.query import QueryEngine, chdb_session, holding_chdb_session

pytestmark = pytest.mark.external


def _old_table() -> Table:
    return Table("mig_t", "migration test", (
        Column("t", "timestamp_ms", "time"),
        Column("exporter", "ip", "exporter", low_cardinality=True),
        Column("n", "u32", "a number"),
    ), time_column="t", order_by=("t", "exporter"))


def _new_table() -> Table:
    return Table("mig_t", "migration test, next version", (
        Column("t", "timestamp_ms", "time"),
        Column("exporter", "ip", "exporter", low_cardinality=True),
        Column("n", "u64", "a number, now wider"),  # type change: reported, not migrated
        Column("added", "u64", "a new column", codec="T64, LZ4"),
        Column("label", "string", "another new column", low_cardinality=True),
    ), time_column="t", order_by=("t", "exporter"))


def test_caps_from_version():
    assert not LEGACY.modern and not LEGACY.ttl and not LEGACY.ipv6 and not LEGACY.insert_deduplication_token
    assert MODERN.modern and MODERN.insert_deduplication_token and MODERN.non_replicated_deduplication_window
    assert ServerCaps.from_version("26.9.2.1").version == (26, 9, 2, 1)
    assert ServerCaps.from_version("19.3.4").ipv6 and not ServerCaps.from_version("19.3.4").ttl
    flows = load_tables()["flows"]
    assert column_type(flows.column("exporter"), LEGACY) == "FixedString(16)"
    assert column_type(flows.column("exporter"), MODERN) == "LowCardinality(IPv6)"
    assert column_type(flows.column("time_received"), LEGACY) == "DateTime('UTC')"
    legacy_sql = create_table_sql(flows, LEGACY, "db", retention_days=30)
    assert "CODEC" not in legacy_sql and "TTL" not in legacy_sql and "LowCardinality" not in legacy_sql
    modern_sql = create_table_sql(flows, MODERN, "db", retention_days=30)
    assert "CODEC(DoubleDelta, LZ4)" in modern_sql and "ttl_only_drop_parts = 1" in modern_sql
    assert "PARTITION BY toYYYYMMDD(`time_received`)" in modern_sql
    assert "ORDER BY (`time_received`, `exporter`)" in modern_sql
    with pytest.raises(ValueError):
        quote_ident("flows; DROP TABLE x")


# ---- 18.16 -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def legacy(clickhouse_server, request):
    from storage.settings import ClickHouseConfig

    db = "ddl_" + re.sub(r"\W", "_", request.node.name)[-40:]
    client = connect(ClickHouseConfig(port=clickhouse_server.port))
    run = executor(client)
    run(f"DROP DATABASE IF EXISTS {db}")
    run(f"DROP DATABASE IF EXISTS {db}_read")
    yield clickhouse_server, client, run, db
    client.disconnect()


def test_all_tables_on_18_16_idempotent_with_read_views(legacy):
    server, client, run, db = legacy
    caps = server_caps(client)
    assert caps.version[:2] == (18, 16) and not caps.modern
    tables = load_tables()
    manager = SchemaManager(run, caps, db, retention_days={"flows": 30})
    first = manager.ensure(tables.values())
    assert sorted(first.created) == sorted(f"{db}.{t}" for t in tables)
    second = manager.ensure(tables.values())
    assert second.lines() == []  # nothing to do the second time
    # The columns and types on the server are the wanted ones, seen through the reference client.
    got = server.query(f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'flows' "
                       "FORMAT TSVRaw")
    expected = "".join(f"{c.name}\t{column_type(c, caps)}\n" for c in tables["flows"].columns)
    assert got == expected
    engine = server.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'flows'")
    assert "PARTITION BY toYYYYMMDD(time_received) ORDER BY (time_received, exporter)" in engine
    for name, t in tables.items():
        if t.engine == "ReplacingMergeTree":
            full = server.query(f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = '{name}'")
            assert full.startswith("ReplacingMergeTree")
    # The read view shows addresses as text.
    server.query(f"INSERT INTO {db}.flows (time_received, src_addr) VALUES (1764000000, "
                 "IPv6StringToNum('::ffff:192.0.2.10'))")
    assert server.query(f"SELECT src_addr, toTypeName(src_addr) FROM {db}_read.flows") == \
        "::ffff:192.0.2.10\tString\n"


def test_migration_adds_columns_and_reports_type_changes_on_18_16(legacy):
    server, client, run, db = legacy
    caps = server_caps(client)
    SchemaManager(run, caps, db).ensure([_old_table()])
    server.query(f"INSERT INTO {db}.mig_t (t, n) VALUES (1764000000, 7)")
    report = SchemaManager(run, caps, db).ensure([_new_table()])
    assert report.added_columns == [f"{db}.mig_t.added UInt64", f"{db}.mig_t.label String"]
    assert report.type_mismatches == [f"{db}.mig_t.n: server has UInt32, flowmed wants UInt64"]
    assert any("TYPE MISMATCH" in line for line in report.lines())
    # Old rows are kept, new columns read as defaults.
    assert server.query(f"SELECT n, added, label FROM {db}.mig_t") == "7\t0\t\n"
    assert SchemaManager(run, caps, db).ensure([_new_table()]).added_columns == []


def test_retention_drops_only_whole_expired_partitions_on_18_16(legacy):
    server, client, run, db = legacy
    caps = server_caps(client)
    flows = load_tables()["flows"]
    manager = SchemaManager(run, caps, db, retention_days={"flows": 10})
    manager.ensure([flows])
    now_s = int(time.time())
    days = [40, 11, 10, 9, 0]
    values = ", ".join(f"({now_s - d * 86400}, {d})" for d in days)
    server.query(f"INSERT INTO {db}.flows (time_received, bytes) VALUES {values}")
    dropped = manager.drop_expired_partitions([flows], now_s * 1000)
    # Days 40 and 11 are whole partitions older than 10 days; day 10's partition still holds younger rows.
    assert len(dropped) == 2
    assert server.query(f"SELECT arraySort(groupArray(bytes)) FROM {db}.flows") == "[0,9,10]\n"
    assert manager.drop_expired_partitions([flows], now_s * 1000) == []


# ---- modern, in chDB -------------------------------------------------------------------------------------------------
@pytest.fixture
def chdb_run():
    """SQL in the process's shared chDB session (chDB has one data path per process: a private
    ``Session(path)`` would fail whenever a query engine was opened earlier in the same process)."""
    with holding_chdb_session():

        def run(sql: str) -> list[tuple]:
            with chdb_session() as s:
                out = s.query(sql, "JSONCompact")
            text = out.bytes().decode() if hasattr(out, "bytes") else str(out)
            return [tuple(r) for r in json.loads(text)["data"]] if text.strip() else []

        run("DROP DATABASE IF EXISTS fm")
        run("DROP DATABASE IF EXISTS fm_read")
        yield run
        run("DROP DATABASE IF EXISTS fm")
        run("DROP DATABASE IF EXISTS fm_read")


def test_chdb_ddl_coexists_with_a_query_engine(tmp_path, chdb_run):
    """A query engine open in the same process (shared in-memory session) does not break the DDL tests."""
    with QueryEngine.for_store(tmp_path / "store") as engine:
        assert engine.query("SELECT count() AS n FROM flows").column("n").to_pylist() == [0]
        (version,), = chdb_run("SELECT version()")
        SchemaManager(chdb_run, ServerCaps.from_version(version), "fm").ensure([load_tables()["flows"]])
        assert chdb_run("SELECT count() FROM fm.flows") == [(0,)]


def test_modern_ddl_in_chdb(chdb_run):
    (version,), = chdb_run("SELECT version()")
    caps = ServerCaps.from_version(version)
    assert caps.modern, version
    tables = load_tables()
    manager = SchemaManager(chdb_run, caps, "fm", retention_days={"flows": 30})
    assert sorted(manager.ensure(tables.values()).created) == sorted(f"fm.{t}" for t in tables)
    assert manager.ensure(tables.values()).lines() == []
    cols = dict(chdb_run("SELECT name, type FROM system.columns WHERE database = 'fm' AND table = 'flows'"))
    assert cols["src_addr"] == "IPv6" and cols["exporter"] == "LowCardinality(IPv6)"
    assert cols["time_received"] == "DateTime64(3, 'UTC')"
    codecs = dict(chdb_run("SELECT name, compression_codec FROM system.columns WHERE database = 'fm' "
                           "AND table = 'flows'"))
    assert codecs["bytes"] == "CODEC(T64, LZ4)" and codecs["src_addr"] == "CODEC(ZSTD(1))"
    (engine_full,), = chdb_run("SELECT engine_full FROM system.tables WHERE database = 'fm' AND name = 'flows'")
    assert "TTL toDateTime(time_received) + toIntervalDay(30)" in engine_full
    assert "ttl_only_drop_parts = 1" in engine_full
    # Rows go in and come out through the read view with text-capable IPv6 addresses.
    chdb_run("INSERT INTO fm.flows (time_received, src_addr, bytes) VALUES (now64(3), '::ffff:192.0.2.1', 5)")
    assert chdb_run("SELECT toString(src_addr), bytes FROM fm_read.flows") == [("::ffff:192.0.2.1", 5)]
    # Retention changed: the TTL follows; removed: the TTL goes. drop_expired_partitions leaves it to the TTL.
    report = SchemaManager(chdb_run, caps, "fm", retention_days={"flows": 7}).ensure([tables["flows"]])
    assert report.ttl_changed == ["fm.flows -> 7 days"]
    (engine_full,), = chdb_run("SELECT engine_full FROM system.tables WHERE database = 'fm' AND name = 'flows'")
    assert "toIntervalDay(7)" in engine_full
    assert SchemaManager(chdb_run, caps, "fm").drop_expired_partitions([tables["flows"]], 0) == []


def test_modern_migration_in_chdb(chdb_run):
    (version,), = chdb_run("SELECT version()")
    caps = ServerCaps.from_version(version)
    SchemaManager(chdb_run, caps, "fm").ensure([_old_table()])
    report = SchemaManager(chdb_run, caps, "fm").ensure([_new_table()])
    assert report.added_columns == ["fm.mig_t.added UInt64", "fm.mig_t.label LowCardinality(String)"]
    assert report.type_mismatches == ["fm.mig_t.n: server has UInt32, flowmed wants UInt64"]
    codecs = dict(chdb_run("SELECT name, compression_codec FROM system.columns WHERE database = 'fm' "
                           "AND table = 'mig_t'"))
    assert codecs["added"] == "CODEC(T64, LZ4)"
