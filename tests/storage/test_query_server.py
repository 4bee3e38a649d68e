"""``flowmed query --target clickhouse`` against a real clickhouse-server 18.16: under flowmed's own guard the server
refuses writes itself (``readonly`` on every query), and without ``--allow-external`` also every table function."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage.clickhouse.query import ClickHouseBackend
from storage.query import QueryError
from storage.settings import ClickHouseConfig

pytestmark = pytest.mark.external

FLOWMED = Path(sys.executable).with_name("flowmed")

WRITES = [
    "INSERT INTO t SELECT 7",
    "CREATE TABLE u (x UInt8) ENGINE = Memory",
    "DROP TABLE t",
    "ALTER TABLE t DELETE WHERE 1",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
]


@pytest.fixture
def db(clickhouse_server) -> str:
    name = "query_guard"
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {name}")
    clickhouse_server.query(f"CREATE DATABASE {name}")
    clickhouse_server.query(f"CREATE TABLE {name}.t (x UInt8) ENGINE = Memory")
    clickhouse_server.query(f"INSERT INTO {name}.t VALUES (1), (2)")
    return name


@pytest.mark.parametrize("readonly", [1, 2])
def test_the_server_refuses_writes_that_pass_no_guard(clickhouse_server, db: str, readonly: int) -> None:
    """The backend alone (no sql_guard in front): every write is refused by the server at either level."""
    backend = ClickHouseBackend(ClickHouseConfig(port=clickhouse_server.port, database=db), readonly=readonly)
    try:
        for sql in WRITES:
            with pytest.raises(QueryError, match="(?i)readonly"):
                backend.query(sql)
        if readonly == 1:  # 18.16 refuses every table function at readonly = 1
            with pytest.raises(QueryError, match="(?i)readonly"):
                backend.query("SELECT * FROM url('http://127.0.0.1:9/x.csv', CSV, 'a UInt8')")
        assert backend.query("SELECT count() AS n FROM t").to_pylist() == [{"n": 2}]
    finally:
        backend.close()
    assert clickhouse_server.query(f"SELECT count() FROM {db}.t") == "2\n"
    assert clickhouse_server.query(f"EXISTS TABLE {db}.u") == "0\n"


def _run(server, db: str, sql: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLOWMED), "query", "--target", "clickhouse", "--set", "store.enabled=false",
                           "--set", f"output.clickhouse.port={server.port}", "--set",
                           f"output.clickhouse.database={db}", *extra, sql],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_flowmed_query_on_a_server_is_readonly_1_unless_allow_external(clickhouse_server, db: str) -> None:
    ok = _run(clickhouse_server, db, "SELECT count() AS n FROM t")
    assert ok.returncode == 0 and ok.stdout.split() == ["n", "-", "2"], ok.stderr
    # numbers() passes flowmed's guard; the server's readonly = 1 still refuses table functions...
    proc = _run(clickhouse_server, db, "SELECT number FROM numbers(2)")
    assert proc.returncode == 1 and "readonly" in proc.stderr.lower(), proc.stderr
    # ...which --allow-external lifts (readonly = 2).
    proc = _run(clickhouse_server, db, "SELECT number FROM numbers(2)", "--allow-external")
    assert proc.returncode == 0 and proc.stdout.split() == ["number", "------", "0", "1"], proc.stderr
    for sql in ("INSERT INTO t SELECT 7", "SELECT $$'$$ AS x INTO OUTFILE 'out.csv'",
                "SELECT * FROM remote('127.0.0.1:9000', system.one)"):
        proc = _run(clickhouse_server, db, sql)
        assert proc.returncode == 1 and "Error:" in proc.stderr, (sql, proc.stderr)
    assert clickhouse_server.query(f"SELECT count() FROM {db}.t") == "2\n"
