"""The ClickHouse server output: spool first, then columnar inserts from a sender thread.

``write()`` puts the batch in the on-disk spool (:mod:`mediation.spool`, fsynced per ``spool.fsync``) and returns:
the Sink's writer thread never waits on the network, and a batch is durable the moment ``write()`` returns. One
sender thread delivers spooled batches in order with clickhouse-driver (native protocol, ``columnar=True``, numpy
columns), deletes each file once the server has acknowledged it, and backs off exponentially while the server is
down, slow or refusing. A restart (or SIGKILL) replays what is left.

Exactly once: each batch carries a deterministic ``batch_id`` (written into the table's ``batch_id`` column when it
has one). Before a batch whose earlier attempt has an unknown outcome is inserted again (a timeout, a dropped
connection, or any batch found in the spool at start), the sender counts ``WHERE batch_id = X`` inside the batch's
time range: all rows there means it landed (skip), none means insert, a part means the rest of a failed insert
landed: those rows are deleted (``ALTER TABLE ... DELETE``, waited for) and the batch inserted again. Tables without
a ``batch_id`` column rely on ReplacingMergeTree ids (rated usage) or, where the server has it, on
``insert_deduplication_token`` with ``non_replicated_deduplication_window``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from collector.config import ClickHouseConfig, SpoolConfig
from decoders.schema import TABLES, Table
from mediation.clickhouse_ddl import Executor, SchemaManager, ServerCaps, quote_ident
from mediation.spool import Spool, SpoolCorrupt, SpoolEntry

log = logging.getLogger(__name__)

# ServerException codes that mean the data itself cannot be inserted (it will not get better by waiting): after
# MAX_DATA_ERRORS attempts such a batch is set aside in spool/corrupt/ instead of blocking every later batch.
DATA_ERROR_CODES = {6, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 131}
MAX_DATA_ERRORS = 5


class _QuietGenericColumnWarning(logging.Filter):
    """clickhouse-driver warns on every insert that IPv6 has no numpy column; we pass it bytes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NumPy support is not implemented" not in record.getMessage()


logging.getLogger("clickhouse_driver.columns.service").addFilter(_QuietGenericColumnWarning())


def load_tables() -> dict[str, Table]:
    """Every registered table, importing ``mediation.tables`` (the list of table-defining modules) if present."""
    try:
        importlib.import_module("mediation.tables")
    except ModuleNotFoundError as exc:
        if exc.name != "mediation.tables":
            raise
    return dict(TABLES)


def connect(config: ClickHouseConfig, *, host: str | None = None, port: int | None = None,
            timeout_s: float | None = None, settings: dict[str, Any] | None = None):
    """A clickhouse-driver ``Client`` for ``config`` (numpy columns on; the other hosts as fail-over)."""
    from clickhouse_driver import Client

    hosts = [host] if host else list(config.hosts)
    timeout = timeout_s if timeout_s is not None else config.insert_timeout_s
    kwargs: dict[str, Any] = dict(
        host=hosts[0], port=port or config.port, database="default", user=config.user, password=config.password(),
        secure=config.secure, connect_timeout=min(10.0, timeout), send_receive_timeout=timeout,
        sync_request_timeout=min(5.0, timeout), settings={"use_numpy": True, **(settings or {})},
        client_name="flowmed",
    )
    if config.ca_file:
        kwargs["ca_certs"] = config.ca_file
    if len(hosts) > 1:
        kwargs["alt_hosts"] = ",".join(f"{h}:{port or config.port}" for h in hosts[1:])
    return Client(**kwargs)


def executor(client) -> Executor:
    """An :data:`Executor` over a clickhouse-driver client (rows as plain tuples)."""

    def run(sql: str) -> list[tuple]:
        rows = client.execute(sql, settings={"use_numpy": False})
        return [tuple(r) for r in rows] if rows else []

    return run


def server_caps(client) -> ServerCaps:
    (version,), = client.execute("SELECT version()", settings={"use_numpy": False})
    return ServerCaps.from_version(str(version))


# ---- Arrow -> driver columns ---------------------------------------------------------------------------------------
def arrow_to_columns(table: Table, batch: pa.RecordBatch, caps: ServerCaps, batch_id: int | None = None) -> list:
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
    out: list = []
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
    return np.clip(ms // 1000, 0, 2**32 - 1).astype(np.uint32)


def _time_bounds_sql(table: Table, batch: pa.RecordBatch, caps: ServerCaps) -> str:
    """``AND time >= .. AND time <= ..`` for the batch (partition pruning for the dedup check)."""
    if table.time_column not in batch.schema.names or batch.num_rows == 0:
        return ""
    ms = batch.column(table.time_column).cast(pa.int64()).to_numpy(zero_copy_only=False)
    lo, hi = int(ms.min()), int(ms.max())
    col = quote_ident(table.time_column)
    if caps.datetime64:
        return f" AND {col} >= fromUnixTimestamp64Milli(toInt64({lo}), 'UTC') " \
               f"AND {col} <= fromUnixTimestamp64Milli(toInt64({hi}), 'UTC')"
    lo_s, hi_s = (int(np.clip(v // 1000, 0, 2**32 - 1)) for v in (lo, hi))
    return f" AND {col} >= toDateTime({lo_s}, 'UTC') AND {col} <= toDateTime({hi_s}, 'UTC')"


class ClickHouseOutput:
    """The ``Output`` for a ClickHouse server or cluster: ``write`` spools, a sender thread inserts.

    ``stats`` counts rows/batches inserted, batches found already stored (duplicates avoided), partial inserts
    repaired, insert errors; the spool's ``dropped_rows`` counts every row lost to its full policy.
    """

    name = "clickhouse"

    def __init__(self, config: ClickHouseConfig, spool_config: SpoolConfig, spool_dir: str | Path, *,
                 tables: Iterable[Table] | None = None, retention_interval_s: float = 3600.0,
                 max_backoff_s: float = 30.0, start: bool = True) -> None:
        self.config = config
        self.tables = {t.name: t for t in (tables if tables is not None else load_tables().values())}
        self.spool = Spool(spool_dir, spool_config.max_bytes, spool_config.full_policy, spool_config.fsync)
        self.retention_interval_s = retention_interval_s
        self.max_backoff_s = max_backoff_s
        self.stats: Counter[str] = Counter()
        self.last_error: str = ""
        self.caps: ServerCaps | None = None
        self.schema: SchemaManager | None = None
        self._client = None
        self._host_clients: list = []
        self._lock = threading.Lock()  # one driver connection: the sender and a disk-full direct insert share it
        self._uncertain: set[int] = {e.seq for e in self.spool.entries()}  # found at start: outcome unknown
        self._data_errors: Counter[int] = Counter()
        self._stop = threading.Event()
        self._next_retention = 0.0
        self._thread = threading.Thread(target=self._run, name="clickhouse-sender", daemon=True)
        if start:
            self._thread.start()

    # ---- Output protocol ------------------------------------------------------------------------------------------
    def write(self, table: Table, batch: pa.RecordBatch, batch_id: int) -> None:
        """Spool ``batch`` (durable per ``spool.fsync``) for delivery; returns without waiting on the server."""
        if table.name == "flows" and not self.config.flows:
            return
        if table.name not in self.tables:
            self.tables[table.name] = table
        unknown = set(batch.schema.names) - set(table.column_names)
        if unknown:  # a bug upstream: refuse loudly rather than spool what can never be inserted
            raise ValueError(f"table {table.name}: batch has unknown columns {sorted(unknown)}")
        if batch.num_rows == 0:
            return
        try:
            self.spool.append(table.name, batch_id, batch)
        except OSError as exc:
            # The disk refused (full, read-only): try the server directly before giving the rows up.
            log.error("clickhouse: cannot spool batch %d of %s (%s); inserting directly", batch_id, table.name, exc)
            try:
                with self._lock:
                    self._ensure_connected()
                    self._insert(table, batch, batch_id, check_first=True)
                self.stats["rows_inserted"] += batch.num_rows
                self.stats["batches_inserted"] += 1
            except Exception as exc2:  # noqa: BLE001 - any failure here loses the batch: count it
                self._disconnect()
                self.spool.count_dropped(table.name, batch.num_rows, "write_error",
                                         f"batch {batch_id}: spool write failed ({exc}) and insert failed ({exc2})")

    def flush(self) -> None:
        """Nothing to do: every written batch is already durable in the spool."""

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled batch is in ClickHouse (or ``timeout``); True when the spool is empty."""
        return self.spool.wait_empty(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what the server takes within ``timeout``, then stop; the rest stays spooled for the next start."""
        if self._thread.is_alive():
            self.drain(timeout)
        self._stop.set()
        self.spool.close()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, self.config.insert_timeout_s + 1))
        self._disconnect()
        if len(self.spool):
            log.warning("clickhouse: %d batches (%d rows) stay spooled for the next start", len(self.spool),
                        self.spool.rows)

    def status(self) -> dict[str, Any]:
        """Counters for metrics and ``flowmed status``."""
        return {**self.stats, "spool_batches": len(self.spool), "spool_rows": self.spool.rows,
                "spool_bytes": self.spool.size_bytes, "dropped_rows": sum(self.spool.dropped_rows.values()),
                "connected": self._client is not None, "last_error": self.last_error}

    # ---- sender thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                self._stop.wait(backoff)
                if self._stop.is_set():
                    break
            try:
                with self._lock:
                    self._ensure_connected()
                    self._maybe_retention()
            except Exception as exc:  # noqa: BLE001 - the server is unreachable or refusing: retry later
                backoff = self._failed("connect", exc, backoff)
                continue
            if not self.spool.wait_for_entries(timeout=1.0):
                continue
            entry = self.spool.oldest()
            if entry is None:
                continue
            ok = self._deliver(entry)
            if ok:
                backoff = 0.0
            else:
                self.spool.release(entry)
                backoff = self._failed("insert", None, backoff)

    def _failed(self, what: str, exc: Exception | None, backoff: float) -> float:
        if exc is not None:
            self.last_error = f"{what}: {exc.__class__.__name__}: {_first_line(exc)}"
            self.stats[f"{what}_errors"] += 1
            log.warning("clickhouse: %s failed: %s", what, self.last_error)
        self._disconnect()
        return min(self.max_backoff_s, max(0.5, backoff * 2))

    def _deliver(self, entry: SpoolEntry) -> bool:
        table = self.tables.get(entry.table) or load_tables().get(entry.table)
        if table is None:
            self.spool.quarantine(entry, f"table {entry.table} is unknown to this flowmed version")
            return True
        try:
            batch = self.spool.read(entry)
        except SpoolCorrupt as exc:
            self.spool.quarantine(entry, str(exc))
            return True
        check = entry.seq in self._uncertain
        try:
            with self._lock:
                self._ensure_connected()
                outcome = self._insert(table, batch, entry.batch_id, check_first=check)
        except Exception as exc:  # noqa: BLE001 - classify, keep the batch, back off
            self._uncertain.add(entry.seq)  # it may have landed (or partly): check before the next attempt
            self.last_error = f"insert {entry.table} batch {entry.batch_id}: {exc.__class__.__name__}: " \
                              f"{_first_line(exc)}"
            self.stats["insert_errors"] += 1
            log.warning("clickhouse: %s", self.last_error)
            code = getattr(exc, "code", None)
            if code in DATA_ERROR_CODES:
                self._data_errors[entry.seq] += 1
                if self._data_errors[entry.seq] >= MAX_DATA_ERRORS:
                    self.spool.quarantine(entry, f"server refuses the data: {_first_line(exc)}")
                    self._data_errors.pop(entry.seq, None)
                    return True
            return False
        self.stats[outcome] += 1
        if outcome == "inserted":
            self.stats["rows_inserted"] += entry.rows
            self.stats["batches_inserted"] += 1
        self._uncertain.discard(entry.seq)
        self._data_errors.pop(entry.seq, None)
        self.spool.remove(entry)
        return True

    # ---- server side ------------------------------------------------------------------------------------------
    def _ensure_connected(self) -> None:
        if self._client is not None:
            return
        client = connect(self.config)
        caps = server_caps(client)
        hosts = []
        use_on_cluster = False
        if self.config.cluster:
            rows = client.execute("SELECT host_address, port FROM system.clusters WHERE cluster = %(c)s",
                                  {"c": self.config.cluster}, settings={"use_numpy": False})
            if not len(rows):
                raise RuntimeError(f"cluster {self.config.cluster!r} is not defined on the server (remote_servers)")
            use_on_cluster = _has_zookeeper(client)
            if not use_on_cluster:
                hosts = [connect(self.config, host=str(h), port=int(p)) for h, p in rows]
        retention = {"flows": self.config.flows_retention_days}
        schema = SchemaManager(executor(client), caps, self.config.database, cluster=self.config.cluster,
                               host_executors=[executor(h) for h in hosts], use_on_cluster=use_on_cluster,
                               retention_days=retention)
        schema.ensure(self.tables.values())
        self._client, self._host_clients, self.caps, self.schema = client, hosts, caps, schema
        self.last_error = ""
        log.info("clickhouse: connected to %s:%d (server %s, %s DDL%s)", self.config.hosts[0], self.config.port,
                 caps.version_text, "modern" if caps.modern else "18.16-compatible",
                 f", cluster {self.config.cluster}" if self.config.cluster else "")

    def _disconnect(self) -> None:
        for c in [self._client, *self._host_clients]:
            if c is not None:
                try:
                    c.disconnect()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._client, self._host_clients = None, []

    def _maybe_retention(self) -> None:
        now = time.time()
        if self.schema is None or now < self._next_retention:
            return
        self._next_retention = now + self.retention_interval_s
        self.schema.drop_expired_partitions(self.tables.values(), int(now * 1000))

    def _insert(self, table: Table, batch: pa.RecordBatch, batch_id: int, *, check_first: bool) -> str:
        """Insert one batch; returns ``inserted`` or ``already_stored``. Caller holds the lock."""
        caps, schema = self.caps, self.schema
        assert caps is not None and schema is not None and self._client is not None
        has_batch_id = "batch_id" in table.column_names
        target = f"{quote_ident(self.config.database)}.{quote_ident(table.name)}"
        if check_first and has_batch_id:
            where = f"batch_id = {int(batch_id)}{_time_bounds_sql(table, batch, caps)}"
            (count,), = self._client.execute(f"SELECT count() FROM {target} WHERE {where}",
                                             settings={"use_numpy": False})
            if count == batch.num_rows:
                log.info("clickhouse: batch %d of %s is already stored; not inserted again", batch_id, table.name)
                return "already_stored"
            if count > batch.num_rows:
                log.error("clickhouse: batch %d of %s has %d rows stored for %d sent; not inserted again",
                          batch_id, table.name, count, batch.num_rows)
                return "already_stored"
            if count:
                self._delete_partial(table, batch_id, count)
        elif check_first and not has_batch_id and table.engine != "ReplacingMergeTree" \
                and not caps.insert_deduplication_token:
            log.warning("clickhouse: table %s has no batch_id column and the server no insert dedup: batch %d "
                        "may be stored twice", table.name, batch_id)
        columns = arrow_to_columns(table, batch, caps, batch_id if has_batch_id else None)
        settings: dict[str, Any] = {}
        if caps.low_cardinality:
            settings["allow_suspicious_low_cardinality_types"] = 1
        if caps.insert_deduplication_token:
            settings["insert_deduplication_token"] = f"flowmed:{table.name}:{batch_id}"
        if self.config.cluster:
            settings["insert_distributed_sync"] = 1
        names = ", ".join(quote_ident(c) for c in table.column_names)
        self._client.execute(f"INSERT INTO {target} ({names}) VALUES", columns, columnar=True, settings=settings)
        return "inserted"

    def _delete_partial(self, table: Table, batch_id: int, count: int) -> None:
        """Remove the rows of a batch that landed only in part, so re-inserting it leaves exactly one copy."""
        assert self.schema is not None
        name = self.schema.storage_name(table)
        log.warning("clickhouse: batch %d of %s landed in part (%d rows); deleting them before re-inserting",
                    batch_id, table.name, count)
        runners = [executor(h) for h in self._host_clients] or [executor(self._client)]
        for run in runners:
            run(f"ALTER TABLE {quote_ident(self.config.database)}.{quote_ident(name)} DELETE "
                f"WHERE batch_id = {int(batch_id)}")
        deadline = time.monotonic() + max(60.0, self.config.insert_timeout_s)
        for run in runners:
            while True:
                (pending,), = run(f"SELECT count() FROM system.mutations WHERE database = '{self.config.database}' "
                                  f"AND table = '{name}' AND NOT is_done")
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"deleting the partial batch {batch_id} of {name} did not finish")
                time.sleep(0.2)
        self.stats["partial_repaired"] += 1


def _has_zookeeper(client) -> bool:
    try:
        client.execute("SELECT count() FROM system.zookeeper WHERE path = '/'", settings={"use_numpy": False})
        return True
    except Exception:  # noqa: BLE001 - no ZooKeeper configured: distributed DDL is unavailable
        return False


def _first_line(exc: BaseException) -> str:
    """The error without the server's stack trace, on one line (server errors read "Code: N. DB::Exception: ...")."""
    text = " ".join(str(exc).split("Stack trace:")[0].split())
    return text[:300] if text else exc.__class__.__name__
