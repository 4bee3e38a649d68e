"""Write UDP datagrams into a classic pcap file (Ethernet + IPv4/IPv6 + UDP) that tshark and flowmed read.

A small struct writer instead of scapy: it is a hundred times faster and has no MAC resolution surprises.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PCAP_MAGIC_US = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram to write: payload, addresses and ports, capture time (UTC ms)."""

    payload: bytes
    src: str
    dst: str = "127.0.0.1"
    sport: int = 2055
    dport: int = 2055
    time_ms: int = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(d: Datagram) -> bytes:
    """The Ethernet frame carrying ``d`` (valid IPv4 header checksum; UDP checksum computed for IPv6, as required)."""
    src, dst = ipaddress.ip_address(d.src), ipaddress.ip_address(d.dst)
    if src.version != dst.version:
        raise ValueError(f"mixed address families {d.src} -> {d.dst}")
    udp_len = 8 + len(d.payload)
    if src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        udp = struct.pack("!HHHH", d.sport, d.dport, udp_len, 0) + d.payload  # checksum 0: none, valid for IPv4
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, src.packed, dst.packed)
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", udp_len, 17)
        header = struct.pack("!HHHH", d.sport, d.dport, udp_len, 0)
        checksum = _checksum(pseudo + header + d.payload) or 0xFFFF
        udp = struct.pack("!HHHH", d.sport, d.dport, udp_len, checksum) + d.payload
        ethertype = 0x86DD
    return DST_MAC + SRC_MAC + struct.pack("!H", ethertype) + ip + udp


def write_pcap(path: str | Path, datagrams: Iterable[Datagram]) -> int:
    """Write ``datagrams`` to a classic (microsecond) pcap at ``path``; returns the number written."""
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for d in datagrams:
            data = frame(d)
            secs, ms = divmod(d.time_ms, 1000)
            f.write(struct.pack("<IIII", secs, ms * 1000, len(data), len(data)))
            f.write(data)
            n += 1
    return n
