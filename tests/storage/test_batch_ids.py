"""Every append-only (MergeTree) table carries ``batch_id``, so a batch whose insert outcome was unknown (a crash after
the insert, a timed-out answer) lands once on ClickHouse 18.16, which has no insert de-duplication of its own."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from collector.tables import load_tables
from storage.clickhouse.client import connect, server_caps
from storage.clickhouse.ddl import create_table_sql
from storage.clickhouse.output import ClickHouseOutput
from storage.clickhouse.schema import SchemaManager
from storage.clickhouse.spool import Spool
from storage.settings import ClickHouseConfig, SpoolConfig

NOW_MS = 1_764_000_000_000
APPEND_ONLY = sorted(name for name, t in load_tables().items() if t.engine == "MergeTree")


def test_every_append_only_table_has_a_batch_id() -> None:
    """ReplacingMergeTree tables collapse re-sent rows by key; every other table needs the batch id check."""
    assert {"flows", "rejects", "reconciliation"} <= set(APPEND_ONLY)
    missing = [name for name in APPEND_ONLY if "batch_id" not in load_tables()[name].column_names]
    assert missing == []


def rows(table, n: int, seed: int):
    """``n`` rows of ``table`` at NOW_MS with a distinct number in every u64 column (zero elsewhere)."""
    cols = {table.time_column: np.full(n, NOW_MS + seed, dtype=np.int64)}
    for c in table.columns:
        if c.kind == "u64" and c.name != "batch_id":
            cols[c.name] = np.arange(n, dtype=np.uint64) + seed * 1000
    return table.to_arrow(cols)


@pytest.fixture
def db(clickhouse_server, request) -> str:
    name = "bid_" + re.sub(r"\W", "_", request.node.name)[-40:]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {name}")
    return name


def make_output(server, db, spool_dir) -> ClickHouseOutput:
    cfg = ClickHouseConfig(enabled=True, port=server.port, database=db)
    return ClickHouseOutput(cfg, SpoolConfig(), spool_dir, retention_interval_s=10**9, max_backoff_s=1.0)


@pytest.mark.external
@pytest.mark.parametrize("name", APPEND_ONLY)
def test_batch_left_in_the_spool_after_its_insert_lands_once(clickhouse_server, db, tmp_path, name):
    table = load_tables()[name]
    out = make_output(clickhouse_server, db, tmp_path / "a")
    out.write(table, rows(table, 50, 1), 11)
    assert out.drain(60), out.status()
    out.close()
    # A crash after the insert but before the spool file was deleted: the next start finds it, counts
    # `WHERE batch_id = 11` on the server and does not insert it again.
    Spool(tmp_path / "b", 10**9).append(name, 11, rows(table, 50, 1))
    Spool(tmp_path / "b", 10**9).append(name, 12, rows(table, 30, 2))
    out = make_output(clickhouse_server, db, tmp_path / "b")
    assert out.drain(60), out.status()
    out.close()
    assert out.stats["already_stored"] == 1 and out.stats["inserted"] == 1
    got = clickhouse_server.query(f"SELECT batch_id, count() FROM {db}.{name} GROUP BY batch_id ORDER BY batch_id")
    assert got == "11\t50\n12\t30\n"


@pytest.mark.external
def test_older_tables_get_the_batch_id_column(clickhouse_server, db):
    """A reconciliation/rejects table created before batch_id existed gets it with ALTER TABLE ADD COLUMN."""
    client = connect(ClickHouseConfig(enabled=True, port=clickhouse_server.port, database=db))
    caps = server_caps(client)
    clickhouse_server.query(f"CREATE DATABASE {db}")
    for name in ("reconciliation", "rejects"):
        table = load_tables()[name]
        assert table.columns[-1].name == "batch_id"
        old = dataclasses.replace(table, columns=table.columns[:-1])
        clickhouse_server.query(create_table_sql(old, caps, db))
        clickhouse_server.query(f"INSERT INTO {db}.{name} ({table.time_column}) VALUES (1764000000)")

    def run(sql: str):
        return client.execute(sql)

    report = SchemaManager(run, caps, db).ensure([load_tables()["reconciliation"], load_tables()["rejects"]])
    assert report.added_columns == [f"{db}.reconciliation.batch_id UInt64", f"{db}.rejects.batch_id UInt64"]
    assert clickhouse_server.query(f"SELECT batch_id FROM {db}.reconciliation") == "0\n"
    client.disconnect()


def test_store_files_written_before_batch_id_existed_still_read(tmp_path) -> None:
    """Parquet files of reconciliation written by an older flowmed (no batch_id column) read with batch_id 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.query import QueryEngine

    table = load_tables()["reconciliation"]
    old = pa.Table.from_batches([rows(table, 3, 1)]).drop_columns(["batch_id"])
    part = tmp_path / "reconciliation" / "date=2025-11-24" / "hour=16"
    part.mkdir(parents=True)
    pq.write_table(old, part / "00000000000000000001.parquet")
    with QueryEngine.for_store(tmp_path) as engine:
        got = engine.query("SELECT sum(bytes_in) AS b, max(batch_id) AS i, count() AS n FROM reconciliation")
    assert got.to_pylist() == [{"b": 3 * 1000 + 3, "i": 0, "n": 3}]
