"""``flowmed decode FILE.pcap``: the daemon's decoder over a capture, one row per flow, checked against tshark."""

from __future__ import annotations

import csv
import io
import json
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.exporter import IpfixExporter, V5Exporter, V9Exporter, flow_template, random_flows
from bench.pcapwrite import Datagram, write_pcap
from collector.cli import main
from tests.fixtures.peers import require_tool
from tests.fixtures.tshark import record_addr, record_int, tshark_messages, tshark_records

NOW = 1_790_000_000_000


def _capture(path: Path) -> int:
    """v5, v9 and IPFIX from three exporters, plus one datagram of garbage; returns the number of flows."""
    flows = random_flows(90, export_ms=NOW, seed=5)
    v5 = V5Exporter(boot_ms=NOW - 600_000)
    v9 = V9Exporter(domain=3, boot_ms=NOW - 600_000)
    ipfix = IpfixExporter(domain=7)
    t9, t10 = flow_template(260), flow_template(300, time_form="milliseconds")
    datagrams = [
        Datagram(v5.datagram(flows[:30], export_ms=NOW), "192.0.2.5", time_ms=NOW + 1),
        Datagram(v9.datagram(v9.templates(t9), v9.flows(t9, flows[30:60], NOW), export_ms=NOW), "192.0.2.9",
                 time_ms=NOW + 2),
        Datagram(ipfix.datagram(ipfix.templates(t10), ipfix.flows(t10, flows[60:], NOW), export_ms=NOW),
                 "2001:db8::10", dst="2001:db8::1", dport=4739, time_ms=NOW + 3),
        Datagram(b"\x00\x63not netflow", "192.0.2.66", time_ms=NOW + 4),
    ]
    write_pcap(path, datagrams)
    return 90


def _decode(pcap: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["decode", str(pcap), *args])
    err = result.stderr
    if result.exc_info and not isinstance(result.exception, SystemExit):  # show an unexpected exception's traceback
        err += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, result.stdout, err


@pytest.mark.external
def test_decode_csv_and_json_agree_with_tshark(tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    assert tshark
    pcap = tmp_path / "mixed.pcap"
    n = _capture(pcap)
    code, out, err = _decode(pcap)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == n
    assert "exporter=192.0.2.66 reason=unknown_version count=1" in err
    code, out_json, err = _decode(pcap, "--format", "json")
    assert code == 0, err
    assert [json.loads(line) for line in out_json.splitlines()] == [
        {k: (int(v) if v.isdigit() else v) for k, v in r.items()} for r in rows]
    assert {r["exporter"] for r in rows} == {"192.0.2.5", "192.0.2.9", "2001:db8::10"}
    # the capture time is the receive time, written as ISO 8601 UTC with milliseconds
    assert {r["time_received"] for r in rows} == {f"2026-09-21T14:13:20.00{i}Z" for i in (1, 2, 3)}

    records = tshark_records(tshark_messages(pcap, [2055, 4739]))
    assert len(records) == n
    want = sorted((record_addr(r, "src"), record_addr(r, "dst"), record_int(r, "cflow.octets"),
                   record_int(r, "cflow.packets")) for r in records)
    got = sorted((r["src_addr"], r["dst_addr"], int(r["raw_bytes"]), int(r["raw_packets"])) for r in rows)
    assert got == want


def test_decode_port_filter_and_bad_file(tmp_path: Path) -> None:
    pcap = tmp_path / "mixed.pcap"
    _capture(pcap)
    code, out, err = _decode(pcap, "--port", "4739")
    assert code == 0, err
    assert {r["version"] for r in csv.DictReader(io.StringIO(out))} == {"10"}
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    code, _, err = _decode(junk)
    assert code == 1 and "not a pcap or pcapng file" in err


def test_decode_an_sflow_capture_as_the_daemon_would(tmp_path: Path) -> None:
    """sFlow datagrams in a capture (the one the tshark/sfacctd cross-checks use) decode through the same
    dispatching decoder as the daemon's: one row per flow sample, as the sFlow decoder makes them."""
    from decoders.sflow import SFLOW_VERSION
    from decoders.sflow.decoder import SflowDecoder
    from tests.decoders.test_sflow_peers import _scenario

    datagrams, _ = _scenario()
    pcap = tmp_path / "sflow.pcap"
    write_pcap(pcap, datagrams)
    want = SflowDecoder().decode([(d.payload, d.src, d.time_ms) for d in datagrams])
    code, out, err = _decode(pcap, "--format", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == want.n_flows == 96
    assert {r["version"] for r in rows} == {SFLOW_VERSION}
    assert sum(r["bytes"] for r in rows) == int(want.flows["bytes"].sum())
    assert [r["src_port"] for r in rows] == want.flows["src_port"].tolist()
