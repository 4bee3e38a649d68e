"""The README's replay, for real: ``softflowd -r capture -v 10`` (no ``-a``) into a running flowmed with mediation.

softflowd's init time is then the wall clock and its uptime times (``packet - init``, negative for the capture's
packets) wrap as 32-bit values; flowmed used to put them 2**32 ms ahead and mediation rejected every record as
``future`` without a word in the log or ``flowmed status`` (issue 15). Now the times are the capture's own (checked
against the traffic written and against tshark's decode of the same datagrams) and nothing is rejected; rejects, if
any, show in ``flowmed_rejects_total`` and ``flowmed status``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.collector.daemon import Daemon
from tests.fixtures.softflowd import export_with_softflowd, write_traffic
from tests.fixtures.tshark import tshark_messages, tshark_records, tshark_row

pytestmark = [pytest.mark.external, pytest.mark.slow]


def _metric_sum(exposition: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", exposition, re.M))


def test_a_softflowd_ipfix_replay_of_a_recent_capture_is_stored_and_mediated(tmp_path: Path) -> None:
    capture_start = float(int(time.time()) - 600)  # a capture made ten minutes ago
    truth = write_traffic(tmp_path / "t.pcap", ipv6=True, t0=capture_start)
    d = Daemon(tmp_path / "flowmed", "mediation.enabled=true")
    try:
        d.wait_message("READY=1")
        export = export_with_softflowd(tmp_path, "t.pcap", 10, ipv6=True, port=d.port, pcap_clock=False)
        deadline = time.monotonic() + 60
        while _metric_sum(d.get("/metrics"), "flowmed_records_received_total") < export.records:
            assert time.monotonic() < deadline, "flowmed did not receive every record softflowd sent"
            time.sleep(0.2)
        time.sleep(1.5)  # one tick: the Mediator's counters reach the metrics and the status
        exposition = d.get("/metrics")
        assert "flowmed_rejects_total{" not in exposition, [ln for ln in exposition.splitlines() if "reject" in ln]
        status = subprocess.run([str(Path(sys.executable).with_name("flowmed")), "status", "--set",
                                 f"metrics.listen=127.0.0.1:{d.metrics_port}"], capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stderr
        assert "rejected by mediation 0" in status.stdout, status.stdout
        assert d.stop() == 0
    finally:
        d.kill()
    assert "flow records rejected by mediation" not in d.log_text()

    from storage.query import QueryEngine

    with QueryEngine.for_store(d.store) as engine:
        flows = engine.query("SELECT IPv6NumToString(src_addr) AS src, IPv6NumToString(dst_addr) AS dst, src_port, "
                             "dst_port, protocol, toInt64(toUnixTimestamp64Milli(flow_start)) AS fs, "
                             "toInt64(toUnixTimestamp64Milli(flow_end)) AS fe, bytes FROM flows").to_pylist()
        rejects = engine.query("SELECT count() AS n FROM rejects").column("n")[0].as_py()
        usage_bytes = engine.query("SELECT sum(bytes) AS b FROM usage").column("b")[0].as_py()
    assert rejects == 0
    assert len(flows) == export.records == len(truth)
    assert usage_bytes == sum(f.bytes for f in truth.values())  # every byte mediated (unattributed: no bindings)

    # the capture's own times (softflowd tracks both directions as one flow from the first packet of the
    # conversation to its last), within the 2 ms softflowd loses truncating its init time and each uptime to the
    # millisecond (tshark's decode of the same datagrams, below, is matched exactly)
    ours = {(r["src"].removeprefix("::ffff:"), r["dst"].removeprefix("::ffff:"), r["src_port"], r["dst_port"],
             r["protocol"]): (r["fs"], r["fe"]) for r in flows}
    assert set(ours) == set(truth)
    for key, f in truth.items():
        start, end = ours[key]
        assert abs(start - f.start_ms) <= 2 and abs(end - f.end_ms) <= 2, (key, ours[key], f)

    # tshark reads the same datagrams as systemInitTime + uptime without the wrap: the same instants modulo 2**32
    theirs = [tshark_row(r) for r in tshark_records(tshark_messages(export.capture, [export.port]))]
    assert len(theirs) == export.records
    for row in theirs:
        key = (row["src_addr"], row["dst_addr"], row["src_port"], row["dst_port"], row["protocol"])
        start, end = ours[key]
        assert (start - row["flow_start"]) % (1 << 32) == 0 and (end - row["flow_end"]) % (1 << 32) == 0
        assert row["flow_start"] > start  # what flowmed decoded before: ahead of the capture
