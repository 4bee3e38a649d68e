"""Synthetic ``flows`` batches for the store, sink and query benchmarks and tests (vectorised, seeded)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from decoders.schema import FLOWS, ipv4_mapped

T0_MS = 1_795_635_600_000  # 2026-11-25T19:40:00Z


def flows_batch(n: int, *, t0_ms: int = T0_MS, span_ms: int = 60_000, seed: int = 1, sources: int = 1000,
                ) -> pa.RecordBatch:
    """``n`` flow rows received over ``[t0_ms, t0_ms + span_ms)`` from ``sources`` IPv4 sources, in time order."""
    r = np.random.default_rng(seed)
    t = t0_ms + np.sort(r.integers(0, max(span_ms, 1), n))
    cols = {
        "time_received": t,
        "flow_start": t - r.integers(0, 60_000, n),
        "flow_end": t - r.integers(0, 1_000, n),
        "exporter": ipv4_mapped(0xC0000201 + r.integers(0, 4, n).astype(np.uint32)),
        "version": np.full(n, 9, np.uint8),
        "src_addr": ipv4_mapped((0x0A000000 + r.integers(0, sources, n)).astype(np.uint32)),
        "dst_addr": ipv4_mapped((0x08080000 + r.integers(0, 1 << 20, n)).astype(np.uint32)),
        "src_port": r.integers(1024, 65535, n).astype(np.uint16),
        "dst_port": r.choice(np.array([80, 443, 53, 22], np.uint16), n),
        "protocol": r.choice(np.array([6, 17], np.uint8), n),
        "in_if": r.integers(1, 8, n).astype(np.uint32),
        "bytes": r.lognormal(8, 2, n).astype(np.uint64) + 1,
        "packets": r.integers(1, 1000, n).astype(np.uint64),
        "sampling_rate": np.ones(n, np.uint32),
    }
    cols["raw_bytes"] = cols["bytes"]
    cols["raw_packets"] = cols["packets"]
    return FLOWS.to_arrow(cols)


def addr(text: str) -> bytes:
    """16-byte address (IPv4 mapped) of ``text``."""
    import ipaddress

    a = ipaddress.ip_address(text)
    return (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a).packed
