"""The ClickHouse type of each column kind (:data:`decoders.schema.KINDS`), per server generation: the one map.

The DDL (:mod:`storage.clickhouse.ddl`) takes the generation from the server's capabilities; the embedded store's
views read Parquet files, which hold what the oldest generation has (16-byte addresses) with millisecond times;
``flowmed schema`` documents the modern types.
"""

from __future__ import annotations

SCALAR = {"u8": "UInt8", "u16": "UInt16", "u32": "UInt32", "u64": "UInt64", "i32": "Int32", "i64": "Int64",
          "string": "String"}
"""The kinds whose type every server generation shares."""


def kind_type(kind: str, *, datetime64: bool, ipv6: bool) -> str:
    """The ClickHouse type of ``kind`` on a server with (or without) ``DateTime64`` and ``IPv6``."""
    if kind == "timestamp_ms":
        return "DateTime64(3, 'UTC')" if datetime64 else "DateTime('UTC')"
    if kind == "ip":
        return "IPv6" if ipv6 else "FixedString(16)"
    return SCALAR[kind]


def modern_type(kind: str) -> str:
    """The type of ``kind`` on a current server (what ``flowmed schema`` documents)."""
    return kind_type(kind, datetime64=True, ipv6=True)


def parquet_type(kind: str) -> str:
    """The type of ``kind`` as the store's Parquet files hold it (addresses as 16 bytes, times in milliseconds)."""
    return kind_type(kind, datetime64=True, ipv6=False)
