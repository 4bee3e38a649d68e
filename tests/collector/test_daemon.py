"""The daemon as systemd runs it: a subprocess with NOTIFY_SOCKET, stopped and reloaded with signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.collector.daemon import Daemon, V9Traffic, stored_flows
from tests.fixtures.cli import flowmed_command
from tests.fixtures.peers import require_tool


def _wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_ready_then_sigterm_flushes_everything_received(tmp_path: Path) -> None:
    """READY=1 after start; every flow sent before SIGTERM is in the store after exit 0; STOPPING=1 was sent."""
    d = Daemon(tmp_path)  # flush interval 600 s: only the shutdown flush can have written the rows
    traffic = V9Traffic()
    try:
        ready = d.wait_message("READY=1")
        assert any(line.startswith("STATUS=") for line in ready.splitlines())
        sent = traffic.send(d.port, 200)
        rc = d.stop(signal.SIGTERM)
        assert rc == 0, d.log_text()
        fields = [line for msg in d.messages for line in msg.splitlines()]
        assert fields.index("READY=1") < fields.index("STOPPING=1")
    finally:
        traffic.close()
        d.kill()
    assert stored_flows(d.store) == sent
    log = d.log_text()
    assert 'msg="flowmed started"' in log and "listeners=127.0.0.1:" in log
    stop = next(line for line in log.splitlines() if 'msg="flowmed stopped"' in line)
    assert f"flows={sent}" in stop and f"flows_written_store={sent}" in stop
    # the template state was saved at stop where the config says, and holds the exporter's template
    from decoders.netflow.decoder import FlowDecoder

    again = FlowDecoder()
    again.load_state((d.store / "state" / "templates.bin").read_bytes())
    assert again.templates_known() == {"127.0.0.1": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_watchdog_pings_when_systemd_asks_for_them(tmp_path: Path, workers: int) -> None:
    d = Daemon(tmp_path, workers=workers, env={"WATCHDOG_USEC": "1000000"})  # WatchdogSec=1: a ping every 0.5 s
    try:
        d.wait_message("READY=1")
        d.wait_message("WATCHDOG=1", timeout=10)
        assert d.stop() == 0
    finally:
        d.kill()
    assert not any("FLOWMED_WORKER" in m for m in d.messages)  # workers talk to the supervisor, not to systemd


def test_sigint_also_flushes(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    traffic = V9Traffic(seed=7)
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 40)
        assert d.stop(signal.SIGINT) == 0, d.log_text()
    finally:
        traffic.close()
        d.kill()
    assert stored_flows(d.store) == sent


def test_sighup_with_broken_config_keeps_running_with_the_old(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text('[log]\nlevel = "info"\n')
    d = Daemon(tmp_path, config=conf)
    traffic = V9Traffic(seed=3)
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 20)
        conf.write_text('[log]\nlevel = "loud"\n[listen]\nbatch_datagrams = -1\n')
        d.send_signal(signal.SIGHUP)
        _wait_until(lambda: "configuration reload refused" in d.log_text())
        assert "log.level" in d.log_text()
        assert d.proc.poll() is None
        # still receiving with the old configuration
        sent += traffic.send(d.port, 20)
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_records_received_total") == sent)
        assert _metric(d.get("/metrics"), 'flowmed_config_reloads_total{result="refused"}') == 1
        # a valid change is applied: debug logging switched on by reload
        conf.write_text('[log]\nlevel = "debug"\n')
        d.send_signal(signal.SIGHUP)
        _wait_until(lambda: "configuration reloaded" in d.log_text())
        assert d.stop() == 0, d.log_text()
    finally:
        traffic.close()
        d.kill()
    assert stored_flows(d.store) == sent


@pytest.mark.external
def test_metrics_pass_promtool_and_status_reports_the_exporter(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    d = Daemon(tmp_path)
    traffic = V9Traffic(seed=11)
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 30)
        traffic.sock.sendto(b"\x00\x07garbage", ("127.0.0.1", d.port))  # unknown version: an error, counted
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_records_received_total") == sent)
        _wait_until(lambda: "flowmed_decode_errors_total{" in d.get("/metrics"))
        exposition = d.get("/metrics")
        check = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert 'flowmed_datagrams_received_total{exporter="127.0.0.1",version="9"} 30.0' in exposition
        assert 'flowmed_decode_errors_total{exporter="127.0.0.1",reason="unknown_version"} 1.0' in exposition
        assert "flowmed_build_info{" in exposition
        # flowmed status reads the same daemon
        out = subprocess.run([flowmed_command(), "status", "--set", f"metrics.listen=127.0.0.1:{d.metrics_port}"],
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "127.0.0.1" in out.stdout and str(sent) in out.stdout
        status = json.loads(d.get("/status"))
        (exporter,) = status["exporters"]
        assert exporter["address"] == "127.0.0.1" and exporter["versions"] == [9]
        assert exporter["records"] == sent and exporter["errors"] == 1 and exporter["templates"] == 1
        assert status["outputs"][0]["name"] == "store"
        assert d.stop() == 0
    finally:
        traffic.close()
        d.kill()


def test_listen_address_in_use_fails_clearly(tmp_path: Path) -> None:
    import socket

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        d = Daemon(tmp_path, f'listen.udp=["127.0.0.1:{port}"]')
        rc = d.proc.wait(30)
        d.kill()
    finally:
        blocker.close()
    assert rc == 1
    assert "cannot start" in d.log_text() and "Address already in use" in d.log_text()


@pytest.mark.parametrize("bad", ["listen.udp=[\"nonsense\"]", "service.workers=0"])
def test_run_refuses_an_invalid_config_with_status_2(tmp_path: Path, bad: str) -> None:
    out = subprocess.run([flowmed_command(), "run", "--set", bad], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert out.returncode == 2
    assert bad.split("=")[0] in out.stderr


@pytest.mark.slow
def test_kernel_drops_are_counted_and_nothing_else_is_lost(tmp_path: Path) -> None:
    """With a tiny receive buffer and the daemon stopped (SIGSTOP), a burst overflows the socket: every datagram sent
    is either received or counted as a kernel drop."""
    d = Daemon(tmp_path, "listen.rcvbuf_bytes=4096")
    traffic = V9Traffic(seed=5)
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 1)  # the template first, while the daemon reads
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_records_received_total") == sent)
        d.send_signal(signal.SIGSTOP)
        burst = 300
        traffic.send(d.port, burst)
        d.send_signal(signal.SIGCONT)
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_socket_drops_total") > 0)
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_listener_datagrams_total")
                    + _metric(d.get("/metrics"), "flowmed_socket_drops_total") == 1 + burst)
        assert "kernel dropped datagrams" in d.log_text()
        assert d.stop() == 0
    finally:
        traffic.close()
        d.kill()


SLOW_SINK_DAEMON = """
import sys, time, uvloop
from prometheus_client import CollectorRegistry
from collector import config as config_mod
from collector.server import Server

class SlowSink:
    outputs, stats, pending_rows, dropped_rows = [], {}, 0, {}
    journal_errors = journal_set_aside = 0
    def add(self, table, batch): return True
    def maybe_flush(self, now=None): pass
    def flush(self): time.sleep(300)  # a hung disk or server
    def close(self): pass

cfg = config_mod.load(None, sys.argv[1:])
sys.exit(uvloop.run(Server(cfg, registry=CollectorRegistry(), sink=SlowSink(), mediator=None).serve()))
"""


def test_shutdown_is_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    """A flush that hangs does not keep the daemon past service.shutdown_timeout_s: it exits 1 and says so."""
    import os
    import socket
    import sys

    from tests.fixtures.peers import free_port

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"flowmed-test-{os.urandom(6).hex()}"
    notify.bind("\0" + name)
    notify.settimeout(30)
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SINK_DAEMON, f'listen.udp=["127.0.0.1:{free_port()}"]',
                             "listen.sflow=[]", f"store.path={tmp_path}", "metrics.enabled=false",
                             "service.shutdown_timeout_s=1"],
                            env=dict(os.environ, NOTIFY_SOCKET="@" + name), stderr=open(log, "wb"))
    try:
        assert b"READY=1" in notify.recv(4096)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1  # well before the 300 s the flush would take
    finally:
        proc.kill()
        notify.close()
    assert "shutdown timed out" in log.read_text()


@pytest.mark.slow
def test_templates_survive_a_restart(tmp_path: Path) -> None:
    """Data arriving after a restart, before the exporter re-sends its template, is decoded from the saved state."""
    traffic = V9Traffic(seed=21)
    first = Daemon(tmp_path)
    try:
        first.wait_message("READY=1")
        sent = traffic.send(first.port, 10)  # datagram 0 carries the template
        assert first.stop() == 0, first.log_text()
    finally:
        first.kill()
    later = traffic.datagrams(10)[1:]  # datagram 10 would carry the template again: leave it out
    second = Daemon(tmp_path)
    try:
        second.wait_message("READY=1")
        assert "template state loaded" in second.log_text()
        for payload in later:
            traffic.sock.sendto(payload, ("127.0.0.1", second.port))
        sent += 30 * len(later)
        assert second.stop() == 0, second.log_text()
    finally:
        traffic.close()
        second.kill()
    assert stored_flows(second.store) == sent


def test_clickhouse_down_spools_and_status_shows_it(tmp_path: Path) -> None:
    """With the ClickHouse output enabled and no server, batches wait in the spool: metrics and status say so, and
    the embedded store still gets every flow."""
    import socket

    from tests.fixtures.peers import free_port

    d = Daemon(tmp_path, "output.clickhouse.enabled=true",
               f"output.clickhouse.port={free_port(socket.SOCK_STREAM)}", "store.flush_interval_s=0.5")
    traffic = V9Traffic(seed=13)
    try:
        d.wait_message("READY=1")
        sent = traffic.send(d.port, 10)
        _wait_until(lambda: json.loads(d.get("/status"))["spool"].get("batches", 0) > 0)
        _wait_until(lambda: json.loads(d.get("/status"))["spool"].get("oldest_age_s", 0) > 0)
        status = json.loads(d.get("/status"))
        outputs = {o["name"]: o for o in status["outputs"]}
        assert outputs["clickhouse"]["state"] == "spooling" and outputs["clickhouse"]["last_error"]
        assert status["spool"]["rows"] >= sent
        _wait_until(lambda: _metric(d.get("/metrics"), "flowmed_spool_oldest_age_seconds") > 0)  # set each tick
        assert _metric(d.get("/metrics"), "flowmed_spool_bytes") > 0
        assert d.stop() == 0, d.log_text()
    finally:
        traffic.close()
        d.kill()
    assert stored_flows(d.store) == sent
    assert list((d.store / "spool").glob("*.arrow"))  # kept for the next start


def test_ipv4_and_ipv6_endpoints_in_one_daemon(tmp_path: Path) -> None:
    import socket

    from storage.query import QueryEngine
    from tests.fixtures.peers import free_port, require_ipv6_loopback

    require_ipv6_loopback()
    port4, port6 = free_port(), free_port()
    d = Daemon(tmp_path, f'listen.udp=["127.0.0.1:{port4}", "[::1]:{port6}"]')
    v4 = V9Traffic(seed=1)
    v6 = V9Traffic(seed=2)
    v6.sock.close()
    v6.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        d.wait_message("READY=1")
        for payload in v4.datagrams(5):
            v4.sock.sendto(payload, ("127.0.0.1", port4))
        for payload in v6.datagrams(7):
            v6.sock.sendto(payload, ("::1", port6))
        assert d.stop() == 0, d.log_text()
    finally:
        v4.close()
        v6.close()
        d.kill()
    with QueryEngine.for_store(d.store) as q:
        rows = q.query("SELECT exporter, count() AS n FROM flows GROUP BY exporter").to_pylist()
    assert {r["exporter"]: r["n"] for r in rows} == {"127.0.0.1": 150, "::1": 210}
