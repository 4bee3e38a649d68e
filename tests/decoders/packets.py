"""Hand-built NetFlow v5 / v9 / IPFIX packets for the decoder unit tests (struct only, no encoder library).

Independent of ``bench/exporter.py`` on purpose: a bug shared by encoder and decoder cannot hide here.
"""

from __future__ import annotations

import ipaddress
import struct

T0_MS = 1_700_000_000_000
"""Export time used by the tests (a whole second)."""


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def mapped(text: str) -> bytes:
    """The 16-byte column value of an address."""
    addr = ipaddress.ip_address(text)
    return b"\0" * 10 + b"\xff\xff" + addr.packed if addr.version == 4 else addr.packed


def v5(records: list[dict], *, uptime: int = 3_600_000, export_ms: int = T0_MS, seq: int = 0, engine: int = 0,
       sampling: int = 0, count: int | None = None) -> bytes:
    secs, ms = divmod(export_ms, 1000)
    head = struct.pack(">HHIIIIBBH", 5, len(records) if count is None else count, uptime, secs, ms * 1_000_000,
                       seq, engine >> 8, engine & 0xFF, sampling)
    body = b"".join(struct.pack(
        ">4s4s4sHHIIIIHHxBBBHHBBxx", ip4(r.get("src", "10.0.0.1")), ip4(r.get("dst", "10.0.0.2")),
        ip4(r.get("nh", "0.0.0.0")), r.get("in_if", 1), r.get("out_if", 2), r.get("packets", 1), r.get("bytes", 100),
        r.get("first", uptime - 1000), r.get("last", uptime), r.get("sport", 1234), r.get("dport", 80),
        r.get("flags", 0x1B), r.get("proto", 6), r.get("tos", 0), r.get("src_as", 0), r.get("dst_as", 0),
        r.get("src_mask", 0), r.get("dst_mask", 0)) for r in records)
    return head + body


class Set(bytes):
    """A set's bytes, knowing how many records it holds (for the v9 header count)."""

    records: int

    def __new__(cls, data: bytes, records: int) -> Set:
        out = super().__new__(cls, data)
        out.records = records
        return out


def field_specs(fields: list[tuple], *, ipfix: bool) -> bytes:
    """(ie, length) or (ie, length, enterprise) tuples as template field specifiers."""
    out = b""
    for f in fields:
        ie, length = f[0], f[1]
        ent = f[2] if len(f) > 2 else 0
        if ent:
            assert ipfix
            out += struct.pack(">HHI", ie | 0x8000, length, ent)
        else:
            out += struct.pack(">HH", ie, length)
    return out


def template_set(templates: dict[int, list[tuple]], *, ipfix: bool) -> bytes:
    body = b"".join(struct.pack(">HH", tid, len(f)) + field_specs(f, ipfix=ipfix) for tid, f in templates.items())
    return Set(struct.pack(">HH", 2 if ipfix else 0, 4 + len(body)) + body, len(templates))


def options_template_set(tid: int, scope: list[tuple], options: list[tuple], *, ipfix: bool) -> bytes:
    if ipfix:
        body = struct.pack(">HHH", tid, len(scope) + len(options), len(scope))
        body += field_specs(scope + options, ipfix=True)
        body += bytes(-(4 + len(body)) % 4)
        return Set(struct.pack(">HH", 3, 4 + len(body)) + body, 1)
    body = struct.pack(">HHH", tid, 4 * len(scope), 4 * len(options)) + field_specs(scope + options, ipfix=False)
    body += bytes(-(4 + len(body)) % 4)
    return Set(struct.pack(">HH", 1, 4 + len(body)) + body, 1)


def encode_record(fields: list[tuple], values: dict) -> bytes:
    """One record: values by IE id (bytes taken as is, ints big-endian in the field length); varlen prefixed."""
    out = b""
    for f in fields:
        ie, length = f[0], f[1]
        v = values.get(ie, 0)
        if length == 0xFFFF:
            data = v if isinstance(v, bytes) else str(v).encode() if v else b""
            out += (bytes([len(data)]) if len(data) < 255 else b"\xff" + struct.pack(">H", len(data))) + data
        elif isinstance(v, bytes):
            out += v.rjust(length, b"\0")[:length]
        else:
            out += int(v).to_bytes(length, "big")
    return out


def data_set(tid: int, fields: list[tuple], records: list[dict], *, pad: int = 0) -> bytes:
    body = b"".join(encode_record(fields, r) for r in records) + bytes(pad)
    return Set(struct.pack(">HH", tid, 4 + len(body)) + body, len(records))


def v9(*sets: bytes, uptime: int = 3_600_000, export_ms: int = T0_MS, seq: int = 0, domain: int = 0,
       count: int | None = None) -> bytes:
    """A v9 datagram; its header counts the records of the sets (a set of raw bytes counts as one)."""
    if count is None:
        count = sum(getattr(s, "records", 1) for s in sets)
    return struct.pack(">HHIIII", 9, count, uptime, export_ms // 1000, seq, domain) + b"".join(sets)


def ipfix(*sets: bytes, export_ms: int = T0_MS, seq: int = 0, domain: int = 0, length: int | None = None) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body) if length is None else length, export_ms // 1000, seq,
                       domain) + body


# A typical IPv4 flow template (IANA ids), with the values one test record uses.
V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (5, 1), (1, 8), (2, 8), (10, 4), (14, 4), (152, 8),
             (153, 8), (15, 4), (16, 4), (17, 4), (9, 1), (13, 1), (61, 1)]


def v4_record(i: int = 0, **over) -> dict:
    r = {8: ip4(f"10.0.0.{i + 1}"), 12: ip4("192.0.2.7"), 7: 40000 + i, 11: 443, 4: 6, 6: 0x12, 5: 0x20,
         1: 1000 * (i + 1), 2: 10 * (i + 1), 10: 3, 14: 4, 152: T0_MS - 5000, 153: T0_MS - 1000, 15: ip4("10.9.9.9"),
         16: 64500, 17: 64501, 9: 24, 13: 16, 61: 1}
    r.update(over)
    return r
