"""A NAT event stream with known mappings: the ground truth that compliance lookups are checked against.

The mappings below ARE the truth; the stream is generated from them and exported as real IPFIX NAT logging (RFC 8158
natEvent 4/5 NAT44 session create/delete, 16/17 port block allocation/de-allocation with portRangeStart 361,
portRangeEnd 362, portRangeStepSize 363, portRangeNumPorts 364, times in observationTimeMilliseconds 323), plus flow
records from a router inside the NAT (no post-NAT fields) and RADIUS sessions naming the subscriber of every inside
address. :func:`holders` answers any lookup from the mappings alone, so every trace can be compared with it.

What it exercises (the lookups that were wrong):
* a DNS-like session that starts and ends within one second (21:13:20.100 to 21:13:20.600): held only in between;
* a public port released and reused within the same second by someone else;
* port blocks with a step of 2 (one subscriber holds 2001, 2003, ..., another 2000, 2002, ...), one sent with
  portRangeEnd, one with only the count and the step;
* a public address and port held at once by a TCP session and a UDP session of two subscribers (ambiguous without
  ``--protocol``), the UDP one ending first;
* a session that starts at the very millisecond the previous one on the same port ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.exporter import IpfixExporter, template

T0 = 1_772_486_000_000
"""2026-03-02 21:13:20.000 UTC."""
S = 1000
MINUTE = 60 * S

NAT = "192.0.2.10"
"""The NAT device (IPFIX, RFC 8158 natEvent codes)."""
ROUTER = "192.0.2.30"
"""A router inside the NAT: its flow records carry inside addresses only."""

SUBSCRIBERS = {"alice": "100.64.1.1", "bob": "100.64.1.2", "carol": "100.64.1.3", "dave": "100.64.1.4",
               "erin": "100.64.1.5", "frank": "100.64.1.6", "gina": "100.64.1.7", "hank": "100.64.1.8"}
"""RADIUS sessions (Framed-IP-Address), all open from an hour before T0."""

STATIC_CSV = "subscriber_id,network\nivan,198.51.100.99\n"
"""ivan has a public address: no NAT."""
DIRECTORY_CSV = "subscriber_id,name,address,phone,email\n"

TCP, UDP = 6, 17


@dataclass(frozen=True)
class Mapping:
    """One NAT mapping as it really was: who held which public ports over ``[start_ms, end_ms)``."""

    subscriber: str
    public: str
    first: int
    """First public port (the port of a session)."""
    last: int
    step: int
    protocol: int
    """IP protocol of a session; 0 for a port block (every protocol)."""
    inside_port: int
    """Inside source port of a session; 0 for a port block."""
    start_ms: int
    end_ms: int | None
    """None: still held."""
    send_end: bool = True
    """Port blocks: send portRangeEnd (else only portRangeNumPorts and the step)."""

    @property
    def inside(self) -> str:
        return SUBSCRIBERS[self.subscriber]

    @property
    def block(self) -> bool:
        return self.protocol == 0

    def covers(self, address: str, port: int) -> bool:
        return address == self.public and self.first <= port <= self.last and (port - self.first) % self.step == 0

    def holds(self, address: str, port: int, at_ms: int, protocol: int | None = None) -> bool:
        return (self.covers(address, port) and self.start_ms <= at_ms
                and (self.end_ms is None or at_ms < self.end_ms)
                and (protocol is None or self.protocol in (0, protocol)))


MAPPINGS = [
    # the DNS-like session of the issue: 21:13:20.100 to 21:13:20.600
    Mapping("alice", "203.0.113.20", 40001, 40001, 1, UDP, 53001, T0 + 100, T0 + 600),
    # released at .450, reused by gina at .800 of the same second
    Mapping("bob", "203.0.113.20", 40002, 40002, 1, UDP, 53002, T0 + 300, T0 + 450),
    Mapping("gina", "203.0.113.20", 40002, 40002, 1, UDP, 53007, T0 + 800, T0 + 5 * S),
    # interleaved port blocks: carol every second port from 2001 (count and step only), dave from 2000 (with end)
    Mapping("carol", "203.0.113.21", 2001, 2063, 2, 0, 0, T0 + 1 * S, T0 + 10 * MINUTE, send_end=False),
    Mapping("dave", "203.0.113.21", 2000, 2062, 2, 0, 0, T0 + 2 * S, None),
    # one public port, two protocols, two subscribers; the UDP session ends first
    Mapping("erin", "203.0.113.22", 50000, 50000, 1, TCP, 4000, T0 + 5 * S, T0 + 5 * MINUTE),
    Mapping("frank", "203.0.113.22", 50000, 50000, 1, UDP, 5000, T0 + 10 * S, T0 + 100 * S),
    # hank's session ends at the millisecond gina's starts on the same port
    Mapping("hank", "203.0.113.23", 1000, 1000, 1, TCP, 8000, T0, T0 + 30 * S),
    Mapping("gina", "203.0.113.23", 1000, 1000, 1, TCP, 7000, T0 + 30 * S, T0 + 60 * S),
]


@dataclass(frozen=True)
class InsideFlow:
    """A flow record from the router inside the NAT, and the public side it really had."""

    subscriber: str
    inside: str
    inside_port: int
    protocol: int
    start_ms: int
    end_ms: int
    dst: str
    dst_port: int
    nbytes: int
    public: str
    """'' when not translated."""
    public_port: str
    """As a report shows it: the port of a session, the range of a port block."""


INSIDE_FLOWS = [
    InsideFlow("alice", "100.64.1.1", 53001, UDP, T0 + 150, T0 + 550, "192.0.2.53", 53, 80, "203.0.113.20", "40001"),
    InsideFlow("gina", "100.64.1.7", 53007, UDP, T0 + 900, T0 + 1 * S, "192.0.2.53", 53, 90, "203.0.113.20",
               "40002"),
    InsideFlow("carol", "100.64.1.3", 3333, TCP, T0 + 20 * S, T0 + 21 * S, "198.51.100.80", 80, 2000,
               "203.0.113.21", "2001-2063 step 2"),
    InsideFlow("erin", "100.64.1.5", 4000, TCP, T0 + 50 * S, T0 + 51 * S, "198.51.100.81", 443, 3000,
               "203.0.113.22", "50000"),
    InsideFlow("frank", "100.64.1.6", 5000, UDP, T0 + 50 * S, T0 + 50 * S + 500, "198.51.100.82", 443, 400,
               "203.0.113.22", "50000"),
    InsideFlow("ivan", "198.51.100.99", 8080, TCP, T0 + 5 * S, T0 + 6 * S, "192.0.2.80", 80, 600, "", ""),
]


def holders(address: str, port: int, at_ms: int, protocol: int | None = None) -> list[Mapping]:
    """The truth: the mappings that held ``address``:``port`` at ``at_ms`` (of ``protocol``, when given)."""
    return [m for m in MAPPINGS if m.holds(address, port, at_ms, protocol)]


def radius_requests() -> list[str]:
    """radclient Accounting-Request texts: a session per subscriber, open from an hour before T0."""
    t = T0 // 1000 - 3600
    return [f"Acct-Status-Type = Start, User-Name = {name}, Acct-Session-Id = s-{name}, Framed-IP-Address = {addr}, "
            f"Event-Timestamp = {t}" for name, addr in SUBSCRIBERS.items()]


SESSION = template(340, "observationTimeMilliseconds", "natEvent", "protocolIdentifier", "sourceIPv4Address",
                   "sourceTransportPort", "postNATSourceIPv4Address", "postNAPTSourceTransportPort",
                   "destinationIPv4Address", "destinationTransportPort")
BLOCK = template(341, "observationTimeMilliseconds", "natEvent", "sourceIPv4Address", "postNATSourceIPv4Address",
                 "portRangeStart", "portRangeEnd", "portRangeStepSize", "portRangeNumPorts")
BLOCK_BY_COUNT = template(342, "observationTimeMilliseconds", "natEvent", "sourceIPv4Address",
                          "postNATSourceIPv4Address", "portRangeStart", "portRangeStepSize", "portRangeNumPorts")
FLOW = template(343, "flowStartMilliseconds", "flowEndMilliseconds", "protocolIdentifier", "sourceIPv4Address",
                "sourceTransportPort", "destinationIPv4Address", "destinationTransportPort", "octetDeltaCount",
                "packetDeltaCount")


def _events(m: Mapping) -> list[tuple[object, dict]]:
    """The NAT log records of one mapping: its create / allocation and, when it ended, its delete / release."""
    out = []
    for event, t in ((4, m.start_ms), (5, m.end_ms)) if not m.block else ((16, m.start_ms), (17, m.end_ms)):
        if t is None:
            continue
        if not m.block:
            out.append((SESSION, {"observationTimeMilliseconds": t, "natEvent": event, "protocolIdentifier": m.protocol,
                                  "sourceIPv4Address": m.inside, "sourceTransportPort": m.inside_port,
                                  "postNATSourceIPv4Address": m.public, "postNAPTSourceTransportPort": m.first,
                                  "destinationIPv4Address": "192.0.2.53", "destinationTransportPort": 53}))
            continue
        count = (m.last - m.first) // m.step + 1
        rec = {"observationTimeMilliseconds": t, "natEvent": event, "sourceIPv4Address": m.inside,
               "postNATSourceIPv4Address": m.public, "portRangeStart": m.first, "portRangeStepSize": m.step,
               "portRangeNumPorts": count}
        out.append((BLOCK, {**rec, "portRangeEnd": m.last}) if m.send_end else (BLOCK_BY_COUNT, rec))
    return out


def datagrams() -> list[tuple[bytes, str, int]]:
    """``(payload, exporter, received_ms)``: the NAT device's log in time order (creates and deletes of different
    mappings interleaved, each kind of record in its own set), then the inside router's flows."""
    nat = IpfixExporter(10)
    router = IpfixExporter(30)
    export = T0 + 3600 * S
    events = sorted((e for m in MAPPINGS for e in _events(m)), key=lambda e: e[1]["observationTimeMilliseconds"])
    sets = [nat.templates(SESSION, BLOCK, BLOCK_BY_COUNT)]
    for tmpl, rec in events:
        sets.append(nat.data(tmpl, [rec]))
    flows = [{"flowStartMilliseconds": f.start_ms, "flowEndMilliseconds": f.end_ms, "protocolIdentifier": f.protocol,
              "sourceIPv4Address": f.inside, "sourceTransportPort": f.inside_port, "destinationIPv4Address": f.dst,
              "destinationTransportPort": f.dst_port, "octetDeltaCount": f.nbytes, "packetDeltaCount": 1}
             for f in INSIDE_FLOWS]
    return [(nat.datagram(*sets, export_ms=export), NAT, export),
            (router.datagram(router.templates(FLOW), router.data(FLOW, flows), export_ms=export), ROUTER, export)]


@dataclass(frozen=True)
class Lookup:
    """A trace question (its true answer is :func:`holders`)."""

    address: str
    port: int
    at_ms: int
    protocol: int | None = None

    def __str__(self) -> str:
        proto = "" if self.protocol is None else f"/{self.protocol}"
        return f"{self.address}:{self.port}{proto}@T0{self.at_ms - T0:+d}ms"


def lookups() -> list[Lookup]:
    """The questions asked of every backend: around each mapping's start and end (1 ms before and at each, and 1 s
    and 45 min after the end, and 100 s after the end of sessions shorter than a second), on its ports (a stepped
    block also on the port next to its first, which it does not hold), without and (where another protocol shares
    the port) with ``--protocol``."""
    out: dict[Lookup, None] = {}
    for m in MAPPINGS:
        edges = [m.start_ms - 1, m.start_ms]
        if m.end_ms is None:
            later = [m.start_ms + 1 * S, m.start_ms + 45 * MINUTE]
        else:
            edges += [m.end_ms - 1, m.end_ms]
            later = [m.end_ms + 1 * S, m.end_ms + 45 * MINUTE] + ([m.end_ms + 100 * S] if m.end_ms - m.start_ms < S
                                                                   else [])
        ports = [m.first] if m.first == m.last else [m.first, m.first + 1, m.last]
        shared = any(o.protocol not in (0, m.protocol) and o.covers(m.public, m.first) for o in MAPPINGS)
        protocols = [None, m.protocol] if m.protocol and shared else [None]
        for t in edges:
            for p in ports:
                for proto in protocols:
                    out[Lookup(m.public, p, t, proto)] = None
        for t in later:
            for proto in protocols:
                out[Lookup(m.public, m.first, t, proto)] = None
    return list(out)


def _ms(t) -> int:
    return round(t.timestamp() * 1000)


def mismatches(answer, q: Lookup) -> list[str]:
    """How a trace answer (``collector.commands.compliance.run_trace``) differs from the truth for ``q``: the
    verdict (nobody, the one holder with its inside address and port, or ambiguous between the true holders), and
    for a holder its NAT evidence to the millisecond (the start that decides, and the end when it ended)."""
    from collector.commands.compliance import verdict

    v = verdict(answer, q.at_ms)
    truth = holders(q.address, q.port, q.at_ms, q.protocol)
    rows = answer.to_pylist()
    got = f"{v.state} {[(h.subscriber_id, h.private_addr, h.private_port) for h in v.holders]}"
    want = [(m.subscriber, m.inside, m.inside_port) for m in truth]
    problems = []
    if not truth:
        if v.state not in ("ended", "none") or v.holders:
            problems.append(f"{q}: nobody held it, the answer is {got}")
        return problems
    if len(truth) > 1:
        if v.state != "ambiguous" or sorted((h.subscriber_id, h.private_addr, h.private_port, h.protocol)
                                            for h in v.holders) != sorted(
                (m.subscriber, m.inside, m.inside_port, m.protocol) for m in truth):
            problems.append(f"{q}: ambiguous between {want}, the answer is {got}")
        return problems
    m = truth[0]
    if v.state != "held" or (v.subscriber_id, v.private_addr, v.private_port) != want[0]:
        return [f"{q}: {want[0]} held it, the answer is {got}"]
    nat = [r for r in rows if r["evidence"] == "nat" and r["private_addr"] == m.inside]
    if [_ms(r["time_from"]) for r in nat] != [m.start_ms]:
        problems.append(f"{q}: the NAT evidence should be the start at {m.start_ms - T0:+d} ms: {nat}")
    end = [_ms(r["time_from"]) for r in rows if r["evidence"] == "nat_end" and r["private_addr"] == m.inside]
    if end != ([] if m.end_ms is None else [m.end_ms]):
        problems.append(f"{q}: the mapping ended at {m.end_ms}, nat_end rows say {end}")
    return problems
