"""tshark's IPDR dissector decodes the simulator <-> collector traffic with the same values the collector stored.

Wireshark's dissector is an independent implementation (its SAMIS-TYPE-1 decoder was written from real CMTS
captures): agreement on every DATA record (CM MAC, octets, packets, SFID, ...) and on the collector's DATA_ACKs
shows both sides follow IPDR/SP, not just each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench.cmts import CmtsSimulator
from collector.config import IpdrConfig, IpdrExporter
from collector.ipdr import IpdrCollector
from decoders.ipdr import messages as m
from mediation.ipdr.usage import IpdrUsage
from tests.fixtures.peers import free_port, require_tool

pytestmark = pytest.mark.external


@contextlib.contextmanager
def capture_loopback(tshark: str, port: int, path: Path):
    """``tshark -i lo -f 'tcp port P' -w F``, started for real (probe connections seen in the file), stopped with
    SIGTERM."""
    proc = subprocess.Popen([tshark, "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Capturing on" in line:
                break
        # dumpcap applies the filter a moment after saying so: probe the port until packets reach the file
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen()
            deadline = time.monotonic() + 20
            while not (path.exists() and path.stat().st_size > 4096) and time.monotonic() < deadline:
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.sendall(b"p" * 64)
                    listener.accept()[0].close()
                time.sleep(0.02)
        yield
    finally:
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _ipdr_messages(tshark: str, path: Path, port: int) -> list[dict]:
    out = subprocess.run([tshark, "-r", str(path), "-d", f"tcp.port=={port},ipdr", "-o",
                          "ipdr.sessions.samis_type_1:1", "-T", "json", "--no-duplicate-keys"],
                         capture_output=True, text=True, check=True).stdout
    messages: list[dict] = []
    for frame in json.loads(out):
        layer = frame["_source"]["layers"].get("ipdr")
        if layer is None:
            continue
        messages.extend(layer if isinstance(layer, list) else [layer])
    return messages


def _flat(obj: dict, out: dict | None = None) -> dict:
    out = {} if out is None else out
    for k, v in obj.items():
        if isinstance(v, dict):
            _flat(v, out)
        elif k.startswith("ipdr."):
            out[k] = v
    return out


def test_tshark_agrees_with_the_collector(tmp_path):
    tshark = require_tool("tshark")
    port = free_port(socket.SOCK_STREAM)
    pcap = tmp_path / "ipdr.pcapng"
    from tests.ipdr.conftest import MemorySink

    sink = MemorySink()

    async def scenario():
        sim = CmtsSimulator(12, ack_sequence_interval=8, wrap_fraction=0.2)
        await sim.listen("127.0.0.1", port)
        usage = IpdrUsage(None, preexisting="count")
        coll = IpdrCollector(IpdrConfig(enabled=True, exporters=[IpdrExporter(f"127.0.0.1:{port}")],
                                        idle_ack_s=0.1), sink, usage)
        await coll.start()
        for _ in range(2):
            sim.generate_interval()
            await sim.wait_acked(timeout=20)
        await coll.stop()
        await sim.close()
        return sim

    with capture_loopback(tshark, port, pcap):
        sim = asyncio.run(asyncio.wait_for(scenario(), 60))
    messages = [_flat(msg) for msg in _ipdr_messages(tshark, pcap, port)]
    ids = [int(msg["ipdr.message_id"]) for msg in messages]
    for needed in (m.MsgId.CONNECT, m.MsgId.CONNECT_RESPONSE, m.MsgId.GET_SESSIONS, m.MsgId.FLOW_START,
                   m.MsgId.TEMPLATE_DATA, m.MsgId.FINAL_TEMPLATE_DATA_ACK, m.MsgId.SESSION_START, m.MsgId.DATA,
                   m.MsgId.DATA_ACK, m.MsgId.SESSION_STOP, m.MsgId.FLOW_STOP, m.MsgId.DISCONNECT):
        assert needed in ids, f"{m.MsgId(needed).name} not seen by tshark"
    assert not any("ipdr.message_id.unknown" in msg for msg in messages)

    data = [msg for msg in messages if int(msg["ipdr.message_id"]) == m.MsgId.DATA]
    assert len(data) == sim.records_generated
    stored = {(r["session_id"], r["dsn"]): r for r in sink.rows("ipdr_records")}
    samis = [msg for msg in data if msg["ipdr.session_id"] == "1"]
    assert samis and all("ipdr.cm_mac_address" in msg for msg in samis)
    for msg in samis:
        row = stored[(1, int(msg["ipdr.sequence_num"]))]
        assert msg["ipdr.cm_mac_address"] == row["cm_mac"]
        assert int(msg["ipdr.octets_passed"]) == row["service_octets_passed"]
        assert int(msg["ipdr.packets_passed"]) == row["service_pkts_passed"]
        assert int(msg["ipdr.service_identifier"]) == row["service_identifier"]
        assert int(msg["ipdr.service_direction"]) == row["service_direction"]
        assert int(msg["ipdr.record_type"]) == row["rec_type"]
        assert int(msg["ipdr.cmts_uptime"]) == row["cmts_sys_up_time"]
        assert int(msg["ipdr.service_time_created"]) == row["service_time_created"]
        assert msg["ipdr.cmts_host_name"] == row["cmts_host"]
        assert msg["ipdr.service_class_name"] == row["service_class_name"]
        assert msg["ipdr.cm_ipv4_addr"] == ".".join(str(b) for b in row["cm_ipv4"][12:])
        assert ipaddress.ip_address(msg["ipdr.cm_ipv6_addr"]).packed == row["cm_ipv6"]
        assert ipaddress.ip_address(msg["ipdr.cmts_ipv6_addr"]).packed == row["cmts_ipv6"]
        assert msg["ipdr.cmts_md_if_name"] == row["md_if_name"]
        assert int(msg["ipdr.cmts_md_if_index"]) == row["md_if_index"]
    # every DATA of both sessions (TYPE-2 has no sub-dissector): same DSNs, template and config ids
    assert {(int(x["ipdr.session_id"]), int(x["ipdr.sequence_num"])) for x in data} == set(stored)
    # the collector's DATA_ACKs as tshark reads them: the configId of the data, the DSN of a record it stored
    acks = [msg for msg in messages if int(msg["ipdr.message_id"]) == m.MsgId.DATA_ACK]
    assert acks
    for ack in acks:
        assert int(ack["ipdr.config_id"]) == sim.config_id
        assert (int(ack["ipdr.session_id"]), int(ack["ipdr.sequence_num"])) in stored
    last = {}
    for ack in acks:
        last[int(ack["ipdr.session_id"])] = int(ack["ipdr.sequence_num"])
    assert last == {sid: q.next_dsn - 1 for sid, q in sim.sessions.items()}
    os.unlink(pcap)


def _epoch_ms(text: str) -> int:
    """tshark's absolute time text (TZ=UTC), e.g. ``Jan  1, 2027 00:15:00.000000000 UTC``, as epoch ms."""
    from datetime import UTC, datetime

    stamp, _, frac = text.removesuffix(" UTC").partition(".")
    dt = datetime.strptime(" ".join(stamp.split()), "%b %d, %Y %H:%M:%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1000 + int((frac or "0")[:3].ljust(3, "0"))


def test_tshark_confirms_the_pre_existing_rule_on_fifteen_minute_intervals(tmp_path, monkeypatch):
    """Flows created after flowmed's first session are billed whole from their first record, older ones only set a
    baseline: judged here from what tshark decodes on the wire (RecCreationTime, CmtsSysUpTime, ServiceTimeCreated,
    octets), against the rows the collector stored."""
    tshark = require_tool("tshark")
    monkeypatch.setenv("TZ", "UTC")
    port = free_port(socket.SOCK_STREAM)
    pcap = tmp_path / "ipdr.pcapng"
    from tests.ipdr.conftest import MemorySink

    sink = MemorySink()

    async def scenario():
        sim = CmtsSimulator(6, ack_sequence_interval=8)
        await sim.listen("127.0.0.1", port)
        usage = IpdrUsage(tmp_path / "state")  # preexisting = "baseline"
        coll = IpdrCollector(IpdrConfig(enabled=True, exporters=[IpdrExporter(f"127.0.0.1:{port}", "cmts")],
                                        idle_ack_s=0.1), sink, usage, wall_clock=lambda: sim.clock)
        await coll.start()
        await sim.wait_for(lambda: sim.collecting, timeout=20)
        sim.clock += 120
        sim.add_modem()  # index 6: session 1 (SAMIS-TYPE-1, which tshark decodes field by field)
        sim.add_modem()  # index 7: session 2
        sim.add_modem(created_ahead_cs=40, report_now=True)  # index 8: ServiceTimeCreated past sysUpTime
        for seconds in (780, 900):  # two 15-minute intervals, in simulated time
            sim.generate_interval(seconds)
            await sim.wait_acked(timeout=20)
        await coll.stop()
        await sim.close()
        return usage.state.first_sessions["cmts"]

    with capture_loopback(tshark, port, pcap):
        first_session = asyncio.run(asyncio.wait_for(scenario(), 60))
    records = [msg for msg in map(_flat, _ipdr_messages(tshark, pcap, port))
               if int(msg["ipdr.message_id"]) == m.MsgId.DATA and msg["ipdr.session_id"] == "1"]
    stored = {r["dsn"]: r for r in sink.rows("ipdr_records") if r["session_id"] == 1}
    seen: set[tuple] = set()
    reasons = []
    for msg in sorted(records, key=lambda x: int(x["ipdr.sequence_num"])):
        key = (msg["ipdr.cm_mac_address"], msg["ipdr.service_identifier"], msg["ipdr.service_direction"],
               msg["ipdr.service_time_created"])
        if key in seen:
            continue
        seen.add(key)
        up, created = int(msg["ipdr.cmts_uptime"]), int(msg["ipdr.service_time_created"])
        age_cs = max(0, up - created)  # no wrap: the simulated CMTS has been up for a day
        created_ms = _epoch_ms(msg["ipdr.rec_creation_time"]) - age_cs * 10
        row = stored[int(msg["ipdr.sequence_num"])]
        if created_ms < first_session - 60_000:
            assert row["delta_reason"] == "baseline" and row["delta_octets"] == 0, key
        else:
            assert row["delta_reason"] == "first" and row["delta_octets"] == int(msg["ipdr.octets_passed"]), key
        reasons.append((row["delta_reason"], created > up))
    # the new modems' flows (2 each) were counted, one of them created "after" its record's sysUpTime; the 3
    # modems of session 1 that registered before flowmed connected only set a baseline
    assert sorted(reasons) == [("baseline", False)] * 6 + [("first", False)] * 2 + [("first", True)] * 2
    os.unlink(pcap)
