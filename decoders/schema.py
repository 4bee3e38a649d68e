"""The one schema definition: every table flowmed writes, column by column.

The Arrow schema (embedded Parquet store), the ClickHouse DDL (server output, per server version) and the
documentation (``flowmed schema``) are all generated from the ``Table`` objects registered here. A module that adds a
table (mediation, rating, IPDR, compliance) defines it with :func:`table` and it is registered on import; outputs
iterate over :data:`TABLES`.

Column kinds are logical types; each maps to one numpy dtype (the columnar batches), one Arrow type and one
ClickHouse type per server generation:

==============  ============  ==========================  ============================  =====================
kind            numpy         Arrow                       ClickHouse (modern)           ClickHouse 18.16
==============  ============  ==========================  ============================  =====================
timestamp_ms    int64 (ms)    timestamp[ms, UTC]          DateTime64(3, 'UTC')          DateTime('UTC')
ip              S16           fixed_size_binary(16)       IPv6                          FixedString(16)
u8..u64, i64    same          same                        UInt8..UInt64, Int64          same
string          object        string                      String / LowCardinality       String
==============  ============  ==========================  ============================  =====================

Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (``::ffff:a.b.c.d``). Money is ``i64`` micro-units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

ColumnValues = np.ndarray | Sequence[object]
"""One column's values for :meth:`Table.to_arrow`: a numpy array, or a list (small tables: leases, runs)."""

KINDS: dict[str, tuple[np.dtype, pa.DataType]] = {
    "timestamp_ms": (np.dtype("int64"), pa.timestamp("ms", tz="UTC")),
    "ip": (np.dtype("S16"), pa.binary(16)),
    "u8": (np.dtype("uint8"), pa.uint8()),
    "u16": (np.dtype("uint16"), pa.uint16()),
    "u32": (np.dtype("uint32"), pa.uint32()),
    "u64": (np.dtype("uint64"), pa.uint64()),
    "i32": (np.dtype("int32"), pa.int32()),
    "i64": (np.dtype("int64"), pa.int64()),
    "string": (np.dtype("O"), pa.string()),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a table."""

    name: str
    kind: str
    doc: str
    low_cardinality: bool = False
    """Dictionary-encode on servers that support LowCardinality (few distinct values: exporter names, reasons)."""
    codec: str | None = None
    """ClickHouse column codec on servers that support codecs, e.g. ``"DoubleDelta, LZ4"``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name}: unknown kind {self.kind!r}; expected one of {sorted(KINDS)}")

    @property
    def numpy_dtype(self) -> np.dtype:
        return KINDS[self.kind][0]

    @property
    def arrow_type(self) -> pa.DataType:
        return KINDS[self.kind][1]


@dataclass(frozen=True, slots=True)
class Table:
    """A table: its columns and how servers should lay it out.

    ``time_column`` drives partitioning (``partition`` is ``"day"`` or ``"month"``) and retention. ``order_by`` is
    the sorting key for ClickHouse. ``engine`` is ``"MergeTree"`` for append-only tables or ``"ReplacingMergeTree"``
    for tables whose rows carry a deterministic id and a ``version`` column (read with FINAL or argMax).
    """

    name: str
    doc: str
    columns: tuple[Column, ...]
    time_column: str
    order_by: tuple[str, ...]
    partition: str = "day"
    engine: str = "MergeTree"
    version_column: str | None = None
    arrow_schema: pa.Schema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: duplicate column names")
        for key in (self.time_column, *self.order_by, *([self.version_column] if self.version_column else [])):
            if key not in names:
                raise ValueError(f"table {self.name}: key column {key!r} is not a column")
        schema = pa.schema([pa.field(c.name, c.arrow_type, nullable=False) for c in self.columns])
        object.__setattr__(self, "arrow_schema", schema.with_metadata({"flowmed.table": self.name}))

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def empty_columns(self, n: int = 0) -> dict[str, np.ndarray]:
        """Zero-filled numpy columns for ``n`` rows (strings are empty)."""
        return {c.name: _empty_column(c, n) for c in self.columns}

    def to_arrow(self, columns: Mapping[str, ColumnValues]) -> pa.RecordBatch:
        """Build a RecordBatch from numpy columns (or lists); missing columns are zero-filled, unknown ones are an
        error."""
        unknown = set(columns) - set(self.column_names)
        if unknown:
            raise KeyError(f"table {self.name}: unknown columns {sorted(unknown)}")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"table {self.name}: columns of unequal length {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        arrays = []
        for c in self.columns:
            values = columns.get(c.name)
            if values is None:
                values = _empty_column(c, n)
            arrays.append(_to_arrow_array(values, c))
        return pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema)


def _empty_column(column: Column, n: int) -> np.ndarray:
    """``n`` zeros (strings: empty) of a column's numpy dtype."""
    if column.kind == "string":
        arr = np.empty(n, dtype=object)
        arr[:] = ""
        return arr
    return np.zeros(n, dtype=column.numpy_dtype)


def _to_arrow_array(values: ColumnValues, column: Column) -> pa.Array:
    # Fixed-width columns share the numpy memory (no copy), like pa.array does for integers.
    if column.kind == "ip":
        data = np.ascontiguousarray(values, dtype="S16")
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(data), [None, pa.py_buffer(data)])
    if column.kind == "timestamp_ms":
        return pa.array(np.asarray(values, dtype="int64"), type=pa.int64()).cast(column.arrow_type)
    if column.kind == "string":
        return pa.array(values, type=pa.string())
    return pa.array(np.asarray(values, dtype=column.numpy_dtype), type=column.arrow_type)


TABLES: dict[str, Table] = {}
"""Every table flowmed knows, by name. Modules register theirs on import via :func:`table`."""


def table(name: str, doc: str, columns: tuple[Column, ...], time_column: str, order_by: tuple[str, ...],
          partition: str = "day", engine: str = "MergeTree", version_column: str | None = None) -> Table:
    """Define and register a table (see :class:`Table`); redefining a name is an error."""
    t = Table(name, doc, columns, time_column, order_by, partition, engine, version_column)
    if t.name in TABLES and TABLES[t.name] != t:
        raise ValueError(f"table {t.name} defined twice")
    TABLES[t.name] = t
    return t


def ipv4_mapped(addresses: np.ndarray) -> np.ndarray:
    """IPv4 addresses (uint32, host order) as IPv4-mapped IPv6 ``S16`` values, vectorised."""
    n = len(addresses)
    out = np.zeros((n, 4), dtype=np.uint32)  # words 2 and 3 set to the bytes ff ff and the address, big-endian
    out[:, 2] = _MAPPED_WORD
    out[:, 3] = np.asarray(addresses).astype(">u4").view(np.uint32)
    return out.view("S16").reshape(n)


_MAPPED_WORD = np.frombuffer(b"\0\0\xff\xff", dtype=np.uint32)[0]


FLOWS = table(
    "flows",
    "Raw flow records as decoded from NetFlow v5, v9 and IPFIX, one row per flow record, and from sFlow v5, one row "
    "per flow sample (a sampled packet: its frame length and 1 packet); counters upscaled by the sampling rate (the "
    "raw counters and the rate are kept beside them).",
    (
        Column("time_received", "timestamp_ms", "When the collector received the datagram (UTC).",
               codec="DoubleDelta, LZ4"),
        Column("flow_start", "timestamp_ms", "First packet of the flow (UTC), from the exporter's clock.",
               codec="DoubleDelta, LZ4"),
        Column("flow_end", "timestamp_ms", "Last packet of the flow (UTC), from the exporter's clock.",
               codec="DoubleDelta, LZ4"),
        Column("exporter", "ip", "Address the export datagram came from.", low_cardinality=True),
        Column("observation_domain", "u32", "v9 source id or IPFIX observation domain id (0 for v5: engine type/id "
               "in the low 16 bits; sFlow: the sub-agent id)."),
        Column("version", "u8", "Export protocol: 5, 9, 10 (IPFIX) or 105 (sFlow v5).", low_cardinality=True),
        Column("src_addr", "ip", "Source address (IPv4-mapped for IPv4).", codec="ZSTD(1)"),
        Column("dst_addr", "ip", "Destination address (IPv4-mapped for IPv4).", codec="ZSTD(1)"),
        Column("src_port", "u16", "Source transport port."),
        Column("dst_port", "u16", "Destination transport port."),
        Column("protocol", "u8", "IP protocol number."),
        Column("tcp_flags", "u8", "Cumulative OR of TCP flags."),
        Column("tos", "u8", "IP type of service / traffic class byte."),
        Column("in_if", "u32", "SNMP index of the input interface."),
        Column("out_if", "u32", "SNMP index of the output interface."),
        Column("direction", "u8", "Flow direction as exported (IE 61): 0 ingress, 1 egress."),
        Column("bytes", "u64", "Octets, upscaled by sampling_rate.", codec="T64, LZ4"),
        Column("packets", "u64", "Packets, upscaled by sampling_rate.", codec="T64, LZ4"),
        Column("raw_bytes", "u64", "Octets as exported, before upscaling.", codec="T64, LZ4"),
        Column("raw_packets", "u64", "Packets as exported, before upscaling.", codec="T64, LZ4"),
        Column("sampling_rate", "u32", "1-in-N sampling rate applied (1 = unsampled)."),
        Column("src_as", "u32", "Source autonomous system."),
        Column("dst_as", "u32", "Destination autonomous system."),
        Column("src_mask", "u8", "Source prefix length."),
        Column("dst_mask", "u8", "Destination prefix length."),
        Column("next_hop", "ip", "IP next hop (IPv4-mapped for IPv4).", codec="ZSTD(1)"),
        Column("post_nat_src_addr", "ip", "Source address after NAT (IE 225/281); zero if not translated.",
               codec="ZSTD(1)"),
        Column("post_nat_dst_addr", "ip", "Destination address after NAT (IE 226/282); zero if not translated.",
               codec="ZSTD(1)"),
        Column("post_nat_src_port", "u16", "Source port after NAPT (IE 227)."),
        Column("post_nat_dst_port", "u16", "Destination port after NAPT (IE 228)."),
        Column("nat_event", "u8", "NAT event (IE 230); 0 when the record is not a NAT event."),
        Column("port_range_start", "u16", "First port of a NAT port block (IE 361); 0 when none."),
        Column("port_range_end", "u16", "Last port of a NAT port block (IE 362); 0 when none."),
        Column("port_range_step", "u16", "Step between the ports of a NAT port block (IE 363); 0 when none."),
        Column("port_range_ports", "u16", "Number of ports of a NAT port block (IE 364); 0 when none."),
        Column("nat_pool_id", "u32", "NAT pool (IE 283); 0 when none."),
        Column("firewall_event", "u8", "Firewall event (IE 233; Cisco NSEL NF_F_FW_EVENT: 1 created, 2 deleted, "
               "3 denied, 5 update); 0 when none."),
        Column("datagram", "u64", "The export datagram the record came in: a 64-bit digest of the exporter and the "
               "datagram's bytes, equal for an identical resend (de-duplication keys primary exporters by it); a data "
               "set held for its template and decoded later has its own. 0: unknown (rows stored before it was)."),
        Column("datagram_offset", "u16", "Where the record starts in its datagram, in bytes (a held data set: in "
               "the set); with exporter and datagram it locates the record."),
        Column("batch_id", "u64", "Id of the write batch; a replayed batch keeps its id, so it lands only once.",
               codec="T64, LZ4"),
    ),
    time_column="time_received",
    order_by=("time_received", "exporter"),
)
