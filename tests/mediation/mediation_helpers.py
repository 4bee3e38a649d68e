"""Helpers for the mediation tests: hand-built ``flows`` batches and address conversion."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from decoders.schema import FLOWS

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z, a multiple of 5 minutes
MIN = 60_000
INTERVAL = 300_000


def a16(text: str) -> bytes:
    """An address as 16 bytes, IPv4 mapped."""
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def flows(rows: Sequence[dict]) -> pa.RecordBatch:
    """A ``flows`` batch from dicts with keys src, dst, start, end, bytes, packets and optional received,
    exporter, src_port, dst_port, protocol, domain, datagram and offset (its datagram's identity and where it starts in
    it; without them a record has no identity and is de-duplicated per record)."""
    n = len(rows)
    cols = FLOWS.empty_columns(n)
    for i, r in enumerate(rows):
        cols["src_addr"][i] = a16(r["src"])
        cols["dst_addr"][i] = a16(r["dst"])
        cols["flow_start"][i] = r["start"]
        cols["flow_end"][i] = r["end"]
        cols["time_received"][i] = r.get("received", r["end"] + 1000)
        cols["exporter"][i] = a16(r.get("exporter", "192.0.2.1"))
        cols["bytes"][i] = r["bytes"]
        cols["packets"][i] = r["packets"]
        cols["raw_bytes"][i] = r["bytes"]
        cols["raw_packets"][i] = r["packets"]
        cols["sampling_rate"][i] = 1
        cols["src_port"][i] = r.get("src_port", 40000)
        cols["dst_port"][i] = r.get("dst_port", 443)
        cols["protocol"][i] = r.get("protocol", 6)
        cols["observation_domain"][i] = r.get("domain", 0)
        cols["version"][i] = 10
        cols["datagram"][i] = r.get("datagram", 0)
        cols["datagram_offset"][i] = r.get("offset", 0)
    return FLOWS.to_arrow(cols)


def usage_totals(batches: Sequence[pa.RecordBatch | None]) -> dict[tuple, int]:
    """sum(bytes) per (subscriber_id, interval_start ms, direction) over usage batches (the readers' GROUP BY)."""
    out: dict[tuple, int] = {}
    for b in batches:
        if b is None or not b.num_rows:
            continue
        starts = b.column("interval_start").cast(pa.int64()).to_pylist()
        for s, sub, d, nbytes in zip(starts, b.column("subscriber_id").to_pylist(), b.column("direction").to_pylist(),
                                     b.column("bytes").to_pylist(), strict=True):
            key = (sub, s, d)
            out[key] = out.get(key, 0) + nbytes
    return out


def s16(values: Sequence[str]) -> np.ndarray:
    return np.array([a16(v) for v in values], dtype="S16")
