"""service.workers = 2: the same input gives the same stored flows and usage as one process; a dead worker is
restarted and counted; the workers' metrics are merged on one endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from storage.query import QueryEngine
from tests.collector.daemon import Daemon, V9Traffic
from tests.fixtures.peers import require_tool

EXPORTER_SOCKETS = 16
"""Source ports (each its own observation domain): SO_REUSEPORT spreads them over the workers by hash."""


def _traffic() -> list[tuple[V9Traffic, list[bytes]]]:
    out = []
    for i in range(EXPORTER_SOCKETS):
        t = V9Traffic(seed=1000 * i, domain=i + 1)
        out.append((t, t.datagrams(12)))
    return out


def _run(tmp: Path, workers: int, traffic: list[tuple[V9Traffic, list[bytes]]]) -> tuple[list, list, dict]:
    d = Daemon(tmp, workers=workers)
    try:
        d.wait_message("READY=1")
        for t, datagrams in traffic:
            for payload in datagrams:
                t.sock.sendto(payload, ("127.0.0.1", d.port))
        expected = sum(len(g) for _, g in traffic) * 30
        deadline = time.monotonic() + 30
        while json.loads(d.get("/status")).get("flows", 0) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        status = json.loads(d.get("/status"))
        assert d.stop() == 0, d.log_text()
    finally:
        d.kill()
    with QueryEngine.for_store(d.store) as q:
        flows = q.query("SELECT exporter, observation_domain, src_addr, dst_addr, src_port, dst_port, protocol, "
                        "bytes, packets, toUnixTimestamp64Milli(flow_start) AS s, toUnixTimestamp64Milli(flow_end) "
                        "AS e FROM flows ORDER BY ALL").to_pylist()
        usage = q.query("SELECT interval_start, direction, traffic_class, sum(bytes) AS b, sum(packets) AS p, "
                        "sum(flows) AS f FROM usage GROUP BY ALL ORDER BY ALL").to_pylist()
    return flows, usage, status


@pytest.mark.slow
def test_two_workers_store_the_same_flows_and_usage_as_one(tmp_path: Path) -> None:
    traffic = _traffic()
    try:
        flows1, usage1, _ = _run(tmp_path / "one", 1, traffic)
        flows2, usage2, status2 = _run(tmp_path / "two", 2, traffic)
    finally:
        for t, _ in traffic:
            t.close()
    assert len(flows1) == EXPORTER_SOCKETS * 12 * 30
    assert flows2 == flows1
    assert usage1 and usage2 == usage1
    per_worker = [li["datagrams"] for li in status2["listeners"]]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker  # both workers had traffic


@pytest.mark.slow
@pytest.mark.external
def test_dead_worker_is_restarted_and_metrics_are_merged(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    d = Daemon(tmp_path, workers=2)
    traffic = V9Traffic()
    try:
        d.wait_message("READY=1")
        status = json.loads(d.get("/status"))
        victim = status["worker_pids"][1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = json.loads(d.get("/status"))
            if status["worker_pids"][1] not in (None, victim) and "flowmed_worker_restarts_total 1.0" in d.get(
                    "/metrics"):
                break
            time.sleep(0.1)
        assert status["worker_pids"][1] not in (None, victim)
        # the restarted worker receives again on the same socket group
        sent = traffic.send(d.port, 20)
        deadline = time.monotonic() + 30
        while json.loads(d.get("/status"))["flows"] < sent and time.monotonic() < deadline:
            time.sleep(0.1)
        exposition = d.get("/metrics")
        assert "flowmed_worker_restarts_total 1.0" in exposition
        assert f'flowmed_records_received_total{{exporter="127.0.0.1",version="9"}} {float(sent)}' in exposition
        check = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert d.stop() == 0, d.log_text()
    finally:
        traffic.close()
        d.kill()
    assert "worker died; restarting it" in d.log_text()


def test_sighup_is_validated_by_the_supervisor_and_forwarded(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text('[log]\nlevel = "info"\n')
    d = Daemon(tmp_path, config=conf, workers=2)
    try:
        d.wait_message("READY=1")
        conf.write_text("[listen]\nbatch_datagrams = 0\n")
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "configuration reload refused" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "listen.batch_datagrams" in d.log_text()
        assert 'flowmed_config_reloads_total{result="refused"} 1.0' in d.get("/metrics")
        conf.write_text('[log]\nlevel = "debug"\n')
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while d.log_text().count("configuration reloaded") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert d.log_text().count("configuration reloaded") == 3  # the supervisor and both workers
        assert "flowmed_worker_restarts_total 0.0" in d.get("/metrics")  # reloaded in place, not restarted
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_worker_that_cannot_start_fails_the_service(tmp_path: Path) -> None:
    """Worker 0 cannot bind the RADIUS port: restarting would not help, so the supervisor exits 1 (as one process
    does) instead of restarting it forever without READY=1."""
    import socket

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        d = Daemon(tmp_path, "radius.enabled=true", f'radius.listen=["127.0.0.1:{port}"]',
                   "radius.clients=[{address='127.0.0.1', secret='s'}]", workers=2)
        rc = d.proc.wait(60)
        d.kill()
    finally:
        blocker.close()
    assert rc == 1
    log = d.log_text()
    assert 'msg="cannot start"' in log and "worker failed to start" in log, log
    assert "exit_status=1" in log.splitlines()[-1]
    assert not any("READY=1" in m for m in d.messages)


@pytest.mark.slow
def test_supervisor_counts_kernel_drops_of_the_workers_sockets(tmp_path: Path) -> None:
    d = Daemon(tmp_path, "listen.rcvbuf_bytes=4096", workers=2)
    traffic = V9Traffic(seed=9)
    try:
        d.wait_message("READY=1")
        pids = json.loads(d.get("/status"))["worker_pids"]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        sent = 300
        traffic.send(d.port, sent)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

        def counted() -> tuple[float, float]:
            text = d.get("/metrics")
            values = {}
            for name in ("flowmed_socket_drops_total", "flowmed_listener_datagrams_total"):
                values[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                   if line.startswith(name + "{"))
            return values["flowmed_socket_drops_total"], values["flowmed_listener_datagrams_total"]

        deadline = time.monotonic() + 30
        while sum(counted()) < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        drops, received = counted()
        assert drops > 0 and drops + received == sent
        assert d.stop() == 0
    finally:
        traffic.close()
        d.kill()


@pytest.mark.slow
@pytest.mark.external
def test_stop_while_a_restarted_worker_is_starting_waits_for_it(tmp_path: Path) -> None:
    """SIGTERM right after a worker was restarted: the new worker gets to start, then stops cleanly (status 0)."""
    d = Daemon(tmp_path, workers=2)
    d.wait_message("READY=1")
    victim = json.loads(d.get("/status"))["worker_pids"][1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and json.loads(d.get("/status"))["worker_pids"][1] in (None, victim):
        time.sleep(0.02)
    assert d.stop() == 0, d.log_text()  # the new worker is still importing: no SIGTERM before it is ready
    assert d.log_text().count('msg="worker stopped"') == 2, d.log_text()
