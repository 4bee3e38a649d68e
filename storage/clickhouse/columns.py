"""Arrow batches as the columns clickhouse-driver inserts, per server generation (times, addresses, strings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from decoders.schema import Table
from storage.clickhouse.ddl import ServerCaps, quote_ident


# ---- Arrow -> driver columns ---------------------------------------------------------------------------------------
def arrow_to_columns(table: Table, batch: pa.RecordBatch, caps: ServerCaps, batch_id: int | None = None) -> list[Any]:
    """The column values clickhouse-driver wants for ``INSERT ... VALUES`` with ``columnar=True``, per type.

    Integers go as numpy views of the Arrow buffers, times as integers (seconds for ``DateTime``, milliseconds for
    ``DateTime64(3)``: the driver writes integer arrays as they are), addresses as 16-byte values, strings as an
    object array. Columns missing from an older spooled batch are zero-filled. ``batch_id`` overwrites the
    ``batch_id`` column so the stored rows carry the id the dedup check looks for.
    """
    n = batch.num_rows
    names = set(batch.schema.names)
    unknown = names - set(table.column_names)
    if unknown:
        raise ValueError(f"table {table.name}: batch has unknown columns {sorted(unknown)}")
    out: list[Any] = []
    zeros = None
    for c in table.columns:
        if c.name == "batch_id" and batch_id is not None:
            out.append(np.full(n, batch_id, dtype=np.uint64))
            continue
        if c.name not in names:
            zeros = zeros if zeros is not None else table.empty_columns(n)
            values = zeros[c.name]
            out.append(_ts(values, caps) if c.kind == "timestamp_ms" else
                       (values.tolist() if c.kind == "ip" and caps.ipv6 else values))
            continue
        arr = batch.column(c.name)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if c.kind == "timestamp_ms":
            out.append(_ts(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), caps))
        elif c.kind == "ip":
            data = np.frombuffer(arr.buffers()[1], dtype="S16", count=len(arr), offset=arr.offset * 16)
            # IPv6 has no numpy column in the driver: it takes a list of bytes (NULs it strips are padded back).
            out.append(data.tolist() if caps.ipv6 else data)
        elif c.kind == "string":
            out.append(arr.to_numpy(zero_copy_only=False).astype(object))
        else:
            out.append(arr.to_numpy(zero_copy_only=False).astype(c.numpy_dtype, copy=False))
    return out


def _ts(ms: np.ndarray, caps: ServerCaps) -> np.ndarray:
    ms = np.asarray(ms, dtype=np.int64)
    if caps.datetime64:
        return ms
    # DateTime is UInt32 seconds: out-of-range clocks are clamped instead of wrapping around.
    seconds: np.ndarray = np.clip(ms // 1000, 0, 2**32 - 1).astype(np.uint32)
    return seconds


def time_bounds_sql(table: Table, batches: list[pa.RecordBatch], caps: ServerCaps) -> str:
    """``AND time >= .. AND time <= ..`` around the batches (partition pruning for the dedup check)."""
    lo = hi = None
    for batch in batches:
        if table.time_column not in batch.schema.names or batch.num_rows == 0:
            return ""
        ms = batch.column(table.time_column).cast(pa.int64()).to_numpy(zero_copy_only=False)
        lo = int(ms.min()) if lo is None else min(lo, int(ms.min()))
        hi = int(ms.max()) if hi is None else max(hi, int(ms.max()))
    if lo is None or hi is None:
        return ""
    col = quote_ident(table.time_column)
    if caps.datetime64:
        return f" AND {col} >= fromUnixTimestamp64Milli(toInt64({lo}), 'UTC') " \
               f"AND {col} <= fromUnixTimestamp64Milli(toInt64({hi}), 'UTC')"
    lo_s, hi_s = (int(np.clip(v // 1000, 0, 2**32 - 1)) for v in (lo, hi))
    return f" AND {col} >= toDateTime({lo_s}, 'UTC') AND {col} <= toDateTime({hi_s}, 'UTC')"
