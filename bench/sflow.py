"""An sFlow v5 exporter simulator: an *encoder* for tests, captures and load (``python -m bench.sflow``).

It writes what switches and hosts send (sflow.org "sFlow Version 5"), including the parts a collector must survive:

- datagram headers with IPv4 or IPv6 agent addresses, sub-agents, datagram sequence numbers and uptime;
- flow samples and expanded flow samples (sampling rate, sample pool, drops, input/output interfaces, including the
  "discarded" and "multiple" interface formats) with raw packet header records of any depth: Ethernet, 802.1Q and
  QinQ tags, MPLS label stacks, IPv4 (options, fragments), IPv6 with extension headers, TCP, UDP, ICMP/ICMPv6, the
  header cut at any length; sampled IPv4/IPv6 and Ethernet records; extended switch, router and gateway (AS path
  segments, communities, local preference); records of unknown formats;
- counter samples and expanded counter samples with generic and Ethernet interface counters.

The truth a test encodes is a list of :class:`FlowSample` / :class:`CounterSample`; :func:`expected_flow` gives the
``flows`` row (and sFlow extras) a correct collector must produce for a flow sample.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PORT = 6343

# formats (enterprise 0)
FLOW_SAMPLE, COUNTERS_SAMPLE, FLOW_SAMPLE_EXPANDED, COUNTERS_SAMPLE_EXPANDED = 1, 2, 3, 4
RAW_HEADER, SAMPLED_ETHERNET, SAMPLED_IPV4, SAMPLED_IPV6 = 1, 2, 3, 4
EXTENDED_SWITCH, EXTENDED_ROUTER, EXTENDED_GATEWAY = 1001, 1002, 1003
GENERIC_INTERFACE, ETHERNET_INTERFACE = 1, 2

SRC_MAC = bytes.fromhex("020000000011")
DST_MAC = bytes.fromhex("020000000022")
_IPV6_EXT = (0, 43, 60, 44, 51)
"""Extension headers :class:`Packet` can carry: hop-by-hop, routing, destination options, fragment, AH."""


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _opaque(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + _pad(data)


def address(addr: str | None) -> bytes:
    """An XDR sFlow ``address``: type 1 + 4 bytes, type 2 + 16 bytes, or type 0 (unknown) for None."""
    if addr is None:
        return struct.pack(">I", 0)
    a = ipaddress.ip_address(addr)
    return struct.pack(">I", 1 if a.version == 4 else 2) + a.packed


def mapped16(addr: str | None) -> bytes:
    """The 16-byte form flowmed stores (IPv4-mapped for IPv4; zeros for None)."""
    if addr is None:
        return bytes(16)
    a = ipaddress.ip_address(addr)
    return b"\0" * 10 + b"\xff\xff" + a.packed if a.version == 4 else a.packed


# ------------------------------------------------------------------------------------------------- sampled packets
@dataclass(frozen=True)
class Packet:
    """A packet as it was on the wire (the truth behind a raw header record)."""

    src: str
    dst: str
    protocol: int = 6
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: int = 0
    tos: int = 0
    """IPv4 ToS byte, or the IPv6 traffic class."""
    icmp_type: int = 0
    icmp_code: int = 0
    vlans: tuple[int, ...] = ()
    """802.1Q tags, outer first (two or more: QinQ, the outer one with TPID 0x88a8)."""
    mpls: tuple[int, ...] = ()
    """MPLS labels, top first (the IP packet follows the bottom of the stack)."""
    ipv6_ext: tuple[int, ...] = ()
    """IPv6 extension headers before the upper layer (numbers from 0, 43, 60, 44, 51)."""
    ip_options: int = 0
    """IPv4 option words (IHL = 5 + this)."""
    fragment_offset: int = 0
    """A non-first fragment (offset > 0) carries no upper-layer header."""
    payload: int = 64
    """Bytes behind the headers."""

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.src).version == 6

    def l4(self) -> bytes:
        if self.fragment_offset:
            return b""
        if self.protocol == 6:
            return struct.pack(">HHIIBBHHH", self.src_port, self.dst_port, 1, 0, 5 << 4, self.tcp_flags, 65535, 0, 0)
        if self.protocol in (17, 132, 136):
            return struct.pack(">HHHH", self.src_port, self.dst_port, 8 + self.payload, 0)
        if self.protocol in (1, 58):
            return struct.pack(">BBHI", self.icmp_type, self.icmp_code, 0, 0)
        return b""

    def ip(self) -> bytes:
        """The IP packet (headers and zero payload)."""
        l4 = self.l4() + bytes(self.payload)
        src, dst = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        if not self.ipv6:
            ihl = 5 + self.ip_options
            total = ihl * 4 + len(l4)
            return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, self.tos, total, 1, self.fragment_offset & 0x1FFF, 64,
                               self.protocol, 0, src.packed, dst.packed) + b"\x01" * (4 * self.ip_options) + l4
        ext = b""
        chain = [*self.ipv6_ext, self.protocol]
        for i, h in enumerate(self.ipv6_ext):
            nxt = chain[i + 1]
            if h == 44:
                ext += struct.pack(">BBHI", nxt, 0, (self.fragment_offset << 3) & 0xFFF8, 7)
            elif h == 51:
                ext += struct.pack(">BBH", nxt, 4, 0) + bytes(20)  # 24 bytes: (4 + 2) * 4
            elif h == 43:
                ext += struct.pack(">BBBB", nxt, 2, 0, 0) + bytes(20)  # 24 bytes: (2 + 1) * 8, type 0, no segments
            else:
                ext += struct.pack(">BB", nxt, 1) + bytes(14)  # 16 bytes: (1 + 1) * 8
        first = chain[0]
        return struct.pack(">IHBB16s16s", (6 << 28) | (self.tos << 20), len(ext) + len(l4), first, 64, src.packed,
                           dst.packed) + ext + l4

    def frame(self) -> bytes:
        """The Ethernet frame: MACs, tags, MPLS, IP."""
        ip = self.ip()
        out = DST_MAC + SRC_MAC
        for i, vid in enumerate(self.vlans):
            tpid = 0x88A8 if len(self.vlans) > 1 and i == 0 else 0x8100
            out += struct.pack(">HH", tpid, vid & 0xFFF)
        if self.mpls:
            out += struct.pack(">H", 0x8847)
            for i, label in enumerate(self.mpls):
                out += struct.pack(">I", (label << 12) | (1 << 8 if i == len(self.mpls) - 1 else 0) | 64)
        else:
            out += struct.pack(">H", 0x86DD if self.ipv6 else 0x0800)
        return out + ip

    def dst_port_field(self) -> int:
        """``flows.dst_port``: the port, or ICMP type << 8 | code as NetFlow exporters put it."""
        if self.fragment_offset:
            return 0
        if self.protocol in (1, 58):
            return self.icmp_type << 8 | self.icmp_code
        return self.dst_port if self.protocol in (6, 17, 132, 136) else 0


@dataclass(frozen=True)
class Gateway:
    """extended_gateway: BGP next hop, own AS, source AS, source peer AS, AS path segments, communities, local pref."""

    next_hop: str
    own_as: int
    src_as: int
    src_peer_as: int
    as_path: tuple[tuple[int, tuple[int, ...]], ...] = ()
    """Segments (type: 1 AS_SET, 2 AS_SEQUENCE; ASNs)."""
    communities: tuple[int, ...] = ()
    local_pref: int = 100

    def encode(self) -> bytes:
        out = address(self.next_hop) + struct.pack(">III", self.own_as, self.src_as, self.src_peer_as)
        out += struct.pack(">I", len(self.as_path))
        for kind, asns in self.as_path:
            out += struct.pack(f">II{len(asns)}I", kind, len(asns), *asns)
        out += struct.pack(f">I{len(self.communities)}I", len(self.communities), *self.communities)
        return out + struct.pack(">I", self.local_pref)

    @property
    def dst_as(self) -> int:
        asns = [a for _, seg in self.as_path for a in seg]
        return asns[-1] if asns else self.own_as

    @property
    def next_hop_as(self) -> int:
        asns = [a for _, seg in self.as_path for a in seg]
        return asns[0] if asns else 0


@dataclass
class FlowSample:
    """One flow sample: the sampled packet and the records that describe it."""

    packet: Packet | None
    sequence: int = 1
    source_type: int = 0
    source_index: int = 1
    sampling_rate: int = 1000
    sample_pool: int = 1000
    drops: int = 0
    input: int = 1
    """Interface value; with ``input_format`` 1 (discarded) or 2 (multiple) the collector stores 0."""
    output: int = 2
    input_format: int = 0
    output_format: int = 0
    expanded: bool = False
    raw_header: bool = True
    header_protocol: int = 1
    """1 Ethernet (the frame), 11 IPv4 / 12 IPv6 (the IP packet alone)."""
    header_bytes: int = 128
    """The header record holds at most this many bytes of the packet (the rest is cut, as agents do)."""
    stripped: int = 4
    sampled_ip: bool = False
    """Add a sampled IPv4/IPv6 record (type 3/4) for the packet."""
    sampled_ethernet: bool = False
    switch: tuple[int, int, int, int] | None = None
    """extended_switch: (src_vlan, src_priority, dst_vlan, dst_priority)."""
    router: tuple[str, int, int] | None = None
    """extended_router: (next hop, src mask, dst mask)."""
    gateway: Gateway | None = None
    unknown: list[tuple[int, bytes]] = field(default_factory=list)
    """Records of other formats (enterprise << 12 | format, data), e.g. extended_user (1004)."""

    def frame_length(self) -> int:
        """Original packet length as the agent reports it: the frame plus its FCS (``stripped``)."""
        if self.packet is None:
            return 0
        return len(self.packet.frame()) + self.stripped

    def records(self) -> list[tuple[int, bytes]]:
        p = self.packet
        out: list[tuple[int, bytes]] = []
        if p is not None and self.raw_header:
            data = p.frame() if self.header_protocol == 1 else p.ip()
            header = data[:self.header_bytes]
            length = len(data) + self.stripped if self.header_protocol == 1 else len(data)
            out.append((RAW_HEADER, struct.pack(">III", self.header_protocol, length, self.stripped)
                        + _opaque(header)))
        if p is not None and self.sampled_ethernet:
            out.append((SAMPLED_ETHERNET, struct.pack(">I", self.frame_length()) + _pad(SRC_MAC) + _pad(DST_MAC)
                        + struct.pack(">I", 0x86DD if p.ipv6 else 0x0800)))
        if p is not None and self.sampled_ip:
            src, dst = ipaddress.ip_address(p.src).packed, ipaddress.ip_address(p.dst).packed
            sport, dport = (p.src_port, p.dst_port) if p.protocol in (6, 17) else (0, 0)
            if p.protocol in (1, 58):
                dport = p.icmp_type << 8 | p.icmp_code
            rest = struct.pack(">IIII", sport, dport, p.tcp_flags, p.tos)
            if p.ipv6:
                out.append((SAMPLED_IPV6, struct.pack(">II", len(p.ip()), p.protocol) + src + dst + rest))
            else:
                out.append((SAMPLED_IPV4, struct.pack(">II", len(p.ip()), p.protocol) + src + dst + rest))
        if self.switch is not None:
            out.append((EXTENDED_SWITCH, struct.pack(">IIII", *self.switch)))
        if self.router is not None:
            nh, smask, dmask = self.router
            out.append((EXTENDED_ROUTER, address(nh) + struct.pack(">II", smask, dmask)))
        if self.gateway is not None:
            out.append((EXTENDED_GATEWAY, self.gateway.encode()))
        return out + list(self.unknown)

    def encode(self) -> bytes:
        """The sample: format, length, data."""
        recs = self.records()
        body = b"".join(struct.pack(">II", f, len(d)) + d for f, d in recs)
        if self.expanded:
            head = struct.pack(">11I", self.sequence, self.source_type, self.source_index, self.sampling_rate,
                               self.sample_pool, self.drops, self.input_format, self.input, self.output_format,
                               self.output, len(recs))
            fmt = FLOW_SAMPLE_EXPANDED
        else:
            head = struct.pack(">8I", self.sequence, (self.source_type << 24) | self.source_index,
                               self.sampling_rate, self.sample_pool, self.drops,
                               (self.input_format << 30) | self.input, (self.output_format << 30) | self.output,
                               len(recs))
            fmt = FLOW_SAMPLE
        data = head + body
        return struct.pack(">II", fmt, len(data)) + data


GENERIC_FIELDS = (  # name, bytes
    ("if_index", 4), ("if_type", 4), ("if_speed", 8), ("if_direction", 4), ("if_status", 4), ("in_octets", 8),
    ("in_ucast_pkts", 4), ("in_multicast_pkts", 4), ("in_broadcast_pkts", 4), ("in_discards", 4), ("in_errors", 4),
    ("in_unknown_protos", 4), ("out_octets", 8), ("out_ucast_pkts", 4), ("out_multicast_pkts", 4),
    ("out_broadcast_pkts", 4), ("out_discards", 4), ("out_errors", 4), ("promiscuous_mode", 4))
ETHERNET_FIELDS = (
    "dot3_alignment_errors", "dot3_fcs_errors", "dot3_single_collision_frames", "dot3_multiple_collision_frames",
    "dot3_sqe_test_errors", "dot3_deferred_transmissions", "dot3_late_collisions", "dot3_excessive_collisions",
    "dot3_internal_mac_transmit_errors", "dot3_carrier_sense_errors", "dot3_frame_too_longs",
    "dot3_internal_mac_receive_errors", "dot3_symbol_errors")


@dataclass
class CounterSample:
    """One counter sample: generic and/or Ethernet interface counters (dicts by field name; missing fields 0)."""

    sequence: int = 1
    source_type: int = 0
    source_index: int = 1
    generic: dict[str, int] | None = None
    ethernet: dict[str, int] | None = None
    expanded: bool = False
    unknown: list[tuple[int, bytes]] = field(default_factory=list)

    def records(self) -> list[tuple[int, bytes]]:
        out = []
        if self.generic is not None:
            data = b"".join(struct.pack(">Q" if size == 8 else ">I", self.generic.get(name, 0))
                            for name, size in GENERIC_FIELDS)
            out.append((GENERIC_INTERFACE, data))
        if self.ethernet is not None:
            out.append((ETHERNET_INTERFACE, struct.pack(">13I", *(self.ethernet.get(n, 0) for n in ETHERNET_FIELDS))))
        return out + list(self.unknown)

    def encode(self) -> bytes:
        recs = self.records()
        body = b"".join(struct.pack(">II", f, len(d)) + d for f, d in recs)
        if self.expanded:
            head = struct.pack(">IIII", self.sequence, self.source_type, self.source_index, len(recs))
            fmt = COUNTERS_SAMPLE_EXPANDED
        else:
            head = struct.pack(">III", self.sequence, (self.source_type << 24) | self.source_index, len(recs))
            fmt = COUNTERS_SAMPLE
        data = head + body
        return struct.pack(">II", fmt, len(data)) + data


Sample = FlowSample | CounterSample


class SflowAgent:
    """One agent (address, sub-agent): numbers its datagrams and its data sources' samples as an agent does."""

    def __init__(self, agent: str | None = "192.0.2.1", sub_agent: int = 0, uptime_ms: int = 3_600_000) -> None:
        self.agent = agent
        self.sub_agent = sub_agent
        self.sequence = 0
        self.uptime_ms = uptime_ms
        self.flow_seq: dict[tuple[int, int], int] = {}
        self.counter_seq: dict[tuple[int, int], int] = {}
        self.pools: dict[tuple[int, int], int] = {}

    def datagram(self, samples: Sequence[Sample | bytes], uptime_ms: int | None = None) -> bytes:
        """The next datagram (sequence number + 1) holding ``samples`` (objects, or raw encoded samples)."""
        self.sequence += 1
        if uptime_ms is not None:
            self.uptime_ms = uptime_ms
        body = b"".join(s if isinstance(s, bytes) else s.encode() for s in samples)
        return (struct.pack(">I", 5) + address(self.agent)
                + struct.pack(">IIII", self.sub_agent, self.sequence, self.uptime_ms & 0xFFFFFFFF, len(samples))
                + body)

    def number(self, sample: Sample) -> Sample:
        """Give ``sample`` the next sequence number of its data source (and, for flow samples, grow the source's
        sample pool by the sampling rate, as an agent's pool grows by the packets it skipped and sampled)."""
        key = (sample.source_type, sample.source_index)
        if isinstance(sample, FlowSample):
            self.flow_seq[key] = sample.sequence = self.flow_seq.get(key, 0) + 1
            self.pools[key] = sample.sample_pool = (self.pools.get(key, 0) + sample.sampling_rate) & 0xFFFFFFFF
        else:
            self.counter_seq[key] = sample.sequence = self.counter_seq.get(key, 0) + 1
        return sample


# ------------------------------------------------------------------------------------------------ expected output
def expected_flow(s: FlowSample, exporter: str, received_ms: int, agent: str | None, sub_agent: int,
                  rate: int | None = None) -> dict[str, object]:
    """The ``flows`` row (and sFlow extras) a correct collector makes of ``s`` (addresses as 16 bytes)."""
    p = s.packet
    rate = rate if rate is not None else (s.sampling_rate or 1)
    header_ip = p is not None and s.raw_header
    got: dict[str, object] = {}
    ip_seen = False
    if header_ip and p is not None:
        data = p.frame() if s.header_protocol == 1 else p.ip()
        got, ip_seen = _parse_truth(p, data[:s.header_bytes], s.header_protocol)
    if p is not None and s.sampled_ip and not ip_seen:
        got = {**got, **_sampled_truth(p)}
    if p is None:
        raw_bytes = 0
    elif s.raw_header:
        raw_bytes = len(p.frame()) + s.stripped if s.header_protocol == 1 else len(p.ip())
    elif s.sampled_ip:
        raw_bytes = len(p.ip())
    elif s.sampled_ethernet:
        raw_bytes = s.frame_length()
    else:
        raw_bytes = 0
    nh = None
    if s.router is not None:
        nh = s.router[0]
    elif s.gateway is not None:
        nh = s.gateway.next_hop
    row: dict[str, object] = {
        "time_received": received_ms, "flow_start": received_ms, "flow_end": received_ms,
        "exporter": mapped16(exporter), "observation_domain": sub_agent, "version": 105,
        "src_addr": got.get("src_addr", bytes(16)), "dst_addr": got.get("dst_addr", bytes(16)),
        "src_port": got.get("src_port", 0), "dst_port": got.get("dst_port", 0),
        "protocol": got.get("protocol", 0), "tcp_flags": got.get("tcp_flags", 0), "tos": got.get("tos", 0),
        "in_if": s.input if s.input_format == 0 and s.input != 0x3FFFFFFF else 0,
        "out_if": s.output if s.output_format == 0 and s.output != 0x3FFFFFFF else 0,
        "raw_bytes": raw_bytes, "raw_packets": 1, "sampling_rate": rate, "bytes": raw_bytes * rate, "packets": rate,
        "src_as": s.gateway.src_as if s.gateway else 0, "dst_as": s.gateway.dst_as if s.gateway else 0,
        "src_mask": s.router[1] if s.router else 0, "dst_mask": s.router[2] if s.router else 0,
        "next_hop": mapped16(nh),
        # extras
        "agent": mapped16(agent), "sample_sequence": s.sequence, "source_id_type": s.source_type,
        "source_id_index": s.source_index, "vlan": got.get("vlan", 0),
        "src_vlan": s.switch[0] if s.switch else 0, "dst_vlan": s.switch[2] if s.switch else 0,
        "src_peer_as": s.gateway.src_peer_as if s.gateway else 0,
        "next_hop_as": s.gateway.next_hop_as if s.gateway else 0,
        "local_pref": s.gateway.local_pref if s.gateway else 0,
        "communities": len(s.gateway.communities) if s.gateway else 0,
    }
    return row


def _sampled_truth(p: Packet) -> dict[str, object]:
    sport, dport = (p.src_port, p.dst_port) if p.protocol in (6, 17) else (0, 0)
    if p.protocol in (1, 58):
        dport = p.icmp_type << 8 | p.icmp_code
    return {"src_addr": mapped16(p.src), "dst_addr": mapped16(p.dst), "protocol": p.protocol, "src_port": sport,
            "dst_port": dport, "tcp_flags": p.tcp_flags, "tos": p.tos}


def _parse_truth(p: Packet, header: bytes, header_protocol: int) -> tuple[dict[str, object], bool]:
    """What a header cut to ``len(header)`` bytes still tells, worked out from the packet's structure (not by
    parsing the bytes, so that the decoder's parser is checked against an independent account), and whether it
    holds the first byte of the IP header (else a sampled IPv4/IPv6 record speaks for the packet)."""
    n = len(header)
    out: dict[str, object] = {}
    if header_protocol == 1:
        pos = 12
        if p.vlans and n >= 18:
            out["vlan"] = p.vlans[0]
        pos += 4 * len(p.vlans)
        if pos + 2 > n:
            return out, False
        pos += 2 + 4 * len(p.mpls)
    else:
        pos = 0
    ip0 = pos
    if ip0 >= n:
        return out, False
    fields, _ = _ip_truth(p, n, ip0)
    return {**out, **fields}, True


def _ip_truth(p: Packet, n: int, ip0: int) -> tuple[dict[str, object], bool]:
    out: dict[str, object] = {}

    def have(k: int) -> bool:
        return ip0 + k <= n

    if not p.ipv6:
        if have(2):
            out["tos"] = p.tos
        if not have(10):
            return out, True
        out["protocol"] = p.protocol
        if have(16):
            out["src_addr"] = mapped16(p.src)
        if have(20):
            out["dst_addr"] = mapped16(p.dst)
        if p.fragment_offset:
            return out, True
        l4 = ip0 + 20 + 4 * p.ip_options
    else:
        if have(2):
            out["tos"] = p.tos
        if not have(7):
            return out, True
        chain = [*p.ipv6_ext, p.protocol]
        out["protocol"] = chain[0]
        if have(24):
            out["src_addr"] = mapped16(p.src)
        if have(40):
            out["dst_addr"] = mapped16(p.dst)
        l4 = ip0 + 40
        for i, h in enumerate(p.ipv6_ext):
            need = 4 if h == 44 else 2
            if l4 + need > n:
                return out, True
            out["protocol"] = chain[i + 1]
            if h == 44 and p.fragment_offset:
                return out, True
            l4 += 8 if h == 44 else 24 if h in (43, 51) else 16
    if p.protocol in (6, 17, 132, 136):
        if l4 + 4 <= n:
            out["src_port"], out["dst_port"] = p.src_port, p.dst_port
        if p.protocol == 6 and l4 + 14 <= n:
            out["tcp_flags"] = p.tcp_flags
    elif p.protocol in (1, 58) and l4 + 2 <= n:
        out["dst_port"] = p.icmp_type << 8 | p.icmp_code
    return out, True


# ------------------------------------------------------------------------------------------------ bulk generation
def random_packet(rng: random.Random, ipv6: bool = False) -> Packet:
    """A plausible TCP or UDP packet (Internet-ish addresses, common ports)."""
    if ipv6:
        src = str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | rng.getrandbits(64)))
        dst = str(ipaddress.IPv6Address((0x2001_0DB8_0001 << 80) | rng.getrandbits(64)))
    else:
        src = str(ipaddress.IPv4Address((100 << 24) | (64 << 16) | rng.getrandbits(14)))
        dst = str(ipaddress.IPv4Address(rng.randrange(0x0B000000, 0xDF000000)))
    proto = 6 if rng.random() < 0.8 else 17
    return Packet(src, dst, proto, rng.randrange(1024, 65536), rng.choice((443, 80, 53, 8080, 993)),
                  tcp_flags=0x18 if proto == 6 else 0, tos=rng.choice((0, 0, 0x28)),
                  vlans=(rng.randrange(1, 4095),) if rng.random() < 0.5 else (), payload=rng.randrange(0, 1400))


def bulk_datagrams(n: int, samples_per_datagram: int = 7, *, seed: int = 1, ipv6: bool = False,
                   agent: str = "192.0.2.1", counters_every: int = 0, rate: int = 1000) -> list[bytes]:
    """``n`` datagrams of ``samples_per_datagram`` flow samples each (raw Ethernet header of 128 bytes, extended
    switch), numbered as one agent numbers them; with ``counters_every`` k, every k-th datagram also carries a counter
    sample. A 1400-byte MTU holds about 7 such samples."""
    rng = random.Random(seed)
    a = SflowAgent(agent)
    out = []
    for i in range(n):
        samples: list[Sample] = []
        for _ in range(samples_per_datagram):
            p = random_packet(rng, ipv6)
            samples.append(a.number(FlowSample(p, source_index=rng.randrange(1, 49), sampling_rate=rate,
                                               input=rng.randrange(1, 49), output=rng.randrange(1, 49),
                                               switch=(p.vlans[0] if p.vlans else 0, 0, 10, 0))))
        if counters_every and i % counters_every == 0:
            samples.append(a.number(CounterSample(source_index=1 + i % 48, generic={
                "if_index": 1 + i % 48, "if_type": 6, "if_speed": 10**10, "in_octets": i * 1000,
                "out_octets": i * 2000}, ethernet={})))
        a.uptime_ms += 1
        out.append(a.datagram(samples))
    return out


# ----------------------------------------------------------------------------------------------------- sending
def send(datagrams: Iterable[bytes], host: str, port: int = PORT, rate: float = 0.0) -> int:
    """Send datagrams over UDP, ``rate`` per second (0: as fast as possible); returns how many were sent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    n = 0
    t0 = time.perf_counter()
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            if rate > 0:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            s.sendto(d, (host, port))
            n += 1
    return n


def main(argv: list[str]) -> None:
    """``python -m bench.sflow HOST [PORT [DATAGRAMS [RATE]]]``: bulk datagrams of one agent to a collector."""
    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        sys.exit(0 if argv else 2)
    host = argv[0]
    port = int(argv[1]) if len(argv) > 1 else PORT
    count = int(argv[2]) if len(argv) > 2 else 1000
    rate = float(argv[3]) if len(argv) > 3 else 0.0
    n = send(bulk_datagrams(count, counters_every=10), host, port, rate)
    print(f"sent {n} datagrams to {host}:{port}")


if __name__ == "__main__":
    main(sys.argv[1:])
