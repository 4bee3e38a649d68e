"""softflowd (Debian) exports a known traffic pcap as NetFlow v5, v9 and IPFIX over loopback; tshark captures it.
flowmed's decoding of that capture must agree with tshark's field by field, and both with the traffic in totals.

(a) tshark decodes the capture (``-d udp.port==P,cflow``); (b) flowmed decodes it with ``decoders.pcap`` +
``FlowDecoder`` and with ``flowmed decode FILE --format json``; (truth) the conversations written into the pcap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from bench.scenarios import rows_from_columns
from tests.fixtures.softflowd import Export, TruthFlow, export_with_softflowd, write_traffic
from tests.fixtures.tshark import tshark_field_sums, tshark_messages, tshark_records, tshark_row

pytestmark = [pytest.mark.external, pytest.mark.slow]

TRAFFIC = "t.pcap"  # softflowd keeps only 16 characters of its -r path: short, relative


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("softflowd")


@pytest.fixture(scope="module")
def truth(workdir: Path) -> dict[tuple, TruthFlow]:
    """Known conversations, IPv4 and IPv6 (v5 exports see only the IPv4 ones)."""
    return write_traffic(workdir / TRAFFIC, ipv6=True)


@pytest.fixture(scope="module", params=[5, 9, 10], ids=["v5", "v9", "ipfix"])
def export(request: pytest.FixtureRequest, workdir: Path, truth: dict) -> Export:
    version = request.param
    return export_with_softflowd(workdir, TRAFFIC, version, ipv6=version != 5)


def _expected(truth: dict[tuple, TruthFlow], version: int) -> dict[tuple, TruthFlow]:
    return {k: f for k, f in truth.items() if version != 5 or ":" not in f.src}


def _flowmed_rows(export: Export) -> list[dict[str, object]]:
    from decoders.netflow.decoder import FlowDecoder
    from decoders.pcap import datagrams

    items = datagrams(export.capture, [export.port])
    assert len(items) == export.datagrams, "the capture misses export datagrams softflowd reported sending"
    result = FlowDecoder().decode(items)
    assert result.errors == Counter()
    assert result.sequence_lost == Counter()
    return rows_from_columns(result.flows)


def _tshark_rows(export: Export) -> list[dict[str, object]]:
    messages = tshark_messages(export.capture, [export.port])
    assert len(messages) == export.datagrams
    return [tshark_row(r) for r in tshark_records(messages)]


def _sort_key(row: dict[str, object]) -> tuple:
    return (row["src_addr"], row["dst_addr"], row["src_port"], row["dst_port"], row["protocol"], row["flow_start"])


def test_flowmed_agrees_with_tshark_field_by_field(export: Export) -> None:
    ours = sorted(_flowmed_rows(export), key=_sort_key)
    theirs = sorted(_tshark_rows(export), key=_sort_key)
    assert len(ours) == len(theirs) == export.records
    for mine, ref in zip(ours, theirs, strict=True):
        assert {k: mine[k] for k in ref} == ref
        # softflowd exports no sampling: upscaled counters equal the raw ones
        assert (mine["bytes"], mine["packets"], mine["sampling_rate"]) == (ref["raw_bytes"], ref["raw_packets"], 1)


def test_totals_and_flows_match_the_traffic(export: Export, truth: dict[tuple, TruthFlow]) -> None:
    expected = _expected(truth, export.version)
    ours = _flowmed_rows(export)
    theirs = _tshark_rows(export)
    want = (sum(f.bytes for f in expected.values()), sum(f.packets for f in expected.values()), len(expected))
    assert (sum(r["bytes"] for r in ours), sum(r["packets"] for r in ours), len(ours)) == want
    assert (sum(r["raw_bytes"] for r in theirs), sum(r["raw_packets"] for r in theirs), len(theirs)) == want
    sums = tshark_field_sums(export.capture, [export.port], ["cflow.octets", "cflow.packets"])
    assert (sums["cflow.octets"][1], sums["cflow.packets"][1], sums["cflow.octets"][0]) == want
    got = {(r["src_addr"], r["dst_addr"], r["src_port"], r["dst_port"], r["protocol"]): r for r in ours}
    assert set(got) == set(expected)
    for key, flow in expected.items():
        row = got[key]
        assert (row["bytes"], row["packets"]) == (flow.bytes, flow.packets), key
        # softflowd -a: times come from the pcap's clock; it reports a conversation's span in both directions.
        # The v9 header carries the export time in whole seconds only (unix_secs beside a millisecond sysUptime),
        # so v9 times can only be known to within the export time's sub-second part: up to 999 ms early.
        slack = 999 if export.version == 9 else 0
        assert flow.start_ms - slack <= row["flow_start"] <= flow.start_ms, key
        assert flow.end_ms - slack <= row["flow_end"] <= flow.end_ms, key
        assert row["flow_end"] - row["flow_start"] == flow.end_ms - flow.start_ms, key
        assert row["version"] == export.version and row["exporter"] == "127.0.0.1"


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_flowmed_decode_command_agrees(export: Export, workdir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "decode", str(export.capture), "--format", "json",
                           "--port", str(export.port)], cwd=workdir, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "decode errors" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    library = _flowmed_rows(export)
    assert len(lines) == len(library) == export.records

    def key(r: dict) -> tuple:
        return (r["src_addr"], r["dst_addr"], r["src_port"], r["dst_port"], r["protocol"])

    cli = {key(r): (r["bytes"], r["packets"], _iso_ms(r["flow_start"]), _iso_ms(r["flow_end"]), r["tcp_flags"])
           for r in lines}
    lib = {key(r): (r["bytes"], r["packets"], r["flow_start"], r["flow_end"], r["tcp_flags"]) for r in library}
    assert cli == lib
