"""The flowmed daemon (``flowmed run``) writing into a real clickhouse-server 18.16: NetFlow v9 on loopback, the
server stopped, the daemon SIGKILLed with batches in its spool, both started again; then SIGTERM. The flows in
ClickHouse equal the flows sent (count and bytes, through clickhouse-client and ``flowmed query``), none twice."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from bench.exporter import random_flows
from tests.collector.daemon import Daemon, V9Traffic

pytestmark = [pytest.mark.external, pytest.mark.slow]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def send(traffic: V9Traffic, port: int, datagrams: int) -> tuple[int, int]:
    """Send ``datagrams`` v9 datagrams (30 flows each); returns (flows, bytes) sent."""
    n = b = 0
    for i in range(0, datagrams, 10):  # in steps, so the kernel's receive buffer never overflows
        step = min(10, datagrams - i)
        flows = random_flows(30 * step, export_ms=traffic.now, seed=traffic.seed + traffic.sent_datagrams)
        traffic.send(port, step)  # the same flows (V9Traffic draws them with this seed)
        n, b = n + len(flows), b + sum(f.bytes for f in flows)
        time.sleep(0.005)
    return n, b


def spooled_rows(spool: Path, table: str = "flows") -> int:
    """Rows in the daemon's spool, from the file names (read-only: never opens the spool as a writer would)."""
    total = 0
    for p in spool.rglob("*.arrow"):
        m = re.match(r"^\d{16}\.([A-Za-z_0-9]+)\.\d+\.(\d+)\.arrow$", p.name)
        if m and m[1] == table and p.parent.name != "corrupt":
            total += int(m[2])
    return total


def ch_totals(server, db: str) -> tuple[int, int]:
    n, b = server.query(f"SELECT count(), sum(bytes) FROM {db}.flows").split()
    return int(n), int(b)


def test_daemon_survives_outage_and_sigkill_exactly(clickhouse_factory, tmp_path):
    server = clickhouse_factory()
    db = "daemon_test"
    sets = ("output.clickhouse.enabled=true", f"output.clickhouse.port={server.port}",
            f"output.clickhouse.database={db}", "output.clickhouse.batch_interval_s=0.2", "store.enabled=false")
    traffic = V9Traffic(seed=7)
    sent_n = sent_b = 0
    daemon = Daemon(tmp_path / "d", *sets, flush_interval_s=0.3)
    try:
        daemon.wait_message("READY=1")
        n, b = send(traffic, daemon.port, 40)
        sent_n, sent_b = sent_n + n, sent_b + b
        wait_until(lambda: server.query(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                                        "AND name = 'flows'").strip() == "1" and ch_totals(server, db)[0] == sent_n,
                   what="the first flows in ClickHouse")
        # ClickHouse goes away: the daemon keeps receiving and spools.
        server.stop()
        n, b = send(traffic, daemon.port, 60)
        sent_n, sent_b = sent_n + n, sent_b + b
        spool = daemon.store / "spool"
        wait_until(lambda: spooled_rows(spool) == n, what="the flows to be spooled")
        # flowmed is SIGKILLed with those batches only in its spool; ClickHouse and flowmed come back.
        daemon.kill()
        server.start()
        daemon = Daemon(tmp_path / "d", *sets, flush_interval_s=0.3)
        daemon.wait_message("READY=1")
        n, b = send(traffic, daemon.port, 30)  # new traffic while the spool replays
        sent_n, sent_b = sent_n + n, sent_b + b
        wait_until(lambda: ch_totals(server, db)[0] >= sent_n, timeout=120, what="the replay")
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.kill()
        traffic.close()
    assert ch_totals(server, db) == (sent_n, sent_b)
    assert server.query(f"SELECT count() FROM (SELECT batch_id, count() FROM {db}.flows GROUP BY batch_id "
                        "HAVING uniqExact(src_addr, dst_addr, src_port, dst_port, flow_start, bytes) != count())") \
        == "0\n"  # no row stored twice within a batch
    assert spooled_rows(daemon.store / "spool") == 0
    # The same totals through flowmed's query engine on the server.
    from collector.config import load
    from storage.query import QueryEngine

    config = load(None, [f"output.clickhouse.port={server.port}", f"output.clickhouse.database={db}",
                         "output.clickhouse.enabled=true"])
    with QueryEngine.for_config(config, target="clickhouse") as engine:
        row = engine.query("SELECT count() AS n, sum(bytes) AS b FROM flows").to_pylist()[0]
    assert (row["n"], row["b"]) == (sent_n, sent_b)
