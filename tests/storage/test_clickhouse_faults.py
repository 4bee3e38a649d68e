"""Faults between flowmed and a real clickhouse-server 18.16, each checked with exact totals and no duplicates:
the server stopped mid-stream and restarted, the writing process SIGKILLed and restarted, a slow server (a delaying
TCP proxy: inserts whose outcome the client never learns), a server refusing inserts, and a 2-shard cluster."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from decoders.schema import FLOWS
from storage.clickhouse.output import ClickHouseOutput
from storage.settings import ClickHouseConfig, SpoolConfig
from tests.fixtures.clickhouse import FLOWMED_PASSWORD
from tests.storage.clickhouse_helpers import duplicate_batches, flow_batch, server_totals, totals

pytestmark = pytest.mark.external

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def output(port: int, db: str, spool_dir: Path, **kw) -> ClickHouseOutput:
    kw.setdefault("batch_interval_s", 0.3)  # small groups go quickly, so a fault is met while the stream runs
    cfg = ClickHouseConfig(enabled=True, port=port, database=db, **kw)
    return ClickHouseOutput(cfg, SpoolConfig(), spool_dir, retention_interval_s=10**9, max_backoff_s=0.5)


@pytest.fixture
def db(request) -> str:
    return "f_" + re.sub(r"\W", "_", request.node.name)[-40:]


def test_server_stopped_mid_stream_and_started_again(clickhouse_factory, db, tmp_path):
    server = clickhouse_factory()
    out = output(server.port, db, tmp_path / "spool", insert_timeout_s=5)
    for k in range(5):
        out.write(FLOWS, flow_batch(k), k)
    assert out.drain(60)
    server.stop()
    for k in range(5, 15):  # written while the server is down: spooled, write() does not wait
        out.write(FLOWS, flow_batch(k), k)
    wait_until(lambda: not out.status()["connected"], what="the output to notice the outage")
    assert out.status()["spool_batches"] >= 1
    server.start()
    for k in range(15, 20):
        out.write(FLOWS, flow_batch(k), k)
    assert out.drain(120), out.status()
    out.close()
    assert server_totals(server, db) == totals(range(20))
    assert duplicate_batches(server, db) == ""
    assert out.stats["connect_errors"] + out.stats["insert_errors"] >= 1


@pytest.mark.slow
def test_writer_sigkilled_mid_stream_then_restarted(clickhouse_factory, db, tmp_path):
    server = clickhouse_factory()
    spool, ack = tmp_path / "spool", tmp_path / "acks"
    count = 60
    cmd = [sys.executable, "-m", "tests.storage.clickhouse_writer", str(server.port), db, str(spool), str(ack),
           str(count)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log1 = open(tmp_path / "writer1.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
    # Kill it while it is writing: some batches acknowledged and some already in ClickHouse.
    def progress() -> bool:
        acked = ack.read_text().split() if ack.exists() else []
        return len(acked) >= 20 and int(server.query(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                                                     "AND name = 'flows'")) == 1 and \
            int(server.query(f"SELECT count() FROM {db}.flows")) > 0
    wait_until(progress, what="the writer to make progress")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    acked_before = len(ack.read_text().split())
    assert acked_before < count, "the writer finished before it was killed; the test proved nothing"
    log2 = open(tmp_path / "writer2.log", "wb")
    rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log2, stderr=subprocess.STDOUT, timeout=240).returncode
    assert rc == 0, (tmp_path / "writer2.log").read_text()[-3000:]
    assert server_totals(server, db) == totals(range(count), rows=2000)
    assert duplicate_batches(server, db, rows=2000) == ""


class DelayProxy:
    """A TCP proxy on loopback; while ``delay_s`` > 0, replies from the server reach the client that much later
    once the client has sent ``arm_bytes`` since arming (i.e. after an insert's data, not before)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.delay_s = 0.0
        self.arm_bytes = 0
        self._sent_since_arm = 0
        self._stop = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, delay_s: float, after_client_bytes: int) -> None:
        self._sent_since_arm = 0
        self.arm_bytes = after_client_bytes
        self.delay_s = delay_s

    def disarm(self) -> None:
        self.delay_s = 0.0

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop:
                for key, _ in sel.select(0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if key.fileobj is client:
                        self._sent_since_arm += len(data)
                    elif self.delay_s and self._sent_since_arm >= self.arm_bytes:
                        time.sleep(self.delay_s)
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def drop_connections(self) -> None:
        """Cut every proxied connection (the client has to reconnect)."""
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._sockets.clear()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.mark.slow
def test_slow_server_insert_outcome_unknown_lands_once(clickhouse_server, db, tmp_path):
    proxy = DelayProxy(clickhouse_server.port)
    try:
        out = output(proxy.port, db, tmp_path / "spool", insert_timeout_s=1.0)
        out.write(FLOWS, flow_batch(0), 100)
        assert out.drain(60)
        # The server takes the next insert but its answer comes 3 s late: the client gives up after 1 s not knowing
        # whether the rows landed.
        proxy.arm(3.0, after_client_bytes=20_000)
        out.write(FLOWS, flow_batch(1), 101)
        wait_until(lambda: out.stats["insert_errors"] >= 1, what="the insert to time out")
        wait_until(lambda: int(clickhouse_server.query(f"SELECT count() FROM {db}.flows")) == 2000,
                   what="the timed-out insert to land on the server anyway")
        proxy.disarm()
        for k in range(2, 6):
            out.write(FLOWS, flow_batch(k), 100 + k)
        assert out.drain(60), out.status()
        out.close()
        assert out.stats["already_stored"] >= 1  # the retried batch was found stored, not inserted twice
        assert server_totals(clickhouse_server, db) == totals(range(6))
        assert duplicate_batches(clickhouse_server, db) == ""
    finally:
        proxy.close()


@pytest.mark.slow
def test_server_refusing_inserts_then_accepting(clickhouse_factory, db, tmp_path, monkeypatch):
    server = clickhouse_factory()
    proxy = DelayProxy(server.port)
    monkeypatch.setenv("FLOWMED_CLICKHOUSE_PASSWORD", FLOWMED_PASSWORD)
    try:
        out = output(proxy.port, db, tmp_path / "spool", user="flowmed")
        out.write(FLOWS, flow_batch(0), 1)
        assert out.drain(60)
        # The user becomes read-only (the server reloads users.xml; a profile applies from the next session on, so
        # the connection is cut too): the schema is up to date, so only the inserts are refused.
        server.set_flowmed_profile("readonly")
        wait_until(lambda: server.query("SELECT value FROM system.settings WHERE name = 'readonly'",
                                        user="flowmed").strip() == "1", what="users.xml reload")
        proxy.drop_connections()
        for k in range(1, 6):
            out.write(FLOWS, flow_batch(k), 1 + k)
        wait_until(lambda: out.stats["insert_errors"] >= 2, what="the server to refuse inserts")
        assert "readonly" in out.last_error.lower(), out.last_error
        assert out.status()["spool_batches"] >= 1  # kept, in order, not dropped
        server.set_flowmed_profile("default")
        assert out.drain(120), out.status()
        out.close()
    finally:
        proxy.close()
    assert sum(out.spool.dropped_rows.values()) == 0
    assert server_totals(server, db) == totals(range(6))
    assert duplicate_batches(server, db) == ""


def test_cluster_of_two_shards(clickhouse_cluster_factory, db, tmp_path):
    shards = clickhouse_cluster_factory("flowmed_test")
    out = output(shards[0].port, db, tmp_path / "spool", cluster="flowmed_test")
    for k in range(16):
        out.write(FLOWS, flow_batch(k), 7_000 + k)
    assert out.drain(120), out.status()
    out.close()
    # Local tables on both shards, a Distributed table named flows on both.
    for s in shards:
        engines = s.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' "
                          "AND name IN ('flows', 'flows_local') ORDER BY name")
        assert engines == "flows\tDistributed\nflows_local\tMergeTree\n"
    local = [int(s.query(f"SELECT count() FROM {db}.flows_local")) for s in shards]
    assert all(n > 0 for n in local) and sum(local) == 16_000  # both shards hold data
    # Whole batches per shard (sharded by batch_id): each batch lives on exactly one shard.
    for s in shards:
        assert s.query(f"SELECT count() FROM (SELECT batch_id, count() c FROM {db}.flows_local GROUP BY batch_id "
                       "HAVING c != 1000)") == "0\n"
    # The read views work over the Distributed tables too (ReplacingMergeTree ones read FINAL).
    assert shards[0].query(f"SELECT count() FROM {db}_read.usage") == "0\n"
    assert shards[0].query(f"SELECT count() FROM {db}_read.flows") == "16000\n"
    # Totals through the Distributed table, from either shard.
    assert server_totals(shards[0], db) == totals(range(16))
    assert server_totals(shards[1], db) == totals(range(16))
    # A restart with an outcome-unknown batch: the count check goes through the Distributed table.
    from storage.clickhouse.spool import Spool

    Spool(tmp_path / "spool2", 10**9).append("flows", 7_003, flow_batch(3))
    out = output(shards[0].port, db, tmp_path / "spool2", cluster="flowmed_test")
    assert out.drain(60)
    out.close()
    assert out.stats["already_stored"] == 1
    assert server_totals(shards[0], db) == totals(range(16))
