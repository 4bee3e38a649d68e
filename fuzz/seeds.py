"""Seed corpora: valid inputs for every fuzz target, from the project's own simulators and examples.

``python fuzz/seeds.py DIR`` writes ``DIR/<target>/seed-*``; :func:`write_seeds` does the same for one target
(``fuzz/run.py`` seeds an empty corpus directory with it).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the tree importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import RADIUS_SECRET, join_datagrams  # noqa: E402

EXPORT_MS = 1_700_000_000_000


def _flow_seeds(version: int) -> list[bytes]:
    from bench.exporter import (
        IpfixExporter,
        V9Exporter,
        bulk_datagrams,
        fld,
        random_flows,
        template,
    )

    out = []
    for ipv6 in (False, True):
        datagrams, first = bulk_datagrams(version, 2, 3, export_ms=EXPORT_MS, ipv6=ipv6, seed=version)
        out.append(join_datagrams(([first] if first else []) + datagrams))
    if version in (9, 10):
        # Variable-length fields and options (sampling) templates, the awkward parts.
        enc = IpfixExporter(1, boot_ms=EXPORT_MS - 3_600_000) if version == 10 else \
            V9Exporter(1, boot_ms=EXPORT_MS - 3_600_000)
        opts = template(300, "samplingInterval", scope=["exportingProcessId" if version == 10 else 1])
        flows = random_flows(2, export_ms=EXPORT_MS, seed=3)
        flow_t = template(257, "sourceIPv4Address", "destinationIPv4Address", "octetDeltaCount", "packetDeltaCount",
                          "flowStartMilliseconds", "flowEndMilliseconds") if version == 10 else \
            template(257, "sourceIPv4Address", "destinationIPv4Address", "octetDeltaCount", "packetDeltaCount",
                     "flowStartSysUpTime", "flowEndSysUpTime")
        try:
            sets = [enc.templates(opts, flow_t), enc.data(opts, [{"samplingInterval": 100,
                                                                  "exportingProcessId": 1}]),
                    enc.flows(flow_t, flows, EXPORT_MS)]
            out.append(join_datagrams([enc.datagram(s, export_ms=EXPORT_MS) for s in sets]))
        except (KeyError, ValueError, TypeError):  # a field the simulator does not know: the bulk seeds suffice
            pass
        if version == 10:
            varlen = template(258, "sourceIPv4Address", fld("applicationName", 0xFFFF), "octetDeltaCount")
            try:
                out.append(join_datagrams([enc.datagram(enc.templates(varlen), export_ms=EXPORT_MS),
                                           enc.datagram(enc.data(varlen, [{"sourceIPv4Address": "10.0.0.1",
                                                                           "applicationName": "x" * 300,
                                                                           "octetDeltaCount": 5}]),
                                                        export_ms=EXPORT_MS)]))
            except (KeyError, ValueError, TypeError):
                pass
    return out


def _ipdr_stream_seeds() -> list[bytes]:
    from fuzz.targets import _ipdr_sim

    sim = _ipdr_sim()
    sim.generate_interval()
    return [join_datagrams([sim.encode_document(1)]), join_datagrams([sim.encode_document(2, stop=False)])]


def _ipdr_message_seeds() -> list[bytes]:
    from decoders.ipdr import messages as m
    from fuzz.targets import _ipdr_sim

    sim = _ipdr_sim()
    msgs = [m.Connect(0x7F000001, 0, m.Capability.MULTISESSION, 60, "v"), m.ConnectResponse(2, 30, "x"),
            m.KeepAlive(), m.FlowStart(1), m.SessionStart(1, 1, 0, 0, True, 10, 5, bytes(16)), m.SessionStop(1),
            m.Error(0, 0, 3, "e"), m.GetSessionsResponse(1, (m.SessionBlock(1, "SAMIS"),)), m.Disconnect(),
            m.DataAck(1, 1, 5), sim.template_data(1)]
    return [join_datagrams([m.encode(x) for x in msgs])] + _ipdr_stream_seeds()


def _xdr_seeds() -> list[bytes]:
    from decoders.ipdr.xdr import TYPES, encode_value

    types = sorted(TYPES)
    sample = {0x21: -5, 0x22: 7, 0x23: -1, 0x24: 2**64 - 1, 0x25: 1.5, 0x26: 2.5, 0x27: b"\x01", 0x28: "x",
              0x29: True, 0x2A: 1, 0x2B: 2, 0x2C: 3, 0x2D: 4, 0x122: 1_700_000_000, 0x224: 1_700_000_000_123,
              0x322: "10.1.2.3", 0x427: "2001:db8::5", 0x527: bytes(16), 0x623: 1_700_000_000_123_456,
              0x723: 0x001122334455, 0x827: "192.0.2.9"}
    out = []
    for start in range(0, len(types), 4):
        chosen = [t for t in types[start:start + 4] if t in sample]
        if not chosen:
            continue
        spec = bytes([len(chosen) - 1]) + bytes(types.index(t) for t in chosen)
        record = b"".join(encode_value(t, sample[t]) for t in chosen)
        out.append(spec + join_datagrams([record, record]))
    return out


def _radius_seeds() -> list[bytes]:
    from mediation.subscribers.radius import ATTRIBUTES, accounting_request

    def a(name: str, value: bytes | int | str) -> tuple[int, bytes]:
        if isinstance(value, int):
            value = struct.pack("!I", value)
        elif isinstance(value, str):
            value = value.encode()
        return ATTRIBUTES[name], value

    start = [a("Acct-Status-Type", 1), a("User-Name", "alice"), a("Acct-Session-Id", "s1"),
             a("Framed-IP-Address", bytes([100, 64, 0, 1])), a("Event-Timestamp", 1_700_000_000),
             a("Framed-IPv6-Prefix", bytes([0, 64]) + bytes.fromhex("20010db800000001"))]
    interim = [a("Acct-Status-Type", 3), a("User-Name", "alice"), a("Acct-Session-Id", "s1"),
               a("Framed-IP-Address", bytes([100, 64, 0, 1])), a("Acct-Input-Octets", 1000),
               a("Acct-Output-Octets", 50_000), a("Acct-Input-Gigawords", 1), a("Event-Timestamp", 1_700_000_300)]
    stop = [a("Acct-Status-Type", 2), a("User-Name", "alice"), a("Acct-Session-Id", "s1"),
            a("Acct-Output-Octets", 90_000), a("Event-Timestamp", 1_700_000_600)]
    on = [a("Acct-Status-Type", 7), a("NAS-IP-Address", bytes([127, 0, 0, 1]))]
    packets = [accounting_request(i, attrs, RADIUS_SECRET) for i, attrs in enumerate((start, interim, stop, on))]
    return [join_datagrams(packets), join_datagrams(packets[:1]), join_datagrams(packets[1:3])]


def _sflow_seeds() -> list[bytes]:
    from bench.sflow import CounterSample, FlowSample, Gateway, Packet, SflowAgent, bulk_datagrams

    agent = SflowAgent("2001:db8::a", 2)
    every = agent.datagram([
        FlowSample(Packet("2001:db8::1", "2001:db8::2", 6, 1, 2, tcp_flags=2, ipv6_ext=(0, 44), vlans=(5, 6),
                          mpls=(16,)), expanded=True, sampled_ip=True, sampled_ethernet=True, switch=(5, 0, 6, 0),
                   router=("2001:db8::fe", 48, 64),
                   gateway=Gateway("192.0.2.1", 64500, 64501, 64502, ((2, (64510, 64511)),), (7,), 100),
                   unknown=[(1004, bytes(8))]),
        FlowSample(Packet("10.0.0.1", "10.0.0.2", 1, icmp_type=8), header_protocol=11, header_bytes=30),
        CounterSample(generic={"if_index": 3, "in_octets": 1000}, ethernet={"dot3_fcs_errors": 1}, expanded=True)])
    return [join_datagrams(bulk_datagrams(3, 3, counters_every=2)), join_datagrams([every]),
            join_datagrams([every[:100], every])]


def _config_seeds() -> list[bytes]:
    root = Path(__file__).resolve().parent.parent
    out = [b"", b'[listen]\nudp = ["127.0.0.1:2055"]\nallow = ["10.0.0.0/8"]\n',
           b'[radius]\nenabled = true\n[[radius.clients]]\naddress = "10.0.0.0/8"\nsecret = "s"\n',
           b'[mediation]\ninterval_s = 300\nwatermark_s = 1.5\n[[mediation.classes]]\nname = "cdn"\nports = [443]\n']
    example = root / "collector.toml"
    if example.is_file():
        out.append(example.read_bytes())
    return out


def _plans_seeds() -> list[bytes]:
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "rating.md")
    out = []
    if doc.is_file():
        text = doc.read_text()
        start = text.find("```toml\n[[plan]]")
        if start >= 0:
            out.append(text[start + 8: text.index("```", start + 8)].encode())
    # zone names one erased part away from a directory of the zone database ("Etc", "America/Argentina")
    for tz in (b"UTC", b"Etc/UTC", b"America/Argentina/Salta"):
        out.append(b'[[plan]]\nid = "p"\nversion = 1\nactive_from = "2026-01-01T00:00:00Z"\ncurrency = "EUR"\n'
                   b'timezone = "' + tz + b'"\n[[plan.rate]]\nname = "all"\ndirection = "total"\nprice = "1.00"\n')
    return out


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "netflow_v5": lambda: _flow_seeds(5),
    "netflow_v9": lambda: _flow_seeds(9),
    "ipfix": lambda: _flow_seeds(10),
    "flows_any": lambda: _flow_seeds(5)[:1] + _flow_seeds(9)[:1] + _flow_seeds(10)[:1],
    "sflow": _sflow_seeds,
    "ipdr_messages": _ipdr_message_seeds,
    "ipdr_session": _ipdr_stream_seeds,
    "ipdr_xdr": _xdr_seeds,
    "radius": _radius_seeds,
    "config": _config_seeds,
    "plans": _plans_seeds,
}


def write_seeds(target: str, directory: Path) -> int:
    """Write ``target``'s seeds into ``directory`` (named by content hash); returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for s in seeds:
        (directory / f"seed-{hashlib.sha1(s).hexdigest()[:16]}").write_bytes(s)
    return len(seeds)


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
    for name in SEEDS:
        print(name, write_seeds(name, base / name))
