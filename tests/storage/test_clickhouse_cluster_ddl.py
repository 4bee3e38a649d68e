"""The replicated cluster's DDL (both server generations), host entries with ports, and batch ids unique across hosts.

The modern statements cannot run in chDB as they are (it has no ZooKeeper/Keeper and no clusters): each is parsed by
chDB's own parser (``formatQuery``), and the same tables without ``ON CLUSTER`` and without replication are created
in chDB, which checks the columns, codecs, TTL and settings. The 18.16 statements run for real in
test_clickhouse_cluster.py.
"""

from __future__ import annotations

import json
import re

import pytest

from collector.config import load
from collector.configtree import ConfigError
from collector.tables import load_tables
from storage.clickhouse.client import host_port
from storage.clickhouse.ddl import (
    EVERYWHERE,
    LEGACY,
    MODERN,
    HostUnreachable,
    Replication,
    ServerCaps,
    ddl_statements,
)
from storage.clickhouse.schema import SchemaManager
from storage.outputs import BatchIdGenerator, batch_id_time_ms
from storage.query import chdb_session, holding_chdb_session
from storage.settings import ClickHouseConfig


def statements(caps: ServerCaps) -> list[str]:
    return ddl_statements(load_tables().values(), caps, "fm", cluster="c1", replicated=True,
                          zookeeper_path="/clickhouse/fm", retention_days={"flows": 30})


def one(stmts: list[str], start: str) -> str:
    found = [s for s in stmts if s.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


@pytest.mark.parametrize("caps", [LEGACY, MODERN], ids=["18.16", "modern"])
def test_replicated_ddl(caps):
    stmts = statements(caps)
    assert stmts[:2] == ["CREATE DATABASE IF NOT EXISTS `fm` ON CLUSTER `c1`",
                         "CREATE DATABASE IF NOT EXISTS `fm_read` ON CLUSTER `c1`"]
    # Every statement but SET runs once for the whole cluster.
    assert all(" ON CLUSTER `c1`" in s for s in stmts if not s.startswith("SET "))
    flows = one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`flows_local` ON CLUSTER `c1`")
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/fm/tables/{shard}/fm/flows_local', '{replica}')" in flows
    assert "replicated_deduplication_window = 1000" in flows and "non_replicated" not in flows
    usage = one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`usage_local`")
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/fm/tables/{shard}/fm/usage_local', '{replica}')" \
        in usage
    rated = one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`rated_usage_local`")
    assert "ReplicatedReplacingMergeTree('/clickhouse/fm/tables/{shard}/fm/rated_usage_local', '{replica}', " \
           "`version`)" in rated
    # Batches of append-only tables go whole to one shard; ReplacingMergeTree rows by their key.
    dist = one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`flows` ON CLUSTER")
    assert dist.endswith("ENGINE = Distributed(`c1`, `fm`, `flows_local`, intHash64(`batch_id`))")
    assert "sipHash64(`subscriber_id`" in one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`usage` ON CLUSTER")
    # The lease: one replicated table on every node, read where it is written, no Distributed table.
    assert EVERYWHERE == {"rating_lease"}
    lease = one(stmts, "CREATE TABLE IF NOT EXISTS `fm`.`rating_lease` ON CLUSTER")
    assert "ReplicatedMergeTree('/clickhouse/fm/tables/all/fm/rating_lease', '{shard}-{replica}')" in lease
    assert not [s for s in stmts if "rating_lease_local" in s]
    # Read views on every node, FINAL for ReplacingMergeTree tables.
    view = one(stmts, "CREATE VIEW `fm_read`.`usage` ON CLUSTER `c1` AS SELECT")
    assert view.endswith("FROM `fm`.`usage` FINAL")
    if caps.ttl:
        assert "TTL toDateTime(`time_received`) + toIntervalDay(30)" in flows
    else:
        assert "TTL" not in flows and "CODEC" not in flows


def test_unreplicated_cluster_and_single_server_ddl_unchanged():
    tables = load_tables().values()
    single = ddl_statements(tables, LEGACY, "fm")
    assert "ON CLUSTER" not in "\n".join(single) and "Replicated" not in "\n".join(single)
    assert one(single, "CREATE TABLE IF NOT EXISTS `fm`.`flows`\n").count("ENGINE = MergeTree\n") == 1
    per_host = ddl_statements(tables, LEGACY, "fm", cluster="c1")
    assert "ON CLUSTER" not in "\n".join(per_host)
    assert one(per_host, "CREATE TABLE IF NOT EXISTS `fm`.`rating_lease_local`")  # sharded like every table
    with pytest.raises(ValueError):
        Replication("/clickhouse/x'); DROP")


@pytest.fixture
def chdb_run():
    with holding_chdb_session():

        def run(sql: str) -> list[tuple]:
            with chdb_session() as s:
                out = s.query(sql, "JSONCompact")
            text = out.bytes().decode() if hasattr(out, "bytes") else str(out)
            return [tuple(r) for r in json.loads(text)["data"]] if text.strip() else []

        for db in ("fmc", "fmc_read"):
            run(f"DROP DATABASE IF EXISTS {db}")
        yield run
        for db in ("fmc", "fmc_read"):
            run(f"DROP DATABASE IF EXISTS {db}")


def _sql_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unreplicated(sql: str) -> str:
    """The statement as one server runs it: no ON CLUSTER, the plain engine (ZooKeeper path and replica dropped)."""
    sql = sql.replace(" ON CLUSTER `c1`", "")
    return re.sub(r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, )?", r"\1(", sql).replace("MergeTree()", "MergeTree")


def test_modern_replicated_ddl_in_chdb(chdb_run):
    (version,), = chdb_run("SELECT version()")
    caps = ServerCaps.from_version(version)
    assert caps.modern
    stmts = [s.replace("`fm", "`fmc") for s in statements(caps)]
    for sql in stmts:
        if sql.startswith("SET "):
            continue
        (formatted,), = chdb_run(f"SELECT formatQuery({_sql_literal(sql)})")  # the server's parser accepts it
        assert "ON CLUSTER c1" in formatted
        if "Replicated" in sql:
            assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/fm/tables/(\{shard\}|all)/fm/", formatted)
    # Columns, codecs, TTL and settings, as one server would create them.
    chdb_run("SET allow_suspicious_low_cardinality_types = 1")
    created = 0
    for sql in stmts:
        if sql.startswith("SET ") or "ENGINE = Distributed" in sql:
            continue  # chDB has no cluster to distribute over: the views read the local tables instead
        if sql.startswith("CREATE VIEW"):
            sql = re.sub(r"FROM `fmc`\.`(\w+)`", lambda m: f"FROM `fmc`.`{m[1]}`" if m[1] in EVERYWHERE
                         else f"FROM `fmc`.`{m[1]}_local`", sql)
        chdb_run(_unreplicated(sql))
        created += sql.startswith("CREATE TABLE")
    assert created == len(load_tables())
    assert chdb_run("SELECT count() FROM system.tables WHERE database = 'fmc_read'") == [(len(load_tables()),)]
    (settings,), = chdb_run("SELECT engine_full FROM system.tables WHERE database = 'fmc' AND name = 'flows_local'")
    assert "replicated_deduplication_window = 1000" in settings and "ttl_only_drop_parts = 1" in settings


def test_host_entries_with_ports():
    assert host_port("10.0.0.5", 9000) == ("10.0.0.5", 9000)
    assert host_port("10.0.0.5:9001", 9000) == ("10.0.0.5", 9001)
    assert host_port("ch1.example:9440", 9000) == ("ch1.example", 9440)
    assert host_port("[2001:db8::5]:9001", 9000) == ("2001:db8::5", 9001)
    assert host_port("[2001:db8::5]", 9000) == ("2001:db8::5", 9000)
    assert host_port("2001:db8::5", 9000) == ("2001:db8::5", 9000)


def test_cluster_settings_are_validated():
    cfg = load(None, ["output.clickhouse.cluster=c1", "output.clickhouse.replicated=true",
                      "output.clickhouse.insert_quorum=2", "service.host_index=3"])
    assert cfg.output.clickhouse.replicated and cfg.service.host_index == 3
    load(None, ['output.clickhouse.hosts=["ch1", "ch2:9001", "[2001:db8::1]:9002", "2001:db8::2"]'])
    for bad in (["output.clickhouse.replicated=true"],  # no cluster
                ["output.clickhouse.cluster=c1", "output.clickhouse.zookeeper_path=clickhouse/x"],
                ["service.host_index=64"], ['output.clickhouse.hosts=["ch1:90x"]'],
                ['output.clickhouse.hosts=["[2001:db8::1]:0"]']):
        with pytest.raises(ConfigError):
            load(None, bad)
    assert ClickHouseConfig().zookeeper_path == "/clickhouse/flowmed"


def test_batch_ids_of_two_hosts_never_collide():
    """Two collector hosts flushing in the same millisecond (same worker number) issue different ids."""
    t = [1_800_000_000.0]
    a = BatchIdGenerator(0, clock=lambda: t[0], host=0)
    b = BatchIdGenerator(0, clock=lambda: t[0], host=1)
    ids_a = [a.next() for _ in range(1000)]  # more than the 256 ids of one millisecond
    ids_b = [b.next() for _ in range(1000)]
    assert not set(ids_a) & set(ids_b)
    assert ids_a == sorted(set(ids_a)) and ids_b == sorted(set(ids_b))
    assert all((i >> 8) & 0x3F == 1 for i in ids_b) and all((i >> 14) & 0xFF == 0 for i in ids_b)
    assert abs(batch_id_time_ms(ids_b[0]) - 1_800_000_000_000) < 1
    with pytest.raises(ValueError):
        BatchIdGenerator(0, host=64)


def test_schema_check_leaves_out_a_node_that_is_down():
    """Per-host layout (a cluster without ZooKeeper): a node that cannot be reached is reported and left out, the
    others get their tables; the server flowmed is connected to must answer."""
    flows = load_tables()["flows"]
    done: list[str] = []

    def node(name: str, up: bool):
        def run(sql: str) -> list[tuple]:
            if not up:
                raise HostUnreachable(name)
            done.append(f"{name}: {sql.split(chr(10))[0]}")
            return [(0,)] if sql.startswith("SELECT count()") else []
        return run

    up, down = node("ch1:9000", True), node("ch2:9000", False)
    manager = SchemaManager(up, LEGACY, "fm", cluster="c1", host_executors=[up, down])
    report = manager.ensure([flows])
    assert manager.unreachable == ["ch2:9000"] * 3  # both databases and the table, each time left out
    assert "fm.flows_local" in report.created and any("ch1:9000: CREATE TABLE" in d for d in done)
    with pytest.raises(HostUnreachable):
        SchemaManager(down, LEGACY, "fm", cluster="c1", host_executors=[down]).ensure([flows])
