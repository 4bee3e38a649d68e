"""Helpers shared by the ClickHouse output tests: deterministic flow batches and their expected totals."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from decoders.schema import FLOWS, ipv4_mapped

BASE_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z


def flow_batch(k: int, rows: int = 1000) -> pa.RecordBatch:
    """Batch number ``k``: the same rows every time it is built (a retried batch is the same batch)."""
    i = np.arange(rows, dtype=np.uint64)
    src = ipv4_mapped((0x0A000000 + (i % 512) * 256).astype(np.uint32))  # 10.0.x.0: trailing zero bytes
    dst = np.zeros(rows, dtype="S16")
    v6 = np.frombuffer(ipaddress.IPv6Address("2001:db8::").packed, dtype=np.uint8).copy()
    dst_bytes = np.tile(v6, (rows, 1))
    dst_bytes[:, 15] = (i % 200).astype(np.uint8)
    dst = dst_bytes.view("S16").reshape(rows)
    return FLOWS.to_arrow({
        "time_received": BASE_MS + k * 1000 + (i % 1000).astype(np.int64),
        "flow_start": BASE_MS + k * 1000 - 5000 + np.zeros(rows, dtype=np.int64),
        "flow_end": BASE_MS + k * 1000 + np.zeros(rows, dtype=np.int64),
        "exporter": ipv4_mapped(np.full(rows, 0x7F000001 + (k % 3), dtype=np.uint32)),
        "version": np.full(rows, 10, dtype=np.uint8),
        "src_addr": src,
        "dst_addr": dst,
        "src_port": (i % 65535).astype(np.uint16),
        "protocol": np.full(rows, 6, dtype=np.uint8),
        "bytes": (i + 1) * (k + 1),
        "packets": i % 7 + 1,
    })


def totals(ks: range | list[int], rows: int = 1000) -> tuple[int, int, int]:
    """(rows, sum(bytes), sum(packets)) of batches ``ks``."""
    n = b = p = 0
    for k in ks:
        batch = flow_batch(k, rows)
        n += batch.num_rows
        b += int(pa.compute.sum(batch.column("bytes")).as_py())
        p += int(pa.compute.sum(batch.column("packets")).as_py())
    return n, b, p


def server_totals(server, database: str) -> tuple[int, int, int]:
    """The same totals read back with clickhouse-client (the reference peer)."""
    out = server.query(f"SELECT count(), sum(bytes), sum(packets) FROM {database}.flows")
    n, b, p = out.split()
    return int(n), int(b), int(p)


def duplicate_batches(server, database: str, rows: int = 1000) -> str:
    """Batches stored with another row count than they were sent with (empty when every batch landed once)."""
    return server.query(f"SELECT batch_id, count() AS c FROM {database}.flows GROUP BY batch_id "
                        f"HAVING c != {rows} ORDER BY batch_id")
