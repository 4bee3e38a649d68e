"""Tables of the mediation layer: ``usage``, ``rejects``, ``reconciliation`` and ``bindings``.

Importing this module registers them in :data:`decoders.schema.TABLES` (outputs iterate that registry).

How ``usage`` is read
---------------------
Every ``usage`` row is an additive part: the usage of a key ``(subscriber_id, interval_start, direction,
traffic_class)`` is the **sum** of its rows. Several rows exist for one key when several exporters saw the
subscriber, when several workers handled them, when a late record produced a correction row, or when RADIUS or IPDR
reported the same subscriber (``source`` tells them apart; billing normally reads one source). Readers therefore
always ``GROUP BY`` the key and ``sum(bytes)``.

A row is identified by ``row_id`` (a hash of its key, ``source``, ``exporter``, ``correction`` and ``created``), and
the ClickHouse table is a ReplacingMergeTree over exactly those columns: a batch that is sent twice (spool replay,
retried insert, RADIUS journal replay, IPDR crash-window re-send) collapses to one copy, while distinct parts never
collapse. On a server, exact reads use ``FINAL`` (or ``LIMIT 1 BY row_id``); the embedded store writes each batch id
once, and its ``usage`` view collapses rows re-sent in another batch by the same key (``usage_raw`` does not; see
:func:`storage.query.collapsed_select`).
"""

from __future__ import annotations

from decoders.schema import FLOWS, Column, table

OPEN_END_MS = 4_294_967_295_000
"""``valid_to`` of a binding that has not ended (2106-02-07, the largest ClickHouse ``DateTime``)."""

DIRECTIONS = ("up", "down", "unattributed")
"""``usage.direction``: from the subscriber, to the subscriber, or no subscriber on either side."""

USAGE = table(
    "usage",
    "Subscriber usage per interval, direction and traffic class. Rows are additive parts: the usage of a key is "
    "sum(bytes) over its rows (GROUP BY subscriber_id, interval_start, direction, traffic_class).",
    (
        Column("interval_start", "timestamp_ms", "Start of the interval (UTC, inclusive).", codec="DoubleDelta, LZ4"),
        Column("interval_end", "timestamp_ms", "End of the interval (UTC, exclusive).", codec="DoubleDelta, LZ4"),
        Column("subscriber_id", "string", "Subscriber; empty for unattributed traffic."),
        Column("direction", "string", "up (from the subscriber), down (to the subscriber) or unattributed.",
               low_cardinality=True),
        Column("traffic_class", "string", "Traffic class from the class rules (radius/ipdr usage: 'all').",
               low_cardinality=True),
        Column("bytes", "u64", "Octets in this part.", codec="T64, LZ4"),
        Column("packets", "u64", "Packets in this part.", codec="T64, LZ4"),
        Column("flows", "u64", "Flow records in this part (a split flow counts in one interval only).",
               codec="T64, LZ4"),
        Column("source", "string", "flow, radius or ipdr.", low_cardinality=True),
        Column("exporter", "ip", "Flow exporter, RADIUS NAS or CMTS that reported it.", low_cardinality=True),
        Column("correction", "u32", "0 for the row written when the interval closed (or for cumulative-counter "
               "deltas), n > 0 for the n-th correction row from late records."),
        Column("created", "timestamp_ms", "When flowmed wrote the row (UTC)."),
        Column("row_id", "u64", "Deterministic id of this part; a re-sent row has the same id."),
    ),
    time_column="interval_start",
    order_by=("subscriber_id", "interval_start", "direction", "traffic_class", "source", "exporter", "correction",
              "created", "row_id"),
    partition="month",
    engine="ReplacingMergeTree",
)

_FLOW_COLUMNS = tuple(c for c in FLOWS.columns if c.name != "batch_id")

REJECTS = table(
    "rejects",
    "Flow records refused by validation, with the reason and every raw value, so they can be re-processed "
    "(flowmed reprocess).",
    (
        Column("reason", "string", "Why: impossible_timestamp, end_before_start, future, too_old, too_long, "
               "zero_counters, absurd_counters.", low_cardinality=True),
        Column("rejected_at", "timestamp_ms", "When flowmed rejected it (UTC)."),
        Column("reject_id", "u64", "Deterministic record key: a hash of the flow's fields, its observation domain "
               "and its exporter (unless the exporter's role is shared); de-duplication's per-record key."),
        *_FLOW_COLUMNS,
        Column("batch_id", "u64", "Id of the write batch that stored the reject (not the batch of the flow); a "
               "replayed batch keeps its id, so it lands only once.", codec="T64, LZ4"),
    ),
    time_column="time_received",
    order_by=("time_received", "exporter", "reason"),
)

RECONCILIATION = table(
    "reconciliation",
    "Balance of every received flow byte per receive interval and exporter: bytes_in = bytes_attributed + "
    "bytes_unattributed + bytes_rejected + bytes_duplicate. Rows are additive parts (sum per interval/exporter).",
    (
        Column("interval_start", "timestamp_ms", "Receive interval start (by time_received, UTC)."),
        Column("interval_end", "timestamp_ms", "Receive interval end (exclusive)."),
        Column("exporter", "ip", "Exporter.", low_cardinality=True),
        Column("source", "string", "flow (reprocess for re-processed rejects).", low_cardinality=True),
        Column("records_in", "u64", "Records received."),
        Column("bytes_in", "u64", "Bytes received (upscaled by sampling)."),
        Column("bytes_attributed", "u64", "Bytes of record parts with a subscriber on at least one side."),
        Column("bytes_unattributed", "u64", "Bytes of record parts with no subscriber."),
        Column("bytes_rejected", "u64", "Bytes of rejected records."),
        Column("bytes_duplicate", "u64", "Bytes of duplicate records."),
        Column("records_rejected", "u64", "Records rejected."),
        Column("records_duplicate", "u64", "Records dropped as duplicates."),
        Column("bytes_usage", "u64", "Bytes written to usage (attributed + unattributed + the second side of "
               "subscriber-to-subscriber traffic)."),
        Column("balanced", "u8", "1 when this part balances (checked in code when it was written)."),
        Column("created", "timestamp_ms", "When the row was written (UTC)."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="interval_start",
    order_by=("interval_start", "exporter", "created"),
    partition="month",
)

BINDINGS = table(
    "bindings",
    "Subscriber bindings: which subscriber held an address or prefix over [valid_from, valid_to). A binding is "
    "re-written with a higher version when it ends (read with FINAL or argMax(valid_to, version)).",
    (
        Column("binding_id", "u64", "Binding id (stable): service.host_index << 56 | the id in that host's bindings "
               "database, so the collector hosts of a cluster never share one."),
        Column("version", "u64", "Change sequence; the highest version is current."),
        Column("subscriber_id", "string", "Subscriber."),
        Column("network", "ip", "Address or prefix (IPv4 mapped), host bits zero."),
        Column("prefix_len", "u8", "Prefix length in IPv6 terms (an IPv4 /32 is 128)."),
        Column("valid_from", "timestamp_ms", "Start (UTC, inclusive)."),
        Column("valid_to", "timestamp_ms", "End (UTC, exclusive); 2106-02-07 while open."),
        Column("source", "string", "static or radius.", low_cardinality=True),
        Column("session_id", "string", "RADIUS unique session id (or static file line key)."),
        Column("nas", "ip", "NAS that reported the session (zero for static)."),
    ),
    time_column="valid_from",
    order_by=("network", "prefix_len", "valid_from", "binding_id"),
    partition="month",
    engine="ReplacingMergeTree",
    version_column="version",
)

__all__ = ["BINDINGS", "DIRECTIONS", "OPEN_END_MS", "RECONCILIATION", "REJECTS", "USAGE"]

# IPDR's raw records are queried next to the usage they produced: register ipdr_records with the mediation tables.
import mediation.ipdr.tables  # noqa: E402,F401  (after USAGE: it only needs decoders.schema)
