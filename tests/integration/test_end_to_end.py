"""End to end: softflowd exports a known traffic pcap straight to a running ``flowmed run`` daemon while tshark
captures the wire; ``flowmed query`` over the embedded store then returns the totals tshark decodes from the wire
(and the traffic holds), for NetFlow v5, v9 and IPFIX.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.collector.daemon import Daemon
from tests.fixtures.softflowd import export_with_softflowd, write_traffic
from tests.fixtures.tshark import tshark_messages, tshark_records

pytestmark = [pytest.mark.external, pytest.mark.slow]

TOTALS = "SELECT count() AS flows, sum(bytes) AS bytes, sum(packets) AS packets FROM flows"


def _query(store: Path, cwd: Path, sql: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "query", sql, "--format", "json", "--set",
                           f"store.path={store}"], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _totals(store: Path, cwd: Path) -> tuple[int, int, int]:
    row = _query(store, cwd, TOTALS)[0]
    return int(row["flows"]), int(row["bytes"] or 0), int(row["packets"] or 0)


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
