"""NetFlow v5: a 24-byte header and up to 30 fixed 48-byte records (Cisco "NetFlow Export Datagram Format").

Parsing is split so that the records of many datagrams decode in one pass: :class:`V5Header` checks one datagram
(the per-datagram path; :func:`decoders.netflow.kernel.scan` checks a whole batch) and says how many records it
holds; the compiled gather reads the records of every datagram of the batch with :data:`PLAN`, and
:func:`times` makes their times.
"""

from __future__ import annotations

import struct

import numpy as np

from decoders.errors import EmptySet, LengthMismatch, Truncated
from decoders.netflow.kernel import Gathered, make_plan

HEADER = struct.Struct(">HHIIIIBBH")
HEADER_LEN = HEADER.size
RECORD_LEN = 48


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


# (name, offset, length, width of the column it is read into)
_UINTS = (("in_if", 12, 2, 4), ("out_if", 14, 2, 4), ("raw_packets", 16, 4, 8), ("raw_bytes", 20, 4, 8),
          ("first", 24, 4, 4), ("last", 28, 4, 4), ("src_port", 32, 2, 2), ("dst_port", 34, 2, 2),
          ("tcp_flags", 37, 1, 1), ("protocol", 38, 1, 1), ("tos", 39, 1, 1), ("src_as", 40, 2, 4),
          ("dst_as", 42, 2, 4), ("src_mask", 44, 1, 1), ("dst_mask", 45, 1, 1))
PLAN = make_plan([(name, 0, off, length, width) for name, off, length, width in _UINTS],
                 [(name, 0, off, "ipv4", None) for name, off in (("src_addr", 0), ("dst_addr", 4), ("next_hop", 8))])
"""The fields of a v5 record as the compiled gather reads them (:mod:`decoders.netflow.kernel`)."""


def times(view: Gathered, export_ms: np.ndarray, uptime_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``flow_start`` and ``flow_end`` of gathered v5 records; header values per record (or 0-d)."""
    return uptime_to_ms(view.uint("first"), export_ms, uptime_ms), uptime_to_ms(view.uint("last"), export_ms, uptime_ms)


COLUMNS = [(name, name) for name, *_ in _UINTS if name not in ("first", "last")]
"""(field, column) of the integer columns of a v5 record (the addresses are the plan's own)."""
