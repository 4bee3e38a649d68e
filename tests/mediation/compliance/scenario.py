"""A CGNAT scenario with its ground truth: RADIUS sessions, NAT session and port block logs from two NAT devices
(IPFIX with RFC 8158 codes, NetFlow v9 with the pre-RFC draft codes), flows that carry pre- and post-NAT fields,
an IPv6 subscriber without NAT and a static binding.

What it exercises:
* public 203.0.113.7 port 40112 held by alice, released, then by bob (a public address and port reused by two
  subscribers at different times);
* alice's inside address 100.64.0.1 handed to dave after her session stopped (an inside address reused);
* the port block 203.0.113.8 ports 1024-1151 allocated to carol, released, then allocated to bob (a port block that
  changes owner), sent by the second device in NetFlow v9 with draft codes 14/15;
* erin's IPv6 prefix 2001:db8:e::/56 (no NAT: attributed by prefix) and frank's static address 198.51.100.50.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.exporter import IpfixExporter, V9Exporter, template

T0 = 1_772_460_000_000
"""2026-03-02 14:00:00 UTC."""
S = 1000

NAT1 = "192.0.2.1"
"""The IPFIX NAT device (RFC 8158 natEvent codes)."""
NAT2 = "192.0.2.2"
"""The NetFlow v9 NAT device (pre-RFC draft codes: port block 14 allocate, 15 release)."""


def radius_requests() -> list[str]:
    """radclient Accounting-Request texts, in order."""
    t = T0 // 1000
    return [
        f"Acct-Status-Type = Start, User-Name = alice, Acct-Session-Id = a1, Framed-IP-Address = 100.64.0.1, "
        f"Event-Timestamp = {t - 3600}",
        f"Acct-Status-Type = Start, User-Name = bob, Acct-Session-Id = b1, Framed-IP-Address = 100.64.0.2, "
        f"Event-Timestamp = {t - 3600}",
        f"Acct-Status-Type = Start, User-Name = carol, Acct-Session-Id = c1, Framed-IP-Address = 100.64.0.3, "
        f"Event-Timestamp = {t - 3600}",
        f"Acct-Status-Type = Start, User-Name = erin, Acct-Session-Id = e1, Delegated-IPv6-Prefix = 2001:db8:e::/56, "
        f"Event-Timestamp = {t - 3600}",
        # alice leaves at T0 + 30 min; her inside address goes to dave
        f"Acct-Status-Type = Stop, User-Name = alice, Acct-Session-Id = a1, Framed-IP-Address = 100.64.0.1, "
        f"Event-Timestamp = {t + 1800}, Acct-Input-Octets = 0, Acct-Output-Octets = 0",
        f"Acct-Status-Type = Start, User-Name = dave, Acct-Session-Id = d1, Framed-IP-Address = 100.64.0.1, "
        f"Event-Timestamp = {t + 1800}",
    ]


STATIC_CSV = "subscriber_id,network\nfrank,198.51.100.50\n"
DIRECTORY_CSV = ("subscriber_id,name,address,phone,email\n"
                 "alice,Alice Example,\"1 Main St, Springfield\",+1-555-0101,alice@example.net\n"
                 "bob,Bob Example,2 Side St,+1-555-0102,bob@example.net\n")

NAT_SESSION = template(300, "observationTimeMilliseconds", "natEvent", "protocolIdentifier", "sourceIPv4Address",
                       "sourceTransportPort", "postNATSourceIPv4Address", "postNAPTSourceTransportPort",
                       "destinationIPv4Address", "destinationTransportPort", "natPoolId")
PORT_BLOCK = template(301, "observationTimeMilliseconds", "natEvent", "sourceIPv4Address", "postNATSourceIPv4Address",
                      "portRangeStart", "portRangeEnd", "portRangeStepSize", "portRangeNumPorts")
NAT_FLOW = template(302, "flowStartMilliseconds", "flowEndMilliseconds", "protocolIdentifier", "sourceIPv4Address",
                    "sourceTransportPort", "postNATSourceIPv4Address", "postNAPTSourceTransportPort",
                    "destinationIPv4Address", "destinationTransportPort", "octetDeltaCount", "packetDeltaCount")
V6_FLOW = template(303, "flowStartMilliseconds", "flowEndMilliseconds", "protocolIdentifier", "sourceIPv6Address",
                   "sourceTransportPort", "destinationIPv6Address", "destinationTransportPort", "octetDeltaCount",
                   "packetDeltaCount")


def _session(t: int, event: int, src: str, sport: int, pub: str, pport: int, dst: str, dport: int) -> dict:
    return {"observationTimeMilliseconds": t, "natEvent": event, "protocolIdentifier": 6, "sourceIPv4Address": src,
            "sourceTransportPort": sport, "postNATSourceIPv4Address": pub, "postNAPTSourceTransportPort": pport,
            "destinationIPv4Address": dst, "destinationTransportPort": dport, "natPoolId": 7}


def _block(t: int, event: int, src: str, pub: str, first: int, last: int) -> dict:
    return {"observationTimeMilliseconds": t, "natEvent": event, "sourceIPv4Address": src,
            "postNATSourceIPv4Address": pub, "portRangeStart": first, "portRangeEnd": last, "portRangeStepSize": 1,
            "portRangeNumPorts": last - first + 1}


def _flow(start: int, end: int, src: str, sport: int, pub: str, pport: int, dst: str, dport: int, nbytes: int) -> dict:
    return {"flowStartMilliseconds": start, "flowEndMilliseconds": end, "protocolIdentifier": 6,
            "sourceIPv4Address": src, "sourceTransportPort": sport, "postNATSourceIPv4Address": pub,
            "postNAPTSourceTransportPort": pport, "destinationIPv4Address": dst, "destinationTransportPort": dport,
            "octetDeltaCount": nbytes, "packetDeltaCount": max(1, nbytes // 500)}


SESSIONS = [  # IPFIX, RFC 8158: 4 NAT44 session create, 5 delete
    _session(T0 + 60 * S, 4, "100.64.0.1", 5000, "203.0.113.7", 40112, "198.51.100.10", 443),
    _session(T0 + 600 * S, 5, "100.64.0.1", 5000, "203.0.113.7", 40112, "198.51.100.10", 443),
    _session(T0 + 900 * S, 4, "100.64.0.2", 6000, "203.0.113.7", 40112, "198.51.100.11", 443),
    _session(T0 + 1200 * S, 5, "100.64.0.2", 6000, "203.0.113.7", 40112, "198.51.100.11", 443),
    _session(T0 + 2400 * S, 4, "100.64.0.1", 7000, "203.0.113.7", 40200, "198.51.100.12", 443),
    _session(T0 + 2700 * S, 5, "100.64.0.1", 7000, "203.0.113.7", 40200, "198.51.100.12", 443),
    _session(T0 + 2800 * S, 3, "0.0.0.0", 0, "0.0.0.0", 0, "0.0.0.0", 0),  # addresses exhausted: not a mapping
]
BLOCKS = [  # NetFlow v9, pre-RFC draft: 14 port block allocation, 15 de-allocation
    _block(T0 + 100 * S, 14, "100.64.0.3", "203.0.113.8", 1024, 1151),
    _block(T0 + 1000 * S, 15, "100.64.0.3", "203.0.113.8", 1024, 1151),
    _block(T0 + 1100 * S, 14, "100.64.0.2", "203.0.113.8", 1024, 1151),
]
FLOWS = [  # the first device's flow records with pre- and post-NAT fields
    _flow(T0 + 70 * S, T0 + 90 * S, "100.64.0.1", 5000, "203.0.113.7", 40112, "198.51.100.10", 443, 1234),
    _flow(T0 + 950 * S, T0 + 1000 * S, "100.64.0.2", 6000, "203.0.113.7", 40112, "198.51.100.11", 443, 4321),
    _flow(T0 + 200 * S, T0 + 210 * S, "100.64.0.3", 3333, "203.0.113.8", 1100, "198.51.100.13", 80, 2000),
    _flow(T0 + 1500 * S, T0 + 1510 * S, "100.64.0.2", 4444, "203.0.113.8", 1100, "198.51.100.13", 80, 3000),
    _flow(T0 + 2450 * S, T0 + 2460 * S, "100.64.0.1", 7000, "203.0.113.7", 40200, "198.51.100.12", 443, 5000),
    _flow(T0 + 300 * S, T0 + 310 * S, "198.51.100.50", 8080, "", 0, "192.0.2.80", 80, 600),  # frank, static
    _flow(T0 + 300 * S, T0 + 310 * S, "100.64.9.9", 1234, "203.0.113.9", 2000, "192.0.2.81", 80, 700),  # nobody's
]
V6_FLOWS = [
    {"flowStartMilliseconds": T0 + 300 * S, "flowEndMilliseconds": T0 + 330 * S, "protocolIdentifier": 6,
     "sourceIPv6Address": "2001:db8:e:1::5", "sourceTransportPort": 50000, "destinationIPv6Address": "2001:4860::8888",
     "destinationTransportPort": 443, "octetDeltaCount": 9000, "packetDeltaCount": 9},
]


def datagrams() -> list[tuple[bytes, str, int]]:
    """``(payload, exporter, received_ms)`` of the whole scenario, in sending order."""
    ipfix = IpfixExporter(1)
    v9 = V9Exporter(2, boot_ms=T0 - 86_400_000)
    export = T0 + 3000 * S
    return [
        (ipfix.datagram(ipfix.templates(NAT_SESSION, NAT_FLOW, V6_FLOW), ipfix.data(NAT_SESSION, SESSIONS),
                        export_ms=export), NAT1, export),
        (ipfix.datagram(ipfix.data(NAT_FLOW, FLOWS), ipfix.data(V6_FLOW, V6_FLOWS), export_ms=export), NAT1, export),
        (v9.datagram(v9.templates(PORT_BLOCK), v9.data(PORT_BLOCK, BLOCKS), export_ms=export), NAT2, export),
    ]


@dataclass(frozen=True)
class Probe:
    """A trace question and its true answer."""

    address: str
    port: int | None
    at_ms: int
    subscriber: str
    """Expected holder ('' = nobody)."""
    private: str
    """Expected inside address ('' = none)."""
    nat: str
    """Expected decisive NAT evidence: 'session', 'block', 'flow' or '' (none / not behind NAT)."""
    flows: int = 0
    """Matching flow records expected in the window (60 s)."""


PROBES = [
    Probe("203.0.113.7", 40112, T0 + 80 * S, "alice", "100.64.0.1", "session", 1),
    Probe("203.0.113.7", 40112, T0 + 60 * S, "alice", "100.64.0.1", "session", 1),  # the creation second
    Probe("203.0.113.7", 40112, T0 + 700 * S, "", "", "session"),  # released at T0 + 600 s
    Probe("203.0.113.7", 40112, T0 + 1000 * S, "bob", "100.64.0.2", "session", 1),
    Probe("203.0.113.7", 40112, T0 + 1300 * S, "", "", "session"),
    Probe("203.0.113.7", 40200, T0 + 2500 * S, "dave", "100.64.0.1", "session", 1),  # alice's old inside address
    Probe("203.0.113.8", 1100, T0 + 500 * S, "carol", "100.64.0.3", "block"),
    Probe("203.0.113.8", 1024, T0 + 205 * S, "carol", "100.64.0.3", "block", 1),
    Probe("203.0.113.8", 1100, T0 + 1050 * S, "", "", "block"),  # between release and re-allocation
    Probe("203.0.113.8", 1100, T0 + 1100 * S, "bob", "100.64.0.2", "block"),  # the re-allocation second
    Probe("203.0.113.8", 1151, T0 + 1505 * S, "bob", "100.64.0.2", "block", 1),
    Probe("203.0.113.8", 1152, T0 + 1505 * S, "", "", ""),  # outside the block: no mapping, no binding
    Probe("2001:db8:e:1::5", None, T0 + 310 * S, "erin", "2001:db8:e:1::5", "", 1),  # IPv6 by prefix
    Probe("198.51.100.50", None, T0 + 305 * S, "frank", "198.51.100.50", "", 1),  # static binding
    Probe("203.0.113.9", 2000, T0 + 305 * S, "", "100.64.9.9", "flow", 1),  # translated, inside address unknown
]
