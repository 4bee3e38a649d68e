"""End to end through a running ``flowmed run`` daemon and ``flowmed query`` over its embedded store.

1. softflowd exports a known traffic pcap straight to the daemon while tshark captures the wire: the stored totals
   equal tshark's decoding of the wire (and the traffic), for NetFlow v5, v9 and IPFIX.
2. Every exporter scenario of ``bench.scenarios`` is replayed to the daemon, each exporter from its own loopback
   address (127.0.2.x): per exporter, the stored flows, upscaled bytes and packets, raw bytes and sampling rates
   equal the scenario's expectations (sampling options, held data, template ids reused across exporters).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS
from tests.collector.daemon import Daemon
from tests.fixtures.softflowd import export_with_softflowd, write_traffic
from tests.fixtures.tshark import tshark_messages, tshark_records

pytestmark = pytest.mark.slow

TOTALS = "SELECT count() AS flows, sum(bytes) AS bytes, sum(packets) AS packets FROM flows"


def _query(store: Path, cwd: Path, sql: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "query", sql, "--format", "json", "--set",
                           f"store.path={store}"], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _totals(store: Path, cwd: Path) -> tuple[int, int, int]:
    """Flows, bytes and packets in the store; zeros before the daemon's first file (`query` refuses an empty store)."""
    if not any(store.glob("flows/date=*/hour=*/*.parquet")):
        return 0, 0, 0
    row = _query(store, cwd, TOTALS)[0]
    return int(row["flows"]), int(row["bytes"] or 0), int(row["packets"] or 0)


@pytest.mark.external
@pytest.mark.parametrize("version", [5, 9, 10], ids=["v5", "v9", "ipfix"])
def test_softflowd_to_daemon_query_totals_match_tshark(version: int, tmp_path: Path) -> None:
    truth = write_traffic(tmp_path / "t.pcap", ipv6=version != 5)
    if version == 5:
        truth = {k: f for k, f in truth.items() if ":" not in f.src}
    daemon = Daemon(tmp_path / "daemon", flush_interval_s=1.0)
    try:
        daemon.wait_message("READY=1")
        export = export_with_softflowd(tmp_path, "t.pcap", version, ipv6=version != 5, port=daemon.port)
        wire = tshark_records(tshark_messages(export.capture, [export.port]))
        on_the_wire = (len(wire), sum(int(r["cflow.octets"]) for r in wire), sum(int(r["cflow.packets"]) for r in wire))
        assert on_the_wire == (len(truth), sum(f.bytes for f in truth.values()), sum(f.packets for f in truth.values()))
        # the daemon flushes every second; query (while it runs) until everything is stored, bounded
        totals = (0, 0, 0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            totals = _totals(daemon.store, tmp_path)
            if totals[0] >= on_the_wire[0]:
                break
            time.sleep(0.5)
        assert totals == on_the_wire
        by_src = _query(daemon.store, tmp_path, "SELECT src_addr, sum(bytes) AS b FROM flows GROUP BY src_addr")
        want: dict[str, int] = {}
        for f in truth.values():
            want[f.src] = want.get(f.src, 0) + f.bytes
        assert {r["src_addr"]: int(r["b"]) for r in by_src} == want
    finally:
        assert daemon.stop() == 0, daemon.log_text()
    assert _totals(daemon.store, tmp_path) == on_the_wire  # nothing doubled by the shutdown flush


def _loopback_for(exporter: str) -> str:
    """A distinct loopback source address per scenario exporter: 192.0.2.x -> 127.0.2.x, IPv6 ones -> 127.0.3.x."""
    addr = ipaddress.ip_address(exporter)
    if addr.version == 4:
        return f"127.0.2.{addr.packed[3]}"
    return f"127.0.3.{addr.packed[15]}"


def _wait_stored(store: Path, cwd: Path, flows: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _totals(store, cwd)[0] < flows:
        time.sleep(0.5)


def test_scenarios_through_the_daemon(tmp_path: Path) -> None:
    scenarios = [build() for build in SCENARIOS.values()]
    exporters = {d.src for s in scenarios for d in s.datagrams}
    assert len({_loopback_for(e) for e in exporters}) == len(exporters)  # scenarios use distinct exporters
    want: dict[str, list[int]] = {}
    for scenario in scenarios:
        for row in scenario.expected:
            w = want.setdefault(_loopback_for(str(row["exporter"])), [0, 0, 0, 0, 0])
            w[0] += 1
            w[1] += int(row["bytes"])
            w[2] += int(row["packets"])
            w[3] += int(row["raw_bytes"])
            w[4] = max(w[4], int(row["sampling_rate"]))
    daemon = Daemon(tmp_path / "daemon", flush_interval_s=1.0)
    sockets: dict[str, socket.socket] = {}
    try:
        daemon.wait_message("READY=1")
        for scenario in scenarios:
            for d in scenario.datagrams:
                src = _loopback_for(d.src)
                if src not in sockets:
                    sockets[src] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sockets[src].bind((src, 0))
                sockets[src].sendto(d.payload, ("127.0.0.1", daemon.port))
        _wait_stored(daemon.store, tmp_path, sum(w[0] for w in want.values()))
        rows = _query(daemon.store, tmp_path, "SELECT exporter, count() AS n, sum(bytes) AS b, sum(packets) AS p, "
                      "sum(raw_bytes) AS rb, max(sampling_rate) AS r FROM flows GROUP BY exporter")
        got = {r["exporter"]: [int(r["n"]), int(r["b"]), int(r["p"]), int(r["rb"]), int(r["r"])] for r in rows}
        assert got == want
    finally:
        for sock in sockets.values():
            sock.close()
        assert daemon.stop() == 0, daemon.log_text()
