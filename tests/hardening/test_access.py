"""Access rules: who may send, what is exposed, what is never written down, what `flowmed query` may do.

Tested elsewhere (not repeated): the IPDR allowlist (tests/ipdr/test_collector.py::
test_exporter_initiated_connection_and_allowlist), RADIUS clients as the allowlist with radclient
(tests/mediation/subscribers/test_radius.py::test_radclient_from_an_unknown_client_gets_no_answer), `check-config`
redaction
(tests/collector/test_config.py::test_check_config_redacts_secrets), the server's own readonly under `flowmed
query` (tests/storage/test_query_server.py), the guard's full corpus of bypass attempts and --allow-external
(tests/storage/test_query_guard.py), the flow allowlist and rate limit in the pipeline (test_limits.py here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.config import load
from storage.query import QueryError
from storage.settings import ClickHouseConfig
from storage.sql_guard import check_read_only
from tests.collector.daemon import Daemon, V9Traffic
from tests.fixtures.peers import free_port, require_tool

ROOT = Path(__file__).resolve().parents[2]
RADIUS_SECRET = "radius-secret-7f3a9c"
CH_PASSWORD = "clickhouse-pw-91b2e4"


# --- defaults -------------------------------------------------------------------------------------------------

def test_defaults_expose_nothing_beyond_the_collection_ports() -> None:
    cfg = load(None, [])
    assert cfg.metrics.listen.startswith("127.0.0.1:")  # metrics and status: loopback only
    assert cfg.ipdr.listen == "" and cfg.ipdr.allowlist is True  # IPDR: dial out; accepted peers allowlisted
    assert cfg.radius.enabled is False and cfg.radius.clients == []  # RADIUS: only configured clients
    assert cfg.listen.allow == []  # flows: any exporter unless listen.allow is set (routers are many)
    assert cfg.output.clickhouse.password_env and not hasattr(cfg.output.clickhouse, "password_value")


# --- flowmed query is read-only ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "INSERT INTO FUNCTION file('x.csv', 'CSV') SELECT 1",
    "insert into flows select * from flows",
    "SELECT 1 INTO OUTFILE 'x.csv'",
    "SELECT 1 into\n  outfile 'x.csv' FORMAT CSV",
    "DROP TABLE flows",
    "ALTER TABLE usage DELETE WHERE 1",
    "CREATE TABLE t (x Int8) ENGINE = File(CSV)",
    "SELECT 1; DROP TABLE flows",
    "SYSTEM SHUTDOWN",
    "TRUNCATE TABLE usage",
    "/* SELECT */ DROP DATABASE x",
    "",
    "SELECT $$'$$ AS x INTO OUTFILE 'x.csv'",
    "SELECT $$'$$; INSERT INTO FUNCTION file('x.csv', 'CSV', 'x UInt8') VALUES (1) -- '",
])
def test_sql_guard_refuses_writes(sql: str) -> None:
    with pytest.raises(QueryError, match="read-only|one statement"):
        check_read_only(sql)


@pytest.mark.parametrize("sql", [
    "SELECT count() FROM flows",
    "with t as (select 1 as x) select * from t;",
    "SELECT 'INSERT INTO OUTFILE; DROP' AS s, `insert` FROM flows -- INTO OUTFILE",
    "(SELECT 1) UNION ALL (SELECT 2)",
    "SHOW TABLES",
    "DESCRIBE flows",
    "EXPLAIN SELECT 1",
])
def test_sql_guard_lets_reads_through(sql: str) -> None:
    check_read_only(sql)


SEALED_PROBE = r"""
import json, sys
from storage.query import QueryEngine
from storage.sql_guard import seal_chdb_session
store, outside = sys.argv[1], sys.argv[2]
engine = QueryEngine.for_store(store)
seal_chdb_session()
out = {}
for name, sql in [
    ("select", "SELECT count() AS n FROM flows"),
    ("drop", "DROP TABLE flows"),
    ("alter", "ALTER TABLE flows DELETE WHERE 1"),
    ("create_file", f"CREATE TABLE t (x Int8) ENGINE = File(CSV, '{outside}/t.csv')"),
    ("insert_table", "INSERT INTO flows SELECT * FROM flows"),
    ("unseal", "SET readonly = 0"),
    ("unseal_query", "SELECT 1 SETTINGS readonly = 0"),
]:
    try:
        engine.query(sql)
        out[name] = "ok"
    except Exception as exc:
        out[name] = "refused" if "READONLY" in str(exc) or "readonly" in str(exc) else str(exc)[:200]
print(json.dumps(out))
"""


def _store_with_flows(tmp_path: Path) -> Path:
    """A store with a few real flows written by the daemon's own sink."""
    from prometheus_client import CollectorRegistry

    from collector.components import make_sink
    from collector.metrics import Metrics
    from collector.pipeline import Pipeline

    store = tmp_path / "data"
    cfg = load(None, [f"store.path={store}", "mediation.enabled=false"])
    sink = make_sink(cfg, Metrics(CollectorRegistry()))
    pipeline = Pipeline(cfg, Metrics(CollectorRegistry()), sink)
    traffic = V9Traffic()
    pipeline.process([(d, "192.0.2.1", int(time.time() * 1000)) for d in traffic.datagrams(3)])
    traffic.close()
    sink.flush()
    sink.close()
    return store


def test_query_on_the_store_cannot_write_or_drop(tmp_path: Path) -> None:
    """The engine layer under the lexical guard: a sealed chDB session refuses DDL, DROP, ALTER, INSERT, and
    cannot be unsealed (run in a subprocess: sealing is for the life of a process's chDB session)."""
    store = _store_with_flows(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    proc = subprocess.run([sys.executable, "-c", SEALED_PROBE, str(store), str(outside)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"select": "ok", "drop": "refused", "alter": "refused", "create_file": "refused",
                      "insert_table": "refused", "unseal": "refused", "unseal_query": "refused"}
    assert list(outside.iterdir()) == []


@pytest.mark.slow
def test_flowmed_query_command_refuses_file_writes(tmp_path: Path) -> None:
    store = _store_with_flows(tmp_path)
    files_before = sorted(p for p in store.rglob("*"))
    target = tmp_path / "written.csv"

    def run(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).with_name("flowmed")), "query", "--set",
                               f"store.path={store}", "--format", "csv", sql], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    for sql in (f"INSERT INTO FUNCTION file('{target}', 'CSV') SELECT 1",
                f"SELECT count() FROM flows INTO OUTFILE '{target}'",
                f"SELECT $$'$$ AS x INTO OUTFILE '{target}'",
                "DROP TABLE flows"):
        proc = run(sql)
        assert proc.returncode != 0 and "read-only" in proc.stderr, (sql, proc.stderr)
    ok = run("SELECT count() AS n FROM flows")
    assert ok.returncode == 0 and ok.stdout.splitlines()[1] == "90", ok.stderr
    assert not target.exists() and sorted(p for p in store.rglob("*")) == files_before


# --- secrets never logged ---------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.external
def test_secrets_never_reach_the_log_or_check_config(tmp_path: Path) -> None:
    """RADIUS secret (from the config) and ClickHouse password (from a file) through start, bad requests from
    unknown and mis-keyed NASes, an unreachable ClickHouse, SIGHUP and stop: neither appears in the log."""
    require_tool("radclient")
    pw_file = tmp_path / "ch.pw"
    pw_file.write_text(CH_PASSWORD + "\n")
    radius_port = free_port()
    sets = ["radius.enabled=true", f'radius.listen=["127.0.0.1:{radius_port}"]',
            f'radius.clients=[{{address="127.0.0.1", secret="{RADIUS_SECRET}", name="nas1"}}]',
            "output.clickhouse.enabled=true", "output.clickhouse.hosts=[\"127.0.0.1\"]",
            f"output.clickhouse.port={free_port(socket.SOCK_STREAM)}", f"output.clickhouse.password_file={pw_file}",
            "output.clickhouse.password_env=FLOWMED_TEST_UNSET", "log.level=debug"]
    daemon = Daemon(tmp_path / "d", *sets, flush_interval_s=0.5)
    try:
        daemon.wait_message("READY=1")
        for secret in ("wrong-secret", RADIUS_SECRET):  # a bad authenticator, then a good request
            subprocess.run(["radclient", "-x", "-r", "1", "-t", "1", f"127.0.0.1:{radius_port}", "acct", secret],
                           input="User-Name = alice\nAcct-Status-Type = Start\nAcct-Session-Id = s1\n"
                                 "Framed-IP-Address = 100.64.0.1\n", capture_output=True, text=True, timeout=30)
        traffic = V9Traffic()
        traffic.send(daemon.port, 3)
        traffic.close()
        time.sleep(2)  # a flush to the unreachable ClickHouse fails and is logged
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1)
    finally:
        assert daemon.stop() == 0
    log = daemon.log_text()
    assert "RADIUS" in log or "radius" in log  # the requests were logged...
    assert RADIUS_SECRET not in log and CH_PASSWORD not in log  # ...without the secrets
    check = subprocess.run([sys.executable, "-m", "collector.cli", "check-config", *sum(
        (["--set", s] for s in sets), [])], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert RADIUS_SECRET not in check.stdout + check.stderr and CH_PASSWORD not in check.stdout
    assert "<redacted>" in check.stdout


# --- TLS to ClickHouse ------------------------------------------------------------------------------------------

def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-days", "2"], check=True, capture_output=True)
    return cert, key


@pytest.mark.external
def test_tls_to_clickhouse_is_used_and_verified(tmp_path: Path, clickhouse_factory) -> None:
    """clickhouse-server 18.16 with a secure native port: secure + ca_file connect; a wrong CA or plain TCP to the
    TLS port fail (the certificate is verified, not just encrypted)."""
    require_tool("openssl")
    from storage.clickhouse.client import connect

    cert, key = _self_signed(tmp_path, "server")
    wrong_ca, _ = _self_signed(tmp_path, "other")
    server = clickhouse_factory(start=False)
    secure_port = free_port(socket.SOCK_STREAM)
    (server.path / "config.d" / "tls.xml").write_text(
        f'<?xml version="1.0"?>\n<yandex><tcp_port_secure>{secure_port}</tcp_port_secure><openSSL><server>'
        f"<certificateFile>{cert}</certificateFile><privateKeyFile>{key}</privateKeyFile>"
        "<dhParamsFile></dhParamsFile><verificationMode>none</verificationMode>"
        "<loadDefaultCAFile>false</loadDefaultCAFile></server></openSSL></yandex>\n")
    server.start()

    def select_one(**kw) -> int:
        cfg = ClickHouseConfig(enabled=True, hosts=["127.0.0.1"], port=secure_port, insert_timeout_s=10, **kw)
        client = connect(cfg)
        try:
            return int(client.execute("SELECT 1", settings={"use_numpy": False})[0][0])
        finally:
            client.disconnect()

    assert select_one(secure=True, ca_file=str(cert)) == 1
    with pytest.raises(Exception) as wrong:
        select_one(secure=True, ca_file=str(wrong_ca))
    assert isinstance(wrong.value, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(wrong.value) \
        or "certificate verify failed" in str(wrong.value)
    with pytest.raises(Exception):  # noqa: B017 - any failure: plain native protocol cannot talk to a TLS port
        select_one(secure=False)
    assert os.path.exists(cert)


@pytest.mark.slow
def test_daemon_flow_allowlist_refuses_other_exporters_before_decoding(tmp_path: Path) -> None:
    """`flowmed run` with listen.allow: v9 from 127.0.0.1 (not allowed) is counted as refused and never stored;
    with 127.0.0.0/8 allowed the same traffic is stored."""
    from tests.collector.daemon import stored_flows

    def run(allow: str, sub: str, wanted: str) -> tuple[str, int]:
        daemon = Daemon(tmp_path / sub, f"listen.allow={allow}", "mediation.enabled=false", flush_interval_s=0.5)
        try:
            daemon.wait_message("READY=1")
            traffic = V9Traffic()
            traffic.send(daemon.port, 10)
            traffic.close()
            deadline = time.monotonic() + 30
            metrics = ""
            while time.monotonic() < deadline and wanted not in metrics:
                metrics = daemon.get("/metrics")
                time.sleep(0.1)
        finally:
            assert daemon.stop() == 0
        return metrics, stored_flows(daemon.store) if (daemon.store / "flows").exists() else 0

    refused = 'flowmed_datagrams_refused_total{exporter="127.0.0.1",reason="not_allowed"} 10.0'
    metrics, stored = run('["192.0.2.0/24", "2001:db8::/32"]', "denied", refused)
    assert refused in metrics and stored == 0
    received = 'flowmed_records_received_total{exporter="127.0.0.1",version="9"} 300.0'
    metrics, stored = run('["127.0.0.0/8"]', "allowed", received)
    assert received in metrics and "flowmed_datagrams_refused_total{" not in metrics and stored == 300
