"""``flowmed run`` with mediation on writes the compliance tables: the CGNAT scenario's datagrams sent over loopback
UDP, then ``flowmed trace`` on the daemon's store names the static subscriber and the NAT translation."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import sys
import time

import pytest

from tests.collector.daemon import Daemon
from tests.mediation.compliance import scenario

pytestmark = [pytest.mark.slow]


def trace(store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", "trace", *args, "--set", f"store.path={store}"],
                          capture_output=True, text=True, timeout=120)


def test_daemon_writes_compliance_tables(tmp_path):
    static = tmp_path / "static.csv"
    static.write_text(scenario.STATIC_CSV)
    daemon = Daemon(tmp_path / "d", "mediation.enabled=true", f"subscribers.static_file={static}",
                    flush_interval_s=1.0)
    try:
        daemon.wait_message("READY=1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for payload, _, _ in scenario.datagrams():
                s.sendto(payload, ("127.0.0.1", daemon.port))
        time.sleep(3)
        metrics = daemon.get("/metrics")
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.kill()
    for line in ('flowmed_compliance_records_total{status="attributed"} 1.0',
                 'flowmed_compliance_records_total{status="unattributed"} 7.0',
                 'flowmed_nat_events_total{kind="event"} 10.0', 'flowmed_nat_events_total{kind="other"} 1.0',
                 'flowmed_nat_events_total{kind="observed"} 6.0'):
        assert line in metrics, metrics
    frank = trace(daemon.store, "--address", "198.51.100.50", "--at", "2026-03-02T14:05:05Z")
    assert frank.returncode == 0, frank.stderr
    assert frank.stdout.startswith("holder: frank; inside address 198.51.100.50; NAT: none; binding: static")
    # no RADIUS here: the NAT session names the inside address, no binding names a subscriber
    nat = trace(daemon.store, "--address", "203.0.113.7", "--port", "40112", "--at", "2026-03-02T14:01:20Z",
                "--format", "csv")
    assert nat.returncode == 0, nat.stderr
    verdict, *rows = list(csv.DictReader(io.StringIO(nat.stdout)))
    assert (verdict["evidence"], verdict["private_addr"], verdict["private_port"]) == ("verdict", "100.64.0.1", "5000")
    assert [r["evidence"] for r in rows] == ["nat", "nat_end", "flow"]
    assert (rows[0]["private_addr"], rows[0]["private_port"], rows[0]["public_addr"], rows[0]["detail"]) == (
        "100.64.0.1", "5000", "203.0.113.7", "session start natEvent 4")
    assert rows[1]["time_from"].startswith("2026-03-02 14:10:00")  # the delete
    assert (rows[2]["bytes"], rows[2]["subscriber_id"]) == ("1234", "")


def test_two_workers_write_each_record_once(tmp_path):
    """With two workers the static file belongs to worker 0 (its bindings are mirrored once) and whichever worker
    the kernel hands the NAT device to writes the records, attributed through the shared bindings database."""
    static = tmp_path / "static.csv"
    static.write_text(scenario.STATIC_CSV)
    daemon = Daemon(tmp_path / "d", "mediation.enabled=true", f"subscribers.static_file={static}",
                    flush_interval_s=1.0, workers=2)
    try:
        daemon.wait_message("READY=1")
        time.sleep(1.5)  # both workers up and the static bindings committed by worker 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for payload, _, _ in scenario.datagrams():
                s.sendto(payload, ("127.0.0.1", daemon.port))
        time.sleep(3)
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.kill()
    out = subprocess.run([sys.executable, "-m", "collector.cli", "query", "--format", "csv", "--set",
                          f"store.path={daemon.store}",
                          "SELECT (SELECT count() FROM ip_detail_records) AS r, (SELECT count() FROM nat_events) AS n, "
                          "(SELECT count() FROM bindings WHERE source = 'static') AS b, (SELECT any(subscriber_id) "
                          "FROM ip_detail_records WHERE src_addr = toIPv6('198.51.100.50')) AS frank"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == '8,16,1,"frank"'
