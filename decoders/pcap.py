"""UDP datagrams out of a capture file (classic pcap or pcapng), for ``flowmed decode`` and tests.

A small reader, no dependency: classic pcap (micro- and nanosecond, either byte order) and pcapng (section header,
interface description with ``if_tsresol``, enhanced / simple / obsolete packet blocks). Link types: Ethernet (with
802.1Q/802.1ad tags), Linux cooked v1 and v2, raw IP, IPv4, IPv6, BSD loopback (NULL and LOOP). IPv4 fragments
other than complete datagrams are skipped (NetFlow exporters do not fragment in practice, and a fragment alone
cannot be decoded); IPv6 extension headers before UDP are walked.

Usage::

    for d in read_udp("export.pcapng", ports={2055}):
        decoder.decode([(d.payload, d.src, d.ts_ms)])
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["PcapError", "UdpDatagram", "read_udp", "datagrams"]

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
_RAW_ALIASES = {12, 14}  # DLT_RAW on some BSDs / OpenBSD
_IPV6_NEXT_HEADERS = {0, 43, 60}  # hop-by-hop, routing, destination options: walked; 44 (fragment) is skipped


class PcapError(ValueError):
    """The file is not a capture this reader understands."""


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """One UDP payload with its addresses and capture time (UTC ms)."""

    payload: bytes
    src: str
    src_port: int
    dst: str
    dst_port: int
    ts_ms: int


def read_udp(path: str | Path, ports: Iterable[int] | None = None) -> Iterator[UdpDatagram]:
    """Every UDP datagram of the capture (to one of ``ports`` if given), in file order."""
    wanted = set(ports) if ports is not None else None
    with open(path, "rb") as f:
        for linktype, ts_ms, frame in _frames(f):
            d = _udp(linktype, frame, ts_ms)
            if d is not None and (wanted is None or d.dst_port in wanted):
                yield d


def datagrams(path: str | Path, ports: Iterable[int] | None = None) -> list[tuple[bytes, str, int]]:
    """``(payload, source address, ts_ms)`` tuples, ready for :meth:`decoders.netflow.decoder.FlowDecoder.decode`."""
    return [(d.payload, d.src, d.ts_ms) for d in read_udp(path, ports)]


# ------------------------------------------------------------------------------------------------ file formats
def _frames(f: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    head = f.read(4)
    if len(head) < 4:
        raise PcapError("file too short for a capture header")
    if head == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng(f, head)
    else:
        yield from _pcap(f, head)


def _pcap(f: BinaryIO, magic: bytes) -> Iterator[tuple[int, int, bytes]]:
    formats = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
               b"\x4d\x3c\xb2\xa1": ("<", 1_000_000), b"\xa1\xb2\x3c\x4d": (">", 1_000_000)}
    if magic not in formats:
        raise PcapError(f"not a pcap or pcapng file (magic {magic.hex()})")
    endian, per_ms = formats[magic]
    rest = f.read(20)
    if len(rest) < 20:
        raise PcapError("truncated pcap header")
    linktype = struct.unpack(endian + "I", rest[16:20])[0] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII")
    while True:
        hdr = f.read(16)
        if len(hdr) < 16:
            return
        secs, frac, caplen, _ = rec.unpack(hdr)
        data = f.read(caplen)
        if len(data) < caplen:
            return  # a capture cut short (tshark killed): keep what was complete
        yield linktype, secs * 1000 + frac // per_ms, data


def _pcapng(f: BinaryIO, first: bytes) -> Iterator[tuple[int, int, bytes]]:
    endian = "<"
    interfaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
    block_type_raw = first
    while True:
        head = block_type_raw + f.read(8 - len(block_type_raw)) if block_type_raw else f.read(8)
        block_type_raw = b""
        if len(head) < 8:
            return
        if head[:4] == b"\x0a\x0d\x0d\x0a":  # section header: byte order magic decides the endianness
            bom = f.read(4)
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise PcapError("pcapng section header with a bad byte-order magic")
            length = struct.unpack(endian + "I", head[4:8])[0]
            body = bom + f.read(length - 12)
            interfaces = []
        else:
            length = struct.unpack(endian + "I", head[4:8])[0]
            if length < 12:
                raise PcapError(f"pcapng block length {length}")
            body = f.read(length - 8)
        if len(body) < length - 8:
            return
        btype = struct.unpack(endian + "I", head[:4])[0]
        data = body[:-4]  # trailing copy of the block length
        if btype == 1:  # interface description
            linktype = struct.unpack(endian + "H", data[:2])[0]
            interfaces.append((linktype, _tsresol(data[8:], endian)))
        elif btype == 6 and len(data) >= 20:  # enhanced packet
            iface, hi, lo, caplen, _ = struct.unpack(endian + "IIIII", data[:20])
            if iface < len(interfaces):
                linktype, per_s = interfaces[iface]
                yield linktype, ((hi << 32) | lo) * 1000 // per_s, data[20:20 + caplen]
        elif btype == 3 and len(data) >= 4 and interfaces:  # simple packet: no timestamp
            yield interfaces[0][0], 0, data[4:]
        elif btype == 2 and len(data) >= 20:  # obsolete packet block
            iface, _, hi, lo, caplen, _ = struct.unpack(endian + "HHIIII", data[:20])
            if iface < len(interfaces):
                linktype, per_s = interfaces[iface]
                yield linktype, ((hi << 32) | lo) * 1000 // per_s, data[20:20 + caplen]


def _tsresol(options: bytes, endian: str) -> int:
    """Ticks per second of an interface (option if_tsresol, code 9); microseconds by default."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[pos:pos + 4])
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            return int(2 ** (v & 0x7F) if v & 0x80 else 10 ** v)
        pos += 4 + length + (-length % 4)
    return 1_000_000


# ------------------------------------------------------------------------------------------------ link / IP / UDP
def _udp(linktype: int, frame: bytes, ts_ms: int) -> UdpDatagram | None:
    ip = _network(linktype, frame)
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4:
        return _udp4(ip, ts_ms)
    if version == 6:
        return _udp6(ip, ts_ms)
    return None


def _network(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, or None."""
    if linktype == LINKTYPE_ETHERNET:
        pos, ethertype = 12, None
        while pos + 2 <= len(frame):
            ethertype = struct.unpack_from(">H", frame, pos)[0]
            if ethertype in (0x8100, 0x88A8, 0x9100):
                pos += 4
                continue
            break
        return frame[pos + 2:] if ethertype in (0x0800, 0x86DD) else None
    if linktype == LINKTYPE_LINUX_SLL:
        return frame[16:] if len(frame) >= 16 and frame[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return frame[20:] if len(frame) >= 20 and frame[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or linktype in _RAW_ALIASES:
        return frame
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return frame[4:] if len(frame) >= 4 else None
    return None


def _udp4(ip: bytes, ts_ms: int) -> UdpDatagram | None:
    if len(ip) < 20:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from(">H", ip, 2)[0]
    flags_frag = struct.unpack_from(">H", ip, 6)[0]
    if ip[9] != 17 or flags_frag & 0x3FFF or ihl < 20:  # not UDP, or a fragment
        return None
    return _udp_payload(ip[ihl:min(total, len(ip))], str(ipaddress.IPv4Address(ip[12:16])),
                        str(ipaddress.IPv4Address(ip[16:20])), ts_ms)


def _udp6(ip: bytes, ts_ms: int) -> UdpDatagram | None:
    if len(ip) < 40:
        return None
    payload_len = struct.unpack_from(">H", ip, 4)[0]
    nxt, pos = ip[6], 40
    end = min(len(ip), 40 + payload_len)
    while nxt in _IPV6_NEXT_HEADERS and pos + 2 <= end:
        nxt, pos = ip[pos], pos + (ip[pos + 1] + 1) * 8
    if nxt != 17:
        return None
    return _udp_payload(ip[pos:end], str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40])),
                        ts_ms)


def _udp_payload(udp: bytes, src: str, dst: str, ts_ms: int) -> UdpDatagram | None:
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from(">HHH", udp)
    end = min(len(udp), length) if length >= 8 else len(udp)
    return UdpDatagram(udp[8:end], src, sport, dst, dport, ts_ms)
