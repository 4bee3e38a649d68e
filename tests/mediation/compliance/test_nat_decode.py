"""CGNAT logging decode: the scenario's NAT IPFIX / NetFlow v9 capture decoded by tshark (an independent decoder) and
by flowmed, compared field by field; natEvent code tables of RFC 8158 and the pre-RFC draft; port ranges."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from bench.exporter import IpfixExporter, template
from bench.pcapwrite import Datagram, write_pcap
from collector.config import load
from decoders.netflow.decoder import FlowDecoder
from decoders.schema import FLOWS
from mediation.compliance.nat import END, OTHER, SCOPES, START, classify, port_range, without_nat_only
from mediation.compliance.stage import ComplianceStage
from mediation.subscribers.bindings import Bindings
from tests.fixtures.tshark import (
    record_addr,
    record_int,
    record_times_ms,
    tshark_abs_time_ms,
    tshark_messages,
    tshark_records,
)
from tests.mediation.compliance import scenario


def _text(value: bytes) -> str:
    a = ipaddress.IPv6Address(bytes(value).ljust(16, b"\0"))
    text = str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)
    return "" if text in ("::", "0.0.0.0") else text


def decode(datagrams, dialect: str = "rfc8158"):
    flows = FLOWS.to_arrow(FlowDecoder().decode(datagrams).flows)
    stage = ComplianceStage(load(None, [f"compliance.nat_event_codes={dialect}"]), Bindings(None))
    return flows, stage.process(flows, scenario.T0 + 3600_000)


@pytest.mark.external
def test_nat_capture_agrees_with_tshark_field_by_field(tmp_path):
    pcap = tmp_path / "nat.pcap"
    write_pcap(pcap, [Datagram(p, src, time_ms=t) for p, src, t in scenario.datagrams()])
    theirs = tshark_records(tshark_messages(pcap, [2055]), options=None)
    flows, out = decode(scenario.datagrams())
    events = out["nat_events"].to_pylist()
    nat_records = [r for r in theirs if "cflow.nat_event" in r]
    assert len(nat_records) == len(scenario.SESSIONS) + len(scenario.BLOCKS)
    ours = [e for e in events if e["nat_event"]]
    assert len(ours) == len(nat_records)
    for t, o in zip(nat_records, ours, strict=True):
        assert int(o["time"].timestamp() * 1000) == tshark_abs_time_ms(str(t["cflow.observation_time_milliseconds"]))
        assert o["nat_event"] == record_int(t, "cflow.nat_event")
        assert _text(o["private_addr"]) == record_addr(t, "src")
        assert _text(o["public_addr"]) == ("" if str(t["cflow.post_natsource_ipv4_address"]) == "0.0.0.0"
                                           else str(t["cflow.post_natsource_ipv4_address"]))
        assert _text(o["exporter"]) == {"10": scenario.NAT1, "9": scenario.NAT2}[str(t["cflow.version"])]
        if "cflow.port_range_start" in t:  # a port block (v9, draft codes)
            assert o["scope"] == "block"
            assert (o["public_port_start"], o["public_port_end"], o["port_step"]) == (
                record_int(t, "cflow.port_range_start"), record_int(t, "cflow.port_range_end"),
                record_int(t, "cflow.port_range_step_size"))
            assert o["public_port_end"] - o["public_port_start"] + 1 == record_int(t, "cflow.port_range_num_ports")
            assert o["action"] == {14: START, 15: END}[o["nat_event"]]
        else:
            assert o["scope"] == ("session" if o["nat_event"] in (4, 5) else "other")
            assert o["private_port"] == record_int(t, "cflow.srcport")
            assert o["public_port_start"] == o["public_port_end"] == record_int(
                t, "cflow.post_naptsource_transport_port")
            assert _text(o["dst_addr"]) == record_addr(t, "dst")
            assert o["dst_port"] == record_int(t, "cflow.dstport")
            assert o["protocol"] == record_int(t, "cflow.protocol")
            assert o["nat_pool_id"] == record_int(t, "cflow.nat_pool_id")
            assert o["action"] == {4: START, 5: END, 3: OTHER}[o["nat_event"]]
    # the flow records with pre- and post-NAT fields: the compliance records and the observed translations
    flow_records = [r for r in theirs if "cflow.octets" in r]
    records = out["ip_detail_records"].to_pylist()
    assert len(records) == len(flow_records)
    for t, o in zip(flow_records, records, strict=True):
        start, end = record_times_ms(t)
        assert (int(o["flow_start"].timestamp() * 1000), int(o["flow_end"].timestamp() * 1000)) == (start, end)
        assert _text(o["src_addr"]) == record_addr(t, "src") and _text(o["dst_addr"]) == record_addr(t, "dst")
        assert o["bytes"] == record_int(t, "cflow.octets") and o["packets"] == record_int(t, "cflow.packets")
        assert o["src_port"] == record_int(t, "cflow.srcport") and o["dst_port"] == record_int(t, "cflow.dstport")
        post = str(t.get("cflow.post_natsource_ipv4_address", ""))
        assert _text(o["nat_addr"]) == ("" if post in ("", "0.0.0.0") else post)
        assert o["nat_port"] == (record_int(t, "cflow.post_naptsource_transport_port") if _text(o["nat_addr"]) else 0)
        assert o["status"] == "unattributed"  # no bindings in this test
    observed = [e for e in events if e["scope"] == "flow"]
    assert len(observed) == sum(1 for r in flow_records
                                if str(r.get("cflow.post_natsource_ipv4_address", "0.0.0.0")) != "0.0.0.0")
    assert all(e["action"] == 3 for e in observed)
    # NAT-only records do not go to usage mediation (they would be rejected as zero counters)
    assert without_nat_only(flows).num_rows == flows.num_rows - len(nat_records)


def test_event_codes_in_both_dialects():
    codes = np.array([1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 3, 18], dtype=np.uint8)
    no_range = np.zeros(len(codes), dtype=bool)
    action, scope = classify(codes, no_range, "rfc8158")
    names = [SCOPES[s] for s in scope]
    assert list(action[:8]) == [START, END] * 4 and names[:8] == ["session"] * 8
    assert list(action[8:10]) == [START, END] and names[8:10] == ["session", "session"]  # NAT64 BIB
    assert list(action[10:12]) == [OTHER, OTHER]  # ports exhausted, quota exceeded
    assert list(action[12:14]) == [START, END] and names[12:14] == ["address", "address"]
    assert list(action[14:16]) == [START, END] and names[14:16] == ["block", "block"]
    assert list(action[16:]) == [OTHER, OTHER]
    action, scope = classify(codes, no_range, "draft")
    names = [SCOPES[s] for s in scope]
    assert list(action[8:10]) == [OTHER, OTHER]  # ports exhausted, quota exceeded
    assert list(action[10:12]) == [START, END] and names[10:12] == ["address", "address"]
    assert list(action[12:14]) == [START, END] and names[12:14] == ["block", "block"]
    assert list(action[14:16]) == [OTHER, OTHER]
    # with a port range, 14/16 allocate and 15/17 release in either dialect
    with_range = np.ones(4, dtype=bool)
    for dialect in ("rfc8158", "draft"):
        action, scope = classify(np.array([14, 15, 16, 17], np.uint8), with_range, dialect)
        assert list(action) == [START, END, START, END] and {SCOPES[s] for s in scope} == {"block"}
    with pytest.raises(ValueError):
        classify(codes, no_range, "vendor-x")


def test_port_range_from_count_and_step():
    first, last, step = port_range(np.array([1024, 2000, 3000, 60000]), np.array([0, 2063, 0, 0]),
                                   np.array([0, 1, 4, 1]), np.array([64, 64, 8, 10000]))
    assert list(first) == [1024, 2000, 3000, 60000]
    assert list(last) == [1087, 2063, 3028, 65535]  # count x step; explicit end wins; clipped at 65535
    assert list(step) == [1, 1, 4, 1]


def test_v9_rfc_codes_and_ipv6_translation():
    """An IPFIX NAT64-style session with IPv6 post-NAT address (IE 281) and RFC code 6/7 decodes as a session."""
    ex = IpfixExporter(3)
    tmpl = template(310, "observationTimeMilliseconds", "natEvent", "protocolIdentifier", "sourceIPv4Address",
                    "sourceTransportPort", "postNATSourceIPv6Address", "postNAPTSourceTransportPort")
    rec = {"observationTimeMilliseconds": scenario.T0, "natEvent": 6, "protocolIdentifier": 17,
           "sourceIPv4Address": "100.64.1.9", "sourceTransportPort": 53, "postNATSourceIPv6Address": "2001:db8::64",
           "postNAPTSourceTransportPort": 61000}
    _, out = decode([(ex.datagram(ex.templates(tmpl), ex.data(tmpl, [rec]), export_ms=scenario.T0), "192.0.2.3",
                      scenario.T0)])
    (e,) = out["nat_events"].to_pylist()
    assert (e["scope"], e["action"], _text(e["public_addr"]), e["public_port_start"], e["protocol"]) == (
        "session", START, "2001:db8::64", 61000, 17)
    assert "ip_detail_records" not in out


def test_reload_switches_the_dialect():
    ex = IpfixExporter(4)
    tmpl = template(311, "observationTimeMilliseconds", "natEvent", "sourceIPv4Address", "postNATSourceIPv4Address")
    rec = {"observationTimeMilliseconds": scenario.T0, "natEvent": 12, "sourceIPv4Address": "100.64.1.1",
           "postNATSourceIPv4Address": "203.0.113.50"}
    flows = FLOWS.to_arrow(FlowDecoder().decode([(ex.datagram(ex.templates(tmpl), ex.data(tmpl, [rec]),
                                                              export_ms=scenario.T0), "192.0.2.4", scenario.T0)]).flows)
    stage = ComplianceStage(load(None), Bindings(None))
    (e,) = stage.process(flows, scenario.T0)["nat_events"].to_pylist()
    assert (e["scope"], e["action"]) == ("other", OTHER)  # RFC 8158: ports exhausted
    stage.reload(load(None, ["compliance.nat_event_codes=draft"]))
    (e,) = stage.process(flows, scenario.T0)["nat_events"].to_pylist()
    assert (e["scope"], e["action"]) == ("address", START)  # draft: address binding create


def test_cisco_nsel_flow_created_and_deleted_are_a_session(tmp_path):
    """ASA NSEL logs NAT through firewallEvent (IE 233) with the translation in IEs 225/227 and no natEvent: flow
    created starts a session, flow deleted (which carries the counters) ends it; trace finds it."""
    from collector.commands.compliance import run_trace, verdict
    from mediation.compliance.tables import IP_DETAIL_RECORDS, NAT_EVENTS
    from storage.query import QueryEngine
    from storage.store import ParquetStore

    ex = IpfixExporter(5)
    tmpl = template(320, "observationTimeMilliseconds", "firewallEvent", "protocolIdentifier", "sourceIPv4Address",
                    "sourceTransportPort", "postNATSourceIPv4Address", "postNAPTSourceTransportPort",
                    "destinationIPv4Address", "destinationTransportPort", "initiatorOctets", "packetDeltaCount")
    base = {"protocolIdentifier": 6, "sourceIPv4Address": "10.1.2.3", "sourceTransportPort": 51000,
            "postNATSourceIPv4Address": "198.51.100.77", "postNAPTSourceTransportPort": 33000,
            "destinationIPv4Address": "192.0.2.44", "destinationTransportPort": 443}
    recs = [{**base, "observationTimeMilliseconds": scenario.T0, "firewallEvent": 1},
            {**base, "observationTimeMilliseconds": scenario.T0 + 60_000, "firewallEvent": 2, "initiatorOctets": 5000,
             "packetDeltaCount": 10}]
    flows, out = decode([(ex.datagram(ex.templates(tmpl), ex.data(tmpl, recs), export_ms=scenario.T0 + 61_000),
                          "192.0.2.5", scenario.T0 + 61_000)])
    events = out["nat_events"].to_pylist()
    assert [(e["action"], e["scope"], e["firewall_event"], e["nat_event"]) for e in events] == [
        (START, "session", 1, 0), (END, "session", 2, 0)]  # no observed row for the deleted flow: it is the end
    assert (_text(events[0]["public_addr"]), events[0]["public_port_start"], events[0]["private_port"]) == (
        "198.51.100.77", 33000, 51000)
    (rec,) = out["ip_detail_records"].to_pylist()
    assert (rec["bytes"], _text(rec["nat_addr"]), rec["nat_port"]) == (5000, "198.51.100.77", 33000)
    assert without_nat_only(flows).num_rows == 2  # NSEL events are not natEvent records: usage sees them as flows
    store = ParquetStore(tmp_path, recover=False)
    store.write(NAT_EVENTS, out["nat_events"], 1)
    store.write(IP_DETAIL_RECORDS, out["ip_detail_records"], 2)
    store.close()
    with QueryEngine.for_store(tmp_path) as engine:
        during = run_trace(engine, address="198.51.100.77", port=33000, at_ms=scenario.T0 + 30_000)
        after = run_trace(engine, address="198.51.100.77", port=33000, at_ms=scenario.T0 + 90_000)
    v = verdict(during, scenario.T0 + 30_000)
    assert v.private_addr == "10.1.2.3" and v.nat.startswith("session start firewallEvent 1")
    assert [r["evidence"] for r in during.to_pylist()] == ["nat", "nat_end", "flow"]
    assert verdict(after, scenario.T0 + 90_000).private_addr == ""  # deleted at T0 + 60 s


def test_flows_written_before_a_late_radius_start_are_evidence(tmp_path):
    """A flow attributed to nobody when it was written (its RADIUS Start came later) is still shown by trace once
    the binding is known."""
    from collector.commands.compliance import run_trace, verdict
    from mediation.compliance.tables import IP_DETAIL_RECORDS, NAT_EVENTS
    from mediation.subscribers.bindings import Bindings as B
    from mediation.tables import BINDINGS
    from storage.query import QueryEngine
    from storage.store import ParquetStore

    ex = IpfixExporter(6)
    ev = template(330, "observationTimeMilliseconds", "natEvent", "protocolIdentifier", "sourceIPv4Address",
                  "sourceTransportPort", "postNATSourceIPv4Address", "postNAPTSourceTransportPort")
    fl = template(331, "flowStartMilliseconds", "flowEndMilliseconds", "protocolIdentifier", "sourceIPv4Address",
                  "sourceTransportPort", "destinationIPv4Address", "destinationTransportPort", "octetDeltaCount",
                  "packetDeltaCount")
    t = scenario.T0
    datagram = ex.datagram(ex.templates(ev, fl), ex.data(ev, [{
        "observationTimeMilliseconds": t, "natEvent": 4, "protocolIdentifier": 17, "sourceIPv4Address": "100.64.5.5",
        "sourceTransportPort": 1000, "postNATSourceIPv4Address": "203.0.113.99", "postNAPTSourceTransportPort": 5555}]),
        ex.data(fl, [{"flowStartMilliseconds": t + 1000, "flowEndMilliseconds": t + 2000, "protocolIdentifier": 17,
                      "sourceIPv4Address": "100.64.5.5", "sourceTransportPort": 1000,
                      "destinationIPv4Address": "192.0.2.53", "destinationTransportPort": 53,
                      "octetDeltaCount": 80, "packetDeltaCount": 1}]), export_ms=t + 3000)
    _, out = decode([(datagram, "192.0.2.6", t + 3000)])  # no bindings yet: unattributed
    assert out["ip_detail_records"].column("status").to_pylist() == ["unattributed"]
    late = B(None)
    late.open("zoe", "100.64.5.5", t - 60_000, source="radius", session_id="z1")
    store = ParquetStore(tmp_path, recover=False)
    store.write(NAT_EVENTS, out["nat_events"], 1)
    store.write(IP_DETAIL_RECORDS, out["ip_detail_records"], 2)
    store.write(BINDINGS, late.commit(), 3)
    store.close()
    with QueryEngine.for_store(tmp_path) as engine:
        answer = run_trace(engine, address="203.0.113.99", port=5555, at_ms=t + 1500)
    assert verdict(answer, t + 1500).subscriber_id == "zoe"
    flows = [r for r in answer.to_pylist() if r["evidence"] == "flow"]
    assert [(f["private_addr"], f["bytes"], f["detail"]) for f in flows] == [("100.64.5.5", 80, "unattributed")]
