"""NetFlow v5: a 24-byte header and up to 30 fixed 48-byte records (Cisco "NetFlow Export Datagram Format").

Parsing is split so that the records of many datagrams decode in one pass: :func:`parse_header` checks one datagram
and says how many records it holds; :func:`decode_records` turns the concatenated records of many datagrams into
``flows`` columns with one ``np.frombuffer``.
"""

from __future__ import annotations

import struct

import numpy as np

from decoders.errors import EmptySet, LengthMismatch, Truncated
from decoders.schema import ipv4_mapped

HEADER = struct.Struct(">HHIIIIBBH")
HEADER_LEN = HEADER.size
RECORD = np.dtype([
    ("srcaddr", ">u4"), ("dstaddr", ">u4"), ("nexthop", ">u4"), ("input", ">u2"), ("output", ">u2"),
    ("dPkts", ">u4"), ("dOctets", ">u4"), ("first", ">u4"), ("last", ">u4"), ("srcport", ">u2"),
    ("dstport", ">u2"), ("pad1", "u1"), ("tcp_flags", "u1"), ("prot", "u1"), ("tos", "u1"), ("src_as", ">u2"),
    ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"), ("pad2", ">u2"),
])
RECORD_LEN = RECORD.itemsize  # 48


class V5Header:
    """The fields of a v5 header that the decoder uses."""

    __slots__ = ("count", "uptime_ms", "export_ms", "sequence", "domain", "sampling_rate", "problem")

    def __init__(self, payload: bytes) -> None:
        if len(payload) < HEADER_LEN:
            raise Truncated(f"v5 header needs {HEADER_LEN} bytes, got {len(payload)}", offset=0)
        _, count, uptime, secs, nsecs, seq, engine_type, engine_id, sampling = HEADER.unpack_from(payload)
        if count == 0:
            raise EmptySet("v5 datagram with no record", offset=2)
        avail = (len(payload) - HEADER_LEN) // RECORD_LEN
        self.problem: Truncated | LengthMismatch | None = None
        if avail < count:
            self.problem = Truncated(f"v5 header announces {count} records, datagram holds {avail}", offset=2)
            count = avail
        elif len(payload) != HEADER_LEN + count * RECORD_LEN:
            self.problem = LengthMismatch(f"v5 datagram of {len(payload)} bytes for {count} records", offset=2)
        self.count = count
        self.uptime_ms = uptime
        self.export_ms = secs * 1000 + nsecs // 1_000_000
        self.sequence = seq
        self.domain = (engine_type << 8) | engine_id
        # Top 2 bits: sampling mode; low 14 bits: interval (0 = not sampled / not announced).
        self.sampling_rate = sampling & 0x3FFF


def uptime_to_ms(values: np.ndarray, export_ms: np.ndarray, uptime_ms: np.ndarray) -> np.ndarray:
    """sysUptime-relative times (ms since exporter boot, uint32 wrapping) to UTC ms, given the header's clocks.

    The age ``uptime - value`` is taken modulo 2**32 and read as signed, so a counter wrap between the flow and
    the export is harmless and a time slightly after the header's uptime (seen from some exporters) stays close.
    """
    age = np.subtract(np.asarray(uptime_ms).astype(np.uint32), values, dtype=np.uint32, casting="unsafe")
    out: np.ndarray = np.subtract(export_ms, age.view(np.int32), dtype=np.int64)
    return out


def decode_records(buf: bytes, n: int, export_ms: np.ndarray, uptime_ms: np.ndarray) -> dict[str, np.ndarray]:
    """``flows`` columns (raw, before sampling) of ``n`` concatenated v5 records; header values per record."""
    r = np.frombuffer(buf, dtype=RECORD, count=n)
    return {
        "src_addr": ipv4_mapped(np.ascontiguousarray(r["srcaddr"])),
        "dst_addr": ipv4_mapped(np.ascontiguousarray(r["dstaddr"])),
        "next_hop": ipv4_mapped(np.ascontiguousarray(r["nexthop"])),
        "in_if": r["input"],
        "out_if": r["output"],
        "raw_packets": r["dPkts"],
        "raw_bytes": r["dOctets"],
        "flow_start": uptime_to_ms(r["first"], export_ms, uptime_ms),
        "flow_end": uptime_to_ms(r["last"], export_ms, uptime_ms),
        "src_port": r["srcport"],
        "dst_port": r["dstport"],
        "tcp_flags": r["tcp_flags"],
        "protocol": r["prot"],
        "tos": r["tos"],
        "src_as": r["src_as"],
        "dst_as": r["dst_as"],
        "src_mask": r["src_mask"],
        "dst_mask": r["dst_mask"],
    }
