"""Read UDP datagrams out of a capture file (pcap or pcapng), for ``flowmed decode``.

Handles the link types tshark/tcpdump write for flow captures (Ethernet with VLAN tags, Linux cooked v1/v2, raw IP,
BSD loopback) and IPv4/IPv6 (without extension headers before UDP). Fragmented datagrams are skipped and counted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Packet:
    """A UDP datagram from the capture: payload, source/destination address and port, capture time in ms."""

    payload: bytes
    src: str
    dst: str
    sport: int
    dport: int
    ts_ms: int


class PcapError(ValueError):
    """The file is not a capture this reader understands."""


def read_udp(path: str | Path, skipped: list[int] | None = None) -> Iterator[Packet]:
    """Every UDP datagram in the capture, in file order. ``skipped`` (if given) gets one item per skipped packet."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise PcapError(f"{path}: too short for a capture file")
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        frames = _pcapng(data)
    elif magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        frames = _pcap(data)
    else:
        raise PcapError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
    for linktype, ts_ms, frame in frames:
        pkt = _udp(linktype, frame, ts_ms)
        if pkt is None:
            if skipped is not None:
                skipped.append(1)
            continue
        yield pkt


def _pcap(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        frame = data[off: off + incl]
        off += incl
        yield linktype, sec * 1000 + (frac // 1_000_000 if nanos else frac // 1000), frame


def _pcapng(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    endian = "<"
    interfaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
    off = 0
    while off + 12 <= len(data):
        btype = struct.unpack_from(endian + "I", data, off)[0]
        if btype == 0x0A0D0D0A:  # section header: byte order from its magic
            endian = "<" if data[off + 8: off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        blen = struct.unpack_from(endian + "I", data, off + 4)[0]
        if blen < 12 or off + blen > len(data):
            raise PcapError("pcapng block length out of range")
        body = data[off + 8: off + blen - 4]
        if btype == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            interfaces.append((linktype, _if_tsresol(body[8:], endian)))
        elif btype == 6 and interfaces:  # enhanced packet
            ifid, hi, lo, caplen, _ = struct.unpack_from(endian + "IIIII", body, 0)
            linktype, tps = interfaces[ifid] if ifid < len(interfaces) else interfaces[0]
            yield linktype, ((hi << 32) | lo) * 1000 // tps, body[20: 20 + caplen]
        elif btype == 3 and interfaces:  # simple packet
            yield interfaces[0][0], 0, body[4:]
        off += blen


def _if_tsresol(options: bytes, endian: str) -> int:
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[off + 4]
            return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
        off += 4 + ((length + 3) & ~3)
    return 1_000_000


def _udp(linktype: int, frame: bytes, ts_ms: int) -> Packet | None:
    if linktype == 1:  # Ethernet, with any number of 802.1Q/802.1ad tags
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2: off + 4], "big")
            off += 4
    elif linktype == 113:  # Linux cooked v1
        off, ethertype = 16, int.from_bytes(frame[14:16], "big")
    elif linktype == 276:  # Linux cooked v2
        off, ethertype = 20, int.from_bytes(frame[0:2], "big")
    elif linktype in (101, 12, 14):  # raw IP
        off, ethertype = 0, 0x0800 if frame[:1] and frame[0] >> 4 == 4 else 0x86DD
    elif linktype == 0:  # BSD loopback: 4-byte address family in host order
        family = int.from_bytes(frame[:4], "little") or int.from_bytes(frame[:4], "big")
        off, ethertype = 4, 0x0800 if family == 2 else 0x86DD
    else:
        return None
    ip = frame[off:]
    if ethertype == 0x0800 and len(ip) >= 20 and ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        frag = int.from_bytes(ip[6:8], "big")
        if ip[9] != 17 or frag & 0x3FFF:  # not UDP, or a fragment
            return None
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        total = int.from_bytes(ip[2:4], "big")
        udp = ip[ihl: total if total else None]
    elif ethertype == 0x86DD and len(ip) >= 40 and ip[0] >> 4 == 6:
        if ip[6] != 17:
            return None
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        udp = ip[40: 40 + int.from_bytes(ip[4:6], "big")]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, ulen = struct.unpack_from(">HHH", udp, 0)
    payload = udp[8: ulen] if ulen >= 8 else udp[8:]
    return Packet(bytes(payload), src, dst, sport, dport, ts_ms)
