"""``flowmed clickhouse ddl|migrate|retention`` against a real clickhouse-server 18.16."""

from __future__ import annotations

import subprocess
import time

import pytest
from click.testing import CliRunner

from collector.cli import main

pytestmark = pytest.mark.external


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_ddl_per_server_version():
    keep30 = ("--set", "output.clickhouse.flows_retention_days=30")
    code, out = run("clickhouse", "ddl", "--server-version", "18.16", *keep30)
    assert code == 0
    assert "`src_addr` FixedString(16)" in out and "CODEC" not in out and "TTL" not in out
    assert "CREATE VIEW `flowmed_read`.`flows`" in out and "IPv6NumToString(`src_addr`)" in out
    code, out = run("clickhouse", "ddl", "--server-version", "26.1", *keep30)
    assert code == 0
    assert "`src_addr` IPv6 CODEC(ZSTD(1))" in out and "ttl_only_drop_parts = 1" in out
    assert "toIntervalDay(30)" in out
    code, out = run("clickhouse", "ddl", "--server-version", "18.16", "--set", "output.clickhouse.cluster=c1")
    assert "CREATE TABLE IF NOT EXISTS `flowmed`.`flows_local`" in out and "ENGINE = Distributed(`c1`" in out


def test_printed_ddl_is_what_flowmed_wants(clickhouse_server):
    db = "cli_ddl"
    sets = ["--set", f"output.clickhouse.port={clickhouse_server.port}", "--set", f"output.clickhouse.database={db}"]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    code, ddl = run("clickhouse", "ddl", *sets)
    assert code == 0 and "18.16" in ddl.splitlines()[0]
    # A DBA runs the printed DDL by hand with clickhouse-client...
    subprocess.run(["clickhouse-client", "--host=127.0.0.1", f"--port={clickhouse_server.port}", "--multiquery"],
                   input=ddl, text=True, check=True, capture_output=True, timeout=60)
    # ...and flowmed finds nothing left to do.
    code, out = run("clickhouse", "migrate", *sets)
    assert (code, out.strip()) == (0, "schema is up to date")


def test_migrate_and_retention(clickhouse_server):
    db = "cli_migrate"
    sets = ["--set", f"output.clickhouse.port={clickhouse_server.port}", "--set", f"output.clickhouse.database={db}",
            "--set", "output.clickhouse.flows_retention_days=5"]
    clickhouse_server.query(f"DROP DATABASE IF EXISTS {db}")
    code, out = run("clickhouse", "migrate", *sets)
    assert code == 0 and f"created table {db}.flows" in out
    now = int(time.time())
    clickhouse_server.query(f"INSERT INTO {db}.flows (time_received, bytes) VALUES ({now - 10 * 86400}, 1), ({now}, 2)")
    code, out = run("clickhouse", "retention", *sets)
    assert code == 0 and out.startswith("dropped flows partition ")
    assert clickhouse_server.query(f"SELECT sum(bytes) FROM {db}.flows") == "2\n"
    code, out = run("clickhouse", "retention", *sets)
    assert out.strip() == "nothing to drop"
    # A column type changed by hand is reported, and the exit status says so.
    clickhouse_server.query(f"ALTER TABLE {db}.flows MODIFY COLUMN src_port UInt32")
    code, out = run("clickhouse", "migrate", *sets)
    assert code == 3 and f"TYPE MISMATCH (not migrated, fix by hand) {db}.flows.src_port" in out
