"""Tables of exporter health over time: ``exporter_stats`` and ``exporter_errors``.

The daemon keeps per-exporter counters in memory (its status board and Prometheus metrics); once a minute
:mod:`collector.exporter_stats` writes what changed as rows of these tables, so the history (datagrams and records per
second, sequence losses, templates, decode errors by reason, last seen) can be read with SQL and drawn by
``flowmed console``. Rows are additive parts: several workers each write their own (``worker``); readers sum them
per ``time`` and ``exporter``. Importing this module registers both tables and their store retention (as long as
``flows``: ``store.flows_retention_days``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pyarrow as pa

from decoders.schema import Column, table
from storage.store import retention_setting

EXPORTER_STATS = table(
    "exporter_stats",
    "Per-exporter counters of the collector, one row per exporter, worker and minute in which it sent something: "
    "what it sent over period_ms up to time. Rows of several workers are additive parts (sum them per time and "
    "exporter).",
    (
        Column("time", "timestamp_ms", "End of the period counted (UTC).", codec="DoubleDelta, LZ4"),
        Column("period_ms", "u32", "Length of the period counted (ms): rates are counts * 1000 / period_ms."),
        Column("exporter", "ip", "Exporter address.", low_cardinality=True),
        Column("worker", "u16", "Collector worker that counted it (0 for a single process)."),
        Column("datagrams", "u64", "Export datagrams received in the period."),
        Column("records", "u64", "Flow records decoded in the period."),
        Column("sequence_lost", "u64", "Datagrams (v9) or records (v5, IPFIX) missing by sequence number in the "
               "period."),
        Column("decode_errors", "u64", "Malformed or refused input in the period (all reasons; see "
               "exporter_errors)."),
        Column("templates", "u32", "Templates known for the exporter at time."),
        Column("last_seen", "timestamp_ms", "When the exporter's last datagram arrived (UTC)."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="time",
    order_by=("time", "exporter", "worker"),
)

EXPORTER_ERRORS = table(
    "exporter_errors",
    "Decode errors per exporter, reason, worker and minute (the flowmed_decode_errors counter over time); exporters "
    "beyond metrics.max_exporter_labels are counted under the address ::.",
    (
        Column("time", "timestamp_ms", "End of the period counted (UTC).", codec="DoubleDelta, LZ4"),
        Column("period_ms", "u32", "Length of the period counted (ms)."),
        Column("exporter", "ip", "Exporter address (:: for exporters without a metric label of their own).",
               low_cardinality=True),
        Column("worker", "u16", "Collector worker that counted it (0 for a single process)."),
        Column("reason", "string", "Decode error reason (the decoders' stable reason strings).", low_cardinality=True),
        Column("errors", "u64", "Errors in the period."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="time",
    order_by=("time", "exporter", "reason", "worker"),
)

retention_setting("exporter_stats", lambda config: config.store.flows_retention_days)
retention_setting("exporter_errors", lambda config: config.store.flows_retention_days)


def address_bytes(text: str) -> bytes:
    """An exporter address as the 16 bytes the tables store (IPv4 mapped); anything else (``other``) as ``::``."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return bytes(16)
    return (ipaddress.IPv6Address(f"::ffff:{addr}") if addr.version == 4 else addr).packed


def stats_batch(time_ms: int, period_ms: int, worker: int, rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """An ``exporter_stats`` batch from per-exporter rows (``exporter`` as text plus the counter columns)."""
    cols: dict[str, np.ndarray] = {
        "time": np.full(len(rows), time_ms, dtype=np.int64),
        "period_ms": np.full(len(rows), period_ms, dtype=np.uint32),
        "exporter": np.array([address_bytes(r["exporter"]) for r in rows], dtype="S16"),
        "worker": np.full(len(rows), worker, dtype=np.uint16),
    }
    for name in ("datagrams", "records", "sequence_lost", "decode_errors"):
        cols[name] = np.array([r[name] for r in rows], dtype=np.uint64)
    cols["templates"] = np.array([r["templates"] for r in rows], dtype=np.uint32)
    cols["last_seen"] = np.array([r["last_seen"] for r in rows], dtype=np.int64)
    return EXPORTER_STATS.to_arrow(cols)


def errors_batch(time_ms: int, period_ms: int, worker: int, rows: list[tuple[str, str, int]]) -> pa.RecordBatch:
    """An ``exporter_errors`` batch from ``(exporter text, reason, errors)`` rows."""
    return EXPORTER_ERRORS.to_arrow({
        "time": np.full(len(rows), time_ms, dtype=np.int64),
        "period_ms": np.full(len(rows), period_ms, dtype=np.uint32),
        "exporter": np.array([address_bytes(e) for e, _, _ in rows], dtype="S16"),
        "worker": np.full(len(rows), worker, dtype=np.uint16),
        "reason": np.array([r for _, r, _ in rows], dtype=object),
        "errors": np.array([n for _, _, n in rows], dtype=np.uint64),
    })
