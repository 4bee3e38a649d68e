"""The ClickHouse server output: spool first, then columnar inserts from a sender thread.

``write()`` puts the batch in the on-disk spool (:mod:`storage.clickhouse.spool`, fsynced per ``spool.fsync``) and
returns:
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
``insert_deduplication_token`` with ``non_replicated_deduplication_window``. A batch the sink's handoff journal
replays after a crash (:meth:`ClickHouseOutput.replay`) is skipped while still spooled and otherwise checked the
same way, since it may have been delivered before the crash.

Health (``status()``, the ``flowmed_clickhouse_*`` metrics through the ``on_insert``/``on_error`` callbacks): rows
the server acknowledged per table, insert latency (the INSERT, not the spool write), failed connects and inserts by
error code, whether a connection is up (an idle sender pings the server every :data:`IDLE_PING_S`), the backlog
(spooled rows and the age of the oldest) and the next retry. While the server is unreachable the sender tries again
at least every :data:`RECONNECT_MAX_S`, so a backlog starts draining within seconds of the server's return; only a
server that answers with an error (it refuses the insert) or times an insert out is backed off up to
``max_backoff_s``. An outage is logged
when it starts, then once a minute, and when it ends.

Over 500 lines on purpose: the sender loop, the exactly-once check and the repair of partial inserts share the
spool, connection and backoff state of one class. The connection is :mod:`storage.clickhouse.client`, the column
conversion :mod:`storage.clickhouse.columns`, the schema :mod:`storage.clickhouse.ddl`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from clickhouse_driver.errors import Error as DriverError
from clickhouse_driver.errors import ServerException, SocketTimeoutError

from decoders.schema import TABLES, Table
from storage.clickhouse.client import (
    connect,
    ddl_timeout_s,
    error_code,
    executor,
    first_line,
    has_zookeeper,
    server_caps,
)
from storage.clickhouse.columns import arrow_to_columns, time_bounds_sql
from storage.clickhouse.ddl import ServerCaps, quote_ident
from storage.clickhouse.schema import SchemaManager
from storage.clickhouse.spool import Spool, SpoolCorrupt, SpoolEntry
from storage.handoff import HandoffJournal
from storage.outputs import Rows, one_batch
from storage.settings import ClickHouseConfig, SpoolConfig

log = logging.getLogger(__name__)

# ServerException codes that mean the data itself cannot be inserted (it will not get better by waiting): after
# MAX_DATA_ERRORS attempts such a batch is set aside in spool/corrupt/ instead of blocking every later batch.
DATA_ERROR_CODES = {6, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 131}
MAX_DATA_ERRORS = 5

RECONNECT_MAX_S = 2.0
"""Longest wait between two attempts while the server is unreachable (connecting costs it nothing): the backlog
starts draining within this long of its return. A server that answers with an error is backed off longer."""
IDLE_PING_S = 5.0
"""How often an idle sender checks its connection, so that ``connected`` turns false in an outage without traffic."""
OUTAGE_LOG_S = 60.0
"""While the server stays unreachable, one log line per this long instead of one per attempt."""

InsertCallback = Callable[[str, int, float], None]
"""``(table_name, rows, seconds)`` after the server acknowledged an insert."""
ErrorCallback = Callable[[str, str], None]
"""``(stage, code)`` after a failed connect or insert (see :func:`error_code`)."""


class ClickHouseOutput:
    """The ``Output`` for a ClickHouse server or cluster: ``write`` spools, a sender thread inserts.

    ``stats`` counts rows/batches inserted, batches found already stored (duplicates avoided), partial inserts
    repaired, insert errors; the spool's ``dropped_rows`` counts every row lost to its full policy.
    """

    name = "clickhouse"

    def __init__(self, config: ClickHouseConfig, spool_config: SpoolConfig, spool_dir: str | Path, *,
                 tables: Iterable[Table] | None = None, retention_interval_s: float = 3600.0,
                 max_backoff_s: float = 30.0, start: bool = True, retention_days: dict[str, int] | None = None,
                 journal: HandoffJournal | None = None, on_insert: InsertCallback | None = None,
                 on_error: ErrorCallback | None = None) -> None:
        self.config = config
        self.retention_days = dict(retention_days or {})
        """Retention of tables other than flows (days; e.g. the compliance tables), beside flows_retention_days."""
        self.tables = {t.name: t for t in (tables if tables is not None else TABLES.values())}
        self.spool = Spool(spool_dir, spool_config.max_bytes, spool_config.full_policy, spool_config.fsync)
        self.retention_interval_s = retention_interval_s
        self.max_backoff_s = max_backoff_s
        self.journal = journal
        """The sink's handoff journal: a batch recorded there is linked into the spool instead of written again."""
        self.on_insert = on_insert
        self.on_error = on_error
        self.stats: Counter[str] = Counter()
        self.last_error: str = ""
        self.rows_inserted_by_table: Counter[str] = Counter()
        """Rows the server acknowledged, per table."""
        self.errors_by_code: Counter[tuple[str, str]] = Counter()
        """Failed attempts by (stage, code): stage ``connect`` or ``insert``, code from :func:`error_code`."""
        self.last_insert_s = 0.0
        """Wall-clock time of the last acknowledged insert (0: none yet)."""
        self.last_insert_seconds = 0.0
        """How long that insert took."""
        self.retry_in_s = 0.0
        """The wait before the next attempt after a failure (0 while things work)."""
        self.outage_since = 0.0
        """Wall-clock time of the first failure of the current outage (0: no outage)."""
        self._outage_attempts = 0
        self._outage_logged = 0.0
        self._replayed: set[int] = set()  # batch ids replayed from the journal: checked on the server first
        self.caps: ServerCaps | None = None
        self.schema: SchemaManager | None = None
        self._client = None
        self._host_clients: list[Any] = []
        self._lock = threading.Lock()  # one driver connection: the sender and a disk-full direct insert share it
        self._uncertain: set[int] = {e.seq for e in self.spool.entries()}  # found at start: outcome unknown
        self._data_errors: Counter[int] = Counter()
        self._stop = threading.Event()
        self._urgent = threading.Event()  # set while draining: no waiting for a group to fill up
        self._next_retention = 0.0
        self._thread = threading.Thread(target=self._run, name="clickhouse-sender", daemon=True)
        if start:
            self._thread.start()

    # ---- Output protocol ------------------------------------------------------------------------------------------
    def write(self, table: Table, batch: Rows, batch_id: int) -> None:
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
        source = self.journal.path(table.name, batch_id, batch.num_rows) if self.journal is not None else None
        try:
            self.spool.append(table.name, batch_id, batch, link_from=source)
        except OSError as exc:
            # The disk refused (full, read-only): try the server directly before giving the rows up.
            log.error("clickhouse: cannot spool batch %d of %s (%s); inserting directly", batch_id, table.name, exc)
            try:
                t0 = time.perf_counter()
                with self._lock:
                    self._ensure_connected()
                    inserted, _ = self._insert_group(table, [batch_id], [one_batch(batch)], check_first=True)
                if inserted:
                    self._inserted(table.name, batch.num_rows, 1, time.perf_counter() - t0)
            except Exception as exc2:  # noqa: BLE001 - any failure here loses the batch: count it
                self._count_error("insert", exc2, f"direct insert of {table.name} batch {batch_id}")
                self._disconnect()
                if table.name != "flows":
                    # Usage and other money rows are not given up: the Sink retries an OSError until the disk
                    # (or the server) takes them.
                    raise exc from exc2
                self.spool.count_dropped(table.name, batch.num_rows, "write_error",
                                         f"batch {batch_id}: spool write failed ({exc}) and insert failed ({exc2})")

    def replay(self, table: Table, batch: Rows, batch_id: int) -> bool:
        """A batch from the sink's handoff journal after a crash: skipped while the spool still holds it, else
        spooled to be checked on the server before it is inserted (it may have been delivered before the crash)."""
        if table.name == "flows" and not self.config.flows:
            return False
        if any(e.batch_id == batch_id and e.table == table.name for e in self.spool.entries()):
            return False
        self._replayed.add(batch_id)  # before the entry exists: the sender must never see it unmarked
        self.write(table, batch, batch_id)
        return True

    def flush(self) -> None:
        """Nothing to do: every written batch is already durable in the spool."""

    def drain(self, timeout: float) -> bool:
        """Wait until every spooled batch is in ClickHouse (or ``timeout``); True when the spool is empty."""
        self._urgent.set()
        try:
            return self.spool.wait_empty(timeout)
        finally:
            self._urgent.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what the server takes within ``timeout``, then stop; the rest stays spooled for the next start.

        While the server is unreachable there is nothing to wait for: the spool is durable already."""
        if self._thread.is_alive() and self._client is not None:
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
        """Counters and health for metrics and ``flowmed status`` (see the module docstring)."""
        entries = self.spool.entries()
        created = [e.created for e in entries if e.created]
        now = time.time()
        return {**self.stats, "spool_batches": len(entries), "spool_rows": sum(e.rows for e in entries),
                "spool_bytes": sum(e.size for e in entries),
                "spool_oldest_age_s": now - min(created) if created else 0.0,
                "dropped_rows": sum(self.spool.dropped_rows.values()),
                "connected": self._client is not None, "last_error": self.last_error,
                "rows_inserted_by_table": dict(self.rows_inserted_by_table),
                "errors_by_code": {f"{stage}:{code}": n for (stage, code), n in sorted(self.errors_by_code.items())},
                "last_insert_ms": int(self.last_insert_s * 1000), "last_insert_seconds": self.last_insert_seconds,
                "retry_in_s": self.retry_in_s,
                "disconnected_for_s": now - self.outage_since if self.outage_since else 0.0}

    # ---- sender thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        last_check = time.monotonic()
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
                if time.monotonic() - last_check >= IDLE_PING_S:
                    last_check = time.monotonic()
                    try:
                        with self._lock:
                            self._ping()
                    except Exception as exc:  # noqa: BLE001 - the connection broke while idle
                        backoff = self._failed("connect", exc, backoff)
                continue
            last_check = time.monotonic()
            group = self._next_group()
            if not group:
                continue
            failure = self._deliver(group)
            if failure is None:
                backoff = 0.0
            else:
                for entry in group:
                    self.spool.release(entry)
                backoff = self._failed("insert", failure, backoff, counted=True)

    def _ping(self) -> None:
        """A trivial query on the open connection (raises when it is broken). Caller holds the lock."""
        if self._client is not None:
            self._client.execute("SELECT 1", settings={"use_numpy": False})
            self._recovered()

    def backoff_after(self, what: str, exc: BaseException | None, backoff: float) -> float:
        """The wait before the next attempt after ``exc`` in stage ``what`` (``connect``, ``insert``), the previous
        wait being ``backoff``: doubling from 0.5 s, up to ``max_backoff_s`` when the server is there but refuses
        (it answered with an error) or is too slow (an insert timed out: retrying fast would add to its load), and
        up to :data:`RECONNECT_MAX_S` when it could not be reached (a connection attempt costs it nothing)."""
        busy = isinstance(exc, ServerException) or (what == "insert" and isinstance(exc, SocketTimeoutError))
        cap = self.max_backoff_s if busy else min(self.max_backoff_s, RECONNECT_MAX_S)
        return min(cap, max(0.5, backoff * 2))

    def _failed(self, what: str, exc: Exception | None, backoff: float, *, counted: bool = False) -> float:
        if exc is not None and not counted:
            self._count_error(what, exc)
        self._disconnect()
        self.retry_in_s = self.backoff_after(what, exc, backoff)
        return self.retry_in_s

    def _count_error(self, what: str, exc: BaseException, context: str = "") -> None:
        """Record a failed connect or insert: counters, last error, callback; logged once per outage minute."""
        self.last_error = f"{context or what}: {exc.__class__.__name__}: {first_line(exc)}"
        self.stats[f"{what}_errors"] += 1
        code = error_code(exc)
        self.errors_by_code[(what, code)] += 1
        if self.on_error is not None:
            self.on_error(what, code)
        now = time.time()
        self._outage_attempts += 1
        if not self.outage_since:
            self.outage_since = self._outage_logged = now
            log.warning("clickhouse: %s", self.last_error)
        elif now - self._outage_logged >= OUTAGE_LOG_S:
            self._outage_logged = now
            log.warning("clickhouse: still failing after %.0f s (%d attempts): %s", now - self.outage_since,
                        self._outage_attempts, self.last_error)

    def _recovered(self) -> None:
        if self.outage_since:
            log.info("clickhouse: delivering again after %.0f s (%d failed attempts)", time.time() - self.outage_since,
                     self._outage_attempts)
        self.outage_since, self._outage_attempts, self.retry_in_s = 0.0, 0, 0.0

    def _inserted(self, table: str, rows: int, batches: int, seconds: float) -> None:
        self.stats["rows_inserted"] += rows
        self.stats["batches_inserted"] += batches
        self.rows_inserted_by_table[table] += rows
        self.last_insert_s, self.last_insert_seconds = time.time(), seconds
        if self.on_insert is not None:
            self.on_insert(table, rows, seconds)

    def _table(self, name: str) -> Table | None:
        return self.tables.get(name) or TABLES.get(name)

    @staticmethod
    def _coalesces(table: Table | None) -> bool:
        """Batches of a table may share one insert when a retry stays exact without insert dedup: the table has
        a batch_id column (checked per batch) or is a ReplacingMergeTree (collapses by key)."""
        return table is not None and ("batch_id" in table.column_names or table.engine == "ReplacingMergeTree")

    def _next_group(self) -> list[SpoolEntry]:
        """The spooled batches to insert next, or [] while a small group waits for more.

        Consecutive batches of one table are inserted together up to ``batch_rows`` rows (fewer, bigger parts on
        the server; a backlog after an outage drains in big inserts). A group smaller than that waits at most
        ``batch_interval_s`` from its oldest batch, and not at all while draining or closing.
        """
        entries = self.spool.entries()
        if not entries:
            return []
        first = entries[0]
        table = self._table(first.table)
        # Replicated: one batch per insert, so a re-sent batch is the same block (or carries the same token) and
        # the replicas drop it as a duplicate, whatever else was spooled around it.
        single = self.config.replicated or not self._coalesces(table) or first.seq in self._data_errors
        if not single and not self._urgent.is_set() and not self._stop.is_set():
            rows, can_grow = 0, True
            for e in entries:
                if e.table != first.table or rows + e.rows > self.config.batch_rows:
                    can_grow = False  # full, or another table's batch is next (the order is kept)
                    break
                rows += e.rows
            wait = self.config.batch_interval_s - (time.time() - first.created)
            if can_grow and wait > 0:
                self._urgent.wait(min(0.1, wait))
                return []
        return self.spool.head(self.config.batch_rows, coalesce=not single)

    def _deliver(self, group: list[SpoolEntry]) -> Exception | None:
        """Insert ``group`` (batches of one table) and remove it from the spool; the error to retry after, or None
        when done."""
        table = self._table(group[0].table)
        if table is None:
            for entry in group:
                self.spool.quarantine(entry, f"table {entry.table} is unknown to this flowmed version")
            return None
        entries: list[SpoolEntry] = []
        batches: list[pa.RecordBatch] = []
        for entry in group:
            try:
                batch = self.spool.read(entry)
            except SpoolCorrupt as exc:
                self.spool.quarantine(entry, str(exc))
                continue
            unknown = set(batch.schema.names) - set(table.column_names)
            if unknown:  # spooled by a flowmed whose schema had columns this one does not know
                self.spool.quarantine(entry, f"columns {sorted(unknown)} are not in table {table.name}")
                continue
            batches.append(batch)
            entries.append(entry)
        if not entries:
            return None
        check = any(e.seq in self._uncertain or e.batch_id in self._replayed for e in entries)
        t0 = time.perf_counter()
        try:
            with self._lock:
                self._ensure_connected()
                inserted, stored = self._insert_group(table, [e.batch_id for e in entries], batches,
                                                      check_first=check)
        except Exception as exc:  # noqa: BLE001 - classify, keep the batches, back off
            self._uncertain.update(e.seq for e in entries)  # they may have landed (or partly): check next time
            ids = f"{entries[0].batch_id}" + (f"..{entries[-1].batch_id}" if len(entries) > 1 else "")
            self._count_error("insert", exc, f"insert {table.name} batch {ids}")
            if isinstance(exc, DriverError) and exc.code in DATA_ERROR_CODES:
                first = entries[0].seq
                self._data_errors[first] += 1  # the next attempt takes this batch alone
                if self._data_errors[first] >= MAX_DATA_ERRORS and len(entries) == 1:
                    self.spool.quarantine(entries[0], f"server refuses the data: {first_line(exc)}")
                    self._data_errors.pop(first, None)
                    return None
            return exc
        self._recovered()
        self.stats["inserted"] += len(inserted)
        self.stats["already_stored"] += len(stored)
        self.stats["inserts"] += 1 if inserted else 0
        if inserted:
            self._inserted(table.name, sum(entries[i].rows for i in inserted), len(inserted),
                           time.perf_counter() - t0)
        for entry in entries:
            self._uncertain.discard(entry.seq)
            self._replayed.discard(entry.batch_id)
            self._data_errors.pop(entry.seq, None)
            self.spool.remove(entry)
        return None

    # ---- server side ------------------------------------------------------------------------------------------
    def _ensure_connected(self) -> None:
        if self._client is not None:
            return
        client = connect(self.config)
        caps = server_caps(client)
        hosts = []
        use_on_cluster = self.config.replicated
        if self.config.cluster:
            rows = client.execute("SELECT host_address, port FROM system.clusters WHERE cluster = %(c)s",
                                  {"c": self.config.cluster}, settings={"use_numpy": False})
            if not len(rows):
                raise RuntimeError(f"cluster {self.config.cluster!r} is not defined on the server (remote_servers)")
            # Replicated: DDL ON CLUSTER and the schema checked on this server only, so a node that is down (or
            # ZooKeeper being down, when nothing needs creating) does not stop the inserts.
            use_on_cluster = use_on_cluster or has_zookeeper(client)
            if not use_on_cluster:
                hosts = [connect(self.config, host=str(h), port=int(p)) for h, p in rows]
        retention = {**self.retention_days, "flows": self.config.flows_retention_days}
        schema = SchemaManager(executor(client), caps, self.config.database, cluster=self.config.cluster,
                               host_executors=[executor(h) for h in hosts], use_on_cluster=use_on_cluster,
                               replicated=self.config.replicated, zookeeper_path=self.config.zookeeper_path,
                               ddl_timeout_s=ddl_timeout_s(self.config), retention_days=retention)
        try:
            schema.ensure(self.tables.values())
        except BaseException:
            for c in (client, *hosts):
                c.disconnect()
            raise
        self._client, self._host_clients, self.caps, self.schema = client, hosts, caps, schema
        self.last_error = ""
        conn = client.connection
        log.info("clickhouse: connected to %s:%s (server %s, %s DDL%s)", conn.host, conn.port,
                 caps.version_text, "modern" if caps.modern else "18.16-compatible",
                 f", cluster {self.config.cluster}" + (" replicated" if self.config.replicated else "")
                 if self.config.cluster else "")

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

    def _insert_group(self, table: Table, ids: list[int], batches: list[pa.RecordBatch], *,
                      check_first: bool) -> tuple[list[int], list[int]]:
        """Insert batches ``ids`` of ``table`` in one INSERT; returns the indexes inserted and those found already
        stored. With ``check_first`` (an earlier attempt's outcome is unknown) each batch is counted on the server
        first: fully there is skipped, partly there is deleted and inserted again. Caller holds the lock."""
        caps, schema = self.caps, self.schema
        assert caps is not None and schema is not None and self._client is not None
        has_batch_id = "batch_id" in table.column_names
        target = f"{quote_ident(self.config.database)}.{quote_ident(table.name)}"
        todo, stored = list(range(len(ids))), []
        if check_first and has_batch_id:
            id_list = ", ".join(str(int(i)) for i in ids)
            rows = self._client.execute(
                f"SELECT batch_id, count() FROM {target} WHERE batch_id IN ({id_list})"
                f"{time_bounds_sql(table, batches, caps)} GROUP BY batch_id", settings={"use_numpy": False})
            counts = {int(b): int(c) for b, c in rows}
            partial = []
            for i, (batch_id, batch) in enumerate(zip(ids, batches, strict=True)):
                count = counts.get(batch_id, 0)
                if count >= batch.num_rows:
                    (log.error if count > batch.num_rows else log.info)(
                        "clickhouse: batch %d of %s is already stored (%d rows for %d sent); not inserted again",
                        batch_id, table.name, count, batch.num_rows)
                    stored.append(i)
                elif count:
                    partial.append((batch_id, count))
            if partial and self.config.replicated:
                # The parts that landed are in the replicas' de-duplication log: the same batch sent again adds
                # exactly the missing ones (deleting first would make those re-sent parts count as duplicates).
                log.warning("clickhouse: batches of %s landed in part (batch_id: rows) %s; sending them again",
                            table.name, dict(partial))
                self.stats["partial_repaired"] += len(partial)
            elif partial:
                self._delete_partial(table, partial)
            todo = [i for i in todo if i not in stored]
        elif check_first and not has_batch_id and table.engine != "ReplacingMergeTree" \
                and not caps.insert_deduplication_token:
            log.warning("clickhouse: table %s has no batch_id column and the server no insert dedup: batch %s "
                        "may be stored twice", table.name, ids)
        if not todo:
            return [], stored
        parts = [arrow_to_columns(table, batches[i], caps, ids[i] if has_batch_id else None) for i in todo]
        columns = parts[0] if len(parts) == 1 else [
            np.concatenate(col) if isinstance(col[0], np.ndarray) else [v for chunk in col for v in chunk]
            for col in zip(*parts, strict=True)]
        settings: dict[str, Any] = {}
        if caps.low_cardinality:
            settings["allow_suspicious_low_cardinality_types"] = 1
        if caps.insert_deduplication_token:
            settings["insert_deduplication_token"] = f"flowmed:{table.name}:{ids[todo[0]]}:{ids[todo[-1]]}:{len(todo)}"
        if self.config.cluster:
            settings["insert_distributed_sync"] = 1
        if self.config.replicated and self.config.insert_quorum > 1:
            settings["insert_quorum"] = self.config.insert_quorum
        names = ", ".join(quote_ident(c) for c in table.column_names)
        self._client.execute(f"INSERT INTO {target} ({names}) VALUES", columns, columnar=True, settings=settings)
        return todo, stored

    def _delete_partial(self, table: Table, partial: list[tuple[int, int]]) -> None:
        """Remove the rows of batches that landed only in part, so re-inserting them leaves exactly one copy."""
        assert self.schema is not None
        name = self.schema.storage_name(table)
        log.warning("clickhouse: batches of %s landed in part (batch_id: rows) %s; deleting them before inserting "
                    "again", table.name, dict(partial))
        runners = [executor(h) for h in self._host_clients] or [executor(self._client)]
        id_list = ", ".join(str(int(b)) for b, _ in partial)
        for run in runners:
            run(f"ALTER TABLE {quote_ident(self.config.database)}.{quote_ident(name)} DELETE "
                f"WHERE batch_id IN ({id_list})")
        deadline = time.monotonic() + max(60.0, self.config.insert_timeout_s)
        for run in runners:
            while True:
                (pending,), = run(f"SELECT count() FROM system.mutations WHERE database = '{self.config.database}' "
                                  f"AND table = '{name}' AND NOT is_done")
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"deleting the partial batches {id_list} of {name} did not finish")
                time.sleep(0.2)
        self.stats["partial_repaired"] += len(partial)


