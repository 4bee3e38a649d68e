"""End to end: RADIUS sessions from radclient, flows through the Mediator into the embedded store, then the
``flowmed query`` / ``reconcile`` / ``compare-sources`` commands; and the daemon with a static bindings file fed
IPFIX from the exporter simulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bench.exporter import Flow, IpfixExporter, flow_template
from collector import metrics as metrics_mod
from collector.components import make_sink
from collector.config import load
from collector.radius_listener import start_radius
from mediation import Mediator
from mediation.subscribers.bindings import Bindings
from mediation.tables import RECONCILIATION
from tests.collector.daemon import Daemon
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.mediation_helpers import INTERVAL, T0, a16
from tests.mediation.subscribers.test_radius import radclient
from tests.mediation.test_mediator import EXPECTED, run_scenario

pytestmark = [pytest.mark.external]


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", *args, "--set", f"store.path={store}"],
                          capture_output=True, text=True, timeout=180, check=False)


def query(store: Path, sql: str) -> list[dict]:
    proc = cli(store, "query", sql, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


USAGE_SQL = ("SELECT subscriber_id, toInt64(toUnixTimestamp64Milli(interval_start)) AS s, direction, "
             "sum(bytes) AS b FROM usage WHERE source = '{source}' GROUP BY subscriber_id, s, direction")


def usage_by_key(store: Path, source: str = "flow") -> dict[tuple, int]:
    return {(r["subscriber_id"], int(r["s"]), r["direction"]): int(r["b"])
            for r in query(store, USAGE_SQL.format(source=source))}


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.slow
def test_radclient_sessions_flows_store_query_and_reconcile(tmp_path):
    require_tool("radclient")
    store = tmp_path / "data"
    port = free_port()
    cfg = load(None, [f"store.path={store}", "mediation.watermark_s=60", "radius.enabled=true",
                      f'radius.listen=["127.0.0.1:{port}"]',
                      'radius.clients=[{address="127.0.0.1", secret="testing123"}]',
                      "radius.max_event_age_s=0"])  # (the sessions of a fixed day in the past)
    db = cfg.data_path(cfg.subscribers.bindings_db)
    sink = make_sink(cfg, metrics_mod.Metrics(CollectorRegistry()))
    t = T0 // 1000

    async def sessions():
        server = await start_radius(asyncio.get_running_loop(), cfg, None, sink.add, flush=sink.flush)
        try:
            requests = [
                f"Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = a, Framed-IP-Address = 100.64.0.1, "
                f"Event-Timestamp = {t - 3600}",
                f"Acct-Status-Type = Start, User-Name = bob, Acct-Session-Id = b, Framed-IP-Address = 100.64.0.2, "
                f"Event-Timestamp = {t - 3600}",
                f"Acct-Status-Type = Start, User-Name = carol, Acct-Session-Id = c, Framed-IP-Address = 100.64.0.3, "
                f"Event-Timestamp = {t - 3600}",
                f"Acct-Status-Type = Start, User-Name = erin, Acct-Session-Id = e, "
                f"Delegated-IPv6-Prefix = 2001:db8:e::/56, Event-Timestamp = {t - 3600}",
                # carol leaves at T0 + 2 min and the address goes to dave
                f"Acct-Status-Type = Stop, User-Name = carol, Acct-Session-Id = c, Framed-IP-Address = 100.64.0.3, "
                f"Event-Timestamp = {t + 120}, Acct-Input-Octets = 0, Acct-Output-Octets = 0",
                f"Acct-Status-Type = Start, User-Name = dave, Acct-Session-Id = d, Framed-IP-Address = 100.64.0.3, "
                f"Event-Timestamp = {t + 120}",
                # alice's counters: 1950 up / 5000 down since her Start, reported at T0 + 5 min
                f"Acct-Status-Type = Interim-Update, User-Name = alice, Acct-Session-Id = a, "
                f"Framed-IP-Address = 100.64.0.1, Event-Timestamp = {t + 300}, Acct-Input-Octets = 1950, "
                f"Acct-Output-Octets = 5000",
            ]
            for text in requests:
                code, out = await radclient(port, "testing123", text + "\n")
                assert code == 0 and "Received Accounting-Response" in out, out
        finally:
            await server.stop()

    asyncio.run(sessions())
    mediator = Mediator(cfg, Bindings(db), refresh_interval_s=0)
    for outs in run_scenario(mediator):
        for name, batch in outs.items():
            sink.add(name, batch)
    sink.close()

    assert usage_by_key(store) == EXPECTED
    # RADIUS counters: Start at T0 - 1 h, Interim at T0 + 5 min: 65 minutes spread over 13 intervals
    radius = usage_by_key(store, "radius")
    assert sum(v for (s, _, d), v in radius.items() if s == "alice" and d == "up") == 1950
    assert sum(v for (s, _, d), v in radius.items() if s == "alice" and d == "down") == 5000
    assert radius[("alice", T0, "up")] == 1950 * 5 // 65 or radius[("alice", T0, "up")] == 1950 * 5 // 65 + 1
    bindings = query(store, "SELECT subscriber_id, argMax(valid_to, version) AS vt FROM bindings "
                            "GROUP BY binding_id, subscriber_id ORDER BY subscriber_id")
    assert [b["subscriber_id"] for b in bindings] == ["alice", "bob", "carol", "dave", "erin"]

    rec = cli(store, "reconcile", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000))
    assert rec.returncode == 0, rec.stdout + rec.stderr
    total = [line for line in rec.stdout.splitlines() if line.startswith("total")][0].split("\t")
    assert total[3:8] == ["11", "15749", "12450", "300", "999"] and total[-1] == "yes"

    cmp = cli(store, "compare-sources", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000),
              "--subscriber", "alice")
    assert cmp.returncode == 0, cmp.stderr
    assert "alice\tup\t1950\t1950\t0\t0.00" in cmp.stdout and "alice\tdown\t5000\t5000\t0\t0.00" in cmp.stdout
    # bob has flow usage but no RADIUS counters: beyond any tolerance
    cmp = cli(store, "compare-sources", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000),
              "--tolerance-pct", "5")
    assert cmp.returncode == 1 and "bob\tdown\t700\t0\t700\t100.00" in cmp.stdout

    # a reconciliation row that does not balance makes the command fail
    sink = make_sink(cfg, metrics_mod.Metrics(CollectorRegistry()))
    bad = RECONCILIATION.to_arrow({"interval_start": np.array([T0]), "interval_end": np.array([T0 + INTERVAL]),
                                   "exporter": np.array([a16("192.0.2.9")], dtype="S16"),
                                   "source": np.array(["flow"], dtype=object), "bytes_in": np.array([10], np.uint64),
                                   "bytes_attributed": np.array([9], np.uint64), "balanced": np.array([0], np.uint8)})
    sink.add("reconciliation", bad)
    sink.close()
    rec = cli(store, "reconcile", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000))
    assert rec.returncode == 1 and "NO" in rec.stdout


@pytest.mark.slow
def test_reprocess_rejects_after_raising_a_limit(tmp_path):
    store = tmp_path / "data"
    cfg = load(None, [f"store.path={store}", "mediation.max_flow_duration_s=60"])
    bindings = Bindings(cfg.data_path(cfg.subscribers.bindings_db))
    bindings.open("alice", "100.64.0.1", 0)
    bindings.commit()
    from tests.mediation.mediation_helpers import flows

    sink = make_sink(cfg, metrics_mod.Metrics(CollectorRegistry()))
    m = Mediator(cfg, bindings)
    out = m.process(flows([dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 120_000, bytes=777, packets=7),
                           dict(src="100.64.0.1", dst="8.8.8.8", start=T0, end=T0 + 1000, bytes=5, packets=1)]),
                    T0 + 200_000)
    for batches in (out, m.close_all(T0 + 200_000)):  # both: each may hold reconciliation rows
        for name, b in batches.items():
            sink.add(name, b)
    sink.close()
    assert usage_by_key(store) == {("alice", T0, "up"): 5}
    args = ("reprocess", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000), "--set",
            "mediation.max_flow_duration_s=3600")
    first = cli(store, *args)
    assert first.returncode == 0, first.stderr
    assert "1 accepted" in first.stdout
    again = cli(store, *args)  # the same reject is not re-processed twice
    assert again.returncode == 0 and "0 not re-processed before" in again.stdout
    assert usage_by_key(store) == {("alice", T0, "up"): 782}
    rec = cli(store, "reconcile", "--from", iso(T0 - 3600_000), "--to", iso(T0 + 3600_000))
    assert rec.returncode == 0, rec.stdout
    totals = {line.split("\t")[2]: line.split("\t")[3:9] for line in rec.stdout.splitlines()
              if line.startswith("total")}
    # records_in, bytes_in, attributed, unattributed, rejected, duplicate: the reject moved to attributed once
    assert totals == {"received": ["2", "782", "5", "0", "777", "0"], "reprocess": ["1", "777", "777", "0", "0", "0"],
                      "net": ["2", "782", "782", "0", "0", "0"]}


@pytest.mark.slow
def test_daemon_with_static_bindings_and_ipfix(tmp_path):
    """``flowmed run`` mediates IPFIX from the exporter simulator; the usage in the store is exact."""
    subs = tmp_path / "subscribers.csv"
    subs.write_text("subscriber_id,network\nalice,100.64.0.1\nbob,100.64.0.2\nerin,2001:db8:e::/56\n")
    daemon = Daemon(tmp_path / "d", "mediation.enabled=true", f"subscribers.static_file={subs}",
                    "mediation.watermark_s=1", flush_interval_s=1.0)
    try:
        daemon.wait_message("READY=1")
        now = int(time.time() * 1000)
        b = now // INTERVAL * INTERVAL
        flows4 = [
            Flow("100.64.0.1", "8.8.8.8", 40000, 443, 6, 1000, 10, b - 200_000, b - 100_000),
            Flow("8.8.8.8", "100.64.0.1", 443, 40000, 6, 5000, 5, b - 200_000, b - 190_000),
            Flow("100.64.0.1", "100.64.0.2", 40000, 22, 6, 700, 7, b - 150_000, b - 149_000),
            Flow("198.51.100.9", "8.8.4.4", 40000, 53, 17, 300, 3, b - 150_000, b - 149_000),
        ]
        flows6 = [  # 100 s + 300 s + 10 s over three intervals
            Flow("2001:4860::8888", "2001:db8:e:1::5", 443, 40000, 6, 4100, 41, b - 400_000, b + 10_000),
        ]
        exporter = IpfixExporter(1)
        t4, t6 = flow_template(256, time_form="milliseconds"), flow_template(257, ipv6=True,
                                                                             time_form="milliseconds")
        datagram = exporter.datagram(exporter.templates(t4, t6), exporter.flows(t4, flows4, now),
                                     exporter.flows(t6, flows6, now), export_ms=now)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(datagram, ("127.0.0.1", daemon.port))
            s.sendto(datagram, ("127.0.0.1", daemon.port))  # resent: a duplicate
        time.sleep(3)
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.kill()
    got = usage_by_key(daemon.store)
    assert got == {
        ("alice", b - INTERVAL, "up"): 1700, ("alice", b - INTERVAL, "down"): 5000,
        ("bob", b - INTERVAL, "down"): 700, ("", b - INTERVAL, "unattributed"): 300,
        ("erin", b - 2 * INTERVAL, "down"): 1000, ("erin", b - INTERVAL, "down"): 3000,
        ("erin", b, "down"): 100,
    }, daemon.log_text()
    recon = query(daemon.store, "SELECT sum(bytes_in) AS i, sum(bytes_duplicate) AS d, sum(bytes_attributed) AS a, "
                                "sum(bytes_unattributed) AS u, min(balanced) AS ok FROM reconciliation")[0]
    assert (int(recon["i"]), int(recon["d"]), int(recon["a"]), int(recon["u"]), int(recon["ok"])) == \
        (2 * 11100, 11100, 10800, 300, 1)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_daemon_with_radius_sessions_from_radclient(tmp_path, workers):
    """``flowmed run`` with its RADIUS listener: radclient starts sessions, IPFIX from several exporter sockets is
    attributed to those subscribers exactly, with one worker or two (the second sees the bindings through SQLite)."""
    require_tool("radclient")
    rport = free_port()
    daemon = Daemon(tmp_path / "d", "mediation.enabled=true", "mediation.watermark_s=1", "radius.enabled=true",
                    f'radius.listen=["127.0.0.1:{rport}"]', 'radius.clients=[{address="127.0.0.1", secret="s3"}]',
                    "subscribers.refresh_interval_s=0.2", flush_interval_s=1.0, workers=workers)
    try:
        daemon.wait_message("READY=1")
        now = int(time.time() * 1000)
        b = now // INTERVAL * INTERVAL
        t = (b - 3 * INTERVAL) // 1000

        async def sessions():
            for user, ip in (("alice", "100.64.0.1"), ("bob", "100.64.0.2")):
                code, out = await radclient(rport, "s3", f"Acct-Status-Type = Start, User-Name = {user}, "
                                            f"Acct-Session-Id = {user}, Framed-IP-Address = {ip}, "
                                            f"Event-Timestamp = {t}\n")
                assert code == 0, out

        asyncio.run(sessions())
        time.sleep(1.5)  # the other worker picks the bindings up (subscribers.refresh_interval_s)
        flows = [
            Flow("100.64.0.1", "8.8.8.8", 40000, 443, 6, 1000, 10, b - 200_000, b - 100_000),
            Flow("8.8.8.8", "100.64.0.2", 443, 40000, 6, 5000, 5, b - 200_000, b - 190_000),
            Flow("198.51.100.9", "8.8.4.4", 40000, 53, 17, 300, 3, b - 150_000, b - 149_000),
        ]
        tmpl = flow_template(256, time_form="milliseconds")
        for i in range(8):  # eight exporters (sockets): with two workers, both get some
            exporter = IpfixExporter(i)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(exporter.datagram(exporter.templates(tmpl), exporter.flows(tmpl, flows, now),
                                           export_ms=now), ("127.0.0.1", daemon.port))
        time.sleep(3)
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.kill()
    assert usage_by_key(daemon.store) == {("alice", b - INTERVAL, "up"): 8000, ("bob", b - INTERVAL, "down"): 40000,
                                          ("", b - INTERVAL, "unattributed"): 2400}, daemon.log_text()
    names = query(daemon.store, "SELECT DISTINCT subscriber_id FROM bindings ORDER BY subscriber_id")
    assert [r["subscriber_id"] for r in names] == ["alice", "bob"]


@pytest.mark.slow
def test_daemon_mediates_softflowd_exports(tmp_path):
    """softflowd exports a known traffic pcap (IPFIX, IPv4 and IPv6) to ``flowmed run``; the usage per subscriber
    and direction equals the traffic's own byte counts under the static bindings."""
    import ipaddress

    from tests.fixtures.softflowd import TRAFFIC_T0, export_with_softflowd, write_traffic

    truth = write_traffic(tmp_path / "t.pcap", ipv6=True)
    subs = tmp_path / "subscribers.csv"
    subs.write_text("subscriber_id,network\nsub-a,10.1.0.0/28\nsub-b,10.1.0.16\nsub-v6,2001:db8:a::/64\n")
    nets = {"sub-a": ipaddress.ip_network("10.1.0.0/28"), "sub-b": ipaddress.ip_network("10.1.0.16/32"),
            "sub-v6": ipaddress.ip_network("2001:db8:a::/64")}

    def owner(addr: str) -> str:
        a = ipaddress.ip_address(addr)
        return next((s for s, n in nets.items() if a.version == n.version and a in n), "")

    t0 = int(TRAFFIC_T0 * 1000) // INTERVAL * INTERVAL
    expected: dict[tuple, int] = {}
    for f in truth.values():
        assert f.start_ms // INTERVAL * INTERVAL == t0 and (f.end_ms - 1) // INTERVAL * INTERVAL == t0
        keys = [(owner(f.src), t0, "up")] if owner(f.src) else []
        keys += [(owner(f.dst), t0, "down")] if owner(f.dst) else []
        for key in keys or [("", t0, "unattributed")]:
            expected[key] = expected.get(key, 0) + f.bytes
    # the traffic is from 2025: allow records that old
    daemon = Daemon(tmp_path / "d", "mediation.enabled=true", f"subscribers.static_file={subs}",
                    "mediation.max_lateness_s=100000000", flush_interval_s=1.0)
    try:
        daemon.wait_message("READY=1")
        export_with_softflowd(tmp_path, "t.pcap", 10, ipv6=True, port=daemon.port)
        time.sleep(2)
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        daemon.kill()
    assert usage_by_key(daemon.store) == expected, daemon.log_text()
    assert {k[0] for k in expected} == {"sub-a", "sub-b", "sub-v6", ""}
