"""The ``Output`` protocol every sink destination implements, and small helpers shared by outputs.

An output receives whole batches from the :class:`storage.sink.Sink` writer thread (never from the event loop):
``write(table, batch, batch_id)`` returns once the batch is durable (written and fsynced, or spooled) and raises only
for bugs or a failing disk; ``replay(...)`` gives it a batch again after a crash (:mod:`storage.handoff`);
``flush()`` makes anything it buffers durable; ``drain(timeout)`` waits until what it made durable is also readable
where it delivers (an output that delivers from a spool, as ClickHouse does, empties it); ``close()`` releases it.

The ``batch_id`` is decided once, when the sink cuts the batch, and travels with it through retries, the spool and
replay, so an output can make a repeated write of the same batch idempotent (the Parquet store names its files after
it; the ClickHouse output uses it as the insert deduplication token).

A batch (:data:`Rows`) is one ``pa.RecordBatch`` or a ``pa.Table`` whose chunks are the record batches the sink
buffered: the sink does not concatenate them (a copy of every row, holding the GIL, at twice the memory); Parquet and
Arrow IPC writers take the chunks as they are. An output that needs one contiguous batch calls :func:`one_batch`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import pyarrow as pa

from decoders.schema import Table

Rows: TypeAlias = pa.RecordBatch | pa.Table
"""A batch as outputs receive it: one record batch, or a table of the sink's buffered batches (not concatenated)."""


@runtime_checkable
class Output(Protocol):
    """A destination for table batches (Parquet store, ClickHouse server, ...)."""

    name: str
    """Short stable name used in logs and as a metric label (``store``, ``clickhouse``)."""

    def write(self, table: Table, batch: Rows, batch_id: int) -> None:
        """Make ``batch`` of ``table`` durable; writing the same ``batch_id`` again must not duplicate rows."""

    def replay(self, table: Table, batch: Rows, batch_id: int) -> bool:
        """Give ``batch`` again after a crash (from the sink's handoff journal): the output may hold it already, in
        full or in part. Take what is missing, never a second copy; True when the output lacked (some of) it or
        cannot tell yet, False when it held it already."""

    def flush(self) -> None:
        """Make everything accepted so far durable."""

    def drain(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until everything accepted so far is readable at the destination (a spool
        delivered); True when it is. An output that writes in place returns True at once."""

    def close(self) -> None:
        """Flush and release resources; the output is not used afterwards."""


@dataclass
class OutputStats:
    """Counters of one output, read by the collector's metrics (plain attributes, updated by the writer thread)."""

    rows: int = 0
    """Rows written durably."""
    batches: int = 0
    """Batches written durably."""
    errors: int = 0
    """Failed write attempts (each retry that fails counts)."""
    dropped_batches: int = 0
    """Batches given up after the last retry failed."""
    dropped_rows: int = 0
    """Rows of the dropped batches."""
    write_seconds: float = 0.0
    """Total time spent in ``write`` (successful and failed)."""
    last_error: str = ""
    """Text of the most recent error, for the status page."""
    rows_by_table: dict[str, int] = field(default_factory=dict)
    """Rows written per table."""
    replayed_batches: int = 0
    """Batches of the handoff journal replayed at start that this output lacked (a crash cut their handoff)."""
    replayed_rows: int = 0
    """Rows of those batches."""


# --- batch ids ------------------------------------------------------------------------------------------------------

_EPOCH_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: 42 bits of milliseconds from here last until the year 2159.
_WORKER_BITS = 8
_SEQ_BITS = 14
_HOST_BITS = 6  # the top of the sequence field: 8 bits of counter (256 ids per millisecond) stay
_COUNTER_BITS = _SEQ_BITS - _HOST_BITS


class BatchIdGenerator:
    """Unique, increasing u64 batch ids: 42 bits of milliseconds since 2020, 8 bits of worker, 6 bits of host and 8
    bits of sequence.

    Ids stay unique across restarts (the clock moves on), across worker processes (the worker bits) and across hosts
    writing into one ClickHouse cluster (the host bits, ``service.host_index``), and they sort in time order, so files
    named after them list oldest first. If the wall clock steps back, ids continue from the last one issued instead of
    repeating. A batch keeps its id for life: retries and replays reuse it, which is what makes them idempotent.
    """

    def __init__(self, worker: int = 0, clock: Callable[[], float] = time.time, *, host: int = 0) -> None:
        if not 0 <= worker < (1 << _WORKER_BITS):
            raise ValueError(f"worker must be in 0..{(1 << _WORKER_BITS) - 1}")
        if not 0 <= host < (1 << _HOST_BITS):
            raise ValueError(f"host must be in 0..{(1 << _HOST_BITS) - 1}")
        self._worker = worker
        self._fixed = (worker << _SEQ_BITS) | (host << _COUNTER_BITS)
        self._fixed_mask = ((1 << (_WORKER_BITS + _SEQ_BITS)) - 1) ^ ((1 << _COUNTER_BITS) - 1)
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """A new id, greater than every id this generator issued before."""
        ms = int(self._clock() * 1000) - _EPOCH_MS
        candidate = (max(ms, 0) << (_WORKER_BITS + _SEQ_BITS)) | self._fixed
        with self._lock:
            if candidate <= self._last:
                # Same millisecond (or the clock stepped back): bump the counter; if it overflows into the host or
                # worker bits, move on to the next millisecond, keeping our worker and host bits.
                candidate = self._last + 1
                if candidate & self._fixed_mask != self._fixed:
                    ms_part = (candidate >> (_WORKER_BITS + _SEQ_BITS)) + 1
                    candidate = (ms_part << (_WORKER_BITS + _SEQ_BITS)) | self._fixed
            self._last = candidate
        return candidate


def batch_id_time_ms(batch_id: int) -> int:
    """UTC milliseconds at which ``batch_id`` was issued."""
    return (batch_id >> (_WORKER_BITS + _SEQ_BITS)) + _EPOCH_MS


# --- batches --------------------------------------------------------------------------------------------------------


def conform(table: Table, batch: Rows, *, evolve: bool = False) -> Rows:
    """``batch`` with exactly ``table``'s columns, order and types (cast where safe); raises ValueError otherwise.

    Costs nothing when the batch already has the table's schema (the normal case: producers use ``Table.to_arrow``).
    With ``evolve`` (reading files written by an older or newer flowmed), columns the batch lacks are filled with
    their zero values and columns the table no longer has are dropped, as the query views do. A ``pa.Table`` stays a
    ``pa.Table`` (its chunks are not concatenated).
    """
    schema = table.arrow_schema
    if batch.schema.equals(schema, check_metadata=False):
        if batch.schema.metadata != schema.metadata:
            batch = batch.replace_schema_metadata(schema.metadata)
        return batch
    names = set(batch.schema.names)
    missing = [n for n in schema.names if n not in names]
    unknown = [n for n in batch.schema.names if n not in set(schema.names)]
    if (missing or unknown) and not evolve:
        raise ValueError(f"table {table.name}: batch has missing columns {missing} and unknown columns {unknown}")
    defaults = table.to_arrow({c: table.empty_columns(batch.num_rows)[c] for c in missing}) if missing else None
    arrays = []
    for f in schema:
        if f.name in missing:
            assert defaults is not None
            arrays.append(defaults.column(f.name))
            continue
        arr = batch.column(f.name)
        if not arr.type.equals(f.type):
            try:
                arr = arr.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"table {table.name}: column {f.name} is {arr.type}, expected {f.type}") from exc
        arrays.append(arr)
    if isinstance(batch, pa.Table):
        return pa.Table.from_arrays(arrays, schema=schema)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def with_batch_id(table: Table, batch: Rows, batch_id: int) -> Rows:
    """``batch`` with its ``batch_id`` column (if the table has one) set to ``batch_id`` on every row."""
    if "batch_id" not in table.column_names:
        return batch
    idx = batch.schema.get_field_index("batch_id")
    values = pa.array(np.full(batch.num_rows, batch_id, dtype=np.uint64), type=batch.schema.field(idx).type)
    return batch.set_column(idx, batch.schema.field(idx), values)


def buffered(table: Table, batches: list[pa.RecordBatch]) -> Rows:
    """The sink's buffered batches of ``table`` as one batch without copying a row: the batch itself when there is
    one, else a ``pa.Table`` whose chunks are the batches (their schema must be the table's: :func:`conform`)."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches, schema=table.arrow_schema)


def one_batch(batch: Rows) -> pa.RecordBatch:
    """``batch`` as one contiguous record batch (concatenates a table's chunks; for outputs that need one)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    return batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist(
        [], schema=batch.schema)
